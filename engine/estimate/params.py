"""Exact trainable-parameter counts for a LoRA configuration, from the module tree.

The rules mirror PEFT 0.21's LoRA tuner so that the figures equal
`PeftModel.get_nb_trainable_parameters()`:
- each targeted Linear/Conv1D gets A (r x in) and B (out x r); DoRA adds a magnitude
  vector of `out` values;
- bias='all' trains every parameter whose name contains 'bias'; 'lora_only' trains the
  biases of the adapted layers;
- modules_to_save are copied whole and the copy trains (PEFT's total counts both copies).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

from engine.errors import UserError, one_of
from engine.model.introspect import ModelInfo, matches, meta_model, resolve_targets, targeted_modules

# PEFT saves adapter weights in fp32 (it upcasts half-precision adapters by default).
ADAPTER_SAVE_BYTES = 4
# safetensors: 8-byte length + a JSON header with ~90 bytes per tensor.
SAFETENSORS_HEADER_PER_TENSOR = 90


@dataclass
class ParamCount:
    trainable: int
    total: int  # PEFT's "all params": base + adapter + modules_to_save copies
    base_total: int
    adapter_bytes: int
    by_module_type: dict[str, int] = field(default_factory=dict)
    by_layer: list[int] = field(default_factory=list)
    adapted: list = field(default_factory=list)  # LinearModule list that carry LoRA
    lora_params: int = 0
    extra_trainable: int = 0  # biases and modules_to_save copies

    @property
    def percent(self) -> float:
        return 100.0 * self.trainable / self.total if self.total else 0.0


@lru_cache(maxsize=32)
def _bias_params(spec: str) -> tuple[tuple[str, int], ...]:
    """(name, numel) of every parameter PEFT's bias='all' would train."""
    model = meta_model(spec)
    return tuple((n, p.numel()) for n, p in model.named_parameters() if "bias" in n)


@lru_cache(maxsize=64)
def _module_params(spec: str, name: str) -> tuple[tuple[str, int], ...]:
    """Full names and sizes of modules matched by a modules_to_save entry."""
    model = meta_model(spec)
    found = []
    for mod_name, mod in model.named_modules():
        if mod_name and matches(mod_name, name):
            found.append((mod_name, sum(p.numel() for p in mod.parameters())))
    # PEFT wraps the outermost match; drop matches nested inside another match
    return tuple(f for f in found if not any(f[0].startswith(g[0] + ".") for g in found))


def _dtype_bytes(dtype: str) -> int:
    return {"float32": 4, "float16": 2, "bfloat16": 2, "fp32": 4, "fp16": 2, "bf16": 2}.get(dtype, 4)


def count(
    info: ModelInfo,
    r: int,
    targets: str,
    bias: str = "none",
    use_dora: bool = False,
    modules_to_save: list[str] | tuple[str, ...] = (),
    save_dtype: str | None = None,
    method: str = "lora",
) -> ParamCount:
    """Trainable parameters, breakdown and adapter size for one LoRA setting (or full FT)."""
    base_bytes = _dtype_bytes(save_dtype or info.dtype)
    if method == "full":
        n = info.total_params
        return ParamCount(
            trainable=n,
            total=n,
            base_total=n,
            adapter_bytes=n * base_bytes,
            by_module_type={"all": n},
            by_layer=[],
            adapted=[],
        )

    target_list = resolve_targets(info, targets)
    adapted = [m for m in targeted_modules(info, target_list)]
    by_type: dict[str, int] = {}
    by_layer = [0] * info.layers
    lora = 0
    tensors = 0
    for m in adapted:
        if use_dora and m.pseudo:
            raise UserError(
                "use_dora",
                f"DoRA does not work on the fused MoE expert tensors of {info.spec}; "
                "turn DoRA off or target attention only",
            )
        n = r * m.experts * (m.in_features + m.out_features) + (m.out_features if use_dora else 0)
        lora += n
        tensors += 3 if use_dora else 2
        by_type[m.type] = by_type.get(m.type, 0) + n
        if m.layer is not None and m.layer < info.layers:
            by_layer[m.layer] += n

    extra = 0
    extra_bytes = 0
    if bias == "all":
        for _name, n in _bias_params(info.spec):
            extra += n
            tensors += 1
            by_type["bias"] = by_type.get("bias", 0) + n
    elif bias == "lora_only":
        for m in adapted:
            if m.bias:
                extra += m.out_features
                tensors += 1
                by_type["bias"] = by_type.get("bias", 0) + m.out_features
                if m.layer is not None and m.layer < info.layers:
                    by_layer[m.layer] += m.out_features
    extra_bytes += extra * base_bytes

    copies = 0
    for name in modules_to_save or ():
        found = _module_params(info.spec, name)
        if not found:
            raise UserError(
                "modules_to_save",
                f"no module named '{name}' in {info.spec}; e.g. {one_of(['lm_head', 'embed_tokens'])}",
            )
        for full, n in found:
            copies += n
            tensors += 1
            by_type["saved:" + full.rsplit(".", 1)[-1]] = by_type.get("saved:" + full.rsplit(".", 1)[-1], 0) + n
    # a trained copy replaces any bias counted above inside it; small enough to ignore here
    extra_bytes += copies * base_bytes

    trainable = lora + extra + copies
    adapter_bytes = lora * ADAPTER_SAVE_BYTES + extra_bytes + 8 + SAFETENSORS_HEADER_PER_TENSOR * tensors
    return ParamCount(
        trainable=trainable,
        total=info.total_params + lora + copies,
        base_total=info.total_params,
        adapter_bytes=adapter_bytes,
        by_module_type=by_type,
        by_layer=by_layer,
        adapted=adapted,
        lora_params=lora,
        extra_trainable=extra + copies,
    )
