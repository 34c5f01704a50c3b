"""The review step's logic: plan fields → form controls, recommendation, live estimate.

Controls are generated from `TrainingPlan`'s fields (type → widget, description →
help text), so the form cannot drift from the plan. The handlers here are plain
functions of values, called by the Gradio wiring in ui/web/wizard.py and by the tests.
"""

from __future__ import annotations

import functools
import types
import typing
from typing import Any

import gradio as gr

from engine import units
from engine.advice import fitting
from engine.advice.recommend import recommend
from engine.advice.rules import RANGES
from engine.data.demo import default_plan
from engine.data.ref import DatasetRef
from engine.errors import UserError
from engine.estimate.combined import estimate, headline, memory_for
from engine.plan import TARGET_PRESETS, TrainingPlan
from ui.web import charts, html

# The recommended settings, shown with their reasons, in this order.
MAIN_FIELDS = [
    "method",
    "r",
    "alpha",
    "dropout",
    "targets",
    "batch_size",
    "grad_accum",
    "seq_len",
    "grad_ckpt",
    "learning_rate",
    "epochs",
]
# Everything else a user may override, in the Advanced panel.
ADVANCED_FIELDS = [
    "max_steps",
    "optimizer",
    "dtype",
    "lr_scheduler",
    "warmup_ratio",
    "eval_split",
    "bias",
    "use_dora",
    "use_rslora",
    "attention",
    "seed",
    "logging_steps",
    "save_steps",
    "num_processes",
    "report_to",
]
FORM_FIELDS = MAIN_FIELDS + ADVANCED_FIELDS
SWEEP_SEQ = [128, 256, 512, 1024, 2048, 4096, 8192]
LABELS = {
    "r": "Rank (r)",
    "alpha": "Alpha",
    "grad_ckpt": "Gradient checkpointing",
    "report_to": "Send metrics to (tracker)",
    "lr_scheduler": "LR schedule",
    "grad_accum": "Gradient accumulation",
    "seq_len": "Sequence length",
    "use_dora": "DoRA",
    "use_rslora": "rsLoRA",
    "eval_split": "Eval share",
    "max_steps": "Max steps",
    "dtype": "Precision",
}


def _effective_batch(plan: TrainingPlan) -> str:
    parts = f"{plan.batch_size} x {plan.grad_accum}"
    if plan.num_processes != 1:
        parts += f" x {plan.num_processes} processes"
    return f"{plan.effective_batch} ({parts})"


def label(field: str) -> str:
    return LABELS.get(field, field.replace("_", " ").capitalize())


def field_kind(field: str) -> tuple[str, tuple]:
    """('choice', options) | ('bool', ()) | ('int', ()) | ('float', ()) | ('text', ())."""
    ann = TrainingPlan.model_fields[field].annotation
    args = (
        [a for a in typing.get_args(ann) if a is not type(None)]
        if isinstance(ann, types.UnionType) or typing.get_origin(ann) is typing.Union
        else [ann]
    )
    base = args[0] if args else ann
    if typing.get_origin(base) is typing.Literal:
        return "choice", typing.get_args(base)
    if base is bool:
        return "bool", ()
    if base is int:
        return "int", ()
    if base is float:
        return "float", ()
    return "text", ()


def make_control(field: str, value: Any = None, render: bool = True):
    """The Gradio control for one plan field; label and help come from the plan. `render=False`: one outside
    the page, for its preprocessing (ui/web/live_numbers.py)."""

    kind, options = field_kind(field)
    common = {"label": label(field), "info": TrainingPlan.help(field), "elem_id": f"f-{field}", "render": render}
    default = TrainingPlan.model_fields[field].default if value is None else value
    if field == "targets":
        return gr.Dropdown(
            choices=list(TARGET_PRESETS) + ["q_proj,v_proj", "q_proj,k_proj,v_proj,o_proj"],
            value=default,
            allow_custom_value=True,
            **common,
        )
    if kind == "choice":
        return gr.Dropdown(choices=list(options), value=default, **common)
    if kind == "bool":
        return gr.Checkbox(value=bool(default), **common)
    # No minimum/maximum: Gradio would refuse out-of-range values with a bare "Error"; the plan's
    # own validation answers instead, with one line naming the field (ui/web/refusals.py).
    if kind == "int":
        return gr.Number(value=default, precision=0, **common)
    if kind == "float":
        return gr.Number(value=default, step=_step(field), **common)
    return gr.Textbox(value=default, **common)


