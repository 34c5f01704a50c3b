"""The adapter library tab: every adapter by base model; import a zip, rename, delete, merge, GGUF for
Ollama / llama.cpp, and the command that serves chosen adapters with vLLM on a GPU box.

Read from the database on every visit and after every change, like the jobs page.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import gradio as gr

from engine.adapters.merge import zip_folder
from engine.errors import UserError
from engine.gguf.writer import QUANTS
from engine.units import human_bytes
from jobs import gguf_export, library, outcome, workbench
from ui.web import html, run_elsewhere


def library_table() -> str:
    entries = library.list_adapters()
    if not entries:
        return html.notice("No adapters yet. A finished job adds its adapter here; or import a zip below.", "info")
    parts, by_base = [], {}
    for a in entries:
        by_base.setdefault(a.base_model, []).append(a)
    for base, items in by_base.items():
        rows = []
        for a in items:
            s = a.scores
            score = html.escape(f"{s['base']:.0f}% → {s['adapter']:.0f}%") if {"base", "adapter"} <= set(s) else "—"
            if {"base", "adapter"} <= set(s) and s["adapter"] < s["base"]:  # jobs.outcome.WORSE, in its colour
                score += " " + html.badge("succeeded", outcome.WORSE)
            source = f"job #{a.job_id}" if a.job_id else ("composed" if a.lineage else "imported")
            rows.append(
                (
                    a.id,
                    a.name,
                    a.description or a.skill or "—",
                    a.method,
                    a.r,
                    f"{a.alpha:g}",
                    a.targets.replace(",", ", "),
                    human_bytes(a.bytes),
                    score,
                    a.created_at.strftime("%Y-%m-%d %H:%M"),
                    source,
                )
            )
        label = base if len(base) < 60 else "…" + base[-57:]
        parts.append(
            f"<h4>Base: {html.escape(label)}</h4>"
            + html.table(
                [
                    "ID",
                    "Name",
                    "Skill / description",
                    "Method",
                    "r",
                    "alpha",
                    "Targets",
                    "Size",
                    "Held-out score",
                    "Created",
                    "Source",
                ],
                rows,
                cls="lp-table lp-library",
                raw_cols=[8],
            )
        )
    return "".join(parts)


def names() -> list[str]:
    return [a.name for a in library.list_adapters()]


def _after_change(message: str, kind: str = "ok"):
    choices = names()
    return (
        html.notice(message, kind),
        library_table(),
        gr.update(choices=choices, value=None),
        gr.update(visible=False),
    )


def import_zip(upload, name):
    try:
        if not upload:
            return (html.notice("Choose a .zip of a PEFT adapter folder first.", "error"),) + (gr.skip(),) * 3
        path = Path(upload if isinstance(upload, str) else upload.name)
        a = library.import_adapter(path, name=(name or "").strip() or None, description=f"uploaded {path.name}")
        return _after_change(f"Imported '{a.name}' (base {a.base_model}, r {a.r}, {human_bytes(a.bytes)}).")
    except Exception as exc:  # one line, never a traceback
        return (html.error_notice(exc),) + (gr.skip(),) * 3


def rename(current, new_name):
    try:
        if not current:
            return (html.notice("Pick an adapter to rename.", "error"),) + (gr.skip(),) * 3
        a = library.rename(current, new_name)
        return _after_change(f"Renamed to '{a.name}'.")
    except Exception as exc:
        return (html.error_notice(exc),) + (gr.skip(),) * 3


def ask_delete(current):
    if not current:
        return html.notice("Pick an adapter to delete.", "error"), gr.update(visible=False)
    return (
        html.notice(
            f"Delete '{current}'? Files in the library folder go too; a job's own folder stays. "
            "Click 'Yes, delete' to confirm.",
            "warn",
        ),
        gr.update(visible=True),
    )


def delete(current):
    try:
        a = library.delete(current)
        return _after_change(f"Deleted '{a.name}'.")
    except Exception as exc:
        return (html.error_notice(exc),) + (gr.skip(),) * 3


def merge(current):
    try:
        if not current:
            return html.notice("Pick an adapter to merge.", "error"), gr.update(visible=False)
        out = workbench.merged_dir(current)
        if not (out / "config.json").is_file():
            out = workbench.merge(current)
        zipped = zip_folder(out)
        return (
            html.notice(
                f"Merged model: {out}. It loads with AutoModelForCausalLM.from_pretrained and can be "
                "the base model of a new fine-tune (give this folder in step 1).",
                "ok",
            ),
            gr.update(value=str(zipped), visible=True),
        )
    except Exception as exc:
        return html.error_notice(exc), gr.update(visible=False)


def gguf(current, quant):
    """The adapter's job as GGUF for Ollama / llama.cpp (written and checked by jobs.gguf_export)."""
    try:
        if not current:
            return html.notice("Pick an adapter to export.", "error"), gr.update(visible=False)
        entry = library.find(current)
        if entry.job_id is None:
            raise UserError(
                "adapter",
                f"'{entry.name}' was imported or composed, not trained here; GGUF export "
                "starts from a job (its held-out prompts are the check). Merge it and train from the "
                "merged folder, or export the job it came from",
            )
        record = gguf_export.export(entry.job_id, quant)
        zipped = run_elsewhere.downloadable(gguf_export.download_zip(entry.job_id))
        return (
            html.notice(gguf_export.summary(record), "warn" if record["flagged"] else "ok"),
            gr.update(value=zipped, visible=True),
        )
    except Exception as exc:
        return html.error_notice(exc), gr.update(visible=False)


