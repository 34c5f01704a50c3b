"""The search space of a sweep: which plan fields vary, over which values, and why.

A non-expert never types a range: `default_space` builds one from the same rules the
recommender stands on, around the plan being searched (rank a step below and above, R5;
alpha/r of 1, 2 or 4, A1-A3; a learning-rate range by model size, L1; attention-only vs all
linear layers, T2/T3; dropout 0 to 0.1, D1-D3). `--space FIELD=...` replaces one field's
dimension (`parse`). Every dimension contains the plan's own value, so trial 0 (the plan
itself) is a point of the space and the best trial can only match or beat it.

A dimension suggests its value through an Optuna trial (duck-typed: this module imports no
Optuna), so the engine stays free of the search library.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from engine.errors import UserError, one_of
from engine.plan import TrainingPlan

RANKS = (4, 8, 16, 32, 64, 128, 256)  # the steps of R1-R4
ALPHA_RATIOS = (1, 2, 4)  # A2 (scale 1), A1 (the default, 2), A3 (aggressive, 4)
DROPOUTS = (0.0, 0.05, 0.1)  # D3's low end, D1, D2
TARGET_CHOICES = ("attention", "all-linear")  # T2, T3
# L1: adapters of small models take higher learning rates (measured on SmolLM2-135M, rules.py); full
# fine-tuning far lower ones. (params below, in billions) -> (low, high), searched on a log scale.
LR_RANGES = ((1, (2e-4, 3e-3)), (13, (5e-5, 1e-3)), (math.inf, (2e-5, 5e-4)))
FULL_LR_RANGE = (5e-6, 1e-4)
LOG_FIELDS = frozenset({"learning_rate"})  # a range of these is searched on a log scale

ALPHA_RATIO = "alpha_ratio"  # not a plan field: alpha = alpha_ratio x r, the way A1-A3 state alpha
# Fields a sweep may not vary: they change what is trained or what every trial is ranked on.
FIXED = {
    "name": "it is the run's label",
    "model": "every trial trains the same base",
    "dataset": "every trial trains on the same data",
    "data_format": "every trial reads the data the same way",
    "columns": "every trial reads the data the same way",
    "dataset_rows": "it describes the data, not the run",
    "eval_split": "it changes the held-out rows every trial is ranked on",
    "eval_generations": "it changes the held-out rows every trial is ranked on",
    "eval_seconds": "it changes the held-out rows every trial is ranked on",
    "gpu": "every trial runs on the same hardware",
    "budget_gb": "every trial runs on the same hardware",
    "num_processes": "every trial runs on the same hardware",
    "modules_to_save": "it is a list, not one setting",
}
SYNTAX = (
    "values separated by commas (r=4,8,16; targets take '|': targets=attention|all-linear) "
    "or a range lo..hi (learning_rate=1e-4..1e-2, searched on a log scale)"
)


@dataclass(frozen=True)
class Dim:
    """One searched field: a set of choices, or a numeric range."""

    field: str
    choices: tuple = ()
    low: float | None = None
    high: float | None = None
    integer: bool = False
    log: bool = False
    rule: str = ""  # the rule ids the default came from ("" when the user gave it)

    def suggest(self, trial) -> Any:
        if self.choices:
            return trial.suggest_categorical(self.field, list(self.choices))
        if self.integer:
            return trial.suggest_int(self.field, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.field, float(self.low), float(self.high), log=self.log)

    def including(self, value) -> Dim:
        """This dimension widened (or extended) so that it contains `value`."""
        if self.choices:
            return self if value in self.choices else _replace(self, choices=(*self.choices, value))
        return _replace(self, low=min(self.low, value), high=max(self.high, value))

    def describe(self) -> str:
        if self.choices:
            return ", ".join(_fmt(c) for c in self.choices)
        return f"{_fmt(self.low)} .. {_fmt(self.high)}" + (" (log)" if self.log else "")

    def to_json(self) -> dict:
        out: dict = {"field": self.field, "rule": self.rule}
        if self.choices:
            out["choices"] = list(self.choices)
        else:
            out.update(low=self.low, high=self.high, log=self.log, integer=self.integer)
        return out

    @classmethod
    def from_json(cls, data: dict) -> Dim:
        if "choices" in data:
            return cls(field=data["field"], choices=tuple(data["choices"]), rule=data.get("rule", ""))
        return cls(
            field=data["field"],
            low=data["low"],
            high=data["high"],
            log=data["log"],
            integer=data["integer"],
            rule=data.get("rule", ""),
        )


def _replace(dim: Dim, **changes) -> Dim:
    return replace(dim, **changes)


def _fmt(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


# --- the default space, from the rules -------------------------------------------------------
def _rank_steps(r: int) -> tuple[int, ...]:
    """R5: too low a rank underfits, too high overfits: the rank a step below and a step above."""
    below = max([x for x in RANKS if x < r], default=None)
    above = min([x for x in RANKS if x > r], default=None)
    return tuple(x for x in (below, r, above) if x is not None)


def lr_range(params_b: float, method: str) -> tuple[float, float]:
    if method == "full":
        return FULL_LR_RANGE
    return next(span for limit, span in LR_RANGES if params_b < limit)


def default_space(plan: TrainingPlan, params_b: float) -> dict[str, Dim]:
    low, high = lr_range(params_b, plan.method)
    space = {"learning_rate": Dim("learning_rate", low=low, high=high, log=True, rule="L1")}
    if plan.method != "full":  # the adapter's own settings
        space = {
            "r": Dim("r", choices=_rank_steps(plan.r), rule="R5"),
            ALPHA_RATIO: Dim(ALPHA_RATIO, choices=ALPHA_RATIOS, rule="A1-A3"),
            **space,
            "targets": Dim("targets", choices=TARGET_CHOICES, rule="T2/T3"),
            "dropout": Dim("dropout", choices=DROPOUTS, rule="D1-D3"),
        }
    return space


# --- the user's overrides (--space FIELD=...) ----------------------------------------------
def parse(specs: list[str] | dict[str, str] | None, plan: TrainingPlan) -> dict[str, Dim]:
    """`["r=4,8,16", "learning_rate=1e-4..1e-2"]` (or the same as a dict) -> {field: Dim}; one UserError
    naming the field for an unknown field, an empty or malformed space."""
    items = specs.items() if isinstance(specs, dict) else [_split(s) for s in specs or []]
    return {field: _dim(field, text, plan) for field, text in items}


def _split(spec: str) -> tuple[str, str]:
    if "=" not in spec:
        raise UserError("space", f"'{spec}' must look like FIELD=VALUES: {SYNTAX}")
    field, text = spec.split("=", 1)
    return field.strip(), text.strip()


def _dim(field: str, text: str, plan: TrainingPlan) -> Dim:
    searchable = [f for f in TrainingPlan.model_fields if f not in FIXED]
    if field == ALPHA_RATIO:
        kind = float
    elif field not in TrainingPlan.model_fields:
        raise UserError(
            "space",
            f"'{field}' is not a plan field; searchable: {', '.join(searchable)} "
            f"(and {ALPHA_RATIO}: alpha = {ALPHA_RATIO} x r)",
        )
    elif field in FIXED:
        raise UserError(field, f"cannot be searched: {FIXED[field]}")
    else:
        kind = _kind(field)
    if not text:
        raise UserError(field, f"empty space: give {SYNTAX}")
    if ".." in text:
        if kind not in (int, float):
            raise UserError(field, "a range needs a numeric field; give the choices separated by commas")
        lo, hi = (_value(field, part.strip(), kind, plan) for part in text.split("..", 1))
        if not lo < hi:
            raise UserError(field, f"range {text}: the low end must be below the high end")
        log = field in LOG_FIELDS
        if log and lo <= 0:
            raise UserError(field, f"range {text}: a log-scale range must start above 0")
        return Dim(field, low=lo, high=hi, integer=kind is int, log=log)
    sep = "|" if field == "targets" or "|" in text else ","
    values = [part.strip() for part in text.split(sep)]
    if any(not v for v in values):
        raise UserError(field, f"'{text}' has an empty value; give {SYNTAX}")
    return Dim(field, choices=tuple(dict.fromkeys(_value(field, v, kind, plan) for v in values)))


def _kind(field: str):
    annotation = TrainingPlan.model_fields[field].annotation
    for kind in (bool, int, float):
        if annotation in (kind, kind | None):
            return kind
    return str


def _value(field: str, text: str, kind, plan: TrainingPlan):
    """One value, typed as the field is and checked by the plan's own validation."""
    try:
        if kind is bool:
            value = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}[text.lower()]
        else:
            value = kind(text)
    except (KeyError, ValueError):
        raise UserError(field, f"'{text}' is not {_kind_name(kind)}") from None
    if field == ALPHA_RATIO:
        if not value > 0:
            raise UserError(field, f"'{text}' must be greater than 0 (alpha = {ALPHA_RATIO} x r)")
        return value
    plan.updated(**{field: value})  # the field's own checks, one line naming it
    return value