def _step(field: str) -> float:
    return {
        "learning_rate": 1e-5,
        "dropout": 0.01,
        "warmup_ratio": 0.01,
        "eval_split": 0.05,
        "epochs": 0.5,
        "alpha": 1,
    }.get(field, 0.1)


# Plan fields whose empty box means "none" (no step limit); any other empty number box is refused.
EMPTY_MEANS_NONE = frozenset({"max_steps"})


def not_a_number(field: str, kept: Any = None) -> UserError:
    """The refusal for an empty box or text that is not a number: the same one line as an out-of-range value,
    naming what is accepted and, when known, the value the plan keeps."""
    rng = RANGES.get(field)
    expected = "a whole number" if field_kind(field)[0] == "int" else "a number"
    if rng is not None:
        expected += f" from {rng.low:g} to {rng.high:g} (rule {rng.rule})"
    keeps = f"; the plan keeps {_show(kept)}" if kept not in (None, "") else ""
    return UserError(field, f"is empty or not a number; expected {expected}{keeps}")


def plan_from_values(
    context: dict, values: typing.Mapping[str, Any] | list, kept: typing.Mapping | None = None
) -> TrainingPlan:
    """A plan from the earlier steps' context and the form's values by field name (a list is taken in
    FORM_FIELDS order). `kept`: the last valid values, which a refusal names."""
    if not isinstance(values, typing.Mapping):
        values = dict(zip(FORM_FIELDS, values))
    data = {k: v for k, v in context.items() if k in TrainingPlan.model_fields}
    for field in FORM_FIELDS:
        if field not in values:
            continue
        value, (kind, _) = values[field], field_kind(field)
        if value in ("", None):
            if field in EMPTY_MEANS_NONE:
                data[field] = None
            elif kind in ("int", "float"):
                raise not_a_number(field, (kept or {}).get(field))
            continue
        if kind == "int":
            if float(value) != int(float(value)):
                raise UserError(field, f"got {value}; expected a whole number")
            value = int(float(value))
        elif kind == "float":
            value = float(value)
        data[field] = value
    return TrainingPlan.build(**{k: v for k, v in data.items() if v is not None})


def values_of(plan: TrainingPlan) -> list:
    return [getattr(plan, f) for f in FORM_FIELDS]


def form_of(plan: TrainingPlan) -> dict[str, Any]:
    """The form's values by field name."""
    return {f: getattr(plan, f) for f in FORM_FIELDS}


def recommend_for(context: dict):
    """(Recommendation, plan) for the earlier steps' answers; raises UserError.

    The rules table decides every setting (a demo skill's measured recipe is its row X1), so the
    reasons, warnings and estimate shown all describe the plan that will run."""

    answers = {k: v for k, v in context.items() if k in TrainingPlan.model_fields and v is not None}
    base = TrainingPlan.build(**answers)
    ref = DatasetRef.parse(base.dataset or "")
    if ref.is_demo:
        # A demo skill's plan carries its run length and schedule (max_steps, warm-up, logging).

        base = default_plan(ref.skill).updated(**answers)
    rec = recommend(
        model=base.model,
        difficulty=base.difficulty or "balanced",
        gpu=base.gpu,
        budget_gb=base.budget_gb,
        dataset_rows=context.get("dataset_rows"),
        base=base,
    )
    return rec, rec.plan


