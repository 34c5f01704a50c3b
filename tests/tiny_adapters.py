"""Tiny LoRA adapters made in a test without training: PEFT with random (non-zero) B matrices.

Training (tests/test_train.py) proves the trainer makes adapters; here we only need
adapters that differ from each other and from the base, in well under a second.
"""

from __future__ import annotations

from pathlib import Path


def make_tiny_adapter(
    base_dir,
    out,
    r: int = 4,
    seed: int = 1,
    targets=("q_proj", "v_proj"),
    alpha: int | None = None,
    scale: float = 1.0,
) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    config = LoraConfig(
        r=r,
        lora_alpha=alpha or 2 * r,
        target_modules=list(targets),
        lora_dropout=0.0,
        init_lora_weights=False,
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(base, config)
    if scale != 1.0:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.mul_(scale)
    out = Path(out)
    model.save_pretrained(str(out))
    return out
