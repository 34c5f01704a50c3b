"""Preference objectives: the plan's `dpo` or `orpo` as a TRL trainer and its config.

engine.train.run builds every job's trainer; for a preference objective it asks here for
the class and the config, and the rest of the run (callbacks, checkpoints, cancel, resume,
early stopping, evaluation, artifacts) is the SFT path unchanged.

- DPO is TRL's `DPOTrainer` (trl/trainer/dpo_trainer.py). With a PEFT model and no
  `ref_model`, TRL keeps no second model: the reference log-probs come from the same model
  with the adapter switched off (`use_adapter(..., adapter_name=None)` in its `_compute_loss`),
  so the reference is the frozen base and costs a forward pass, not a copy of the weights.
- ORPO is no longer in TRL's main namespace in 1.x: it lives in `trl.experimental.orpo`
  (`ORPOTrainer`, `ORPOConfig`), which TRL marks as unstable. ORPO needs no reference at all:
  its loss is the chosen answer's NLL plus `beta` times an odds-ratio term.

Both trainers switch dropout off in the model (`disable_dropout=True`, TRL's default), so
the policy and the reference score a pair alike; the plan's `dropout` has no effect on them.
The keyword dict is plain values, so the exported script writes it out as code.
"""

from __future__ import annotations

import os
from pathlib import Path

from engine.plan import TrainingPlan
from engine.train import config, stopping

# importing trl.experimental warns on every import; the module docstring says why we use it
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")


def trainer_class(objective: str):
    """TRL's trainer class for a preference objective."""
    if objective == "dpo":
        from trl import DPOTrainer

        return DPOTrainer
    if objective == "orpo":
        from trl.experimental.orpo import ORPOTrainer

        return ORPOTrainer
    raise ValueError(f"not a preference objective: {objective!r}")


def config_class(objective: str):
    if objective == "dpo":
        from trl import DPOConfig

        return DPOConfig
    from trl.experimental.orpo import ORPOConfig

    return ORPOConfig


def config_kwargs(plan: TrainingPlan, out_dir: str | Path, has_eval: bool) -> dict:
    """Keyword arguments of `DPOConfig` / `ORPOConfig`, all but the device and precision ones:
    the SFT schedule (batch, steps, saving, evaluation) with the preference strength `beta`."""
    kw = config.sft_kwargs(plan, out_dir, has_eval)
    kw.pop("packing")  # SFT only
    kw["beta"] = plan.beta
    if plan.objective == "orpo":
        # ORPO's tokenizer step reads the old names: no separate cap on the answer beyond max_length
        kw["max_completion_length"] = None
    return kw


def trainer_config(plan: TrainingPlan, out_dir: Path, device: str, dtype_name: str, has_eval: bool, **overrides):
    """The trainer's config object for `plan` (what engine.train.run.sft_config is for SFT)."""
    cls = config_class(plan.objective)
    return cls(**{**config_kwargs(plan, out_dir, has_eval), **config.precision_kwargs(dtype_name, device),
                  **stopping.trainer_args(plan, has_eval), **overrides})


def trainer_for(plan: TrainingPlan, out_dir: Path, device: str, dtype_name: str, has_eval: bool):
    """(trainer class, config) for a dpo/orpo plan; `ref_model` is left out on purpose (see above)."""
    return trainer_class(plan.objective), trainer_config(plan, out_dir, device, dtype_name, has_eval)


# --- the exported script -------------------------------------------------------------------------
def script_lines(plan: TrainingPlan, out_dir: str, has_eval: bool) -> list[str]:
    """The trainer part of the standalone script for a dpo/orpo plan (engine.train.script writes the rest):
    the same class and keyword dict the job used. Expects `model`, `tokenizer`, `train_ds`, `eval_ds`,
    `peft_config` and `precision` to be defined above it."""
    objective = plan.objective
    module = "trl" if objective == "dpo" else "trl.experimental.orpo"
    name = objective.upper()
    kwargs = config_kwargs(plan, out_dir, has_eval)
    return [
        f"from {module} import {name}Config, {name}Trainer",
        "",
        f"# {name}: pairs of a chosen and a rejected answer"
        + (" ; the reference is the base with the adapter switched off (no ref_model)" if objective == "dpo" else ""),
        f"args = {name}Config(**{kwargs!r}, **precision)",
        f"trainer = {name}Trainer(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,",
        "                         processing_class=tokenizer, peft_config=peft_config)",
        "trainer.train()",
    ]
