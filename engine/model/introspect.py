"""What a base model is made of, read from its config alone.

`resolve(spec)` finds the config (catalog, embedded default, local folder, .gguf file or
hub id), builds the model on PyTorch's `meta` device (shapes, no weights, no RAM) and
lists every Linear / transformers Conv1D module: the layers PEFT can put adapters on.
Everything is cached per spec, so the estimator pays for the build once.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from engine.errors import UserError, first_line, one_of
from engine.model import catalog, hub

# Parent-module names that mark attention and MLP blocks across architectures.
_ATTN_PARENTS = re.compile(r"(^|\.)(self_attn|attn|attention|self_attention)(\.|$)")
_MLP_PARENTS = re.compile(r"(^|\.)(mlp|feed_forward|ffn|block_sparse_moe|experts|moe)(\.|$)")
_LAYER_INDEX = re.compile(r"\.(?:layers|h|layer|blocks)\.(\d+)\.")
_ROUTER_NAMES = {"gate", "router"}


@dataclass(frozen=True)
class LinearModule:
    name: str  # full module path, e.g. model.layers.0.self_attn.q_proj
    type: str  # short name, e.g. q_proj
    in_features: int
    out_features: int
    bias: bool
    layer: int | None
    router: bool = False  # MoE router (its out_features = number of experts)
    experts: int = 1  # >1: a fused 3-D expert parameter PEFT adapts per expert (ParamWrapper)
    pseudo: bool = False  # not a module in the tree; a PEFT target name mapped onto a parameter


@dataclass
class ModelInfo:
    spec: str
    source: str  # catalog | hub | local | gguf | default
    config: Any  # transformers PretrainedConfig
    architecture: str
    total_params: int
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied_embeddings: bool
    dtype: str
    max_position: int
    linear_modules: list[LinearModule]
    target_names: list[str]
    # Parameter counts by role, for the memory model (storage by kind of tensor).
    embedding_params: int = 0  # input embeddings (+ position embeddings)
    head_params: int = 0  # untied lm_head weights (0 when tied)
    linear_params: int = 0  # Linear/Conv1D weights+biases excluding the head: what 4-bit quantizes
    expert_params: int = 0  # fused MoE expert tensors (3-D parameters)
    other_params: int = 0  # norms, routers, anything else (kept in compute dtype)
    output_name: str = "lm_head"
    extra: dict = field(default_factory=dict)

    @property
    def catalog_key(self) -> str | None:
        return self.extra.get("catalog_key")


ACCEPTED = (
    "a catalog name (e.g. llama-3.1-8b, qwen2.5-7b, smollm2-135m), a Hugging Face hub id, "
    "a local folder holding config.json, a .gguf file, or 'default'"
)


def _unknown(spec: str, why: str) -> UserError:
    names = [m.key for m in catalog.list_models()][:12]
    return UserError("model", f"cannot read '{spec}' ({why}); accepted: {ACCEPTED}. Catalog: {', '.join(names)}, ...")


def load_config(spec: str):
    """(config, source, catalog key or None) for any accepted model spec."""
    from transformers import AutoConfig

    spec = (spec or "").strip()
    if spec == "default":
        default = catalog.default_entry()
        return AutoConfig.for_model(**default.config_dict()), "default", default.key
    entry = catalog.find_model(spec)
    if entry is not None:
        return AutoConfig.for_model(**entry.config_dict()), "catalog", entry.key
    path = Path(spec).expanduser()
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise UserError("model", f"GGUF file '{spec}' does not exist")
        try:  # reads only the GGUF metadata, no tensors
            return AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name), "gguf", None
        except Exception as exc:  # any failure is the user's file
            raise UserError("model", f"cannot read the config inside '{spec}': {first_line(exc)}") from None
    if path.is_dir():
        cfg_file = path / "config.json"
        if not cfg_file.is_file():
            raise UserError("model", f"folder '{spec}' has no config.json; {ACCEPTED}")
        try:
            raw = json.loads(cfg_file.read_text())
        except (OSError, ValueError) as exc:
            raise UserError("model", f"'{cfg_file}' is not readable JSON ({first_line(exc)})") from None
        if not isinstance(raw, dict) or "model_type" not in raw:
            raise UserError("model", f"'{cfg_file}' has no model_type; it is not a transformers config")
        try:
            return AutoConfig.from_pretrained(str(path)), "local", None
        except Exception as exc:
            raise UserError("model", f"unsupported config in '{cfg_file}': {first_line(exc)}") from None
    if path.exists() or spec.startswith((".", "/", "~")) or spec.count("/") != 1:
        raise _unknown(spec, "not a catalog name, an existing folder or .gguf file, or an owner/name hub id")
    try:  # a config cached by an earlier download needs no network
        return AutoConfig.from_pretrained(spec, local_files_only=True), "hub", None
    except Exception:  # not cached: try the hub below
        pass
    hub.require("model", spec, "give a local folder with config.json, a .gguf file or a catalog name instead")
    try:
        return AutoConfig.from_pretrained(spec), "hub", None
    except Exception as exc:  # gated, missing, bad config: all one message
        raise _unknown(spec, f"hub config not available: {first_line(exc)}") from None


@lru_cache(maxsize=32)
def meta_model(spec: str):
    """The model built from its config on the meta device (cached; do not modify it)."""
    import torch
    from transformers import AutoModelForCausalLM

    cfg, _, _ = load_config(spec)
    try:
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(cfg)
    except Exception as exc:
        raise UserError(
            "model",
            f"'{spec}' ({getattr(cfg, 'model_type', '?')}) cannot be built as a causal language model: "
            f"{first_line(exc)}",
        ) from None


def _layer_of(name: str) -> int | None:
    m = _LAYER_INDEX.search("." + name + ".")
    return int(m.group(1)) if m else None


def linear_modules(model) -> list[LinearModule]:
    """Every Linear and transformers Conv1D module, in model order (what PEFT can adapt)."""
    import torch.nn as nn
    from transformers.pytorch_utils import Conv1D

    n_experts = {getattr(model.config, k, None) for k in ("num_local_experts", "num_experts")} - {None}
    out = []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear):
            fin, fout = mod.in_features, mod.out_features
        elif isinstance(mod, Conv1D):
            fin, fout = mod.weight.shape  # Conv1D stores (in, out)
        else:
            continue
        short = name.rsplit(".", 1)[-1]
        router = short in _ROUTER_NAMES and fout in n_experts
        out.append(LinearModule(name, short, int(fin), int(fout), mod.bias is not None, _layer_of(name), router))
    return out + _moe_targets(model)


# PEFT 0.21 maps the transformers-4 MoE names onto the fused transformers-5 parameters
# (peft.utils.transformers_weight_conversion): experts get rank r per expert, and the two
# names fused into gate_up_proj must be targeted together (the fused rank is 2r).
MOE_NAMES = {
    "mixtral": {"gate": "gate", "up": ("w1", "w3"), "down": "w2"},
    "qwen2_moe": {"gate": "gate", "up": ("gate_proj", "up_proj"), "down": "down_proj"},
}


def _moe_targets(model) -> list[LinearModule]:
    names = MOE_NAMES.get(getattr(model.config, "model_type", ""))
    if not names:
        return []
    out = []
    for mod_name, mod in model.named_modules():
        layer = _layer_of(mod_name)
        if mod_name.endswith(".experts") and hasattr(mod, "gate_up_proj"):
            e, two_i, h = mod.gate_up_proj.shape
            for short in names["up"]:  # each of the pair carries half of the fused 2r adapter
                out.append(LinearModule(f"{mod_name}.{short}", short, h, two_i, False, layer, experts=e, pseudo=True))
            e, h_out, i = mod.down_proj.shape
            out.append(
                LinearModule(
                    f"{mod_name}.{names['down']}", names["down"], i, h_out, False, layer, experts=e, pseudo=True
                )
            )
        elif (
            mod_name.rsplit(".", 1)[-1] == names["gate"]
            and getattr(mod, "weight", None) is not None
            and mod.weight.dim() == 2
            and type(mod).__name__ != "Linear"
        ):
            fout, fin = mod.weight.shape
            out.append(LinearModule(mod_name, names["gate"], fin, fout, False, layer, router=True, pseudo=True))
    return out


def _get(cfg, *names, default=None):
    for n in names:
        v = getattr(cfg, n, None)
        if v is not None:
            return v
    return default


@lru_cache(maxsize=32)
def resolve(spec: str) -> ModelInfo:
    """ModelInfo for a model spec; UserError('model', ...) when it cannot be read."""
    spec = (spec or "").strip()
    if not spec:
        raise _unknown(spec, "empty")
    cfg, source, key = load_config(spec)
    model = meta_model(spec)
    text_cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    linears = linear_modules(model)
    out_emb = model.get_output_embeddings()
    out_name = next((n for n, m in model.named_modules() if m is out_emb), "lm_head") if out_emb is not None else ""
    in_emb = model.get_input_embeddings()
    tied = bool(out_emb is not None and in_emb is not None and out_emb.weight is in_emb.weight)

    seen: set[int] = set()
    counts = {"embedding": 0, "head": 0, "linear": 0, "expert": 0, "other": 0}
    linear_names = {m.name for m in linears if not m.router and not m.pseudo}
    for mod_name, mod in model.named_modules():
        for _pname, p in mod.named_parameters(recurse=False):
            if id(p) in seen:
                continue
            seen.add(id(p))
            if mod_name == out_name:
                kind = "head"
            elif mod is in_emb or type(mod).__name__.endswith("Embedding") or p.dim() == 2 and "embed" in mod_name:
                kind = "embedding"
            elif mod_name in linear_names:
                kind = "linear"
            elif p.dim() == 3:
                kind = "expert"
            else:
                kind = "other"
            counts[kind] += p.numel()
    total = sum(counts.values())

    heads = int(_get(text_cfg, "num_attention_heads", "n_head"))
    hidden = int(_get(text_cfg, "hidden_size", "n_embd"))
    dtype = _get(cfg, "dtype", "torch_dtype", default="float32")
    dtype = str(dtype).replace("torch.", "")
    names = sorted({m.type for m in linears})
    return ModelInfo(
        spec=spec,
        source=source,
        config=cfg,
        architecture=(getattr(cfg, "architectures", None) or [type(model).__name__])[0],
        total_params=total,
        layers=int(_get(text_cfg, "num_hidden_layers", "n_layer")),
        hidden=hidden,
        heads=heads,
        kv_heads=int(_get(text_cfg, "num_key_value_heads", default=heads)),
        head_dim=int(_get(text_cfg, "head_dim", default=hidden // heads)),
        intermediate=int(_get(text_cfg, "intermediate_size", "n_inner", default=4 * hidden) or 4 * hidden),
        vocab=int(_get(text_cfg, "vocab_size")),
        tied_embeddings=tied,
        dtype=dtype,
        max_position=int(_get(text_cfg, "max_position_embeddings", "n_positions", default=0)),
        linear_modules=linears,
        target_names=names,
        embedding_params=counts["embedding"],
        head_params=counts["head"],
        linear_params=counts["linear"],
        expert_params=counts["expert"],
        other_params=counts["other"],
        output_name=out_name,
        extra={"catalog_key": key, **_catalog_extra(spec)},
    )


def _catalog_extra(spec: str) -> dict:
    """For a catalog spec: the checkpoint it names, and what the entry's card describes."""
    found = catalog.match_model(spec)
    if found is None:
        return {}
    return {"hub_id": found.hub_id, "variant": found.variant, "card": found.entry.describes()}


