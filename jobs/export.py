"""The downloadable artifact: one zip with the weights and everything needed to use or judge them.

A LoRA/QLoRA job exports its adapter; a full fine-tune exports its model folder (weights,
config, tokenizer, chat template). Both carry the card, plan, metrics and loss curve.
Only a fixed list of files (and the shard pattern of a sharded model) from the job's own
folder goes in, each checked to resolve inside that folder, so a crafted name or a symlink
can never pull another file into the zip.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

from engine.errors import UserError
from engine.train import resolved, script
from jobs import store

ADAPTER = ("adapter_model.safetensors", "adapter_config.json")
MODEL = ("config.json",)  # plus the weights: model.safetensors, or shards with their index
MODEL_OPTIONAL = ("generation_config.json", "model.safetensors", "model.safetensors.index.json")
_SHARD = re.compile(r"^model-\d{5}-of-\d{5}\.safetensors$")
COMMON = (
    "plan.yaml",
    "README.md",
    "metrics.csv",
    "loss.png",
    "tokenizer_config.json",
    "tokenizer.json",
    "chat_template.jinja",
    "special_tokens_map.json",
)


def code(job_id, kind: str) -> str:
    """The job as `kind` (python | yaml | cli), stating what the job resolved once it has (resolved.json)."""
    return codes(job_id, (kind,))[kind]


def codes(job_id, kinds=script.FORMATS) -> dict[str, str]:
    """The job as each of `kinds`, from one read of its plan and its record."""
    job = store.get_job(job_id)
    plan, record = store.job_plan(job), resolved.read(store.job_dir(job.id))
    return {kind: script.render(plan, kind, record) for kind in kinds}


def export_kind(job_id) -> str | None:
    """'adapter', 'model' (a full fine-tune's folder) or None when the job has no weights yet."""
    folder = store.job_dir(store.get_job(job_id).id).resolve()
    return _kind(folder)


def export_zip(job_id) -> Path:
    job = store.get_job(job_id)
    folder = store.job_dir(job.id).resolve()
    kind = _kind(folder)
    if kind is None:
        raise UserError(
            "job",
            f"job {job.id} ({job.status}) has no adapter_model.safetensors or model "
            "weights yet; only a job that finished training has something to export",
        )
    if kind == "adapter":
        names = list(ADAPTER)
    else:
        shards = sorted(p.name for p in folder.iterdir() if _SHARD.match(p.name))
        names = list(MODEL) + list(MODEL_OPTIONAL) + shards
    target = folder / zip_name(job.id, kind)
    tmp = target.with_suffix(".zip.part")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name in names + list(COMMON):
            path = _inside(folder, name)
            if path:
                zf.write(path, arcname=name)
    tmp.replace(target)  # a reader never sees a half-written zip
    return target


def zip_name(job_id: int, kind: str) -> str:
    return f"lorapilot-job{int(job_id)}-{kind}.zip"


def _kind(folder: Path) -> str | None:
    if all(_inside(folder, n) for n in ADAPTER):
        return "adapter"
    if _inside(folder, "config.json") and (
        _inside(folder, "model.safetensors") or _inside(folder, "model.safetensors.index.json")
    ):
        return "model"
    return None


def _inside(folder: Path, name: str) -> Path | None:
    path = (folder / name).resolve()
    if path.parent != folder or not path.is_file():
        return None
    return path
