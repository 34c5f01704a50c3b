"""Mixed-adapter LoRA in two matmuls per layer, whatever the number of adapters in the batch.

PEFT 0.21's mixed batch (`LoraLayer._mixed_batch_forward`) loops over the adapters a batch names
and, in every adapted layer, gathers each adapter's rows, runs its A and B on them and scatters the
result back: per decoded token that is (adapters x layers) small sub-batches, and with 4 adapters
on the embedded model it ate most of what sharing the base's matmuls saves.

Here each layer keeps its adapters' A matrices stacked (R = the sum of their ranks, a few dozen
rows) and their B matrices side by side, and a row mask that holds each row's scaling on its own
adapter's slice and 0 elsewhere (the base's rows are all 0):

    result += ((x @ A_stack.T) * mask) @ B_stack.T

Every row pays for all R columns, but R is small next to the layer's width, so two dense matmuls
beat a Python loop of gathers (S-LoRA and Punica get the same effect on GPUs with gathered kernels;
on a CPU the dense form is the fast one). The stacks are cached per layer and rebuilt when the set
of adapters or their weights change, the mask when the batch's rows change (a finished row leaves).

Only plain LoRA layers in eval mode take this path; variants (DoRA, aLoRA, ...) and dropout in
training keep PEFT's own loop. `tests/test_batch.py` checks it against PEFT's forward and
`bench/bench_serving.py` measures it.
"""

from __future__ import annotations

import types

BASE = "__base__"  # PEFT's name for "no adapter" in a mixed batch

_ATTR = "_lorapilot_gathered"  # per-layer cache: (adapters, weights, stacks) and (rows, mask)


def install(model) -> int:
    """Route `model`'s LoRA Linear layers' mixed batches through the stacked form; layers changed.

    Idempotent and cheap (a walk over the modules), so callers run it before each batch: layers
    created by a later `load_adapter` are covered too.
    """
    from peft.tuners.lora.layer import Linear

    count = 0
    for module in model.modules():
        if isinstance(module, Linear) and not hasattr(module, _ATTR):
            setattr(module, _ATTR, {})
            # the point: PEFT's method replaced on this layer
            module._mixed_batch_forward = types.MethodType(_stacked_forward, module)
            count += 1
    return count


def _stacked_forward(self, x, *args, adapter_names: list[str], **kwargs):
    from peft.tuners.lora.layer import VARIANT_KWARG_KEYS, LoraLayer

    names = tuple(adapter_names)
    present = sorted({n for n in names if n != BASE and n in self.lora_A})
    if self.training or any(n in self.lora_variant for n in present):
        return LoraLayer._mixed_batch_forward(self, x, *args, adapter_names=adapter_names, **kwargs)
    for key in VARIANT_KWARG_KEYS:
        kwargs.pop(key, None)
    result = self.base_layer(x, *args, **kwargs)
    if not present:
        return result
    a_stack, b_stack, mask = _stacks(self, present, names)
    hidden = self._cast_input_dtype(x, a_stack.dtype) @ a_stack.T
    hidden = hidden * mask.view(mask.shape[0], *([1] * (x.dim() - 2)), mask.shape[1])
    # added in the adapters' precision, then rounded once, as PEFT's single-adapter forward does: a row answers
    # as it would alone (PEFT's mixed batch rounds the update to a bf16 base's dtype before adding)
    return (result + hidden @ b_stack.T).to(result.dtype)


def _stacks(layer, present: list[str], names: tuple[str, ...]):
    import torch

    cache = getattr(layer, _ATTR)
    weights = [(layer.lora_A[n].weight, layer.lora_B[n].weight) for n in present]
    held = cache.get("stacks")
    if (
        held is None
        or held[0] != present
        or any(a is not ha or b is not hb for (a, b), (ha, hb) in zip(weights, held[1]))
    ):
        a_stack = torch.cat([a for a, _ in weights], dim=0)  # R x in
        b_stack = torch.cat([b for _, b in weights], dim=1)  # out x R
        held = cache["stacks"] = (present, weights, a_stack, b_stack)
        cache.pop("mask", None)
    rows = cache.get("mask")
    if rows is None or rows[0] != names:
        mask = torch.zeros(len(names), held[2].shape[0], dtype=held[2].dtype, device=held[2].device)
        start = 0
        for name, (a, _) in zip(present, weights):
            picked = [i for i, n in enumerate(names) if n == name]
            mask[picked, start : start + a.shape[0]] = layer.scaling[name]
            start += a.shape[0]
        rows = cache["mask"] = (names, mask)
    return held[2], held[3], rows[1]