def _kind_name(kind) -> str:
    return {bool: "true or false", int: "a whole number", float: "a number"}.get(kind, "text")


# --- the space a sweep searches -------------------------------------------------------------
def build(plan: TrainingPlan, params_b: float, overrides: dict[str, Dim] | None = None) -> dict[str, Dim]:
    """The default space with the user's dimensions in place, each widened to contain the plan."""
    space = default_space(plan, params_b)
    for field, dim in (overrides or {}).items():
        if field == "alpha":
            space.pop(ALPHA_RATIO, None)  # alpha given outright: its ratio is no longer searched
        elif field == ALPHA_RATIO:
            space.pop("alpha", None)
        space[field] = dim
    if plan.method == "full" and any(f in space for f in ("r", "alpha", ALPHA_RATIO, "dropout", "targets")):
        raise UserError("space", "r, alpha, dropout and targets are adapter settings; method full has none")
    point = start_point(plan, space)
    return {field: dim.including(point[field]) for field, dim in space.items()}


def start_point(plan: TrainingPlan, space: dict[str, Dim]) -> dict[str, Any]:
    """The plan's own values for each dimension: trial 0."""
    point = {}
    for field in space:
        if field == ALPHA_RATIO:
            point[field] = _round(plan.alpha / plan.r)
        else:
            point[field] = getattr(plan, field)
    return point


