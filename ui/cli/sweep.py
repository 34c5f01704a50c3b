"""`sweep`, `sweeps`, `sweep show|cancel|resume ID`: search for better settings from the terminal.

`sweep PLAN.yaml --trials 8` (or plan flags, or `--budget-minutes 20`) starts a search whose
trial 0 is the plan itself; the search runs in its own process (jobs.sweep_driver), so the
command returns at once unless --wait, which follows it and exits 0 when it found a best trial.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from engine.advice import space
from engine.errors import UserError
from engine.plan import TrainingPlan, add_plan_flags, plan_from_args
from engine.units import human_seconds
from jobs import sweep
from jobs.tables import SWEEP_FINISHED, SweepStatus
from ui.cli import commands

ACTIONS = ("show", "cancel", "resume")


def register(sub) -> None:
    p = sub.add_parser("sweep", help=commands.help_for("sweep"))
    p.add_argument(
        "target",
        nargs="*",
        metavar="PLAN.yaml | show|cancel|resume ID",
        help="a plan file to search around, or an action on an existing sweep",
    )
    add_plan_flags(p)
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--trials", type=int, default=None, help="how many trials to run (trial 0 is the plan)")
    budget.add_argument(
        "--budget-minutes",
        type=float,
        default=None,
        help="search for this long; a trial starts only when its ETA fits the time left",
    )
    p.add_argument(
        "--space",
        action="append",
        default=[],
        metavar="FIELD=VALUES",
        help=f"search these values of a plan field instead of the rules' default: {space.SYNTAX}; "
        "repeat for several fields",
    )
    p.add_argument(
        "--from-job",
        type=int,
        default=None,
        metavar="ID",
        help="start from a succeeded job: it is trial 0 as it ran, the other trials are variations of it",
    )
    p.add_argument(
        "--metric",
        default="loss",
        choices=("loss", "exact_match", "f1", "rougeL"),
        help="what ranks the trials, on the held-out rows (loss: lower is better; the rest: higher)",
    )
    p.add_argument("--wait", action="store_true", help="stay, print each trial, exit 0 once a best trial is found")
    p.add_argument("--json", action="store_true", help="machine-readable sweep (with --wait: once it ends)")
    p.set_defaults(handler=cmd_sweep)

    p = sub.add_parser("sweeps", help=commands.help_for("sweeps"))
    p.add_argument("--json", action="store_true", help="machine-readable list")
    p.set_defaults(handler=cmd_sweeps)


def cmd_sweep(ns) -> int:
    if ns.target and ns.target[0] in ACTIONS:
        action, rest = ns.target[0], ns.target[1:]
        if len(rest) != 1:
            raise UserError("sweep", f"`sweep {action}` takes one sweep id, e.g. `sweep {action} 3`")
        sweep.reconcile()
        if action == "show":
            return _show(sweep.get(rest[0]), ns.json)
        row = sweep.cancel(rest[0]) if action == "cancel" else sweep.resume(rest[0])
        print(f"sweep {row.id} {row.status}" + (": cancel requested" if action == "cancel" else ""))
        return _follow(row.id, ns.json) if action == "resume" and ns.wait else 0
    if len(ns.target) > 1:
        raise UserError("sweep", f"give one plan file, not {len(ns.target)}: {' '.join(ns.target)}")
    if ns.from_job is not None:
        given = [f for f in TrainingPlan.model_fields if f != "name" and getattr(ns, f, None) is not None]
        if ns.target or given:
            raise UserError(
                "from_job",
                "trial 0 is the job as it ran; give --from-job or a plan (file or "
                f"flags), not both ({', '.join(ns.target + given)})",
            )
        plan = TrainingPlan.build(name=ns.name) if ns.name else None
    else:
        plan = plan_from_args(ns, base=read_plan_file(ns.target[0]) if ns.target else None)
    row = sweep.create(
        plan, trials=ns.trials, minutes=ns.budget_minutes, space_specs=ns.space, metric=ns.metric, from_job=ns.from_job
    )
    if not ns.json:
        budget = f"{row.budget_trials} trials" if row.budget_trials else f"{row.budget_seconds / 60:g} minutes"
        print(f"sweep {row.id} {row.status}: {row.name}, {budget}, ranked by held-out {row.metric}")
        for d in sweep.space_of(row).values():
            print(f"  {d.field:<14} {d.describe()}" + (f"  ({d.rule})" if d.rule else ""))
    if ns.wait:
        return _follow(row.id, ns.json)
    if ns.json:
        print(json.dumps(sweep.detail(row), indent=2))
    else:
        print(f"runs in the background; follow it with `python app.py sweep show {row.id}`")
    return 0


def read_plan_file(name: str) -> TrainingPlan:
    path = Path(name)
    if not path.is_file():
        raise UserError("plan", f"file not found: {path}")
    try:
        return TrainingPlan.from_yaml(path.read_text(encoding="utf-8"), source=str(path))
    except UnicodeDecodeError:
        raise UserError("plan", f"{path} is not UTF-8 text; a plan is a YAML file") from None


def cmd_sweeps(ns) -> int:
    sweep.reconcile()
    rows = sweep.list_sweeps()
    if ns.json:
        print(json.dumps([sweep.summary(r) for r in rows], indent=2))
        return 0
    if not rows:
        print("no sweeps yet; start one with `python app.py sweep PLAN.yaml --trials 8`")
        return 0
    for r in rows:
        print(f"{r.id:>4}  {r.status:<11} {r.metric:<11} best job {r.best_job_id or '-':<5} {r.name}")
    return 0


def _show(row, as_json: bool) -> int:
    detail = sweep.detail(row)
    if as_json:
        print(json.dumps(detail, indent=2))
        return 0
    print(f"sweep {row.id}: {row.name}")
    print(f"  status   {row.status}" + (f" ({row.error})" if row.error else ""))
    print(f"  ranked   by held-out {row.metric} ({row.direction}); spent {human_seconds(row.elapsed_seconds)}")
    for line in _trial_lines(detail):
        print(line)
    best = detail["best"]
    if best:
        print(
            f"  best     trial {best['number']} (job {best['job_id']}): {row.metric} {best['value']:.4f}"
            + (f"; adapter '{row.adapter_name}'" if row.adapter_name else "")
        )
    return 0


def _trial_lines(detail: dict) -> list[str]:
    """Trials ranked by the metric (the best first); unfinished ones after them."""
    sign = 1 if detail["direction"] == "minimize" else -1
    ranked = sorted(detail["trials"], key=lambda t: (t["value"] is None, sign * (t["value"] or 0), t["number"]))
    lines = []
    for t in ranked:
        value = "-" if t["value"] is None else f"{t['value']:.4f}"
        params = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in t["params"].items())
        lines.append(
            f"  #{t['number']:<3} {t['state']:<9} {value:>9}  job {t['job_id'] or '-':<5} {params}"
            + (f"  ({t['reason']})" if t.get("reason") else "")
        )
    return lines


def _follow(sweep_id: int, as_json: bool, poll_s: float = 1.0) -> int:
    """Print each trial as it changes state, until the sweep ends. Ctrl-C leaves it running."""
    seen: dict[int, str] = {}
    try:
        while True:
            sweep.reconcile()
            row = sweep.get(sweep_id)
            detail = sweep.detail(row)
            for t in detail["trials"]:
                if seen.get(t["number"]) != t["state"] and not as_json:
                    value = "" if t["value"] is None else f" {row.metric} {t['value']:.4f}"
                    print(
                        f"trial {t['number']} {t['state']}{value}"
                        + (f" (job {t['job_id']})" if t["job_id"] else "")
                        + (f": {t['reason']}" if t.get("reason") else ""),
                        flush=True,
                    )
                seen[t["number"]] = t["state"]
            if row.status in SWEEP_FINISHED:
                break
            time.sleep(poll_s)
    except KeyboardInterrupt:
        print(
            f"\nstopped waiting; sweep {sweep_id} keeps running (`python app.py sweep show {sweep_id}`)",
            file=sys.stderr,
        )
        return 130
    if as_json:
        print(json.dumps(detail, indent=2))
    elif detail["best"]:
        best = detail["best"]
        print(
            f"{row.status}: best trial {best['number']} (job {best['job_id']}), {row.metric} {best['value']:.4f}"
            + (f"; adapter '{row.adapter_name}'" if row.adapter_name else "")
        )
    if row.status == SweepStatus.SUCCEEDED:
        return 0
    print(f"{row.status}: {row.error or 'no reason recorded'} (log: {sweep.log_path(row.id)})", file=sys.stderr)
    return 1
