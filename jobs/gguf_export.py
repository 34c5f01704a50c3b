"""`export ID --as gguf`: a finished job as GGUF files for llama.cpp, Ollama and LM Studio, checked.

Into the job's `gguf/` folder it writes the merged model at the asked precision (a LoRA or
QLoRA adapter merged into its base as `merge` does; a full fine-tune as it is), the
adapter alone in llama.cpp's adapter format when the base is itself a GGUF file (the
embedded default's, or a user's .gguf), and Ollama Modelfiles. Then llama.cpp answers the
job's held-out prompts from each file (engine.gguf.check). The record goes to
`exports.json` in the job folder, which `show` and the job page read, and the model card
gains "Run it with Ollama / llama.cpp". If any step fails, the files this export wrote
are removed again.
"""

from __future__ import annotations

import json
import re
import shutil
import time
import zipfile
from pathlib import Path

from engine.adapters.merge import merge
from engine.errors import UserError
from engine.gguf import arch as archs
from engine.gguf import check, lora, modelfile, writer
from engine.model import default_model
from engine.train import artifacts
from engine.train.run import model_source
from jobs import store
from jobs.export import export_kind
from jobs.tables import JobStatus

RECORD = "exports.json"
FOLDER = "gguf"


def export(job_id, quant: str = "f16", progress=lambda line: None) -> dict:
    """Write and check the GGUF files of a succeeded job; return the record `show` gives as exports.gguf."""
    quant = writer.check_quant(quant)
    job = store.get_job(job_id)
    if job.status != JobStatus.SUCCEEDED:
        raise UserError("job", f"job {job.id} is {job.status}; only a succeeded job can be exported as GGUF")
    folder = store.job_dir(job.id).resolve()
    kind = export_kind(job.id)
    if kind is None:
        raise UserError("job", f"job {job.id} has no adapter or model weights in {folder}")
    plan = store.job_plan(job)
    base_gguf = _base_gguf(plan.model) if kind == "adapter" else None
    base_dir = Path(model_source(plan.model)) if kind == "adapter" else folder
    if not (base_dir / "config.json").is_file():  # a hub id: its config from the hub cache
        from huggingface_hub import snapshot_download

        try:
            base_dir = Path(snapshot_download(str(base_dir), allow_patterns=["*.json", "*.txt", "*.model"]))
        except Exception as exc:  # offline, gated, gone: one line naming the base
            raise UserError(
                "model",
                f"could not read the config of the base '{plan.model}' "
                f"({exc.__class__.__name__}); connect to the hub or set HF_TOKEN",
            ) from None
    archs.load(base_dir)  # an unsupported architecture is refused before any work
    start = time.monotonic()
    out = folder / FOLDER
    stem = f"lorapilot-job{job.id}"
    merged_file, adapter_file = out / f"{stem}-{quant}.gguf", out / f"{stem}-adapter.gguf"
    written: list[Path] = []
    try:
        progress("answering the held-out prompts with the model as LoRA Pilot runs it")
        held = check.held_out(plan, folder, plan.method)
        progress(f"writing {merged_file.name}")
        if kind == "adapter":
            staging = out / f".merged-{job.id}"
            shutil.rmtree(staging, ignore_errors=True)
            try:
                # fp32: the written file is only as precise as the merged weights it is quantized from
                merge(folder, plan.model, staging, adapter_name=job.name, method=plan.method, dtype="fp32")
                written.append(writer.write_model(staging, merged_file, quant, name=job.name))
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        else:
            written.append(writer.write_model(folder, merged_file, quant, name=job.name))
        if base_gguf is not None:
            progress(f"writing {adapter_file.name}")
            written.append(lora.write_adapter(folder, base_dir, adapter_file))
        written += _modelfiles(job, folder, out, merged_file, adapter_file if base_gguf else None, base_gguf, held)
        checks = []
        if held is not None:
            progress(f"llama.cpp answers {len(held.prompts)} held-out prompts from {merged_file.name}")
            checks.append({**check.check(merged_file, held), "kind": f"merged {quant}"})
            if base_gguf is not None:
                progress(f"llama.cpp answers them from {base_gguf.name} with {adapter_file.name}")
                checks.append({**check.check(base_gguf, held, adapter_file), "kind": "adapter"})
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    record = _record(job, quant, written, checks, held, time.monotonic() - start)
    _save(folder, record)
    artifacts.set_card_section(
        folder,
        modelfile.card_section(
            ollama_name(job), merged_file, adapter_file if base_gguf else None, base_gguf, summary(record)
        ),
    )
    return record


