"""`estimate` and `recommend`: what a plan costs, and what settings to use, from the shell.

Flags are the plan's field names (engine.plan.add_plan_flags), so the same words
work for `train` and in plan YAML files. `--json` prints stable keys for scripts.
"""

from __future__ import annotations

import argparse
import json
import shlex

from engine.advice.checks import plan_warnings
from engine.advice.recommend import recommend
from engine.advice.rules import FIELDS
from engine.data.dataset import check_data
from engine.errors import UserError
from engine.estimate.combined import estimate
from engine.plan import add_plan_flags, plan_from_args
from engine.units import human_bytes, human_seconds
from ui.cli import commands

# The plan fields `estimate` takes as flags.
ESTIMATE_FIELDS = [
    "model",
    "method",
    "r",
    "alpha",
    "dropout",
    "targets",
    "bias",
    "use_dora",
    "use_rslora",
    "modules_to_save",
    "batch_size",
    "grad_accum",
    "seq_len",
    "grad_ckpt",
    "optimizer",
    "dtype",
    "attention",
    "gpu",
    "budget_gb",
    "dataset",
    "data_format",
    "dataset_rows",
    "epochs",
    "max_steps",
]
# The plan fields `recommend` takes (difficulty is validated by the recommender, so that a
# wrong value gets one `error: difficulty: ...` line rather than argparse's usage dump).
RECOMMEND_FIELDS = ["model", "difficulty", "gpu", "budget_gb", "dataset_rows"]


def register(sub) -> None:
    p = sub.add_parser(
        "estimate", help=commands.help_for("estimate"), description="Estimate what a plan costs before running it."
    )
    add_plan_flags(p, ESTIMATE_FIELDS)
    p.add_argument("--json", action="store_true", help="Print a JSON object with stable keys.")
    p.set_defaults(handler=run_estimate)

    p = sub.add_parser(
        "recommend",
        help=commands.help_for("recommend"),
        description="Recommend LoRA/QLoRA settings for a model, a task difficulty and a budget.",
    )
    add_plan_flags(p, RECOMMEND_FIELDS)
    p.add_argument("--json", action="store_true", help="Print a JSON object (plan, reasons, adjustments, ...).")
    p.set_defaults(handler=run_recommend)


# --- estimate -------------------------------------------------------------------------


def run_estimate(ns: argparse.Namespace) -> int:
    _check_exclusive(ns)
    plan = plan_from_args(ns)

    est = estimate(plan, **_data_lengths(plan))
    warnings = plan_warnings(plan)  # e.g. a rank above the width of the layers it adapts (R6)
    if ns.json:
        print(json.dumps({**est.to_json(), "warnings": [{"rule": r, "text": t} for r, t in warnings]}, indent=2))
    else:
        print(format_estimate(plan, est) + "".join(f"\n\n[{r}] {t}" for r, t in warnings))
    return 0


def _data_lengths(plan) -> dict:
    """With --dataset, the data's token lengths and label share: the same inputs the job's stored
    estimate (jobs.dispatcher.validate) and the wizard's review use, so all three show one figure."""
    if not plan.dataset:
        return {}
    report = check_data(
        plan.dataset,
        model=plan.model,
        seq_len=plan.seq_len,
        data_format=plan.data_format,
        columns=plan.columns,
        objective=plan.objective,
    )
    report.raise_if_bad()
    return {"lengths": report.token_lengths, "label_share": report.label_share}


