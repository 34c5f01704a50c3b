"""A tiny base with two LoRA adapters whose outputs differ, saved to disk, for serving tests.

`init_lora_weights=False` leaves lora_B random (PEFT's default init makes it zero, which would
make every adapter answer exactly like the base and the tests unable to tell them apart).
"""

from __future__ import annotations

from pathlib import Path

from tests.tiny import make_tiny_model

TARGETS = ["q_proj", "v_proj", "o_proj", "up_proj", "down_proj"]


def make_adapter(base_dir: Path, out_dir: Path, seed: int, rank: int = 4) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=TARGETS, init_lora_weights=False,
                        task_type="CAUSAL_LM")
    get_peft_model(model, config).save_pretrained(out_dir)
    return Path(out_dir)


def make_base_and_adapters(root: Path, names=("alpha", "beta")) -> tuple[Path, dict[str, Path]]:
    base = make_tiny_model(root / "base")
    adapters = {name: make_adapter(base, root / name, seed=i + 1) for i, name in enumerate(names)}
    return base, adapters
