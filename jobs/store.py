"""The job store: jobs and their metrics live in the database, never in a process's memory.

This module reads and writes the rows (jobs.tables) and the job's folder: each job has
$LORAPILOT_HOME/jobs/<id>/ holding job.log (the worker's stdout/stderr, tracebacks
included), checkpoints/ and the final artifacts. The database itself is jobs.db; the
JSON views of a job are jobs.views. The UI and the CLI only ever read rows and that folder.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from sqlalchemy import func, text, update
from sqlmodel import Session, col, delete, select

from engine import paths
from engine.errors import UserError
from engine.plan import TrainingPlan
from jobs.db import session
from jobs.tables import METRIC_FIELDS, Job, JobStatus, Metric, now

QUEUE_LOCK = 0x4C50_5155  # 'LPQU': the advisory lock key for the job queue on PostgreSQL


# --- job folder --------------------------------------------------------------------------


def job_dir(job_id: int) -> Path:
    path = paths.subdir("jobs") / str(int(job_id))
    path.mkdir(parents=True, exist_ok=True)
    return path


def log_path(job_id: int) -> Path:
    return job_dir(job_id) / "job.log"


def log_tail(job_id: int, lines: int = 50) -> str:
    path = log_path(job_id)
    if not path.exists():
        return ""
    with open(path, "rb") as fh:  # read only the end: logs of long runs grow
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        fh.seek(max(0, size - 256 * 1024))
        text = fh.read().decode("utf-8", errors="replace")
    return "\n".join(text.splitlines()[-lines:])


def append_log(job_id: int, line: str) -> None:
    with open(log_path(job_id), "a", encoding="utf-8") as fh:
        fh.write(f"[{now().isoformat(timespec='seconds')}] {line}\n")


# --- reads ---------------------------------------------------------------------------------


def get_job(job_id) -> Job:
    try:
        key = int(job_id)
    except (TypeError, ValueError):
        raise UserError("job", f"'{job_id}' is not a job id; ids are whole numbers (see `jobs`)") from None
    with session() as s:
        job = s.get(Job, key)
    if job is None:
        raise UserError("job", f"no job with id {key}; `python app.py jobs` lists them")
    return job


def list_jobs(status: str | None = None) -> list[Job]:
    with session() as s:
        query = select(Job).order_by(col(Job.id).desc())
        if status:
            query = query.where(Job.status == status)
        return list(s.exec(query))


def job_metrics(job_id: int) -> list[Metric]:
    with session() as s:
        return list(s.exec(select(Metric).where(col(Metric.job_id) == int(job_id)).order_by(col(Metric.step))))


def job_plan(job: Job) -> TrainingPlan:
    return TrainingPlan.build(**json.loads(job.plan_json))


def job_estimate(job: Job) -> dict | None:
    return json.loads(job.estimate_json) if job.estimate_json else None


def job_evaluation(job: Job) -> dict | None:
    return json.loads(job.evaluation_json) if job.evaluation_json else None


# --- writes --------------------------------------------------------------------------------


def next_queue_seq():
    """SQL for 'one past the last place in the queue', evaluated inside the writing statement."""
    return select(func.coalesce(func.max(Job.queue_seq), 0) + 1).scalar_subquery()


def _hold_queue(s: Session) -> None:
    """Make places in the queue follow commit order on every database.

    SQLite runs one writer at a time already. PostgreSQL runs concurrent INSERTs side by side, so
    two could read the same max(queue_seq), and ids (taken from a sequence) could disagree with
    queue places; a transaction-scoped advisory lock orders the writers that touch the queue.
    """
    if s.get_bind().dialect.name == "postgresql":
        s.connection().execute(text("SELECT pg_advisory_xact_lock(:key)").bindparams(key=QUEUE_LOCK))


def insert_job(job: Job) -> Job:
    with session() as s:
        _hold_queue(s)
        job.queue_seq = next_queue_seq()  # a SQL expression: computed atomically by the INSERT
        s.add(job)
        s.commit()
        s.refresh(job)
        job.artifact_dir = str(job_dir(job.id))
        s.add(job)
        s.commit()
        s.refresh(job)
    return job


def update_job(job_id: int, only_if_status: tuple[str, ...] | None = None, **values) -> bool:
    """One UPDATE statement; with `only_if_status`, a compare-and-set on the status.

    Transitions are conditional so that two processes (a dispatcher reconciling, a worker
    finishing) can never overwrite each other's verdict. Returns whether a row changed.
    """
    stmt = update(Job).where(col(Job.id) == int(job_id)).values(**values)
    if only_if_status:
        stmt = stmt.where(col(Job.status).in_(only_if_status))
    with session() as s:
        if "queue_seq" in values:  # a re-queue takes a new place: in commit order, as an insert does
            _hold_queue(s)
        result = s.exec(stmt)
        s.commit()
        return result.rowcount == 1


def claim_next(slots: int) -> int | None:
    """Atomically move the oldest queued job to running if fewer than `slots` run.

    One UPDATE with sub-selects: SQLite serialises writers, so two dispatchers that race
    here claim different jobs (or none), and a job is never started twice.
    """
    oldest = (
        select(Job.id).where(col(Job.status) == JobStatus.QUEUED).order_by(col(Job.queue_seq), col(Job.id)).limit(1)
    )
    running = select(Job.id).where(Job.status == JobStatus.RUNNING)
    running_count = select(func.count()).select_from(running.subquery()).scalar_subquery()
    stmt = (
        update(Job)
        .where(col(Job.id) == oldest.scalar_subquery(), col(Job.status) == JobStatus.QUEUED, running_count < slots)
        .values(status=JobStatus.RUNNING, started_at=now(), pid=None, finished_at=None, ray_job_id=None)
        .returning(col(Job.id))
    )
    with session() as s:
        row = s.exec(stmt).first()
        s.commit()
    return row[0] if row else None


def record_metrics(job_id: int, event: dict) -> None:
    """Store one metrics row (engine.train.events.Metrics.values()); a train log and an eval log at the
    same step merge into one row."""
    step = int(event["step"])
    values = {k: _num(event.get(k)) for k in METRIC_FIELDS if event.get(k) is not None}
    with session() as s:
        row = s.exec(select(Metric).where(Metric.job_id == int(job_id), Metric.step == step)).first()
        if row is None:
            row = Metric(job_id=int(job_id), step=step)
        for key, value in values.items():
            setattr(row, key, value)
        s.add(row)
        s.commit()


def delete_metrics_after(job_id: int, step: int) -> int:
    """Drop rows past the checkpoint a resumed run restarts from, so no step appears twice."""
    with session() as s:
        result = s.exec(delete(Metric).where(col(Metric.job_id) == int(job_id), col(Metric.step) > step))
        s.commit()
        return result.rowcount


def _num(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return None
