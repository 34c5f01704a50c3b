"""The jobs list and the job page, read from the database on every refresh.

Nothing here keeps job state in memory: a timer re-reads the rows (status, metrics,
log) about every second and skips the redraw when nothing changed, so a page refresh
or an app restart shows the same job, and a job keeps running with no page open.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from types import SimpleNamespace

import gradio as gr

from engine import units
from engine.errors import UserError
from engine.estimate.combined import headline
from jobs import export, outcome, runs, stall, store, views
from jobs.dispatcher import cancel as do_cancel
from jobs.dispatcher import resume as do_resume
from jobs.tables import FINISHED, JobStatus
from ui.web import charts, evaluation_view, html, review, run_elsewhere, sweep_page

REFRESH_S = 1.0
_DOWNLOADS = Path(tempfile.gettempdir()) / "lorapilot-downloads"


def _when(dt) -> str:
    return dt.strftime("%Y-%m-%d %H:%M UTC") if dt else "—"


def title(job) -> str:
    """'#3 · demo-ticket': the id and the name (a job submitted without one is named after what it trains)."""
    return f"#{job.id} · {(job.name or '').strip() or 'unnamed job'}"


def jobs_table() -> str:
    """Every job with its held-out exact match before → after and its progress in words."""
    jobs = store.list_jobs()
    if not jobs:
        return html.notice("No jobs yet. The wizard's last step launches one.", "info")
    rows = []
    for j in jobs:
        try:
            plan = store.job_plan(j)
            model, method = (Path(plan.model).name if Path(plan.model).is_absolute() else plan.model), plan.method
        except UserError:
            model, method = "?", "?"
        left = outcome.eta(j)
        eta = units.human_seconds(left["seconds"]) if left else "—"
        link = f'<a href="?job={j.id}" class="lp-joblink">{html.escape(title(j))}</a>'
        rows.append(
            (
                link,
                html.badge(j.status, outcome.status_text(j)),
                outcome.progress_text(j),
                eta,
                outcome.heldout_text(j),
                model,
                method,
                _when(j.created_at),
            )
        )
    return html.table(
        ["Job", "Status", "Progress", "ETA", "Held-out exact match", "Base model", "Method", "Created"],
        rows,
        cls="lp-table lp-jobs",
        raw_cols=[0, 1],
    )


def job_choices() -> list[tuple[str, int]]:
    # ids travel as strings: the same type the ?job= URL parameter has
    return [(f"{title(j)} ({outcome.status_text(j)})", str(j.id)) for j in store.list_jobs()]


def latest_job_id() -> int | None:
    jobs = store.list_jobs()
    return str(jobs[0].id) if jobs else None


def signature(job_id) -> tuple | None:
    """What a redraw depends on; equal signatures mean nothing to redraw."""

    if job_id is None:
        return None
    try:
        job = store.get_job(job_id)
    except UserError:
        return None
    log = store.log_path(job.id)
    return (
        job.id,
        job.status,
        job.step,
        job.progress,
        job.eta_seconds,
        job.adapter_score,
        job.base_score,
        job.phase,
        int(views.phase_seconds(job) or 0),
        job.evaluation_json,
        job.measured_peak_bytes,
        job.cancel_requested,
        len(store.job_metrics(job.id)),
        stall.stalled_since(job) is not None,  # becomes true with no row changing
        log.stat().st_size if log.exists() else 0,
        tuple((j.id, j.status, round(j.progress or 0, 2)) for j in store.list_jobs()),
    )


def _header(job, metrics, detail: dict) -> str:
    tps = next((m.tokens_per_second for m in reversed(metrics) if m.tokens_per_second), None)
    step = f"{job.step} / {job.total_steps}" if job.total_steps else str(job.step)
    if outcome.early_stop(job):
        step = outcome.progress_text(job)
    phase = evaluation_view.phase_text(detail)
    left = outcome.eta(job)
    stored = store.job_estimate(job)
    seq_len = json.loads(job.plan_json).get("seq_len")
    # the estimate stored at submit, with the same names and figures the review and the launch showed
    estimate = (
        {f"estimate: {k}": v for k, v in review.headline_tiles(headline(stored), seq_len).items()} if stored else {}
    )
    tiles = {
        **({"phase": phase} if phase else {}),
        "step": step,
        "ETA, every phase": units.human_seconds(left["seconds"]) if left else "—",
        "tokens / s": f"{tps:,.0f}" if tps else "—",
        **estimate,
        "peak allocated: estimated → measured": (
            f"{units.human_bytes(job.estimated_peak_bytes)} → {units.human_bytes(job.measured_peak_bytes)}"
        ),
        "device": job.device or "—",
        "host": _where(job),
    }
    before, after = outcome.heldout(job)
    if before is not None or after is not None:
        tiles["held-out exact match: before → after"] = outcome.heldout_text(job)
    head = (
        f'<div class="lp-jobhead"><span class="lp-jobtitle">Job {html.escape(title(job))}</span>'
        f"{html.badge(job.status, outcome.status_text(job))}</div>"
    )
    eta_line = ""
    if left and left["phases"]:
        eta_line = (
            '<div class="lp-hint" id="eta-phases">Left by phase: '
            + html.escape(" · ".join(f"{k} {units.human_seconds(v)}" for k, v in left["phases"].items() if v))
            + "</div>"
        )
    # what the data changed in the estimate, and why (its real lengths: batches padded to their longest row)
    why = next(
        (
            a
            for a in ((stored or {}).get("memory") or {}).get("assumptions", [])
            if a.startswith("with the checked data")
        ),
        "",
    )
    why_line = f'<div class="lp-hint" id="estimate-why">Estimate {html.escape(why)}.</div>' if why else ""
    return head + html.progress_bar(job.progress) + html.stat_tiles(tiles) + eta_line + why_line


def _where(job) -> str:
    where = job.host or "—"
    return f"{where} (Ray job {job.ray_job_id})" if job.ray_job_id else where


def _failure(job) -> str:
    if job.status == JobStatus.FAILED:
        return html.notice(job.error or "The job failed; the log below has the details.", "error", "Why it failed:")
    if job.status == JobStatus.INTERRUPTED:
        return html.notice(job.error or "The job stopped unexpectedly.", "warn", "Interrupted:")
    if job.status == JobStatus.CANCELLED:
        return html.notice((job.error or "Cancelled.") + " Resume continues from the last checkpoint.", "info")
    if job.status == JobStatus.QUEUED:
        return html.notice("Waiting for a free slot; it starts when the job before it finishes.", "info")

    stalled = stall.describe(job)
    if stalled:  # before "stopping…": a stalled worker does not reach the next step by itself
        return html.notice(stalled[0].upper() + stalled[1:] + " The log is below.", "warn")
    if job.cancel_requested and job.status == JobStatus.RUNNING:
        return html.notice("Stopping at the next step…", "info")
    return ""


def download_path(job_id) -> str | None:
    """A copy of the job's export zip under a temp folder Gradio may serve, or None."""

    try:
        src = export.export_zip(job_id)
    except UserError:
        return None
    dest = _DOWNLOADS / str(int(job_id)) / src.name  # -adapter.zip, or -model.zip for a full fine-tune
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dest)
    return str(dest)


