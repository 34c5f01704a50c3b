"""`next` and `compare`: follow a run's advice with a new linked job, and put runs side by side.

Also the text blocks `show` prints for a job's phase, evaluation and advice, so the job
page's before/after table and advice have a terminal twin.
"""

from __future__ import annotations

import json

from engine.units import human_seconds
from jobs import runs
from ui.cli import commands, waiting


def register(sub) -> None:
    p = sub.add_parser("next", help=commands.help_for("next"))
    p.add_argument("job_id", metavar="ID")
    p.add_argument(
        "--apply",
        nargs="+",
        metavar="RULE",
        default=None,
        help="apply only these advice rules (e.g. U2 D2); default: all of the job's advice",
    )
    p.add_argument("--wait", action="store_true", help="stay, print progress, exit 0 only if the job succeeds")
    p.set_defaults(handler=cmd_next)

    p = sub.add_parser("compare", help=commands.help_for("compare"))
    p.add_argument("job_ids", nargs="+", metavar="ID")
    p.add_argument("--json", action="store_true", help="machine-readable, with each job's loss curve")
    p.set_defaults(handler=cmd_compare)


def cmd_next(ns) -> int:
    job, changes = runs.next_run(ns.job_id, rules=ns.apply)
    print(f"job {job.id} {job.status}: {job.name}")
    print("changes: " + ", ".join(f"{k} {v}" for k, v in changes.items()))
    return waiting.follow(job, ns.wait)


def cmd_compare(ns) -> int:
    rows = runs.compare(ns.job_ids)
    if ns.json:
        print(json.dumps(rows, indent=2))
        return 0
    table = [
        ["", *[f"#{r['id']}" for r in rows]],
        ["status", *[r["status"] for r in rows]],
        ["parent", *[f"#{r['parent_id']}" if r["parent_id"] else "-" for r in rows]],
    ]
    for key in rows[0]["plan"]:
        table.append([key, *[str(r["plan"][key]) for r in rows]])
    for label, key in _scores(*[r["evaluation"] for r in rows]):
        table.append([label + " base -> adapter", *[_before_after(r["evaluation"], key) for r in rows]])
    table.append(["final train loss", *[_f(r["final_loss"]) for r in rows]])
    table.append(
        [
            "best eval loss",
            *[
                f"{_f(r['best_eval_loss']['loss'])} @ {r['best_eval_loss']['step']}" if r["best_eval_loss"] else "-"
                for r in rows
            ],
        ]
    )
    table.append(["verdict", *[r["verdict"] or "-" for r in rows]])
    _print_table(table)
    return 0


SCORES = (
    ("loss", "loss"),
    ("perplexity", "perplexity"),
    ("exact match %", "exact_match"),
    ("token F1 %", "f1"),
    ("ROUGE-L %", "rougeL"),
)
# a dpo/orpo job's evaluation adds these (engine.evaluate.preference)
PREFERENCE_SCORES = (("preference acc. %", "preference_accuracy"), ("reward margin", "reward_margin"))


def _scores(*evaluations) -> tuple:
    pairs = any("preference_accuracy" in ((ev or {}).get("base") or {}) for ev in evaluations)
    return SCORES + (PREFERENCE_SCORES if pairs else ())


# --- blocks for `show` ------------------------------------------------------------------
def show_lines(detail: dict) -> list[str]:
    lines = []
    if detail.get("phase"):
        lines.append(f"  phase      {detail['phase']} for {human_seconds(detail.get('phase_seconds'))}")
    if detail.get("parent_id"):
        lines.append(f"  parent     job {detail['parent_id']} (this run follows its advice)")
    ev = detail.get("evaluation")
    if ev:
        lines.append(
            f"  evaluation on {ev.get('rows', 0)} held-out rows" + (f": {ev['note']}" if ev.get("note") else "")
        )
        if ev.get("base"):
            lines.append(f"    {'':16}{'base':>12}{'adapter':>12}")
            for label, key in _scores(ev):
                after = (ev.get("adapter") or {}).get(key)
                lines.append(f"    {label:16}{_f(ev['base'].get(key)):>12}{_f(after):>12}")
        for s in ev.get("samples") or []:
            lines.append(f"    prompt    {_one_line(s['prompt'])}")
            for key in ("reference", "rejected", "base", "adapter"):
                if key in s:  # a preference pair's sample also shows its rejected answer
                    lines.append(f"      {key:9} {_one_line(s[key])}")
    if detail.get("verdict"):
        lines.append(f"  verdict    {detail['verdict']}")
    for a in detail.get("advice") or []:
        change = ", ".join(f"{k} {v}" for k, v in a["change"].items()) or "no plan change"
        lines.append(f"    [{a['rule']}] {a['remedy']} ({change})")
    if detail.get("advice"):
        lines.append(f"    evidence: {detail['advice'][0]['evidence']}")
        lines.append(f"    follow it: python app.py next {detail['id']} [--apply RULE ...]")
    return lines


def _before_after(ev: dict | None, key: str) -> str:
    if not ev or not ev.get("base"):
        return "-"
    return f"{_f(ev['base'].get(key))} -> {_f((ev.get('adapter') or {}).get(key))}"


def _f(v) -> str:
    if v is None:
        return "-"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _one_line(text: str, width: int = 100) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _print_table(rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
