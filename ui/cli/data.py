"""`check-data`: validate a dataset before any job exists.

Prints the format found, row counts, problems with their row numbers, token-length
statistics with an ASCII histogram and the share that `--seq-len` would cut; or, with
`--json`, the same report as stable JSON. Exit 0 when the data is usable, 2 when not.
"""

from __future__ import annotations

import json
import sys

from engine.data.dataset import check_data
from engine.errors import UserError
from engine.plan import TrainingPlan, _parse_mapping
from ui.cli import commands

DEFAULTS = TrainingPlan()  # the plan's own defaults, so check-data measures what a job would use


def register(sub) -> None:
    p = sub.add_parser(
        "check-data", help=commands.help_for("check-data"), description="Validate training data before a job exists."
    )
    p.add_argument("file", help="JSONL, JSON, CSV, Parquet or TXT file, a hub dataset id, or demo:NAME")
    p.add_argument(
        "--model",
        default=DEFAULTS.model,
        help="Model whose tokenizer and chat template to use (default: the embedded SmolLM2-135M-Instruct)",
    )
    p.add_argument(
        "--seq-len",
        dest="seq_len",
        type=int,
        default=DEFAULTS.seq_len,
        help="Sequence length to measure truncation against",
    )
    p.add_argument(
        "--data-format",
        dest="data_format",
        default=DEFAULTS.data_format,
        help="auto, messages, alpaca, prompt_completion or text",
    )
    p.add_argument("--columns", default=None, help="Column mapping, e.g. instruction=question,output=answer")
    p.add_argument("--json", action="store_true", help="Print the report as JSON")
    p.set_defaults(handler=run)


def run(ns) -> int:
    if ns.seq_len is not None and ns.seq_len <= 0:
        raise UserError("seq_len", "must be a whole number of 1 or more")
    columns = _parse_mapping(ns.columns) if ns.columns else {}
    try:
        report = check_data(ns.file, model=ns.model, seq_len=ns.seq_len, data_format=ns.data_format, columns=columns)
    except UserError as exc:
        if ns.json:  # scripts still get a JSON document, and the usual error line on stderr
            print(json.dumps({"ok": False, "error": {"field": exc.field, "message": exc.message}}, indent=2))
        raise
    if ns.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(summary(report))
    if not report.ok:
        errors = report.errors()
        if errors:
            try:
                report.raise_if_bad()
            except UserError as exc:
                print(f"error: {exc}", file=sys.stderr)
        else:
            print(f"error: dataset: {report.eos_message}", file=sys.stderr)
        return 2
    return 0


def summary(report) -> str:
    lines = [
        f"source:     {report.source}",
        f"format:     {report.format}",
        f"rows:       {report.rows}  (empty {report.empty_rows}, duplicates {report.duplicate_rows})",
    ]
    if report.stats:
        s = report.stats
        lines.append(
            f"tokens:     min {s['min']:.0f}  mean {s['mean']:.0f}  p50 {s['p50']:.0f}  p95 {s['p95']:.0f}  "
            f"max {s['max']:.0f}  (total {s['total']:.0f})"
        )
        lines.append(f"truncated:  {report.truncated_share:.1%} of examples are longer than seq_len {report.seq_len}")
        lines.append("histogram (tokens per example):")
        lines += histogram_lines(report.histogram)
    if report.preference:
        pref = report.preference
        lines.append(
            f"pairs:      {pref['pairs']}  (identical {pref['identical']}, empty sides {pref['empty_sides']})"
        )
        for side in ("prompt", "chosen", "rejected"):
            if pref.get(side):
                cut = f", {pref['over_seq_len'][side]} cut" if side in pref["over_seq_len"] else ""
                lines.append(f"  {side + ':':10s}mean {pref[side]['mean']:.0f}  max {pref[side]['max']} tokens{cut}")
    lines.append(f"eos:        {'ok' if report.eos_ok else 'PROBLEM'}: {report.eos_message}")
    if report.problems:
        lines.append(f"problems:   {len(report.problems) + report.more_problems}")
        for p in report.problems:
            lines.append(f"  {p.level:7s} {p.text(report.row_unit)}")
        if report.more_problems:
            lines.append(f"  ... and {report.more_problems} more")
    if report.examples:
        lines.append(f"first {'pair' if report.preference else 'example'} as the model sees it:")
        lines += ["  | " + line for line in report.examples[0].splitlines()]
    lines.append("verdict:    " + ("ok, ready to train" if report.ok else "NOT ready: fix the errors above"))
    return "\n".join(lines)


def histogram_lines(histogram: dict, width: int = 40) -> list[str]:
    edges, counts = histogram.get("edges", []), histogram.get("counts", [])
    if not counts:
        return []
    top = max(counts) or 1
    seq_len = (histogram.get("seq_len") or [None])[0]
    out = []
    for i, count in enumerate(counts):
        lo, hi = edges[i], edges[i + 1]
        bar = "#" * (round(width * count / top) if count else 0)
        mark = ""
        if seq_len is not None and hi - 1 > seq_len:
            mark = "  > seq_len (cut)" if lo > seq_len else "  partly > seq_len"
        out.append(f"  {lo:>6}-{hi - 1:<6} {bar:<{width}} {count}{mark}")
    return out
