"""The plan in PEFT's and TRL's vocabulary: the one place that says which keyword means what.

`lora_kwargs` feeds `peft.LoraConfig`, `sft_kwargs` and `precision_kwargs` feed
`trl.SFTConfig`. The trainer (engine.train.run) builds its configs from them and the
exported script (engine.train.script) writes the very same dicts out as code, so what a
user runs outside the app is what the app ran. Values are plain Python (no torch), so
they print as literals.
"""

from __future__ import annotations

from pathlib import Path

from engine.model import introspect
from engine.plan import TrainingPlan
from engine.train import tracking


def resolve_targets(plan: TrainingPlan) -> str | list[str]:
    """The module names the adapters go on: a preset resolved for this model, or "all-linear"."""
    if plan.targets == "all-linear":
        return "all-linear"  # PEFT expands it itself (every Linear except the output head)

    return introspect.resolve_targets(introspect.resolve(plan.model), plan.targets)


def lora_kwargs(plan: TrainingPlan) -> dict:
    """Keyword arguments of `peft.LoraConfig` for a lora/qlora plan."""
    alpha = int(plan.alpha) if float(plan.alpha).is_integer() else plan.alpha
    return dict(
        r=plan.r,
        lora_alpha=alpha,
        lora_dropout=plan.dropout,
        target_modules=resolve_targets(plan),
        bias=plan.bias,
        use_dora=plan.use_dora,
        use_rslora=plan.use_rslora,
        modules_to_save=list(plan.modules_to_save) or None,
        task_type="CAUSAL_LM",
    )


# The plan's optimizer → the trainer's `optim`. "adamw_torch" runs as torch's fused AdamW: the same update in
# one kernel over all tensors instead of a dozen ops per tensor (420 adapter tensors on the embedded model:
# 16 → 3.4 ms a step on 2 cores). It is `TrainingArguments`' own default since torch 2.8, so a plain TRL
# script runs it too (transformers 5 training_args.py, `default_optim`).
TRAINER_OPTIM = {"adamw_torch": "adamw_torch_fused"}


def sft_kwargs(plan: TrainingPlan, out_dir: str | Path, has_eval: bool) -> dict:
    """Keyword arguments of `trl.SFTConfig`, all but the device and precision ones."""
    return dict(
        output_dir=str(Path(out_dir) / "checkpoints"),
        max_length=plan.seq_len,
        per_device_train_batch_size=plan.batch_size,
        per_device_eval_batch_size=plan.batch_size,
        gradient_accumulation_steps=plan.grad_accum,
        num_train_epochs=plan.epochs,
        max_steps=plan.max_steps or -1,
        learning_rate=plan.learning_rate,
        lr_scheduler_type=plan.lr_scheduler,
        warmup_steps=plan.warmup_ratio,  # below 1 = a share of the steps (transformers 5)
        activation_checkpointing=plan.grad_ckpt,  # TRL turns it on by default; the plan decides
        activation_checkpointing_kwargs={"use_reentrant": False} if plan.grad_ckpt else None,
        optim=TRAINER_OPTIM.get(plan.optimizer, plan.optimizer),
        seed=plan.seed,
        logging_steps=plan.logging_steps,
        save_strategy="steps",
        save_steps=plan.save_steps,
        save_total_limit=2,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=plan.save_steps if has_eval else None,
        report_to=plan.report_to,  # transformers' own callback logs the metrics (engine.train.tracking)
        **tracking.trainer_settings(plan),
        disable_tqdm=True,
        dataloader_num_workers=0,
        packing=False,
    )


def precision_kwargs(dtype: str, device: str) -> dict:
    """`SFTConfig` flags for a resolved precision ('fp32' | 'bf16' | 'fp16') on 'cpu' or 'cuda'."""
    # TRL defaults bf16 on, even on the CPU; the plan decides.
    return dict(bf16=dtype == "bf16", fp16=dtype == "fp16", use_cpu=device == "cpu")
