"""The memory-fitting ladder: the one order in which a plan gives up memory.

Cheapest in quality first. The recommender climbs down it until the estimate fits
(engine.advice.recommend), the review step names the rungs that make a misfit fit
(`fix`), and a run that ran out of memory is told to try the same rungs in the same
order (engine.train.failures). Each rung repeats until it no longer applies (the
micro-batch halves down to 1) before the next one is tried.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from engine.errors import UserError
from engine.estimate.combined import memory_for
from engine.estimate.combined import on_cpu as plan_on_cpu
from engine.model import introspect
from engine.plan import MIN_RANK, TrainingPlan, alpha_for

MIN_SEQ_LEN = 128  # shorter than this, most chat examples lose their answer


@dataclass(frozen=True)
class Step:
    changes: dict[str, Any]  # plan fields changed by this step
    rule: str  # the rules-table id it follows (see docs/rules.md)
    what: str  # "micro-batch 4 → 2, accumulation 4 → 8"
    why: str
    # fields that follow from the changed ones in the rules table (alpha from r, the
    # optimizer from the method...): the recommender re-decides them so the plan stays
    # consistent with its reasons
    redecide: frozenset[str] = frozenset()

    @property
    def knobs(self) -> str:
        """The plan fields to set, as a person types them: "batch_size to 2 and grad_accum to 8"."""

        def show(v):
            return str(v).lower() if isinstance(v, bool) else str(v)

        return " and ".join(f"{field} to {show(value)}" for field, value in self.changes.items())


@dataclass(frozen=True)
class Where:
    """What a rung needs to know besides the plan."""

    on_cpu: bool  # no 4-bit base or 8-bit optimizer on a CPU
    qv_targets: str = "attention"  # the smallest target set: q_proj,v_proj where the model has them

    @classmethod
    def of(cls, plan: TrainingPlan, on_cpu: bool | None = None) -> Where:
        """For `plan` as the estimator sees it (its GPU, or the CPU), unless `on_cpu` says otherwise."""

        if on_cpu is None:
            on_cpu = plan_on_cpu(plan)
        try:
            names = set(introspect.resolve(plan.model).target_names)
        except UserError:  # a model we cannot read: the presets still apply
            names = set()
        return cls(on_cpu=on_cpu, qv_targets=qv_targets(names))


def qv_targets(target_names) -> str:
    """q_proj,v_proj where the model has them; else its attention preset (e.g. fused qkv)."""
    return "q_proj,v_proj" if {"q_proj", "v_proj"} <= set(target_names) else "attention"


# --- the rungs ------------------------------------------------------------------------------
def _ckpt_on(plan: TrainingPlan, where: Where) -> Step | None:
    if plan.grad_ckpt:
        return None
    return Step(
        {"grad_ckpt": True},
        "G1",
        "gradient checkpointing on",
        "recomputes activations in the backward pass instead of keeping them (~30% slower)",
    )


def _halve_batch(plan: TrainingPlan, where: Where) -> Step | None:
    if plan.batch_size <= 1:
        return None
    b = plan.batch_size // 2
    a = plan.grad_accum * plan.batch_size // b  # keeps the effective batch
    return Step(
        {"batch_size": b, "grad_accum": a},
        "G1",
        f"micro-batch {plan.batch_size} → {b}, accumulation {plan.grad_accum} → {a}",
        f"fewer examples on the GPU at once; each update still sees {b * a}",
    )


def _full_to_lora(plan: TrainingPlan, where: Where) -> Step | None:
    if plan.method != "full":
        return None
    return Step(
        {"method": "lora"},
        "M2",
        "full fine-tuning → LoRA",
        "only small adapters train, so no gradients or optimizer states for the base",
        frozenset({"r", "alpha", "dropout", "targets", "optimizer", "learning_rate"}),
    )


def _to_qlora(plan: TrainingPlan, where: Where) -> Step | None:
    if plan.method != "lora" or where.on_cpu:
        return None
    return Step(
        {"method": "qlora"},
        "M3",
        "4-bit base (LoRA → QLoRA)",
        "the frozen base is stored in 4-bit NF4, about a quarter of its 16-bit size; costs a little quality",
        frozenset({"optimizer", "learning_rate"}),
    )


def _paged_optimizer(plan: TrainingPlan, where: Where) -> Step | None:
    if plan.optimizer != "adamw_torch" or where.on_cpu:
        return None
    return Step(
        {"optimizer": "paged_adamw_8bit"},
        "M3",
        "optimizer adamw_torch → paged_adamw_8bit",
        "8-bit optimizer states that spill to CPU memory on spikes instead of crashing",
    )


def _fewer_targets(plan: TrainingPlan, where: Where) -> Step | None:
    if plan.method == "full":
        return None
    order = list(dict.fromkeys(["all-linear", "attention", where.qv_targets]))
    current = plan.targets
    if current == order[-1]:
        return None
    nxt = order[order.index(current) + 1] if current in order else order[-1]
    rule = "T4" if nxt == where.qv_targets else "T2"
    return Step(
        {"targets": nxt},
        rule,
        f"target modules {current} → {nxt}",
        "fewer adapted layers mean fewer adapter weights, gradients and optimizer states",
    )


def _lower_r(plan: TrainingPlan, where: Where) -> Step | None:
    if plan.method == "full" or plan.r <= MIN_RANK:
        return None
    r = max(MIN_RANK, plan.r // 2)
    return Step(
        {"r": r, "alpha": alpha_for(plan, r)},
        "R5",
        f"r {plan.r} → {r}",
        "a smaller adapter (alpha keeps alpha / r); memory drops only slightly, capacity drops more",
        frozenset({"alpha", "learning_rate"}),
    )  # the recommender's A1 gives the same alpha, with its reason


def _shorter_sequences(plan: TrainingPlan, where: Where) -> Step | None:
    if plan.seq_len <= MIN_SEQ_LEN:
        return None
    s = max(MIN_SEQ_LEN, plan.seq_len // 2)
    return Step(
        {"seq_len": s},
        "G1",
        f"sequence length {plan.seq_len} → {s}",
        "activations shrink with it, but longer examples are cut",
    )


@dataclass(frozen=True)
class Rung:
    name: str
    step: Callable[[TrainingPlan, Where], Step | None]
    # False: the rung changes what is learned (cut examples), so the recommender only names it
    # in its advice and never applies it on its own
    automatic: bool = True


LADDER: list[Rung] = [
    Rung("gradient checkpointing", _ckpt_on),
    Rung("smaller micro-batch", _halve_batch),
    Rung("adapters instead of full", _full_to_lora),
    Rung("4-bit base", _to_qlora),
    Rung("8-bit optimizer", _paged_optimizer),
    Rung("fewer target modules", _fewer_targets),
    Rung("lower r", _lower_r),
    Rung("shorter sequences", _shorter_sequences, automatic=False),
]


def first_steps(plan: TrainingPlan, where: Where) -> list[Step]:
    """The first step of every rung that applies to `plan`, in ladder order."""
    return [step for rung in LADDER if (step := rung.step(plan, where)) is not None]


def fits(memory) -> bool:
    """A memory estimate fits when it is within its budget, or when there is no budget to fit."""
    return memory is not None and memory.fits is not False


def _memory(plan: TrainingPlan):
    """The plan's memory estimate; None when the estimator refuses the plan (it cannot fit then)."""
    try:
        return memory_for(plan)
    except UserError:
        return None