def serve_recipe(chosen):
    """The `vllm serve` command for the chosen adapters and what vLLM would refuse, with the fix."""

    if not chosen:
        return html.notice("Pick one or more adapters of one base to serve together.", "error")
    try:
        result = workbench.serve_recipe(list(chosen))
    except Exception as exc:  # one line, never a traceback
        return html.error_notice(exc)
    blocked = {i.adapter for i in result.issues if i.blocking}
    unchecked = [i for i in result.issues if not i.blocking]
    # one verdict: green only when every check ran and passed
    if blocked:
        verdict = html.notice(
            f"Left out of the command: {', '.join(sorted(blocked))}. vLLM cannot load them as "
            "they are; the fix is below.",
            "warn",
        )
    elif unchecked:
        verdict = html.notice("vLLM loads these adapters, but not every check could run; see the notes below.", "info")
    else:
        verdict = html.notice("vLLM can serve every adapter as it is.", "ok")
    notes = "".join(f"<li>{html.code_spans(line)}</li>" for line in result.text().splitlines()[2:])
    return (
        verdict + f"<pre class='lp-example' id='lib-recipe-command'>{html.escape(result.command())}</pre>"
        f"<ul class='lp-recipe-notes'>{notes}</ul>"
    )


def build() -> SimpleNamespace:
    ui = SimpleNamespace()
    ui.table = gr.HTML(elem_id="lib-table")
    ui.status = gr.HTML(elem_id="lib-status")
    with gr.Row():
        with gr.Column():
            gr.Markdown("**Import** a zip of a PEFT adapter folder (adapter_config.json + weights).")
            ui.upload = gr.File(label="Adapter zip", file_types=[".zip"], elem_id="lib-upload")
            ui.import_name = gr.Textbox(label="Name (optional)", elem_id="lib-import-name")
            ui.import_btn = gr.Button("Import", elem_id="lib-import")
        with gr.Column():
            ui.pick = gr.Dropdown(label="Adapter", choices=[], elem_id="lib-pick")
            with gr.Row():
                ui.new_name = gr.Textbox(label="New name", elem_id="lib-new-name")
                ui.rename_btn = gr.Button("Rename", elem_id="lib-rename")
            with gr.Row():
                ui.delete_btn = gr.Button("Delete…", variant="stop", elem_id="lib-delete")
                ui.confirm_btn = gr.Button("Yes, delete", variant="stop", visible=False, elem_id="lib-confirm")
            ui.merge_btn = gr.Button("Merge into a standalone model", elem_id="lib-merge")
            ui.merged_file = gr.File(label="Merged model (zip)", visible=False, elem_id="lib-merged")
            with gr.Row():
                ui.gguf_quant = gr.Dropdown(
                    list(QUANTS), value="f16", label="GGUF precision", elem_id="lib-gguf-quant"
                )
                ui.gguf_btn = gr.Button("For Ollama / llama.cpp", elem_id="lib-gguf")
            ui.gguf_file = gr.File(label="GGUF + Modelfile (zip)", visible=False, elem_id="lib-gguf-file")
    with gr.Accordion("Serve on a GPU box with vLLM", open=False, elem_id="lib-recipe"):
        gr.Markdown(
            "LoRA Pilot's `/v1` endpoint suits one machine; a GPU fleet runs vLLM. Pick the adapters "
            "to serve from one base: the command below loads them all, and adapters vLLM would refuse "
            "are named with the fix."
        )
        with gr.Row():
            ui.recipe_pick = gr.Dropdown(label="Adapters", choices=[], multiselect=True, elem_id="lib-recipe-pick")
            ui.recipe_btn = gr.Button("Write the vLLM command", elem_id="lib-recipe-go")
        ui.recipe_out = gr.HTML(elem_id="lib-recipe-out")
    ui.recipe_btn.click(serve_recipe, ui.recipe_pick, ui.recipe_out)
    changed = [ui.status, ui.table, ui.pick, ui.confirm_btn]
    ui.import_btn.click(import_zip, [ui.upload, ui.import_name], changed)
    ui.rename_btn.click(rename, [ui.pick, ui.new_name], changed)
    ui.delete_btn.click(ask_delete, ui.pick, [ui.status, ui.confirm_btn])
    ui.confirm_btn.click(delete, ui.pick, changed)
    ui.merge_btn.click(merge, ui.pick, [ui.status, ui.merged_file])
    ui.gguf_btn.click(gguf, [ui.pick, ui.gguf_quant], [ui.status, ui.gguf_file])
    ui.refresh = lambda: (library_table(), gr.update(choices=names()), gr.update(choices=names()))
    ui.refresh_outputs = [ui.table, ui.pick, ui.recipe_pick]
    return ui
