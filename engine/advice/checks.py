"""Checks of a plan as given (overrides included), phrased as rules from the table.

The recommender picks sound values; a user may type any. `plan_warnings` says which of
the typed values work against the user (rules.PLAN_CHECKS), each with its rule id.
"""

from __future__ import annotations

from engine.advice import rules
from engine.errors import UserError
from engine.model import introspect
from engine.plan import TrainingPlan


def narrowest_target(plan: TrainingPlan) -> tuple[int, str] | None:
    """(min(in, out), short name) of the narrowest layer the plan's targets adapt, or None."""

    info = introspect.resolve(plan.model)
    try:
        targets = introspect.resolve_targets(info, plan.targets)
    except UserError:
        return None  # the estimate reports bad targets itself
    adapted = [
        m
        for m in info.linear_modules
        if not m.pseudo
        and m.name != info.output_name
        and any(m.type == t or introspect.matches(m.name, t) for t in targets)
    ]
    if not adapted:
        return None
    layer = min(adapted, key=lambda m: min(m.in_features, m.out_features))
    return min(layer.in_features, layer.out_features), layer.type


def plan_warnings(plan: TrainingPlan) -> list[tuple[str, str]]:
    """Every PLAN_CHECKS row that applies to this plan: (rule id, text)."""

    info = introspect.resolve(plan.model)
    narrow = narrowest_target(plan)
    ctx = rules.RuleContext(
        params_b=info.total_params / 1e9,
        context=info.max_position,
        target_names=list(info.target_names),
        difficulty=plan.difficulty or "balanced",
        rows=plan.dataset_rows,
        device="cpu" if plan.gpu == "cpu" else "gpu",
        budget_gb=plan.budget_gb,
        plan=plan.model_dump(),
        target_width=narrow[0] if narrow else None,
        narrowest=narrow[1] if narrow else "",
    )
    return [(r.id, r.reason(ctx, None)) for r in rules.PLAN_CHECKS if r.when(ctx)]
