"""The downloadable artifact: one zip with the adapter and everything needed to use or judge it.

Only a fixed list of files from the job's own folder goes in, each checked to resolve inside
that folder, so a crafted name or a symlink can never pull another file into the zip.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from engine.errors import UserError
from jobs import store

REQUIRED = ("adapter_model.safetensors", "adapter_config.json")
OPTIONAL = ("plan.yaml", "README.md", "metrics.csv", "loss.png", "tokenizer_config.json",
            "tokenizer.json", "chat_template.jinja", "special_tokens_map.json")


def export_zip(job_id) -> Path:
    job = store.get_job(job_id)
    folder = store.job_dir(job.id).resolve()
    missing = [name for name in REQUIRED if not _inside(folder, name)]
    if missing:
        raise UserError("job", f"job {job.id} ({job.status}) has no {missing[0]} yet; "
                        "only a job that finished training has an adapter to export")
    target = folder / f"lorapilot-job{job.id}-adapter.zip"
    tmp = target.with_suffix(".zip.part")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name in REQUIRED + OPTIONAL:
            path = _inside(folder, name)
            if path:
                zf.write(path, arcname=name)
    tmp.replace(target)  # a reader never sees a half-written zip
    return target


def _inside(folder: Path, name: str) -> Path | None:
    path = (folder / name).resolve()
    if path.parent != folder or not path.is_file():
        return None
    return path
