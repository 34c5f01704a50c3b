"""A PEFT LoRA adapter as a llama.cpp LoRA-adapter GGUF (`llama-cli --lora`, Ollama `ADAPTER`).

The format, as llama.cpp's convert_lora_to_gguf.py writes it and llama-adapter.cpp reads it:
`general.type = adapter`, `adapter.type = lora`, `adapter.lora.alpha`, and for every adapted
weight `W` of the base two tensors named after W's llama.cpp name, `<name>.lora_a` (PEFT's
A, r x in) and `<name>.lora_b` (PEFT's B, out x r). llama.cpp adds
`scale * alpha / r * B·A` with r read from the tensors' shape.

PEFT's scaling is alpha/r per module, or alpha/sqrt(r) with rsLoRA, and may differ per
module (rank_pattern, alpha_pattern). When the adapter has one alpha and one rank and no
rsLoRA, alpha is written as it is; otherwise each module's own scaling is folded into its
B and alpha is written as 0, which llama.cpp reads as a scale of 1. Q/K rows of B are
permuted for the llama architecture as the base's Q/K are (engine.gguf.arch).

What llama.cpp's adapter format cannot carry is refused before anything is written: DoRA
(a per-column magnitude), trained biases and whole modules (`modules_to_save`, e.g. an
embedding or LM head); the fix is the merged GGUF, which carries any of them.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np

from engine.errors import UserError
from engine.gguf import arch as archs
from engine.gguf.writer import atomic_path, finish

_LORA = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.[^.]+)?\.weight$")


def write_adapter(adapter_dir, base_model_dir, out_file) -> Path:
    """Write the adapter in `adapter_dir` (a PEFT folder) for the base in `base_model_dir` (its HF folder)."""
    import gguf
    from safetensors import safe_open

    adapter_dir, out_file = Path(adapter_dir), Path(out_file)
    config = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    arch = archs.load(base_model_dir)
    _refuse_unsupported(config)
    pairs: dict[str, dict] = {}
    with safe_open(str(adapter_dir / "adapter_model.safetensors"), framework="pt") as f:
        for key in f.keys():  # noqa: SIM118 - safe_open has keys(), it is not iterable
            match = _LORA.match(key)
            if match is None:
                raise UserError(
                    "adapter",
                    f"{key} in {adapter_dir.name} is not a LoRA A/B matrix (a trained bias "
                    "or module); llama.cpp's adapter format cannot carry it: export the merged GGUF",
                )
            pairs.setdefault(match["module"], {})[match["ab"]] = f.get_tensor(key).float().numpy()
    uniform = _uniform_alpha(config)
    with atomic_path(out_file) as tmp:
        writer = gguf.GGUFWriter(str(tmp), arch.name)
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(uniform) if uniform is not None else 0.0)
        for module, ab in sorted(pairs.items()):
            name = arch.gguf_name(module + ".weight")
            if name is None or "A" not in ab or "B" not in ab:
                raise UserError(
                    "adapter",
                    f"module {module} has no llama.cpp tensor for the {arch.name} architecture "
                    f"(or misses its A or B matrix); GGUF export covers {archs.FAMILIES}",
                )
            a, b = ab["A"], ab["B"]
            if uniform is None:
                b = b * _scaling(config, module, a.shape[0])
            writer.add_tensor(name + ".lora_a", np.ascontiguousarray(a, dtype=np.float32))
            writer.add_tensor(name + ".lora_b", np.ascontiguousarray(arch.permute_rows(name, b), dtype=np.float32))
        finish(writer)
    return out_file


def _refuse_unsupported(config: dict) -> None:
    if config.get("peft_type", "LORA") != "LORA":
        raise UserError(
            "adapter",
            f"a {config.get('peft_type')} adapter has no llama.cpp adapter format; export the merged GGUF instead",
        )
    if config.get("use_dora"):
        raise UserError(
            "adapter",
            "a DoRA adapter has no llama.cpp adapter format (it rescales whole columns); "
            "export the merged GGUF instead",
        )
    if config.get("modules_to_save"):
        raise UserError(
            "adapter",
            f"the adapter trains whole modules ({', '.join(config['modules_to_save'])}), "
            "which llama.cpp's adapter format cannot carry; export the merged GGUF instead",
        )


def _uniform_alpha(config: dict) -> float | None:
    """The alpha to write when one alpha/r covers every module as PEFT computes it, else None."""
    if config.get("use_rslora") or config.get("rank_pattern") or config.get("alpha_pattern"):
        return None
    return float(config["lora_alpha"])


def _scaling(config: dict, module: str, rank: int) -> float:
    """PEFT's scaling of one module: its alpha over its r (or sqrt(r) with rsLoRA)."""
    alpha = float(config["lora_alpha"])
    for pattern, value in (config.get("alpha_pattern") or {}).items():
        if re.search(rf"(^|\.){pattern}$", module):
            alpha = float(value)
    return alpha / (math.sqrt(rank) if config.get("use_rslora") else rank)
