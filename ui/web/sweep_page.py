"""Search for better settings in the browser: the review step's "Search" panel, a finished job's
"Try N variations", and the sweep page (`?sweep=ID`) with Optuna's own Plotly figures.

The wizard and the job page only place these panels and hand over their plan or job id
(`search_panel` + `wire_search`, `variations_panel` + `wire_variations`); everything else is
here. Like the jobs page, the sweep page reads the database on every refresh, so it shows the
same search after a reload or a restart.
"""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace

import gradio as gr

from engine import units
from engine.advice import space
from engine.errors import UserError
from jobs import sweep
from ui.web import charts, html

REFRESH_S = 2.0
METRIC_CHOICES = [
    ("Held-out loss (lower is better)", "loss"),
    ("Exact match", "exact_match"),
    ("Token F1", "f1"),
    ("ROUGE-L", "rougeL"),
]
BUDGET_CHOICES = [("A number of trials", "trials"), ("A time in minutes", "minutes")]


# --- starting a sweep ------------------------------------------------------------------------------
def search_panel() -> SimpleNamespace:
    """The review step's panel: a budget and what to optimise (placed by the wizard)."""
    ui = SimpleNamespace()
    with gr.Accordion("Search for better settings", open=False, elem_id="search"):
        gr.Markdown(
            "Try variations of these settings (rank, alpha, learning rate, targets, dropout, chosen "
            "around the recommendation by the same rules), stop the clearly worse ones early, and keep "
            "the best adapter. The plan above is trial 0, so the search can only match or beat it."
        )
        with gr.Row():
            ui.kind = gr.Radio(BUDGET_CHOICES, value="trials", label="Budget", elem_id="search-kind")
            ui.amount = gr.Number(6, label="Trials, or minutes", minimum=1, precision=None, elem_id="search-amount")
            ui.metric = gr.Dropdown(METRIC_CHOICES, value="loss", label="Optimise", elem_id="search-metric")
        ui.button = gr.Button("Search for better settings", elem_id="search-start")
        ui.notice = gr.HTML(elem_id="search-notice")
    return ui


def wire_search(ui: SimpleNamespace, plan_inputs: list, plan_of: Callable) -> None:
    """`plan_of(*values)` turns the values of `plan_inputs` into the plan to search around."""

    def start(kind, amount, metric, *values):
        try:
            return _started(_create(plan_of(*values), kind, amount, metric))
        except Exception as exc:
            return html.error_notice(exc)

    ui.button.click(start, [ui.kind, ui.amount, ui.metric, *plan_inputs], ui.notice)


def variations_panel() -> SimpleNamespace:
    """A finished job's "Try N variations" (placed by the job page)."""
    ui = SimpleNamespace()
    with gr.Row(elem_classes="lp-actions"):
        ui.count = gr.Number(4, label="Variations", minimum=1, precision=0, min_width=120, elem_id="variations-n")
        ui.button = gr.Button("Try N variations", size="md", min_width=200, elem_id="variations-start")
    ui.notice = gr.HTML(elem_id="variations-notice")
    return ui


def wire_variations(ui: SimpleNamespace, job_select) -> None:
    def start(job_id, count):
        try:
            if not job_id:
                raise UserError("job", "pick a finished job first")
            n = int(count or 0)
            if n < 1:
                raise UserError("variations", f"got {count}; try 1 or more")
            return _started(sweep.create(trials=n + 1, from_job=int(job_id)))  # + trial 0, the job itself
        except Exception as exc:
            return html.error_notice(exc)

    ui.button.click(start, [job_select, ui.count], ui.notice)


def _create(plan, kind: str, amount, metric: str):
    if amount is None:
        raise UserError("budget", "give a number of trials or minutes")
    if kind == "minutes":
        return sweep.create(plan, minutes=float(amount), metric=metric)
    if float(amount) != int(amount):
        raise UserError("trials", f"got {amount:g}; a number of trials is a whole number")
    return sweep.create(plan, trials=int(amount), metric=metric)


def _started(row) -> str:
    return (
        html.notice(f"Sweep {row.id} started: {row.name}. Its trials are queued as ordinary jobs.", "ok")
        + f'<a href="?sweep={row.id}" class="lp-joblink">Open sweep {row.id} →</a>'
    )


# --- the sweep page --------------------------------------------------------------------------------
def sweeps_table() -> str:
    rows = [
        (
            f'<a href="?sweep={r.id}" class="lp-joblink">#{r.id} {html.escape(r.name)}</a>',
            html.badge(r.status),
            space.METRIC_WORDS[r.metric],
            f"job {r.best_job_id}" if r.best_job_id else "—",
            r.adapter_name or "—",
        )
        for r in sweep.list_sweeps()
    ]
    if not rows:
        return html.notice('No sweeps yet: the review step\'s "Search for better settings" starts one.', "info")
    return html.table(
        ["Sweep", "Status", "Ranked by", "Best", "Adapter"], rows, cls="lp-table lp-jobs", raw_cols=[0, 1]
    )


