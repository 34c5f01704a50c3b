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


def trainer_kwargs(plan: TrainingPlan, out_dir: Path, device: str, precision: str, has_eval: bool) -> dict:
    """Every `DPOConfig` / `ORPOConfig` keyword the job runs with (what engine.train.run.sft_kwargs is for SFT);
    the job's resolved.json keeps them in its `sft` entry."""
    return {
        **config_kwargs(plan, out_dir, has_eval),
        **config.precision_kwargs(precision, device),
        **stopping.trainer_args(plan, has_eval),
    }


# --- the exported script -------------------------------------------------------------------------
# engine.train.script writes the SFT script; for a dpo/orpo plan it puts SCRIPT_PAIRS before its
# split (pairs read as TRL's prompt/chosen/rejected, each side rendered like an SFT answer) and
# `script_trainer` names the pair trainer in its config and trainer lines.
SCRIPT_PAIRS = '''
_answers_layout, _answer_example = layout, to_example


def layout(rows):
    """Preference pairs (chosen/rejected) first: they also have a prompt."""
    if any(COLUMNS.get("chosen", "chosen") in row or COLUMNS.get("rejected", "rejected") in row for row in rows[:20]):
        return "preference"
    return _answers_layout(rows)


def side(value):
    value = json.loads(value) if isinstance(value, str) and value.lstrip().startswith("[") else value
    return value if isinstance(value, list) else [{"role": "assistant", "content": str(value)}]


def to_example(row, fmt):
    if field(row, "chosen") is None:
        return _answer_example(row, fmt)
    chosen, rejected = side(field(row, "chosen")), side(field(row, "rejected"))
    prompt = field(row, "prompt")
    prompt = chosen[:-1] if prompt is None else (
        (prompt if isinstance(prompt, list) else [{"role": "user", "content": str(prompt)}]) + chosen[:-1])
    system = field(row, "system")
    if isinstance(system, str) and system.strip() and not any(m["role"] == "system" for m in prompt):
        prompt = [{"role": "system", "content": system}] + prompt
    if not AS_STRINGS:
        return {"prompt": prompt, "chosen": chosen[-1:], "rejected": rejected[-1:]}
    good = _answer_example({"messages": prompt + chosen[-1:]}, "messages")
    bad = _answer_example({"messages": prompt + rejected[-1:]}, "messages")
    return {"prompt": good["prompt"], "chosen": good["completion"], "rejected": bad["completion"]}

'''


def script_trainer(objective: str, part: str) -> str:
    """A part of the SFT script's trainer lines with the pair trainer's names (and its import before the config)."""
    name = objective.upper()
    if "SFTConfig(" in part:
        module = "trl" if objective == "dpo" else "trl.experimental.orpo"
        why = (
            "# DPO's reference is the base with the adapter switched off: no ref_model, no second copy\n"
            if objective == "dpo"
            else "# ORPO needs no reference model\n"
        )
        part = f"from {module} import {name}Config, {name}Trainer  # noqa: E402\n{why}" + part
    return part.replace("SFTConfig(", f"{name}Config(").replace("SFTTrainer(", f"{name}Trainer(")
