"""The job store: jobs and their metrics live in the database, never in a process's memory.

SQLite in WAL mode at $LORAPILOT_HOME/lorapilot.db by default (readers never block the
worker's writes; `busy_timeout` makes concurrent writers wait instead of failing), or any
SQLAlchemy URL in DATABASE_URL. Each job also has a folder, $LORAPILOT_HOME/jobs/<id>/,
holding job.log (the worker's stdout/stderr, tracebacks included), checkpoints/ and the
final artifacts. The UI and the CLI only ever read rows and that folder.
"""

from __future__ import annotations

import json
import os
import threading
from contextlib import contextmanager
from dataclasses import fields
from datetime import datetime, timezone
from enum import StrEnum
from pathlib import Path

from sqlalchemy import event, func, text, update
from sqlmodel import Field, Session, SQLModel, create_engine, delete, select

from engine import paths
from engine.errors import UserError
from engine.plan import TrainingPlan
from engine.train.events import Metrics
from jobs import database_driver, stall


class JobStatus(StrEnum):
    """A job's state. A StrEnum, so the column stays plain text and compares equal to its string."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"


STATUSES = tuple(JobStatus)
FINISHED = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.INTERRUPTED)


QUEUE_LOCK = 0x4C50_5155  # 'LPQU': the advisory lock key for the job queue on PostgreSQL


def now() -> datetime:
    return datetime.now(timezone.utc)


class Job(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    name: str = ""
    plan_json: str
    status: str = Field(default=JobStatus.QUEUED, index=True)  # a JobStatus value
    created_at: datetime = Field(default_factory=now)
    # Place in the queue, assigned by the database in the statement that (re-)queues the job,
    # so it follows commit order even when submitters race; a resumed job goes to the back.
    queue_seq: int | None = Field(default=None, index=True)
    queued_at: datetime = Field(default_factory=now)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    pid: int | None = None
    device: str | None = None
    step: int = 0
    total_steps: int | None = None
    progress: float = 0.0
    eta_seconds: float | None = None
    error: str | None = None  # for humans; the traceback is in job.log only
    artifact_dir: str | None = None
    estimate_json: str | None = None
    estimated_peak_bytes: int | None = None
    measured_peak_bytes: int | None = None
    base_score: float | None = None
    adapter_score: float | None = None
    cancel_requested: bool = False
    # what the job is doing now (engine phases: loading model, ..., saving) and since when
    phase: str | None = None
    phase_started_at: datetime | None = None
    evaluation_json: str | None = None  # base vs adapter on held-out rows (engine.evaluate.heldout)
    parent_id: int | None = Field(default=None, index=True)  # the run whose advice this one follows
    # The step heartbeat: when the worker last finished a step, and its measured pace (jobs.stall).
    heartbeat_at: datetime | None = None
    step_seconds: float | None = None
    host: str | None = None  # the machine the worker ran on
    ray_job_id: str | None = None  # set when the job was submitted to a Ray cluster


class Metric(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    job_id: int = Field(index=True, foreign_key="job.id")
    step: int
    epoch: float | None = None
    loss: float | None = None
    eval_loss: float | None = None
    learning_rate: float | None = None
    grad_norm: float | None = None
    tokens_per_second: float | None = None
    time: float | None = None


# the columns a metrics event fills: the trainer's Metrics fields, owned by engine.train.events
METRIC_FIELDS = tuple(f.name for f in fields(Metrics) if f.name != "step")

# --- engine and sessions ---------------------------------------------------------------

_engines: dict[str, object] = {}
_lock = threading.Lock()


def database_url() -> str:
    return os.environ.get("DATABASE_URL") or f"sqlite:///{paths.home() / 'lorapilot.db'}"


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA busy_timeout=30000")  # first: the WAL switch itself may need to wait
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def db_engine():
    """One SQLAlchemy engine per URL (tests switch LORAPILOT_HOME between runs), schema upgraded once."""
    url = database_url()
    with _lock:
        eng = _engines.get(url)
        if eng is not None:
            return eng
        database_driver.check(url)  # a driver that is not installed: one line naming it, not ModuleNotFoundError
        if url.startswith("sqlite"):
            eng = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
            event.listen(eng, "connect", _sqlite_pragmas)
        else:
            eng = create_engine(url, pool_pre_ping=True)
        from jobs import schema

        schema.upgrade(eng)  # Alembic: creates a new database, migrates an older one, keeps its jobs
        _engines[url] = eng
        return eng


def dispose(url: str) -> None:
    """Close the pooled connections of one database (a test's throwaway server, say)."""
    with _lock:
        eng = _engines.pop(url, None)
    if eng is not None:
        eng.dispose()


@contextmanager
def session():
    with Session(db_engine(), expire_on_commit=False) as s:
        yield s


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
        query = select(Job).order_by(Job.id.desc())
        if status:
            query = query.where(Job.status == status)
        return list(s.exec(query))


def job_metrics(job_id: int) -> list[Metric]:
    with session() as s:
        return list(s.exec(select(Metric).where(Metric.job_id == int(job_id)).order_by(Metric.step)))


def job_plan(job: Job) -> TrainingPlan:
    return TrainingPlan.build(**json.loads(job.plan_json))


def job_estimate(job: Job) -> dict | None:
    return json.loads(job.estimate_json) if job.estimate_json else None


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
        s.exec(text("SELECT pg_advisory_xact_lock(:key)").bindparams(key=QUEUE_LOCK))


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
    stmt = update(Job).where(Job.id == int(job_id)).values(**values)
    if only_if_status:
        stmt = stmt.where(Job.status.in_(only_if_status))
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
    oldest = select(Job.id).where(Job.status == JobStatus.QUEUED).order_by(Job.queue_seq, Job.id).limit(1)
    running = select(Job.id).where(Job.status == JobStatus.RUNNING)
    running_count = select(func.count()).select_from(running.subquery()).scalar_subquery()
    stmt = (
        update(Job)
        .where(Job.id == oldest.scalar_subquery(), Job.status == JobStatus.QUEUED, running_count < slots)
        .values(status=JobStatus.RUNNING, started_at=now(), pid=None, finished_at=None, ray_job_id=None)
        .returning(Job.id)
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
        result = s.exec(delete(Metric).where(Metric.job_id == int(job_id), Metric.step > step))
        s.commit()
        return result.rowcount


def _num(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


# --- JSON views (the stable keys of `jobs --json` and `show --json`) -------------------

def _iso(value: datetime | None) -> str | None:
    return value.replace(tzinfo=timezone.utc).isoformat() if value else None


def job_summary(job: Job) -> dict:
    return {
        "id": job.id, "name": job.name, "status": job.status,
        "created_at": _iso(job.created_at), "started_at": _iso(job.started_at),
        "finished_at": _iso(job.finished_at), "step": job.step, "total_steps": job.total_steps,
        "progress": job.progress, "eta_seconds": job.eta_seconds,
        "base_score": job.base_score, "adapter_score": job.adapter_score,
        "error": job.error, "artifact_dir": job.artifact_dir,
        "stalled_since": _iso(stall.stalled_since(job)),
    }


def job_evaluation(job: Job) -> dict | None:
    return json.loads(job.evaluation_json) if job.evaluation_json else None


def phase_seconds(job: Job) -> float | None:
    """How long the running job has been in its current phase."""
    if job.status != "running" or not job.phase or not job.phase_started_at:
        return None
    return max(0.0, (now() - job.phase_started_at.replace(tzinfo=timezone.utc)).total_seconds())


def job_detail(job: Job) -> dict:
    from engine.advice import diagnose
    from jobs import runs

    detail = job_summary(job)
    findings = runs.findings(job)
    detail.update({
        "phase": job.phase if job.status == "running" else None, "phase_seconds": phase_seconds(job),
        "parent_id": job.parent_id, "evaluation": job_evaluation(job),
        "verdict": diagnose.verdict(findings, finished=job.status == "succeeded"),
        "advice": [f.to_json() for f in findings],
        "pid": job.pid, "device": job.device, "cancel_requested": job.cancel_requested,
        "host": job.host, "ray_job_id": job.ray_job_id,
        "plan": json.loads(job.plan_json), "estimate": job_estimate(job),
        "estimated_peak_bytes": job.estimated_peak_bytes, "measured_peak_bytes": job.measured_peak_bytes,
        "metrics": runs.metric_dicts(job.id),
    })
    return detail


from jobs import library  # noqa: E402,F401 - registers the adapter table beside the job tables (one schema)
