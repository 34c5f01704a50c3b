"""The Gradio app: the wizard and the jobs dashboard in one Blocks page, and its launch.

A job's page is addressed as `?job=ID`, so a refresh (or a link from the jobs list)
lands on the same job, read from the database. Heavy libraries are imported by the
engine only when a handler needs them, so the server listens within seconds.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import gradio as gr

from engine.data.dataset import load_tokenizer
from engine.model import default_model
from engine.model.introspect import resolve
from engine.paths import ASSETS
from jobs.launch import resident
from ui.web import first_run, jobs_page, library_page, live_numbers, playground, steps, sweep_page, wizard

TITLE = "LoRA Pilot"
CSS_PATH = ASSETS / "style.css"
SET_URL_JS = "(j) => { if (j) history.replaceState(null, '', '?job=' + j); }"


def theme() -> gr.themes.Base:
    # System fonts only: a web font would be a network fetch, and the app works offline.
    return gr.themes.Soft(
        primary_hue="blue",
        neutral_hue="slate",
        font=["system-ui", "Segoe UI", "sans-serif"],
        font_mono=["ui-monospace", "Menlo", "monospace"],
    )


def build_app() -> gr.Blocks:
    with gr.Blocks(title=TITLE, analytics_enabled=False) as app:
        gr.HTML(
            '<div class="lp-header"><span class="lp-logo">LoRA Pilot</span>'
            '<span class="lp-tagline">Fine-tune a language model with LoRA or QLoRA: see the cost before '
            "you spend it, then watch it learn.</span></div>"
        )
        with gr.Tabs(selected="wizard", elem_id="main-tabs") as tabs:
            with gr.Tab("New fine-tune", id="wizard"):
                wiz = wizard.build()
            with gr.Tab("Jobs", id="jobs", elem_id="jobs-tab"):
                jobs = jobs_page.build()
            with gr.Tab("Sweeps", id="sweeps", elem_id="sweeps-tab"):
                sweeps = sweep_page.build()
            with gr.Tab("Adapters", id="adapters", elem_id="adapters-tab") as lib_tab:
                lib = library_page.build()
            with gr.Tab("Playground", id="playground", elem_id="playground-tab") as pg_tab:
                pg = playground.build()
        job_id = gr.State(None)

        def on_load(request: gr.Request):
            wanted = (request.query_params.get("job") if request else None) or None
            target = wanted or jobs_page.latest_job_id()
            sweep_wanted = request.query_params.get("sweep") if request else None  # ?sweep=ID: sweep_page
            return [gr.Tabs(selected="jobs" if wanted else "sweeps" if sweep_wanted else "wizard")] + jobs_page.render(
                target
            )

        app.load(on_load, None, [tabs] + jobs.outputs, show_progress="hidden")

        app.load(sweep_page.on_load, None, sweeps.outputs, show_progress="hidden")
        app.load(lambda m: steps.model_facts(m)[0], wiz.model, wiz.facts)
        lib_tab.select(lib.refresh, None, lib.refresh_outputs, show_progress="hidden")
        pg_tab.select(pg.refresh, pg.base, pg.refresh_outputs, show_progress="hidden")

        def after_launch(new_id):
            if new_id is None:
                return [gr.skip()] + [gr.skip()] * len(jobs.outputs)
            return [gr.Tabs(selected="jobs")] + jobs_page.render(new_id)

        wiz.launch_btn.click(wiz.launch, None, [job_id, wiz.launch_notice], inputs_kwargs=wiz.launch_kwargs).then(
            after_launch, job_id, [tabs] + jobs.outputs
        ).then(None, jobs.select, None, js=SET_URL_JS)
    return app


def warm_up() -> None:
    """After the server listens: resolve the default model and load its tokenizer once, so the
    first model check and data check answer in a second instead of paying for the imports (and,
    on the very first run, the one-time conversion of the embedded model, started first, on its
    own thread: the data check shows its progress while it runs, see ui/web/first_run.py)."""
    try:
        if first_run.needs_wait(steps.default_model()):
            default_model.prepare_in_background()

        resolve(steps.default_model())
        load_tokenizer(steps.default_model())
        resident.ensure()  # the first job launched from the page then starts with its libraries imported
    except Exception:  # the page reports problems when the user asks; warming is best effort
        pass


def launch(
    host: str = "127.0.0.1",
    port: int = 7860,
    auth: tuple[str, str] | None = None,
    max_file_size: str | int | None = None,
    share: bool = False,
    block: bool = True,
    routes: list | None = None,
) -> gr.Blocks:
    """`routes`: more routes for the same server (the /v1 API), placed before Gradio's own, beside the
    review's numbers endpoint (ui/web/live_numbers.py)."""
    routes = [*live_numbers.routes(wizard.update_numbers), *(routes or [])]
    app = build_app()
    app.queue(default_concurrency_limit=8)
    app.launch(
        server_name=host,
        server_port=port,
        auth=auth,
        max_file_size=max_file_size,
        share=share,
        app_kwargs={"routes": routes},
        head=live_numbers.head(),
        prevent_thread_lock=True,
        quiet=True,
        show_error=False,
        theme=theme(),
        css_paths=[CSS_PATH] if Path(CSS_PATH).exists() else None,
        footer_links=[],
        auth_message="LoRA Pilot is shared on the network: sign in with the credentials it was started with.",
    )
    if os.environ.get("LORAPILOT_WARM", "1") != "0":
        threading.Thread(target=warm_up, name="warm-up", daemon=True).start()
    if block:
        app.block_thread()
    return app
