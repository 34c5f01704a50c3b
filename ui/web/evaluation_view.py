"""The job page's proof blocks: phase, before/after table, samples, advice; and the compare view.

Pure functions from the JSON that `show --json` gives (jobs.views.job_detail, jobs.runs.compare)
to HTML, so the page and the command line read the same facts.
"""

from __future__ import annotations

import difflib
from html import escape

from engine.units import human_seconds
from ui.web import html

METRICS = (
    ("loss", "loss", "lower is better"),
    ("perplexity", "perplexity", "lower is better"),
    ("exact_match", "exact match %", "higher is better"),
    ("f1", "token F1 %", "higher is better"),
    ("rougeL", "ROUGE-L %", "higher is better"),
)
# a dpo/orpo job's evaluation adds these (engine.evaluate.preference)
PREFERENCE_METRICS = (
    ("preference_accuracy", "preference accuracy %", "share of pairs where the chosen answer is more likely"),
    ("reward_margin", "reward margin", "DPO's implicit reward, chosen minus rejected, against the base"),
)


def metrics_of(*evaluations) -> tuple:
    pairs = any("preference_accuracy" in ((ev or {}).get("base") or {}) for ev in evaluations)
    return METRICS + (PREFERENCE_METRICS if pairs else ())


def phase_text(detail: dict) -> str | None:
    if not detail.get("phase"):
        return None
    return f"{detail['phase']} · {human_seconds(detail.get('phase_seconds') or 0)}"


def _num(v) -> str:
    if v is None:
        return "—"
    return f"{v:,.4g}" if isinstance(v, float) else str(v)


def _delta(key: str, base, adapter) -> str:
    if base is None or adapter is None:
        return ""
    better = adapter < base if key in ("loss", "perplexity") else adapter > base
    same = abs(adapter - base) < 1e-9
    cls = "lp-same" if same else ("lp-better" if better else "lp-worse")
    sign = "+" if adapter - base > 0 else ""
    return f'<span class="{cls}">{sign}{_num(adapter - base)}</span>'


def evaluation_html(ev: dict | None, running: bool = False) -> str:
    if not ev:
        return html.notice(
            "The base is scored on held-out rows before training starts."
            if running
            else "No evaluation recorded for this job.",
            "info",
        )
    if not ev.get("base"):
        return html.notice(ev.get("note") or "Nothing was held out.", "info", "No before/after:")
    base, adapter = ev["base"], ev.get("adapter") or {}
    rows = [
        (
            label,
            _num(base.get(key)),
            _num(adapter.get(key)) if adapter else "…",
            _delta(key, base.get(key), adapter.get(key)),
            hint,
        )
        for key, label, hint in metrics_of(ev)
    ]
    out = [
        f'<div class="lp-eval"><h4>Before / after on {ev["rows"]} held-out rows</h4>',
        html.table(["", "base", "adapter", "change", ""], rows, cls="lp-table lp-eval-table", raw_cols=[3]),
    ]
    if ev.get("note"):
        out.append(f'<div class="lp-eval-note">{escape(ev["note"])}</div>')
    samples = ev.get("samples") or []
    if samples:
        out.append("<h4>Samples (words that differ from the reference are marked)</h4>")
        for s in samples:
            out.append(
                '<div class="lp-sample">'
                f"<div><b>prompt</b> {escape(s['prompt'])}</div>"
                f"<div><b>{'chosen' if 'rejected' in s else 'reference'}</b> {escape(s['reference'])}</div>"
                + (f"<div><b>rejected</b> {escape(s['rejected'])}</div>" if "rejected" in s else "")
                + f'<div class="{_hit(s["base"], s["reference"])}"><b>base</b> '
                f"{_marked(s['base'], s['reference'])}</div>"
                f'<div class="{_hit(s["adapter"], s["reference"])}"><b>adapter</b> '
                f"{_marked(s['adapter'], s['reference'])}</div></div>"
            )
    out.append("</div>")
    return "".join(out)