def job_view(job_id) -> dict:
    """Everything the job page shows, as values. Keys match the page's outputs."""

    empty = {
        "header": html.notice("Pick a job, or launch one from the wizard.", "info"),
        "failure": "",
        "evaluation": "",
        "advice": [],
        "loss": charts.empty("Loss", "No job selected", 360),
        "log": "",
        "download": None,
        "yaml": "",
        "cli": "",
        "python": "",
        "running": False,
        "status": None,
    }
    if job_id in (None, ""):
        return empty
    try:
        job = store.get_job(job_id)
        store.job_plan(job)  # a stored plan that no longer parses shows as an error, not a traceback
    except UserError as exc:
        return {**empty, "header": html.error_notice(exc)}
    metrics = store.job_metrics(job.id)
    detail = views.job_detail(job)
    rows = [
        {"step": m.step, "loss": m.loss, "eval_loss": m.eval_loss, "learning_rate": m.learning_rate} for m in metrics
    ]
    return {
        "header": _header(job, metrics, detail) + _failure(job),
        "failure": _failure(job),
        "evaluation": evaluation_view.advice_html(detail)
        + evaluation_view.evaluation_html(detail["evaluation"], running=job.status in ("queued", "running")),
        "advice": evaluation_view.advice_choices(detail) if job.status in FINISHED else [],
        "loss": charts.loss_chart(rows, job.total_steps),
        "log": store.log_tail(job.id, 50) or "(no log yet)",
        "download": download_path(job.id) if job.status == JobStatus.SUCCEEDED else None,
        **_code(job.id),
        "running": job.status in (JobStatus.QUEUED, JobStatus.RUNNING),
        "status": job.status,
    }


