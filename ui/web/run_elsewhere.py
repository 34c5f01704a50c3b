"""How to run a finished job: the playground, /v1, Ollama / LM Studio (GGUF), vLLM.

The job page shows it for a succeeded job with the job's own names filled in, and the
"For Ollama / llama.cpp" button writes the GGUF files, has llama.cpp answer the held-out
prompts, and offers them as one download; the wizard's last screen says the same in
general words before a job exists.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from types import SimpleNamespace

import gradio as gr

from engine.errors import UserError
from engine.gguf.writer import QUANTS
from jobs import gguf_export, store
from jobs.tables import JobStatus
from ui.web import html

_DOWNLOADS = Path(tempfile.gettempdir()) / "lorapilot-downloads"


def after_training_html() -> str:
    """The wizard's last screen: what a finished job can be used with, before one exists."""
    items = [
        "<b>Playground</b> (Adapters → Playground tab): the base and your adapter answer side by side.",
        "<b>OpenAI API</b>: <code>python app.py serve</code> answers <code>/v1/chat/completions</code> with the "
        "adapter's name as the <code>model</code>.",
        "<b>Ollama / LM Studio / llama.cpp</b>: the job page's <i>For Ollama / llama.cpp</i> button (or "
        "<code>python app.py export ID --as gguf</code>) writes GGUF files and a Modelfile, checked by llama.cpp "
        "on the job's held-out prompts.",
        "<b>vLLM on a GPU box</b>: <code>python app.py serve-recipe NAME</code> prints the <code>vllm serve</code> "
        "command.",
    ]
    return (
        "<div class='lp-after' id='after-training'><b>When the job has finished, run it:</b><ul>"
        + "".join(f"<li>{i}</li>" for i in items)
        + "</ul></div>"
    )


def how_to_run_html(job_id) -> str:
    """The job page's "Run it" panel: commands with this job's names, and the last GGUF check."""
    if job_id in (None, ""):
        return ""
    try:
        job = store.get_job(job_id)
        plan = store.job_plan(job)
    except UserError:
        return ""
    if job.status != JobStatus.SUCCEEDED:
        return html.notice(
            "Once the job has succeeded, this panel says how to run it: playground, /v1, Ollama / LM Studio, vLLM.",
            "info",
        )
    full = plan.method == "full"
    name = job.name
    folder = store.job_dir(job.id)
    rows = [
        (
            "Playground",
            "the Playground tab: pick the base and this job's adapter"
            if not full
            else f"give the folder {folder} as the base model in the Playground tab",
        ),
        (
            "OpenAI API (/v1)",
            (
                f"python app.py serve, then {name} as the model of /v1/chat/completions"
                if not full
                else f"python app.py serve --model {folder}"
            ),
        ),
        (
            "Ollama / LM Studio",
            f"the button below, or python app.py export {job.id} --as gguf; then "
            f"cd {folder}/gguf && ollama create {gguf_export.ollama_name(job)} -f Modelfile",
        ),
        ("vLLM on a GPU box", f"python app.py serve-recipe {name}" if not full else f"vllm serve {folder}"),
    ]
    record = gguf_export.exports(job).get("gguf")
    check = ""
    if record:
        kind = "warn" if record.get("flagged") else "ok"
        check = html.notice(
            gguf_export.summary(record) + f" Export took {record['seconds']} s.",
            kind,
            "Flagged:" if record.get("flagged") else "GGUF export:",
        )
        for c in record.get("checks", []):
            if c.get("flagged"):
                check += html.notice(
                    f"{Path(c['file']).name}: first difference at {c.get('first_difference')}", "warn"
                )
    return html.facts_table(rows) + check


def export_gguf(job_id, quant: str, progress=gr.Progress()):  # noqa: B008 - how Gradio injects it
    """(panel HTML, download update) after writing and checking the GGUF files."""
    if job_id in (None, ""):
        return html.notice("Pick a job first.", "error"), gr.update(visible=False)
    try:
        progress(0.1, desc="Writing GGUF files and checking them with llama.cpp (a minute or more)")
        gguf_export.export(job_id, quant, progress=lambda line: progress(0.5, desc=line))
        return how_to_run_html(job_id), gr.update(value=downloadable(gguf_export.download_zip(job_id)), visible=True)
    except Exception as exc:  # one line, never a traceback
        return html.error_notice(exc), gr.update(visible=False)


def downloadable(src: Path) -> str:
    """A copy under a temp folder Gradio may serve (the job folder is not one)."""
    dest = _DOWNLOADS / src.parent.name / src.name
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dest)
    return str(dest)


def build(select) -> SimpleNamespace:
    """The "Run it" accordion of the job page; `select` is the page's job dropdown."""
    ui = SimpleNamespace()
    with gr.Accordion("Run it: playground, /v1, Ollama / LM Studio, vLLM", open=True, elem_id="run-it"):
        ui.panel = gr.HTML(elem_id="run-it-panel")
        with gr.Row(elem_classes="lp-actions"):
            ui.quant = gr.Dropdown(
                list(QUANTS), value="f16", label="GGUF precision", elem_id="gguf-quant", min_width=120
            )
            ui.button = gr.Button("For Ollama / llama.cpp", elem_id="gguf-export", min_width=200)
            ui.file = gr.DownloadButton("Download GGUF + Modelfile", visible=False, elem_id="gguf-download")
    ui.button.click(export_gguf, [select, ui.quant], [ui.panel, ui.file])
    ui.status = gr.State(None)

    def refresh(job_id, last):
        try:
            status = store.get_job(job_id).status if job_id not in (None, "") else None
        except UserError:
            status = None
        key = (job_id, status)
        return (gr.skip(), last) if key == last else (how_to_run_html(job_id), key)

    select.change(refresh, [select, ui.status], [ui.panel, ui.status], show_progress="hidden")
    ui.refresh = refresh
    return ui