def sweep_view(sweep_id) -> dict:
    """Everything the page shows for one sweep (figures only once a trial has finished)."""
    empty = charts.empty("Optimisation history", "No sweep selected", 320)
    out = {"header": "", "trials": "", "mattered": "", "history": empty, "parallel": None, "importances": None}
    if not sweep_id:
        return out
    sweep.reconcile()
    row = sweep.get(sweep_id)
    detail = sweep.detail(row)
    budget = f"{row.budget_trials} trials" if row.budget_trials else f"{units.human_seconds(row.budget_seconds)}"
    best = detail["best"]
    facts = [
        ("Status", row.status + (f" — {row.error}" if row.error else "")),
        (
            "Ranked by",
            f"{space.METRIC_WORDS[row.metric]} ({'lower' if row.direction == 'minimize' else 'higher'} is better)",
        ),
        ("Budget", f"{budget}; spent {units.human_seconds(row.elapsed_seconds)}"),
        ("Best", f"trial {best['number']} (job {best['job_id']}): {best['value']:.4f}" if best else "—"),
        ("Adapter", row.adapter_name or "—"),
    ]
    out["header"] = f"<h3>Sweep {row.id}: {html.escape(row.name)}</h3>" + html.facts_table(facts)
    out["trials"] = _trials_table(detail)
    if any(t["state"] == "complete" for t in detail["trials"]):
        figs = sweep.figures(row)
        out.update(
            history=figs["history"],
            parallel=figs.get("parallel"),
            importances=figs.get("importances"),
            mattered=html.notice(figs["what_mattered"], "info", title="What mattered:"),
        )
    return out


def _trials_table(detail: dict) -> str:
    sign = 1 if detail["direction"] == "minimize" else -1
    ranked = sorted(detail["trials"], key=lambda t: (t["value"] is None, sign * (t["value"] or 0), t["number"]))
    rows = []
    for t in ranked:
        link = f'<a href="?job={t["job_id"]}" class="lp-joblink">job {t["job_id"]}</a>' if t["job_id"] else "—"
        params = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in t["params"].items())
        value = "—" if t["value"] is None else f"{t['value']:.4f}"
        rows.append((f"#{t['number']}", html.badge(t["state"]), value, link, params, t.get("reason") or ""))
    return html.table(["Trial", "State", "Score", "Job", "Settings", "Note"], rows, raw_cols=[1, 3])


def build() -> SimpleNamespace:
    ui = SimpleNamespace()
    with gr.Column(elem_classes="lp-panel"):
        gr.Markdown("### Sweeps")
        ui.table = gr.HTML(elem_id="sweeps-table")
    with gr.Column(elem_classes="lp-panel", elem_id="sweep-page"):
        ui.select = gr.Dropdown([], value=None, label="Sweep", elem_id="sweep-select")
        ui.header = gr.HTML(elem_id="sweep-header")
        with gr.Row(elem_classes="lp-actions"):
            ui.cancel = gr.Button("Cancel sweep", variant="stop", size="md", min_width=140, elem_id="sweep-cancel")
            ui.resume = gr.Button("Resume sweep", size="md", min_width=140, elem_id="sweep-resume")
        ui.notice = gr.HTML()
        ui.mattered = gr.HTML(elem_id="what-mattered")
        ui.trials = gr.HTML(elem_id="sweep-trials")
        ui.history = gr.Plot(show_label=False, elem_id="sweep-history")
        with gr.Row():
            ui.parallel = gr.Plot(show_label=False, elem_id="sweep-parallel")
            ui.importances = gr.Plot(show_label=False, elem_id="sweep-importances")
    ui.timer = gr.Timer(REFRESH_S)
    ui.sig = gr.State(None)
    ui.outputs = [
        ui.table,
        ui.select,
        ui.header,
        ui.trials,
        ui.mattered,
        ui.history,
        ui.parallel,
        ui.importances,
        ui.sig,
    ]
    _wire(ui)
    return ui


def choices() -> list[tuple[str, str]]:
    return [(f"#{r.id} · {r.name} ({r.status})", str(r.id)) for r in sweep.list_sweeps()]


def signature(sweep_id) -> tuple | None:
    """What a redraw depends on: the sweep's row and its trials' states and values."""
    if not sweep_id:
        return None
    try:
        row = sweep.get(sweep_id)
        trials = sweep.detail(row)["trials"]
    except Exception:
        return None
    return (row.id, row.status, row.adapter_name, tuple((t["state"], t["value"], t["job_id"]) for t in trials))


def tick(sweep_id, sig) -> list:
    """The timer's redraw: nothing when no sweep is open or nothing changed."""
    new = signature(sweep_id)
    if new is None or new == sig:
        return [gr.skip()] * 9
    return render(sweep_id)


def render(sweep_id) -> list:
    try:
        v = sweep_view(sweep_id)
    except Exception as exc:
        v = {**sweep_view(None), "header": html.error_notice(exc)}
    return [
        sweeps_table(),
        gr.Dropdown(choices=choices(), value=str(sweep_id) if sweep_id else None),
        v["header"],
        v["trials"],
        v["mattered"],
        v["history"],
        gr.Plot(v["parallel"], visible=v["parallel"] is not None),
        gr.Plot(v["importances"], visible=v["importances"] is not None),
        signature(sweep_id),
    ]


def on_load(request: gr.Request) -> list:
    """The page for `?sweep=ID`, or the list alone."""
    return render((request.query_params.get("sweep") if request else None) or None)


def _act(action: str, sweep_id) -> str:
    try:
        row = sweep.cancel(sweep_id) if action == "cancel" else sweep.resume(sweep_id)
        return html.notice(f"Sweep {row.id}: {row.status}.", "ok")
    except Exception as exc:
        return html.error_notice(exc)


def _wire(ui: SimpleNamespace) -> None:
    ui.timer.tick(tick, [ui.select, ui.sig], ui.outputs, show_progress="hidden")
    ui.select.input(render, ui.select, ui.outputs, show_progress="hidden").then(
        None, ui.select, None, js="(s) => { if (s) history.replaceState(null, '', '?sweep=' + s); }"
    )
    ui.cancel.click(lambda s: _act("cancel", s), ui.select, ui.notice)
    ui.resume.click(lambda s: _act("resume", s), ui.select, ui.notice)
