"""The command that serves the same adapters with vLLM on a GPU box, and what vLLM would refuse.

LoRA Pilot's own endpoint suits a laptop; a fleet runs `vllm serve BASE --enable-lora
--lora-modules name=path ...`. This module writes that command and checks each adapter
against vLLM's loading rules first, so the user learns here (with the fix) rather than from a
worker crash on the GPU box. The rules, as read in vLLM's source (github.com/vllm-project/vllm):

- `vllm/config/lora.py`: `MaxLoRARanks = Literal[1, 8, 16, 32, 64, 128, 256, 320, 512]`, so
  `--max-lora-rank` takes one of those values; `max_loras` is the number of adapters one batch may
  mix (`max_cpu_loras` defaults to it).
- `vllm/lora/peft_helper.py`, `PEFTHelper._validate_features` / `validate_legal`: "vLLM only
  supports modules_to_save being None.", "vLLM does not yet support DoRA.", "LoRA rank {r} is
  greater than max_lora_rank", "Adapter bias is not supported."
- `vllm/lora/lora_model.py`, `LoRAModel.from_local_checkpoint`: every LoRA weight must sit on a
  module the model's vLLM implementation supports (its linear layers, with `packed_modules_mapping`
  expanding fused ones such as `qkv_proj` into `q_proj`/`k_proj`/`v_proj`), else "expected target
  modules in ... but received ..."; `from_lora_tensors`: an embedding LoRA must match the base
  vocabulary size ("The embedding LoRA size ... must be consistent with the base model's
  vocabulary size").
- `docs/features/lora.md`: `--lora-modules name=path`, and runtime loading through
  `/v1/load_lora_adapter` when `VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from engine.errors import UserError
from engine.model import introspect

VLLM_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vllm/config/lora.py, MaxLoRARanks

# Module names vLLM's implementations of these architectures accept LoRA on: the HF names of
# their linear layers (vLLM fuses q/k/v and gate/up, and maps the HF names back through
# packed_modules_mapping), plus the embeddings. Other architectures are not checked (a warning).
_LLAMA_LIKE = frozenset(
    {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "embed_tokens", "lm_head"}
)
VLLM_LORA_MODULES = {
    arch: _LLAMA_LIKE
    for arch in (
        "LlamaForCausalLM",
        "MistralForCausalLM",
        "Qwen2ForCausalLM",
        "Qwen3ForCausalLM",
        "GemmaForCausalLM",
        "Gemma2ForCausalLM",
        "Gemma3ForCausalLM",
        "GraniteForCausalLM",
    )
}
VLLM_LORA_MODULES["Phi3ForCausalLM"] = frozenset(
    {"qkv_proj", "o_proj", "gate_up_proj", "down_proj", "embed_tokens", "lm_head"}
)

MERGE_FIX = (
    "merge it into the base (PEFT `merge_and_unload()`) and serve the merged model as its own "
    "`vllm serve` model, or retrain without it"
)


@dataclass
class Issue:
    adapter: str
    blocking: bool  # True: vLLM refuses to load it; False: worth knowing, it still loads
    reason: str
    fix: str


@dataclass
class Recipe:
    base: str
    adapters: list[tuple[str, Path]]
    max_rank: int  # the largest rank among the adapters
    max_lora_rank: int  # rounded up to a value vLLM accepts
    issues: list[Issue] = field(default_factory=list)

    @property
    def servable(self) -> list[tuple[str, Path]]:
        blocked = {i.adapter for i in self.issues if i.blocking}
        return [(n, p) for n, p in self.adapters if n not in blocked]

    def command(self) -> str:
        """The `vllm serve` line for the adapters vLLM can load as they are."""
        servable = self.servable
        parts = ["vllm", "serve", shlex.quote(self.base), "--enable-lora"]
        if servable:
            parts += ["--lora-modules", *(shlex.quote(f"{n}={p}") for n, p in servable)]
        parts += ["--max-lora-rank", str(self.max_lora_rank), "--max-loras", str(max(1, len(servable)))]
        return " ".join(parts)

    def text(self) -> str:
        """The recipe as the CLI prints it: the command, then each issue with its fix."""
        lines = [self.command(), ""]
        if self.max_lora_rank != self.max_rank:
            lines.append(
                f"--max-lora-rank {self.max_lora_rank}: the largest adapter rank is {self.max_rank}, "
                f"rounded up to a rank vLLM accepts ({', '.join(map(str, VLLM_RANKS))})."
            )
        lines.append(
            f"--max-loras {max(1, len(self.servable))}: every adapter may be in the same batch; lower it "
            "to save GPU memory."
        )
        for issue in self.issues:
            tag = "cannot serve" if issue.blocking else "note"
            lines.append(f"{tag}: {issue.adapter}: {issue.reason}; fix: {issue.fix}.")
        lines.append(
            "The base and adapter paths are this machine's: copy the folders to the same paths on the GPU "
            "box (or name the base by its Hugging Face id). "
            "Clients pick an adapter as the request's `model`, "
            "as with LoRA Pilot's /v1 endpoint."
        )
        return "\n".join(lines)


def round_rank(rank: int) -> int:
    """The smallest value vLLM accepts for --max-lora-rank that holds `rank` (at most 512)."""
    return next(allowed for allowed in VLLM_RANKS if rank <= allowed)


def read_config(path: Path) -> dict:
    config_file = Path(path) / "adapter_config.json"
    if not config_file.is_file():
        raise UserError(
            "adapter",
            f"{path} has no adapter_config.json; give a folder saved by PEFT "
            "(`save_pretrained`) or a library adapter name",
        )
    try:
        return json.loads(config_file.read_text())
    except (OSError, ValueError) as exc:
        raise UserError("adapter", f"cannot read {config_file}: {exc}") from None


def lora_modules(path: Path) -> dict[str, tuple[int, ...]]:
    """Module name (last part) -> shape of an A matrix, from the adapter's safetensors keys.

    PEFT stores `...layers.0.self_attn.q_proj.lora_A.weight` and, for an embedding LoRA,
    `...embed_tokens.lora_embedding_A`; vLLM uses the file's keys, not target_modules, as the truth.
    """
    from safetensors import safe_open

    weights = Path(path) / "adapter_model.safetensors"
    if not weights.is_file():
        return {}
    found: dict[str, tuple[int, ...]] = {}
    with safe_open(str(weights), framework="pt") as f:
        for key in f.keys():  # noqa: SIM118 - safe_open is not a dict
            for marker in (".lora_A.", ".lora_embedding_A"):
                if marker in key:
                    module = key.split(marker)[0].rsplit(".", 1)[-1]
                    found.setdefault(module, tuple(f.get_slice(key).get_shape()))
    return found


def check_adapter(name: str, path: Path, config: dict, base_config: dict | None) -> list[Issue]:
    """vLLM's loading rules applied to one adapter (see the module docstring for the sources)."""
    issues = []
    if config.get("peft_type", "LORA") != "LORA":
        issues.append(
            Issue(name, True, f"it is a {config['peft_type']} adapter; vLLM serves LoRA adapters", MERGE_FIX)
        )
    if config.get("use_dora"):
        issues.append(Issue(name, True, "it uses DoRA, which vLLM does not yet support", MERGE_FIX))
    if config.get("modules_to_save"):
        issues.append(
            Issue(
                name,
                True,
                f"it trains whole modules ({', '.join(config['modules_to_save'])}; "
                "modules_to_save, e.g. embeddings or a head), and vLLM only loads adapters without them",
                MERGE_FIX,
            )
        )
    if config.get("bias", "none") != "none":
        issues.append(
            Issue(
                name,
                True,
                f"it trains biases (bias={config['bias']!r}), which vLLM does not load",
                "retrain with bias='none', or merge it into the base",
            )
        )
    modules = lora_modules(path)
    arch = ((base_config or {}).get("architectures") or [None])[0]
    allowed = VLLM_LORA_MODULES.get(arch)
    if allowed is None:
        issues.append(
            Issue(
                name,
                False,
                f"the base architecture {arch or 'unknown'} is not in LoRA Pilot's table "
                "of vLLM LoRA modules, so its target modules were not checked",
                "check vLLM's supported-models page (LoRA column) before deploying",
            )
        )
    else:
        unsupported = sorted(set(modules) - allowed)
        if unsupported:
            issues.append(
                Issue(
                    name,
                    True,
                    f"vLLM's {arch} takes LoRA on {', '.join(sorted(allowed))}, not on {', '.join(unsupported)}",
                    f"retrain targeting only supported modules, or {MERGE_FIX}",
                )
            )
    vocab = (base_config or {}).get("vocab_size")
    for module, shape in modules.items():
        if module in ("embed_tokens", "wte") and vocab and len(shape) == 2 and shape[1] != vocab:
            issues.append(
                Issue(
                    name,
                    True,
                    f"its embedding LoRA covers {shape[1]} tokens but the base has {vocab} "
                    "(the vocabulary was resized)",
                    MERGE_FIX,
                )
            )
    return issues