def matches(module_name: str, target: str) -> bool:
    """PEFT's rule for a string target: the exact name or a '.'-separated suffix of it."""
    return module_name == target or module_name.endswith("." + target)


def _preset(info: ModelInfo, pattern: re.Pattern | None) -> list[str]:
    """Targets for a preset: short names, qualified by parent where a short name is ambiguous."""
    body = [m for m in info.linear_modules if m.name != info.output_name and not m.router]
    chosen = [m for m in body if pattern is None or pattern.search(m.name)]
    if pattern is not None and pattern is _MLP_PARENTS:
        chosen = [m for m in chosen if not _ATTN_PARENTS.search(m.name)]
    picked = {m.type for m in chosen}
    names = []
    for short in sorted(picked):
        everywhere = {m.name for m in body if m.type == short}
        inside = {m.name for m in chosen if m.type == short}
        if everywhere == inside:
            names.append(short)
        else:  # e.g. GPT-2's c_proj lives in both attn and mlp: name it by its parent
            names += sorted({".".join(n.split(".")[-2:]) for n in inside})
    return names


def resolve_targets(info: ModelInfo, targets: str) -> list[str]:
    """Expand a preset or validate explicit names; the result is a PEFT target_modules list."""
    items = [t.strip() for t in (targets or "").split(",") if t.strip()]
    if items == ["all-linear"]:
        names = _preset(info, None)
        routers = sorted({m.type for m in info.linear_modules if m.router})
        # PEFT's all-linear includes nn.Linear routers too; keep them for exact counts
        return sorted(set(names) | set(routers))
    if items == ["attention"]:
        names = _preset(info, _ATTN_PARENTS)
    elif items == ["mlp"]:
        names = _preset(info, _MLP_PARENTS)
    else:
        bad = [t for t in items if t in ("all-linear", "attention", "mlp")]
        if bad:
            raise UserError("targets", f"'{bad[0]}' is a preset and cannot be mixed with module names")
        full = [m.name for m in info.linear_modules]
        for t in items:
            if not any(matches(n, t) for n in full):
                raise UserError(
                    "targets",
                    f"unknown module '{t}' in {info.spec}; valid: "
                    f"{one_of(info.target_names)}, or all-linear, attention, mlp",
                )
        _check_fused_pairs(info, items)
        return items
    if not names:
        raise UserError("targets", f"{info.spec} has no {items[0]} Linear layers; valid: {one_of(info.target_names)}")
    return names


def targeted_modules(info: ModelInfo, target_list: list[str]) -> list[LinearModule]:
    """Modules a PEFT target list adapts (cached per list: estimates for sweeps repeat it)."""
    cache = info.extra.setdefault("targeted", {})
    key = tuple(target_list)
    if key not in cache:
        cache[key] = [m for m in info.linear_modules if any(matches(m.name, t) for t in target_list)]
    return cache[key]


def _check_fused_pairs(info: ModelInfo, items: list[str]) -> None:
    pair = MOE_NAMES.get(getattr(info.config, "model_type", ""), {}).get("up")
    if pair and any(t in pair for t in items) and not all(t in items for t in pair):
        raise UserError(
            "targets", f"{' and '.join(pair)} are fused into one tensor in {info.spec}; target both or neither"
        )


def warm_up() -> None:
    """Import the heavy modelling code once (seconds), e.g. from a background thread at app start,
    so that the first estimate for any model pays only for its own meta build."""
    import torch  # noqa: F401
    from transformers import (  # noqa: F401
        AutoConfig,
        AutoModelForCausalLM,
        modeling_utils,
    )
    from transformers.pytorch_utils import Conv1D  # noqa: F401

    meta_model("default")
