"""Headless parity: `train`, `jobs`, `show`, `cancel`, `resume`, `export`, `demo`.

Everything the wizard does with jobs, a script can do: the same plan (YAML file or flags),
the same store, stable JSON. Without --wait a command returns at once and the job runs on
in its own process; with --wait it prints progress and exits 0 only if the job succeeded.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from engine.data import demo
from engine.errors import UserError
from engine.estimate.combined import headline
from engine.plan import TrainingPlan, add_plan_flags, plan_from_args
from engine.train import script
from engine.units import human_bytes, human_seconds
from jobs import dispatcher, export, gguf_export, outcome, stall, store, views
from jobs.tables import JobStatus
from ui.cli import commands, waiting
from ui.cli.runs import show_lines


def register(sub) -> None:
    p = sub.add_parser("train", help=commands.help_for("train"))
    p.add_argument("plan_file", nargs="?", metavar="PLAN.yaml", help="a plan saved by the wizard or `estimate`")
    add_plan_flags(p)
    p.add_argument(
        "--anyway",
        action="store_true",
        help="queue it even when the estimate says it needs more memory than the device has",
    )
    _wait_flag(p)
    p.set_defaults(handler=cmd_train)

    p = sub.add_parser("jobs", help=commands.help_for("jobs"))
    p.add_argument("--json", action="store_true", help="machine-readable list")
    p.set_defaults(handler=cmd_jobs)

    p = sub.add_parser("show", help=commands.help_for("show"))
    p.add_argument("job_id", metavar="ID")
    p.add_argument("--json", action="store_true", help="machine-readable job with its metrics")
    p.set_defaults(handler=cmd_show)

    p = sub.add_parser("cancel", help=commands.help_for("cancel"))
    p.add_argument("job_id", metavar="ID")
    p.set_defaults(handler=cmd_cancel)

    p = sub.add_parser("resume", help=commands.help_for("resume"))
    p.add_argument("job_id", metavar="ID")
    _wait_flag(p)
    p.set_defaults(handler=cmd_resume)

    p = sub.add_parser("export", help=commands.help_for("export"))
    p.add_argument("job_id", metavar="ID")
    p.add_argument(
        "--as",
        dest="as_code",
        choices=(*script.FORMATS, "gguf"),
        default=None,
        help="print the plan instead: a standalone transformers+PEFT+TRL script, YAML, "
        "or the train command; gguf: write GGUF files and a Modelfile into the job's folder",
    )
    p.add_argument(
        "--quant",
        default="f16",
        help="with --as gguf: the merged file's precision, f16 (default), q8_0, bf16, f32, q5_1, q5_0, q4_1 or q4_0",
    )
    p.set_defaults(handler=cmd_export)

    p = sub.add_parser("demo", help=commands.help_for("demo"))
    p.add_argument("--skill", default=None, help="demo skill name (see the wizard's demo list)")
    _wait_flag(p)
    p.set_defaults(handler=cmd_demo)


def _wait_flag(p) -> None:
    p.add_argument("--wait", action="store_true", help="stay, print progress, exit 0 only if the job succeeds")


# --- handlers --------------------------------------------------------------------------


def cmd_train(ns) -> int:
    base = None
    if ns.plan_file:
        path = Path(ns.plan_file)
        if not path.is_file():
            raise UserError("plan", f"file not found: {path}")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise UserError("plan", f"{path} is not UTF-8 text; a plan is a YAML file") from None
        base = TrainingPlan.from_yaml(text, source=str(path))
    return _submit(plan_from_args(ns, base=base), ns.wait, anyway=ns.anyway)


def cmd_demo(ns) -> int:
    if ns.skill is not None and ns.skill not in demo.SKILLS:
        raise UserError("skill", f"unknown demo skill '{ns.skill}'; choose one of {', '.join(demo.SKILLS)}")
    return _submit(demo.default_plan(ns.skill) if ns.skill else demo.default_plan(), ns.wait)


def _submit(plan: TrainingPlan, wait: bool, anyway: bool = False) -> int:
    # The resident worker validates with its libraries imported; without one, waiting means the user wants
    # the result soon: start the worker's imports alongside validation.
    try:
        job = dispatcher.submit_in_resident(plan, anyway=anyway) or dispatcher.submit(
            plan, standby=dispatcher.standby() if wait else None, anyway=anyway
        )
    except dispatcher.DoesNotFit as exc:
        raise UserError(exc.field, f"{exc.message}. Add --anyway to queue it regardless") from None
    print(f"job {job.id} {job.status}: {job.name}")
    return waiting.follow(job, wait)


def cmd_jobs(ns) -> int:
    dispatcher.reconcile()
    jobs = store.list_jobs()
    if ns.json:
        print(json.dumps([views.job_summary(j) for j in jobs], indent=2))
        return 0
    if not jobs:
        print("no jobs yet; start one with `python app.py train PLAN.yaml` or `python app.py demo`")
        return 0
    rows = [("ID", "STATUS", "PROGRESS", "ETA", "HELD-OUT EXACT MATCH", "CREATED", "NAME")]
    for j in jobs:
        left = outcome.eta(j)
        note = " (stalled)" if stall.stalled_since(j) else " (waiting for the cluster)" if stall.waiting(j) else ""
        rows.append(
            (
                str(j.id),
                outcome.status_text(j) + note,
                outcome.progress_text(j),
                human_seconds(left["seconds"]) if left else "-",
                outcome.heldout_text(j).replace("→", "->").replace("—", "-"),
                j.created_at.strftime("%Y-%m-%d %H:%M"),
                j.name,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1])
    return 0


def cmd_show(ns) -> int:
    dispatcher.reconcile()
    job = store.get_job(ns.job_id)
    detail = views.job_detail(job)
    detail["exports"] = gguf_export.exports(job)
    pending = stall.waiting(job)  # a Ray job the cluster has not started: what it asks, what is free
    if ns.json:
        print(json.dumps({**detail, "waiting": pending.line() if pending else None}, indent=2))
        return 0
    print(f"job {job.id}: {job.name}")
    running = job.status == JobStatus.RUNNING
    state = pending.line() if pending else f"pid {job.pid}, {job.device or 'starting'}"
    print(f"  status     {outcome.status_text(job)}" + (f" ({state})" if running else ""))
    if stall.stalled_since(job):
        print(f"  STALLED    {stall.describe(job)}")
    left = detail["eta"]
    print(
        f"  progress   {outcome.progress_text(job)}"
        + (
            f"  eta {human_seconds(left['seconds'])} ("
            + ", ".join(f"{k} {human_seconds(v)}" for k, v in left["phases"].items() if v)
            + ")"
            if left
            else ""
        )
    )
    for line in _estimate_lines(job):
        print(line)
    print(
        f"  peak       allocated: estimated {human_bytes(job.estimated_peak_bytes)}, "
        f"measured {human_bytes(job.measured_peak_bytes)}"
    )
    before, after = outcome.heldout(job)
    if before is not None or after is not None:
        print(f"  held-out   exact match {waiting.pct(before)} -> {waiting.pct(after)}")
    if job.error:
        print(f"  reason     {job.error}")
    if job.host or job.ray_job_id:
        print(f"  host       {job.host or '?'}" + (f" (Ray job {job.ray_job_id})" if job.ray_job_id else ""))
    print(f"  folder     {job.artifact_dir}")
    if detail["exports"]:
        print(f"  gguf       {gguf_export.summary(detail['exports']['gguf'])}")

    for line in show_lines(detail):
        print(line)
    metrics = detail["metrics"]
    if metrics:
        print("  last metrics:")
        for m in metrics[-5:]:
            print(
                f"    step {m['step']:>5}  loss {_f(m['loss'])}  eval {_f(m['eval_loss'])}  "
                f"lr {_f(m['learning_rate'], '.2e')}  tok/s {_f(m['tokens_per_second'], '.0f')}"
            )
    tail = store.log_tail(job.id, lines=10)
    if tail:
        print("  log (last lines):")
        print("\n".join("    " + line for line in tail.splitlines()))
    return 0


def _estimate_lines(job) -> list[str]:
    """The estimate stored at submit, under the names the wizard gives it (engine.estimate.combined.headline)."""
    stored = store.job_estimate(job)
    if not stored:
        return []
    head = headline(stored)
    seq_len = json.loads(job.plan_json).get("seq_len")
    memory = f"  estimate   memory {human_bytes(head['memory_bytes'])}"
    if head["memory_bytes"] != head["worst_case_bytes"]:
        memory += f" with the data's lengths; worst case {human_bytes(head['worst_case_bytes'])} padded to {seq_len}"
    lines = [memory]
    if head.get("seconds"):
        lines.append(
            f"             time {human_seconds(head['seconds'])}"
            + (f" on {head['device']}" if head.get("device") else "")
            + ", every phase"
        )
    return lines


def cmd_cancel(ns) -> int:
    job = dispatcher.cancel(ns.job_id)
    print(f"job {job.id} {job.status}" + (f": {job.error}" if job.error else ""))
    return 0


def cmd_resume(ns) -> int:
    job = dispatcher.resume(ns.job_id)
    print(f"job {job.id} {job.status}: resuming from step {job.step}")
    return waiting.wait_for(job.id) if ns.wait else 0


def cmd_export(ns) -> int:
    if ns.as_code == "gguf":
        return _export_gguf(ns.job_id, ns.quant)
    if ns.as_code:
        print(export.code(ns.job_id, ns.as_code), end="")
        return 0
    print(export.export_zip(ns.job_id))
    return 0


def _export_gguf(job_id, quant: str) -> int:
    record = gguf_export.export(job_id, quant, progress=lambda line: print(line, file=sys.stderr, flush=True))
    for path in record["files"]:
        print(path)
    print(gguf_export.summary(record), file=sys.stderr)
    print(f"took {record['seconds']} s", file=sys.stderr)
    flagged = [c for c in record["checks"] if c["flagged"]]
    for c in flagged:
        print(
            f"FLAGGED {Path(c['file']).name}: llama.cpp disagrees with LoRA Pilot on most held-out prompts; "
            f"first difference at {c.get('first_difference')}",
            file=sys.stderr,
        )
    return 1 if flagged else 0


def _f(v, fmt: str = ".4f") -> str:
    return "-" if v is None else format(v, fmt)
