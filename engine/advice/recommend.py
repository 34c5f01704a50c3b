"""Recommended settings for a model, a task difficulty, a dataset size and a budget.

Two stages. First the rules table (`engine.advice.rules.RULES`) picks every setting and
its reason. Then the plan is *fitted*: while the memory estimate exceeds the budget,
step down the one memory ladder (`engine.advice.fitting.LADDER`), recording each change
with the memory before and after. When even the smallest setup does not fit, `advice` says
which budget (and which catalog GPU) would.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict

from engine.advice import fitting, rules
from engine.advice.rules import DEMO_FIELDS, FIELDS, RuleContext
from engine.data import demo
from engine.data.ref import DatasetRef
from engine.errors import UserError, one_of
from engine.estimate.combined import estimate, memory_for
from engine.model.catalog import find_gpu, list_gpus
from engine.model.introspect import resolve
from engine.plan import DIFFICULTIES, TrainingPlan
from engine.units import GIB, human_bytes  # the catalogs and the estimator count GB as GiB (what nvidia-smi shows)


class Reason(BaseModel):
    rule: str  # rule id (docs/rules.md)
    text: str  # one line, the product's own words


class Recommendation(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True)

    plan: TrainingPlan
    reasons: dict[str, Reason]
    adjustments: list[str]
    estimate: Any  # engine.estimate.Estimate (typed loosely: estimate imports lazily)
    fits: bool
    advice: str | None = None
    warnings: list[Reason] = []

    def to_json(self) -> dict:
        return {
            "plan": self.plan.model_dump(),
            "reasons": {k: v.model_dump() for k, v in self.reasons.items()},
            "adjustments": list(self.adjustments),
            "estimate": self.estimate.to_json(),
            "fits": self.fits,
            "advice": self.advice,
            "warnings": [w.model_dump() for w in self.warnings],
        }


# --- stage 1: the table ---------------------------------------------------------------


def decide(ctx: RuleContext, only: set[str] | None = None) -> dict[str, tuple[Any, Reason]]:
    return {f: (v, Reason(rule=rule, text=text)) for f, (v, rule, text) in rules.choose(ctx, only).items()}


def notes(ctx: RuleContext) -> list[Reason]:
    return [Reason(rule=rule, text=text) for rule, text in rules.applicable_notes(ctx)]


# --- stage 2: fitting -----------------------------------------------------------------


def fit(plan: TrainingPlan, ctx: RuleContext, reasons: dict[str, Reason]) -> tuple[TrainingPlan, list[str], bool]:
    """Step down the ladder (engine.advice.fitting.walk) until the estimate fits the budget; the fields
    that follow from a step's changes are decided again by the rules table, with their reasons."""
    adjustments: list[str] = []
    budget = f"{ctx.budget_gb:g} GiB"
    where = fitting.Where(on_cpu=ctx.device == "cpu", qv_targets=ctx.qv_targets)

    def follow(step: fitting.Step, new: TrainingPlan) -> TrainingPlan:
        ctx.plan.update(step.changes)
        for field in step.changes:
            reasons[field] = Reason(rule=step.rule, text=f"Changed to fit {budget}: {step.why}.")
        if step.redecide:
            redone = decide(ctx, only=set(step.redecide))
            new = new.updated(**{f: v for f, (v, _) in redone.items()})
            reasons.update({f: r for f, (_, r) in redone.items()})
        return new

    mem = memory_for(plan)
    for step, new_plan, new_mem in fitting.walk(plan, where, automatic_only=True, follow=follow):
        if new_mem is None:  # the estimator refused the stepped plan: name its own error
            new_mem = memory_for(new_plan)
        adjustments.append(
            f"{step.what} ({step.rule}): {step.why} — memory {human_bytes(mem.device_bytes)} → "
            f"{human_bytes(new_mem.device_bytes)} (budget {budget})"
        )
        plan, mem = new_plan, new_mem
    return plan, adjustments, fitting.fits(mem)