def _hit(answer: str, reference: str) -> str:
    return "lp-hit" if answer.strip() == reference.strip() else "lp-miss"


def _marked(answer: str, reference: str) -> str:
    """The answer with the words that are not in the reference (in order) wrapped in <mark>."""
    if not answer:
        return '<span class="lp-empty">(empty)</span>'
    words, ref = answer.split(), reference.split()
    out = []
    for tag, i1, i2, _, _ in difflib.SequenceMatcher(a=words, b=ref, autojunk=False).get_opcodes():
        chunk = escape(" ".join(words[i1:i2]))
        if chunk:
            out.append(chunk if tag == "equal" else f'<mark class="lp-diff">{chunk}</mark>')
    return " ".join(out)


def advice_html(detail: dict) -> str:
    advice, verdict, status = detail.get("advice") or [], detail.get("verdict"), detail.get("status")
    if not advice:
        if verdict == "good":
            return html.notice(
                "No sign of overfitting, underperforming or instability in the curves and scores.",
                "ok",
                "Diagnosis: good run.",
            )
        return ""
    live = status in ("queued", "running")
    title = ("Live hint: " if live else "Diagnosis: ") + advice[0]["finding"] + "."
    items = "".join(
        f'<li><span class="lp-rule">{escape(a["rule"])}</span> {escape(a["remedy"])}'
        + (f" <code>{escape(_change(a['change']))}</code>" if a["change"] else "")
        + "</li>"
        for a in advice
    )
    findings = {a["finding"]: a["evidence"] for a in advice}
    evidence = "".join(f"<div><b>{escape(k)}</b>: {escape(v)}</div>" for k, v in findings.items())
    kind = "warn" if live or advice[0]["finding"] != "underperforming" else "info"
    return (
        f'<div class="lp-notice lp-{kind} lp-advice"><strong>{escape(title)}</strong>{evidence}<ol>{items}</ol></div>'
    )


def _change(change: dict) -> str:
    return ", ".join(f"{k}: {v}" for k, v in change.items())


def advice_choices(detail: dict) -> list[tuple[str, str]]:
    """(label, rule) per distinct rule of the advice, for the 'Next run' picker."""
    seen: dict[str, list[str]] = {}
    for a in detail.get("advice") or []:
        if a["change"]:
            seen.setdefault(a["rule"], []).append(_change(a["change"]))
    return [(f"{rule}: {'; '.join(changes)}", rule) for rule, changes in seen.items()]


def compare_html(rows: list[dict]) -> str:
    """Runs side by side: plan differences, before/after, final losses, verdict."""
    heads = [""] + [f"#{r['id']} {r['name']}" for r in rows]
    table = [
        ["status", *[r["status"] for r in rows]],
        ["parent", *[f"#{r['parent_id']}" if r["parent_id"] else "—" for r in rows]],
    ]
    table += [[k, *[str(r["plan"][k]) for r in rows]] for k in rows[0]["plan"]]
    for key, label, _ in metrics_of(*[r.get("evaluation") for r in rows]):
        cells = []
        for r in rows:
            ev = r.get("evaluation") or {}
            b, a = (ev.get("base") or {}).get(key), (ev.get("adapter") or {}).get(key)
            cells.append(f"{_num(b)} → {_num(a)}" if ev.get("base") else "—")
        table.append([label + " (base → adapter)", *cells])
    table.append(["final train loss", *[_num(r["final_loss"]) for r in rows]])
    table.append(
        [
            "best eval loss",
            *[
                f"{_num(r['best_eval_loss']['loss'])} at step {r['best_eval_loss']['step']}"
                if r["best_eval_loss"]
                else "—"
                for r in rows
            ],
        ]
    )
    table.append(["verdict", *[r["verdict"] or "—" for r in rows]])
    return html.table(heads, table, cls="lp-table lp-compare")