def reasons_html(rec) -> str:
    """Each recommended setting with its value, its reason and the rule it came from."""
    rows = []
    for field in MAIN_FIELDS:
        if field == "epochs" and rec.plan.max_steps:  # a step limit overrides epochs: show what runs
            reason = rec.reasons.get("max_steps")
            rows.append(
                (
                    label("max_steps"),
                    str(rec.plan.max_steps),
                    reason.text
                    if reason
                    else f"Stops after {rec.plan.max_steps} updates (kept from the plan; it overrides epochs).",
                    f'<span class="lp-rule">{reason.rule}</span>' if reason else "",
                )
            )
            continue
        reason = rec.reasons.get(field)
        value = getattr(rec.plan, field)
        rule = f'<span class="lp-rule">{reason.rule}</span>' if reason else ""
        rows.append((label(field), _show(value), reason.text if reason else "default", rule))
    out = html.table(["Setting", "Value", "Why", "Rule"], rows, cls="lp-table lp-reasons", raw_cols=[3])
    if rec.adjustments:
        out += html.notice(" → ".join(rec.adjustments), "info", title="Adjusted to fit:")
    if rec.advice:
        out += html.notice(rec.advice, "warn", title="Nothing fits:")
    return out


def _show(value) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def sweep_view(plan: TrainingPlan):
    """Memory against sequence length for full / LoRA / QLoRA, with this plan marked."""
    budget = None
    if plan.gpu or plan.budget_gb:
        budget = memory_for(plan).budget_bytes
    series = _sweep(plan.model_dump_json(exclude={"seq_len", "name", "method", "use_dora", "use_rslora"}))
    return charts.memory_sweep(series, budget, plan.seq_len, caption=qlora_crossing(series))


def qlora_crossing(series: dict[str, list[tuple[int, float]]]) -> str | None:
    """Why QLoRA's curve can pass full fine-tuning's, said where it does (else None)."""
    full = dict(series.get("full", []))
    past = [s for s, q in series.get("qlora", []) if s in full and q > full[s]]
    if not past:
        return None
    return (
        f"QLoRA passes full fine-tuning from {past[0]:,} tokens: PEFT's k-bit preparation keeps the residual<br>"
        "stream in fp32, and at these lengths activations outweigh what 4-bit weights save (the estimate<br>"
        "is checked against measured peaks, bench/bench_memory.py)."
    )


@functools.lru_cache(maxsize=64)
def _sweep(plan_json: str) -> dict[str, list[tuple[int, float]]]:
    """Cached on everything but the swept knobs: moving seq_len or the method costs nothing."""

    plan = TrainingPlan.model_validate_json(plan_json)
    series = {}
    for method in ("full", "lora", "qlora"):
        variant = plan.updated(method=method)
        series[method] = [(s, memory_for(variant.updated(seq_len=s)).device_bytes) for s in SWEEP_SEQ]
    return series


def fixing_knob(plan: TrainingPlan) -> str | None:
    """The first single change that makes the plan fit, else the shortest run down the memory
    ladder (engine.advice.fitting) that does, as a sentence."""

    found = fitting.fix(plan)
    if found is None:
        return None
    steps, mem = found
    return (
        f"To fit: {'; '.join(s.what for s in steps)} → {units.human_bytes(mem.device_bytes)} of "
        f"{units.human_bytes(mem.budget_bytes)}."
    )


@functools.lru_cache(maxsize=32)
def _estimate(plan_json: str, lengths: tuple[int, ...] | None, label_share: float = 1.0):
    """One estimate per plan and data: the numbers and the charts of a change are two requests, and the
    launch summary shows the same one. The job computes it again at submit from the same function and
    the same data (jobs.dispatcher.validate) and stores it; its page and `show` read that one."""

    return estimate(TrainingPlan.model_validate_json(plan_json), lengths=lengths, label_share=label_share)