def _code(job_id) -> dict[str, str]:
    """Export as code's three tabs, from one read of the job's plan and record."""
    try:
        return export.codes(job_id)
    except UserError as exc:  # only the script can fail: e.g. the base model's folder is gone since the job ran
        return {**export.codes(job_id, ("yaml", "cli")), "python": f"# no script: {exc}\n"}


def cancel(job_id) -> tuple[bool, str]:
    """(ok, message) — shown as a toast; the page itself redraws from the row."""

    try:
        job = do_cancel(job_id, wait=False)
    except Exception as exc:
        return False, _plain(exc)
    return True, f"Job {job.id}: cancel requested; it stops at the next step and keeps its checkpoint."


def resume(job_id) -> tuple[bool, str]:
    try:
        job = do_resume(job_id)
    except Exception as exc:
        return False, _plain(exc)
    return True, f"Job {job.id} resumes from step {job.step}."


def next_run(job_id, rules: list[str] | None) -> tuple[bool, str, str | None]:
    """(ok, message, new job id) for the 'Next run with this advice' button."""

    try:
        job, changes = runs.next_run(job_id, rules=rules or None)
    except Exception as exc:
        return False, _plain(exc), None
    return True, f"Job {job.id} queued: " + ", ".join(f"{k} {v}" for k, v in changes.items()), str(job.id)


def compare_view(job_ids) -> tuple:
    """(figure, table HTML) for two or more jobs."""

    if not job_ids or len(job_ids) < 2:
        return charts.overlay_loss_chart([]), html.notice("Pick two or more jobs to compare.", "info")
    try:
        rows = runs.compare(job_ids)
    except Exception as exc:
        return charts.overlay_loss_chart([]), html.error_notice(exc)
    return charts.overlay_loss_chart(rows), evaluation_view.compare_html(rows)


def _plain(exc: Exception) -> str:
    return exc.message if isinstance(exc, UserError) else f"Something went wrong ({type(exc).__name__})."


def _toast(result: tuple[bool, str]) -> None:
    ok, message = result
    (gr.Info if ok else gr.Warning)(message)


def build() -> SimpleNamespace:
    ui = SimpleNamespace()
    with gr.Column(elem_classes="lp-panel"):
        gr.Markdown("### All jobs")
        ui.table = gr.HTML(elem_id="jobs-table")
    with gr.Column(elem_classes="lp-panel", elem_id="job-page"):
        ui.select = gr.Dropdown([], value=None, label="Job", elem_id="job-select")
        ui.header = gr.HTML(elem_id="job-header")
        with gr.Row(elem_classes="lp-actions"):
            ui.cancel = gr.Button("Cancel", variant="stop", size="md", min_width=120, elem_id="cancel")
            ui.resume = gr.Button("Resume", size="md", min_width=120, elem_id="resume")
            ui.download = gr.DownloadButton(
                "Download zip", variant="primary", size="md", visible=False, min_width=160, elem_id="download"
            )
        ui.loss = gr.Plot(charts.empty("Loss", "No job selected", 360), show_label=False, elem_id="loss-plot")
        ui.evaluation = gr.HTML(elem_id="job-evaluation")
        ui.elsewhere = run_elsewhere.build(ui.select)
        with gr.Row(elem_classes="lp-actions"):
            ui.advice = gr.CheckboxGroup([], label="Advice to apply", elem_id="advice-pick", visible=False)
            ui.next = gr.Button(
                "Next run with this advice", size="md", min_width=200, visible=False, elem_id="next-run"
            )
        with gr.Accordion("Try variations of this job's settings", open=False, elem_id="variations"):
            ui.variations = sweep_page.variations_panel()  # a sweep whose trial 0 is this job (sweep_page.py)
        with gr.Accordion("Compare runs", open=False, elem_id="compare"):
            ui.compare_pick = gr.Dropdown([], multiselect=True, label="Jobs to compare", elem_id="compare-pick")
            ui.compare_plot = gr.Plot(charts.overlay_loss_chart([]), show_label=False, elem_id="compare-plot")
            ui.compare_table = gr.HTML(elem_id="compare-table")
        with gr.Accordion("Log (last 50 lines)", open=False):
            ui.log = gr.Code(language=None, lines=12, max_lines=20, show_label=False, elem_id="job-log")
        with gr.Accordion("Export as code", open=False, elem_id="export-code"), gr.Tabs():
            with gr.Tab("Plan YAML"):
                ui.yaml = gr.Code(language="yaml", show_label=False, elem_id="code-yaml")
            with gr.Tab("Command line"):
                ui.cli = gr.Code(language="shell", lines=6, show_label=False, elem_id="code-cli")
            with gr.Tab("Python (transformers + PEFT + TRL)"):
                ui.python = gr.Code(language="python", show_label=False, elem_id="code-python")
    ui.sig = gr.State(None)
    ui.timer = gr.Timer(REFRESH_S)
    ui.outputs = [
        ui.table,
        ui.select,
        ui.header,
        ui.loss,
        ui.log,
        ui.download,
        ui.cancel,
        ui.resume,
        ui.yaml,
        ui.cli,
        ui.python,
        ui.evaluation,
        ui.advice,
        ui.next,
        ui.compare_pick,
        ui.sig,
    ]
    _wire(ui)
    return ui