def _base_config(base: str) -> dict | None:
    """The base's config.json when it is a local folder, else what LoRA Pilot knows of it (the catalog, the
    embedded default, a cached hub config), with the architecture its model class has: one verdict, from the
    architecture the library resolved, not "unknown" for a catalog Llama."""
    config_file = Path(base).expanduser() / "config.json"
    try:
        if config_file.is_file():
            return json.loads(config_file.read_text())
    except (OSError, ValueError):
        return None
    try:
        config = introspect.load_config(base)[0].to_dict()
        config["architectures"] = config.get("architectures") or [type(introspect.meta_model(base)).__name__]
    except Exception:
        return None
    return config


def build(adapters: list[tuple[str, Path]], base: str | None = None, base_config: dict | None = None) -> Recipe:
    """The vLLM recipe for these (name, folder) adapters. They must share one base model: one
    `vllm serve` process serves one base. `base_config` (the base's config.json) enables the
    module and vocabulary checks; without it they are read from `base` when it is a local folder."""
    if not adapters:
        raise UserError("adapters", "name at least one adapter")
    configs = {name: read_config(path) for name, path in adapters}
    bases = {c.get("base_model_name_or_path") for c in configs.values()}
    if base is None:
        if len(bases) != 1 or None in bases:
            listing = "; ".join(f"{n}: {c.get('base_model_name_or_path') or 'unknown'}" for n, c in configs.items())
            raise UserError(
                "adapters",
                "one vLLM server serves one base model, and these adapters were "
                f"trained on different ones ({listing}); make one recipe per base",
            )
        base = bases.pop()
    base_config = base_config if base_config is not None else _base_config(base)
    issues = []
    ranks = {}
    for name, path in adapters:
        config = configs[name]
        if config.get("base_model_name_or_path") not in (None, base):
            issues.append(
                Issue(
                    name,
                    True,
                    f"it was trained on {config['base_model_name_or_path']}, not {base}",
                    "serve it from a recipe for its own base",
                )
            )
        # rank_pattern gives some modules their own rank; vLLM's limit holds for the largest.
        rank = max([int(config.get("r", 8)), *map(int, (config.get("rank_pattern") or {}).values())])
        if rank > VLLM_RANKS[-1]:
            issues.append(
                Issue(
                    name,
                    True,
                    f"its rank {rank} is above {VLLM_RANKS[-1]}, the largest --max-lora-rank vLLM accepts",
                    f"retrain with rank {VLLM_RANKS[-1]} or less, or {MERGE_FIX}",
                )
            )
        else:
            ranks[name] = rank
        issues += check_adapter(name, path, config, base_config)
    blocked = {i.adapter for i in issues if i.blocking}  # the command leaves these out; so does its rank
    top = max((r for n, r in ranks.items() if n not in blocked), default=VLLM_RANKS[0])
    return Recipe(
        base=base,
        adapters=[(n, Path(p)) for n, p in adapters],
        max_rank=top,
        max_lora_rank=round_rank(top),
        issues=issues,
    )