Follow = Callable[[Step, TrainingPlan], TrainingPlan]


def walk(
    plan: TrainingPlan,
    where: Where,
    automatic_only: bool = False,
    max_repeats: int | None = None,
    follow: Follow | None = None,
) -> Iterator[tuple[Step, TrainingPlan, Any]]:
    """Down the ladder from `plan` until its memory estimate fits: each rung repeats until it no longer
    applies (or `max_repeats` times), then the next. Yields (step, the plan after it, its memory).

    `automatic_only` skips the rungs that change what is learned; `follow(step, plan)` may re-decide
    the fields that follow from a step's changes (the recommender's rules table)."""
    current = plan
    if fits(_memory(current)):
        return
    for rung in LADDER:
        if automatic_only and not rung.automatic:
            continue
        repeats = 0
        while max_repeats is None or repeats < max_repeats:
            step = rung.step(current, where)
            if step is None:
                break
            repeats += 1
            current = current.updated(**step.changes)
            if follow is not None:
                current = follow(step, current)
            memory = _memory(current)
            yield step, current, memory
            if fits(memory):
                return


def fix(plan: TrainingPlan, where: Where | None = None, max_repeats: int = 4):
    """(steps, memory) of the first single step that makes `plan` fit, else of the shortest run
    down the ladder that does (each rung repeated up to `max_repeats` times); None if nothing fits."""
    where = where or Where.of(plan)
    for step in first_steps(plan, where):  # one knob
        memory = _memory(plan.updated(**step.changes))
        if memory is not None and memory.fits:
            return [step], memory
    taken = []
    for step, _, memory in walk(plan, where, max_repeats=max_repeats):  # rungs in turn, keeping each
        taken.append(step)
        if memory is not None and memory.fits:
            return taken, memory
    return None