def _round(x: float) -> float | int:
    x = round(x, 6)
    return int(x) if float(x).is_integer() else x


def apply(plan: TrainingPlan, params: dict[str, Any]) -> TrainingPlan:
    """The plan with a trial's values; alpha follows r through alpha_ratio."""
    changes = {k: v for k, v in params.items() if k != ALPHA_RATIO}
    if ALPHA_RATIO in params:
        changes["alpha"] = float(params[ALPHA_RATIO]) * changes.get("r", plan.r)
    return plan.updated(**changes)


def suggest(trial, space: dict[str, Dim]) -> dict[str, Any]:
    return {field: dim.suggest(trial) for field, dim in space.items()}


# --- reading the result ------------------------------------------------------------------------
LABELS = {
    "r": "the rank (r)",
    ALPHA_RATIO: "alpha / r",
    "learning_rate": "the learning rate",
    "targets": "the target modules",
    "dropout": "the dropout",
    "epochs": "the number of epochs",
}
METRIC_WORDS = {
    "loss": "held-out loss",
    "exact_match": "held-out exact match",
    "f1": "held-out F1",
    "rougeL": "held-out ROUGE-L",
}


def what_mattered(importances: dict[str, float], metric: str) -> str:
    """One sentence from the parameter importances (shares of the metric's variation, summing to 1)."""
    if not importances:
        return "Not enough finished trials yet to say which setting mattered."
    ranked = sorted(importances.items(), key=lambda kv: kv[1], reverse=True)
    total = sum(v for _, v in ranked) or 1.0
    shares = [(LABELS.get(k, k), v / total) for k, v in ranked]
    top, top_share = shares[0]
    text = f"{top[0].upper()}{top[1:]} mattered most ({top_share:.0%} of the variation in {METRIC_WORDS[metric]})"
    if len(shares) > 1:
        text += f", then {shares[1][0]} ({shares[1][1]:.0%})"
    little = [name for name, share in shares[2:] if share < 0.05]
    if little:
        text += f"; {one_of(little)} hardly mattered"
    return text + "."