def format_estimate(plan, est) -> str:
    lines = [f"Model {plan.model} · {plan.method} · targets {plan.targets} · r {plan.r} · alpha {plan.alpha:g}"]
    if plan.method == "full":
        lines.append(f"Trainable parameters  {est.trainable_params:,} (all of {est.total_params:,})")
    else:
        lines.append(
            f"Trainable parameters  {est.trainable_params:,} of {est.total_params:,} ({est.trainable_percent:.4f}%)"
        )
        lines.append(f"Adapter file          {human_bytes(est.adapter_bytes)}")
    lines += ["", "Memory (peak, per device)"]
    mem = est.memory
    width = max([len(n) for n in mem.terms] + [22])
    for name, n in mem.terms.items():
        lines.append(f"  {name:<{width}} {human_bytes(n):>10}")
    lines.append(f"  {'-' * (width + 11)}")
    lines.append(f"  {'allocated':<{width}} {human_bytes(mem.allocated_bytes):>10}")
    lines.append(f"  {'reserved (allocator)':<{width}} {human_bytes(mem.reserved_bytes):>10}")
    lines.append(f"  {'device total':<{width}} {human_bytes(mem.device_bytes):>10}")
    if mem.expected is not None:  # the figure above is the worst case, every batch padded to seq_len
        lines.append(
            f"  with your data (batches padded to {mem.expected.padded_length} tokens): "
            f"{human_bytes(mem.expected.allocated_bytes)} allocated, {human_bytes(mem.expected.device_bytes)} "
            "on the device; the figures above are the worst case, every batch padded to seq_len"
        )
    if mem.verdict:
        lines.append(f"  {mem.verdict}")
    t = est.time
    if t is not None:
        line = f"Time on {t.device}: ~{t.tokens_per_second:,.0f} tokens/s"
        if t.seconds is not None and t.total_tokens:
            line += f", {human_seconds(t.seconds)} for {t.total_tokens:,} tokens ({t.steps:,} steps)"
        else:  # no row count or step limit: the speed is known, the total is not
            line += "; total time unknown (give --dataset-rows N or --max-steps N)"
        lines += ["", line]
        if t.total_seconds:
            lines.append(
                f"Whole job, every phase: ~{human_seconds(t.total_seconds)} ("
                + ", ".join(f"{k} {human_seconds(v)}" for k, v in t.phases.items() if v)
                + ")"
            )
    for a in list(mem.assumptions) + (list(t.assumptions) if t is not None else []):
        lines.append(f"  · {a}")
    return "\n".join(lines)


# --- recommend ------------------------------------------------------------------------


def run_recommend(ns: argparse.Namespace) -> int:
    _check_exclusive(ns)
    if ns.model is None:
        raise UserError(
            "model",
            "required: a catalog name (e.g. llama-3.1-8b), a hub id, a local folder, a .gguf file or 'default'",
        )
    if ns.difficulty is None:
        raise UserError("difficulty", "required: simple, balanced, hard or very_hard")
    if ns.gpu is None and ns.budget_gb is None:
        raise UserError("gpu", "required: --gpu NAME (a catalog GPU or cpu) or --budget-gb X")
    plan_from_args(ns)  # the same one-line checks as every plan field (blank, NaN, negative)
    rec = recommend(ns.model, ns.difficulty, gpu=ns.gpu, budget_gb=ns.budget_gb, dataset_rows=ns.dataset_rows)
    if ns.json:
        print(json.dumps(rec.to_json(), indent=2))
    else:
        print(format_recommendation(rec))
    return 0


def format_recommendation(rec) -> str:
    plan = rec.plan
    lines = [f"Recommended settings for {plan.model} ({plan.difficulty})", ""]
    width = max(len(f) for f in FIELDS)
    for field in FIELDS:
        reason = rec.reasons[field]
        lines.append(f"  {field:<{width}}  {_value(getattr(plan, field)):<16} [{reason.rule}] {reason.text}")
    if rec.adjustments:
        lines += ["", "Fitted to the budget, in this order:"]
        lines += [f"  {i}. {a}" for i, a in enumerate(rec.adjustments, 1)]
    if rec.warnings:
        lines += ["", "Worth knowing:"]
        lines += [f"  [{w.rule}] {w.text}" for w in rec.warnings]
    est = rec.estimate
    lines += [
        "",
        "Estimate of this plan:",
        f"  trainable {est.trainable_params:,} of {est.total_params:,} ({est.trainable_percent:.4f}%)",
        f"  memory {human_bytes(est.memory.device_bytes)} on the device"
        + (f" — {est.memory.verdict}" if est.memory.verdict else ""),
    ]
    if est.time is not None:
        lines.append(
            f"  time ~{human_seconds(est.time.seconds)} on {est.time.device} "
            f"({est.time.tokens_per_second:,.0f} tokens/s)"
        )
    if rec.advice:
        lines += ["", "Advice: " + rec.advice]
    lines += ["", "Run it (add --dataset FILE): " + shlex.join(["python", "app.py", "train", *plan.to_cli_args()])]
    return "\n".join(lines)


# --- helpers --------------------------------------------------------------------------


def _check_exclusive(ns) -> None:
    if getattr(ns, "gpu", None) is not None and getattr(ns, "budget_gb", None) is not None:
        raise UserError("budget_gb", "give either --gpu NAME or --budget-gb X, not both")


def _value(v) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)
