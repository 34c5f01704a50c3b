"""The adapter library: every adapter the product knows, in the jobs database.

An entry comes from a succeeded job (`register_job_adapter`, called by the worker), an
imported folder or zip (`import_adapter`, copied under $LORAPILOT_HOME/adapters/), or a
composition / merge made here. Names are unique and editable. Deleting an entry removes
files only under $LORAPILOT_HOME/adapters/ — a job's folder belongs to the job, and the
files of a queued or running job are never touched.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import zipfile
from pathlib import Path

from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select

from engine import paths
from engine.adapters import folder
from engine.data import demo
from engine.errors import UserError
from jobs import outcome, store, views
from jobs.db import session
from jobs.tables import Adapter

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
NAME_RULE = "1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"


def adapters_dir() -> Path:
    return paths.subdir("adapters")


# --- reads ---------------------------------------------------------------------------------
def list_adapters(base_model: str | None = None) -> list[Adapter]:
    with session() as s:
        query = select(Adapter).order_by(col(Adapter.base_model), col(Adapter.id))
        if base_model:
            query = query.where(Adapter.base_model == base_model)
        return list(s.exec(query))


def find(name_or_id) -> Adapter:
    key = str(name_or_id).strip()
    with session() as s:
        found = s.exec(select(Adapter).where(Adapter.name == key)).first()
        if found is None and key.isdigit():
            found = s.get(Adapter, int(key))
    if found is None:
        names = [a.name for a in list_adapters()]
        known = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "") if names else "none yet"
        raise UserError("adapter", f"no adapter named or numbered '{key}'; known: {known}")
    return found


def summary(a: Adapter) -> dict:
    """The stable JSON keys of `adapters --json`."""
    return {
        "id": a.id,
        "name": a.name,
        "base_model": a.base_model,
        "path": a.path,
        "method": a.method,
        "r": a.r,
        "alpha": a.alpha,
        "targets": a.targets.split(",") if a.targets else [],
        "bytes": a.bytes,
        "skill": a.skill,
        "description": a.description,
        "scores": a.scores,
        "job_id": a.job_id,
        "lineage": a.lineage,
        "created_at": views.iso(a.created_at),
    }


# --- writes --------------------------------------------------------------------------------
def check_name(name: str) -> str:
    name = (name or "").strip()
    if not NAME_RE.match(name):
        raise UserError("name", f"'{name}' is not a usable adapter name; use {NAME_RULE}")
    return name


def _free_name(wanted: str) -> str:
    base = re.sub(r"[^A-Za-z0-9._-]+", "-", wanted).strip("-._")[:56] or "adapter"
    taken = {a.name for a in list_adapters()}
    name, n = base, 2
    while name in taken:
        name, n = f"{base}-{n}", n + 1
    return name


def add(entry: Adapter) -> Adapter:
    with session() as s:
        s.add(entry)
        try:
            s.commit()
        except IntegrityError:
            s.rollback()
            raise UserError("name", f"an adapter named '{entry.name}' exists; pick another name") from None
        s.refresh(entry)
    return entry


def register_job_adapter(job) -> Adapter | None:
    """The library entry of a succeeded LoRA/QLoRA job (made once; None for full fine-tunes)."""

    with session() as s:
        existing = s.exec(select(Adapter).where(Adapter.job_id == job.id)).first()
    if existing is not None:
        return existing
    plan = store.job_plan(job)
    if plan.method == "full" or not job.artifact_dir:
        return None
    info = folder.inspect(Path(job.artifact_dir), base=plan.model)  # the one reader of adapter_config.json

    skill = demo.skill_of(plan)
    # held-out exact match of every job (jobs.outcome), not only a demo skill's
    scores = {k: v for k, v in zip(("base", "adapter"), outcome.heldout(job)) if v is not None}
    return add(
        Adapter(
            name=_free_name(job.name or f"job-{job.id}"),
            base_model=plan.model,
            path=str(job.artifact_dir),
            method=plan.method,
            r=info.r or plan.r,
            alpha=info.alpha or plan.alpha,
            targets=",".join(info.targets),
            bytes=info.bytes,
            skill=skill.name if skill else None,
            description=skill.description if skill else f"trained on {plan.dataset}",
            scores_json=json.dumps(scores) if scores else None,
            job_id=job.id,
        )
    )


def import_adapter(
    path, name: str | None = None, base: str | None = None, description: str = "", skill: str | None = None
) -> Adapter:
    """Copy a PEFT adapter folder (or a .zip of one) into the library after checking it.

    Checked before anything is written: the config is LoRA, the weights exist, the base
    resolves here and has every adapted module at the adapter's sizes. On any failure
    nothing stays behind (no folder, no row).
    """

    src = Path(str(path)).expanduser()
    if skill is not None:
        demo.get(skill)  # a known demo skill: its held-out split scores the adapter
    if name is not None:
        name = check_name(name)
    default_name = src.stem if src.suffix.lower() == ".zip" else src.name
    with tempfile.TemporaryDirectory(dir=adapters_dir(), prefix=".import-") as tmp:
        if src.is_file() and src.suffix.lower() == ".zip":
            src = _unzip(src, Path(tmp) / "unzipped")
        elif src.is_file():
            raise UserError("adapter", f"{src} is a file but not a .zip; give an adapter folder or a .zip of one")
        info = folder.inspect(src, base=base)
        folder.check_fits(info)
        name = name or _free_name(default_name)
        if any(a.name == name for a in list_adapters()):
            raise UserError("name", f"an adapter named '{name}' exists; pick another with --name")
        staged = Path(tmp) / "staged"
        # the adapter and its companions; a trainer checkpoint's optimizer/scheduler state is not the adapter
        shutil.copytree(
            src,
            staged,
            ignore=shutil.ignore_patterns(
                "checkpoints", "*.zip", "optimizer.pt", "scheduler.pt", "rng_state*.pth", "training_args.bin"
            ),
        )
        dest = _unique_dir(name)
        os.replace(staged, dest)  # same file system: atomic
        try:
            return add(
                Adapter(
                    name=name,
                    base_model=info.base_model,
                    path=str(dest),
                    method=info.method,
                    r=info.r,
                    alpha=info.alpha,
                    targets=",".join(info.targets),
                    bytes=folder.folder_bytes(dest),
                    skill=skill,
                    description=description or f"imported from {path}",
                )
            )
        except BaseException:
            shutil.rmtree(dest, ignore_errors=True)
            raise


def _unique_dir(name: str) -> Path:
    dest, n = adapters_dir() / name, 2
    while dest.exists():
        dest, n = adapters_dir() / f"{name}-{n}", n + 1
    return dest


def _unzip(zip_path: Path, out: Path) -> Path:
    """Extract safely; return the folder holding adapter_config.json (the root or its one subfolder)."""
    try:
        with zipfile.ZipFile(zip_path) as zf:
            out.mkdir(parents=True)
            for member in zf.infolist():
                target = (out / member.filename).resolve()
                if not target.is_relative_to(out.resolve()):
                    raise UserError(
                        "adapter", f"{zip_path.name} holds a path outside the archive ({member.filename}); refusing it"
                    )
            zf.extractall(out)
    except zipfile.BadZipFile:
        raise UserError("adapter", f"{zip_path.name} is not a readable zip file") from None
    for candidate in [out, *sorted(p for p in out.iterdir() if p.is_dir())]:
        if (candidate / "adapter_config.json").is_file():
            return candidate
    raise UserError("adapter", f"{zip_path.name} holds no adapter_config.json; it is not a PEFT adapter zip")


def rename(name_or_id, new_name: str) -> Adapter:
    entry = find(name_or_id)
    new_name = check_name(new_name)
    if new_name == entry.name:
        return entry
    with session() as s:
        row = s.get(Adapter, entry.id)
        row.name = new_name
        s.add(row)
        try:
            s.commit()
        except IntegrityError:
            raise UserError("name", f"an adapter named '{new_name}' exists; pick another name") from None
        s.refresh(row)
        return row


def delete(name_or_id) -> Adapter:
    """Remove the entry; its files too when they live in the library's own folder."""
    entry = find(name_or_id)
    if entry.job_id is not None:
        try:
            job = store.get_job(entry.job_id)
        except UserError:
            job = None
        if job is not None and job.status in ("queued", "running"):
            raise UserError(
                "adapter",
                f"'{entry.name}' belongs to job {job.id}, which is {job.status}; cancel or wait for the job first",
            )
    with session() as s:
        row = s.get(Adapter, entry.id)
        if row is not None:
            s.delete(row)
            s.commit()
    owned = Path(entry.path).resolve()
    if owned.is_relative_to(adapters_dir().resolve()) and owned != adapters_dir().resolve():
        shutil.rmtree(owned, ignore_errors=True)
    return entry


def register_finished(job_id: int) -> None:
    """Worker hook: add a succeeded job's adapter; a failure here is logged, never the job's verdict."""
    try:
        entry = register_job_adapter(store.get_job(job_id))
        if entry is not None:
            store.append_log(job_id, f"adapter library: added as '{entry.name}' (id {entry.id})")
    except Exception as exc:
        store.append_log(job_id, f"adapter library: not added ({exc})")