def _base_gguf(model: str) -> Path | None:
    """The base's own GGUF file, which the adapter GGUF applies to; None for a hub or folder base."""
    if model == "default":
        return default_model.embedded_gguf()
    if model.lower().endswith(".gguf"):
        return Path(model).expanduser().resolve()
    return None


def _modelfiles(
    job, folder: Path, out: Path, merged: Path, adapter: Path | None, base_gguf: Path | None, held
) -> list[Path]:
    from transformers import AutoTokenizer

    tokenizer = held.tokenizer if held is not None else AutoTokenizer.from_pretrained(folder)
    pieces = modelfile.chat_pieces(tokenizer)
    system = held.system if held is not None else None
    note = f"LoRA Pilot job {job.id} ({job.name}). Create it with: ollama create {ollama_name(job)} -f Modelfile"
    files = [modelfile.write(out / "Modelfile", modelfile.render(pieces, f"./{merged.name}", None, system, note))]
    if adapter is not None:
        note = f"LoRA Pilot job {job.id} ({job.name}): the base GGUF plus the adapter, as trained"
        files.append(
            modelfile.write(
                out / "Modelfile.adapter", modelfile.render(pieces, str(base_gguf), f"./{adapter.name}", system, note)
            )
        )
    return files


def _record(job, quant: str, files: list[Path], checks: list[dict], held, seconds: float) -> dict:
    main = checks[0] if checks else {}
    return {
        "files": [str(p) for p in files],
        "quant": quant,
        "agreement": main.get("agreement"),
        "exact_match": main.get("exact_match"),
        "job_exact_match": main.get("product_exact_match"),
        "seconds": round(seconds, 1),
        "flagged": any(c["flagged"] for c in checks),
        "checks": checks,
        "note": None
        if held is not None
        else "the job held out no rows with answers, so llama.cpp could not be "
        "compared with it; the files were written unchecked",
    }


def summary(record: dict) -> str:
    """One line per export for the card, the CLI and the job page."""
    if not record.get("checks"):
        return record.get("note") or "not checked"
    parts = [
        f"{c['kind']}: {c['agreement']}% of {c['rows']} held-out answers identical to LoRA Pilot's, "
        f"exact match {c['exact_match']}% (the job: {c['product_exact_match']}%)"
        for c in record["checks"]
    ]
    return "Checked with llama.cpp on the job's held-out prompts: " + "; ".join(parts) + "."


def _save(folder: Path, record: dict) -> None:
    path = folder / RECORD
    data = _load(folder)
    data["gguf"] = record
    data.setdefault("gguf_by_quant", {})[record["quant"]] = record
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2), encoding="utf-8")
    tmp.replace(path)


def _load(folder: Path) -> dict:
    try:
        return json.loads((folder / RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def exports(job) -> dict:
    """What `show --json` gives as `exports`: {"gguf": the latest GGUF export's record}, or {}."""
    data = _load(store.job_dir(job.id))
    return {"gguf": data["gguf"]} if "gguf" in data else {}


def ollama_name(job) -> str:
    return re.sub(r"[^a-z0-9._-]+", "-", (job.name or f"job{job.id}").lower()).strip("-._") or f"job{job.id}"


def download_zip(job_id) -> Path:
    """One zip for Ollama / LM Studio: the latest export's files (stored, not deflated: GGUF barely compresses)."""
    job = store.get_job(job_id)
    record = exports(job).get("gguf")
    if not record:
        raise UserError("job", f"job {job.id} has no GGUF export yet; run `python app.py export {job.id} --as gguf`")
    folder = store.job_dir(job.id).resolve()
    target = folder / f"lorapilot-job{job.id}-gguf.zip"
    tmp = target.with_suffix(".zip.part")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
        for name in record["files"]:
            path = Path(name)
            if path.is_file() and path.resolve().parent == folder / FOLDER:
                zf.write(path, arcname=f"{FOLDER}/{path.name}")
    tmp.replace(target)
    return target