def render(job_id, sig=None, force=True) -> list:
    """The page's outputs for one job (gr.skip() everywhere when nothing changed)."""
    new_sig = signature(job_id)
    if not force and new_sig == sig:
        return [gr.skip()] * 16
    v = job_view(job_id)
    download = gr.DownloadButton(value=v["download"], visible=bool(v["download"]))
    status = v["status"]
    # Only an explicit render (a pick, a launch, a next run) sets the selection; a timer tick that started
    # before a launch would otherwise put the old job back on the page.
    select = (
        gr.Dropdown(choices=job_choices(), value=None if job_id is None else str(job_id))
        if force
        else gr.Dropdown(choices=job_choices())
    )
    return [
        jobs_table(),
        select,
        v["header"],
        v["loss"],
        v["log"],
        download,
        gr.Button(visible=status in (JobStatus.QUEUED, JobStatus.RUNNING)),
        gr.Button(visible=status in (JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.INTERRUPTED)),
        v["yaml"],
        v["cli"],
        v["python"],
        v["evaluation"],
        gr.CheckboxGroup(choices=v["advice"], value=[rule for _, rule in v["advice"]], visible=bool(v["advice"])),
        gr.Button(visible=bool(v["advice"])),
        gr.Dropdown(choices=job_choices()),
        new_sig,
    ]


def _wire(ui: SimpleNamespace) -> None:
    ui.timer.tick(lambda j, s: render(j, s, force=False), [ui.select, ui.sig], ui.outputs, show_progress="hidden")
    run_it = ui.elsewhere
    ui.timer.tick(run_it.refresh, [ui.select, run_it.status], [run_it.panel, run_it.status], show_progress="hidden")
    ui.select.input(lambda j: render(j), ui.select, ui.outputs, show_progress="hidden").then(
        None, ui.select, None, js="(j) => { if (j) history.replaceState(null, '', '?job=' + j); }"
    )
    ui.cancel.click(lambda j: _toast(cancel(j)), ui.select, None).then(lambda j: render(j), ui.select, ui.outputs)
    ui.resume.click(lambda j: _toast(resume(j)), ui.select, None).then(lambda j: render(j), ui.select, ui.outputs)

    def on_next(job_id, rules):
        ok, message, new_id = next_run(job_id, rules)
        _toast((ok, message))
        return render(new_id if ok else job_id)

    ui.next.click(on_next, [ui.select, ui.advice], ui.outputs).then(
        None, ui.select, None, js="(j) => { if (j) history.replaceState(null, '', '?job=' + j); }"
    )
    sweep_page.wire_variations(ui.variations, ui.select)
    ui.compare_pick.input(compare_view, ui.compare_pick, [ui.compare_plot, ui.compare_table], show_progress="hidden")