def estimate_of(plan: TrainingPlan, lengths=None, label_share: float | None = None):
    return _estimate(
        plan.model_dump_json(), tuple(lengths) if lengths else None, 1.0 if label_share is None else float(label_share)
    )


def headline_tiles(head: dict, seq_len: int | None) -> dict[str, str]:
    """The estimate's figures by name, as the review, the launch summary and the job page all show them
    (engine.estimate.combined.headline): the memory (with the data's lengths when known), the worst case
    beside it under its own name, and the time of the whole job, every phase."""
    tiles = {}
    device = f" on {head['device']}" if head.get("device") else ""
    tiles["estimated time" + device] = units.human_seconds(head.get("seconds"))
    if head["memory_bytes"] != head["worst_case_bytes"]:
        tiles["memory with your data"] = units.human_bytes(head["memory_bytes"])
        tiles[f"worst case: padded to {seq_len}"] = units.human_bytes(head["worst_case_bytes"])
    else:
        tiles["memory"] = units.human_bytes(head["memory_bytes"])
    return tiles


def phases_text(head: dict) -> str:
    """'loading model 4 s · scoring base 1 min 06 s · …': what the time tile adds up."""
    return " · ".join(f"{k} {units.human_seconds(v)}" for k, v in (head.get("phases") or {}).items() if v)


def numbers_view(plan: TrainingPlan, lengths: tuple[int, ...] | None = None, label_share: float | None = None) -> dict:
    """The verdict and the figures as tiles: what a change shows first, before any chart.

    `lengths`: the checked data's token lengths (and `label_share`, the share the loss is on); the memory
    then has an expected figure (batches padded to their expected longest row) beside the worst case the
    fit is judged on.
    """
    est = estimate_of(plan, lengths, label_share)
    mem = est.memory
    verdict_kind = "info" if mem.fits is None else "ok" if mem.fits else "error"
    verdict = html.notice(mem.verdict, verdict_kind)
    if mem.fits is False:
        knob = fixing_knob(plan)
        verdict += html.notice(
            knob
            or "Even every memory-saving step (checkpointing, batch 1, QLoRA, fewer targets, "
            "lower r, short sequences) does not fit: pick a GPU with more memory or a smaller "
            "model.",
            "warn",
        )
    t = est.time
    head = headline(est)
    # Numbers read better as tiles than as a chart, and cost the browser no Plotly redraw.
    tiles = {
        **headline_tiles(head, plan.seq_len),
        "adapter file": units.human_bytes(est.adapter_bytes) if plan.method != "full" else "full model",
        "tokens to train": units.human_count(t.total_tokens) if t else "—",
        "trainable": f"{units.human_count(est.trainable_params)} ({est.trainable_percent:.2f}%)",
        "effective batch": _effective_batch(plan),
    }
    phases = phases_text(head)
    summary = html.stat_tiles(tiles) + (
        f'<div class="lp-hint" id="eta-phases">Time by phase: {html.escape(phases)}</div>' if phases else ""
    )
    return {"estimate": est, "verdict": verdict, "summary": summary}


def charts_view(plan: TrainingPlan, lengths: tuple[int, ...] | None = None, label_share: float | None = None) -> dict:
    """The memory breakdown (worst case, as the fit is judged) and the trainable parameters."""
    est = estimate_of(plan, lengths, label_share)
    mem = est.memory
    return {
        "memory": charts.memory_breakdown(mem.terms, mem.budget_bytes, mem.fits, mem.reserved_bytes, mem.device_bytes),
        "params": charts.params_by_module(est.by_module_type, est.total_params),
    }


def estimate_view(
    plan: TrainingPlan, lengths: tuple[int, ...] | None = None, label_share: float | None = None
) -> dict:
    """Everything the review step shows for one plan (numbers and charts)."""
    return {**numbers_view(plan, lengths, label_share), **charts_view(plan, lengths, label_share)}