def advice_for(plan: TrainingPlan, ctx: RuleContext) -> str:
    """Nothing fits: say how much memory the smallest setup needs and which catalog GPU has it."""

    need = memory_for(plan).device_bytes
    setup = f"{plan.method}, targets {plan.targets}, r {plan.r}, micro-batch {plan.batch_size}, {plan.seq_len} tokens"
    text = f"Nothing fits in {ctx.budget_gb:g} GiB: even the smallest setup ({setup}) needs about {human_bytes(need)}."
    for gpu in sorted(list_gpus(), key=lambda g: g.memory_gb or 0):
        if gpu.memory_gb and fitting.fits(memory_for(plan.updated(gpu=gpu.name, budget_gb=None))):
            return (
                text + f" A budget of {math.ceil(need / GIB)} GiB or more would do; the smallest GPU in the "
                f"catalog that fits is the {gpu.name} ({gpu.memory_gb:g} GiB); recommend with --gpu "
                f"'{gpu.name}' gives settings made for it. Shorter sequences (seq_len) or a smaller "
                "model also help."
            )
    return (
        text + " No single GPU in the catalog has that much: use several GPUs, shorter sequences "
        "(seq_len) or a smaller model."
    )


# --- the entry point ------------------------------------------------------------------


def recommend(
    model: str,
    difficulty: str | None,
    gpu: str | None = None,
    budget_gb: float | None = None,
    dataset_rows: int | None = None,
    base: TrainingPlan | None = None,
) -> Recommendation:
    difficulty = difficulty or "balanced"
    if difficulty not in DIFFICULTIES:
        raise UserError("difficulty", f"unknown difficulty '{difficulty}'; expected {one_of(DIFFICULTIES)}")
    if budget_gb is not None and budget_gb <= 0:
        raise UserError("budget_gb", "must be greater than 0 GB")
    if dataset_rows is not None and dataset_rows <= 0:
        raise UserError("dataset_rows", "must be a whole number of 1 or more")
    if gpu is None and budget_gb is None:
        raise UserError("gpu", "give a GPU from the catalog, 'cpu', or a memory budget (budget_gb)")
    device = find_gpu(gpu) if gpu is not None else None
    on_cpu = device is not None and device.is_cpu
    if on_cpu:
        budget = None
    elif budget_gb is not None:
        budget = budget_gb
    else:
        budget = device.memory_gb if device is not None else None

    info = resolve(model)
    ctx = RuleContext(
        params_b=info.total_params / 1e9,
        context=info.max_position,
        target_names=list(info.target_names),
        difficulty=difficulty,
        rows=dataset_rows,
        device="cpu" if on_cpu else "gpu",
        budget_gb=budget,
        seq_len_hint=base.seq_len if base is not None and base.seq_len != TrainingPlan().seq_len else None,
        objective=base.objective if base is not None else "sft",
    )
    ref = DatasetRef.parse(base.dataset) if base is not None and base.dataset else None
    if ref is not None and ref.is_demo and ref.skill in demo.SKILLS:  # its recipe is row X1, not a later override
        recipe = demo.default_plan(ref.skill)
        ctx.demo_recipe = {f: getattr(recipe, f) for f in DEMO_FIELDS}
        ctx.demo_steps = recipe.max_steps
    chosen = decide(ctx)
    reasons = {f: chosen[f][1] for f in FIELDS}
    plan = (base or TrainingPlan()).updated(
        model=model,
        difficulty=difficulty,
        gpu=device.name if device else None,
        budget_gb=budget_gb,
        dataset_rows=dataset_rows,
        **{f: chosen[f][0] for f in FIELDS},
    )

    adjustments: list[str] = []
    fits = True
    if not on_cpu:
        plan, adjustments, fits = fit(plan, ctx, reasons)

    result = estimate(plan)
    ctx.seconds = result.time.seconds if result.time is not None else None
    advice = None if fits else advice_for(plan, ctx)
    return Recommendation(
        plan=plan,
        reasons=reasons,
        adjustments=adjustments,
        estimate=result,
        fits=fits,
        advice=advice,
        warnings=notes(ctx),
    )
