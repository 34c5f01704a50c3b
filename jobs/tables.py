"""The job store's tables: the SQLModel classes and nothing that reads or writes them.

Importing this module registers every table on `SQLModel.metadata` (the schema Alembic
migrates, jobs.schema), so the schema is known without importing the modules that use it.
Times are stored and read back in UTC: `UTCDateTime` attaches the zone in one place.
"""

from __future__ import annotations

import json
from dataclasses import fields
from datetime import UTC, datetime
from enum import StrEnum

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from engine.train.events import Metrics


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


def now() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(sa.types.TypeDecorator):
    """A timestamp in UTC both ways. SQLite keeps no zone (a value comes back naive) and PostgreSQL
    gives the session's zone back; every time the product writes is UTC, so reads say so."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is not None and value.tzinfo is not None:
            value = value.astimezone(UTC)
        return value

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _when(**kwargs):
    return Field(sa_type=UTCDateTime, **kwargs)


class Job(SQLModel, table=True):
    # None until the row is inserted (the database assigns it); typed int, as every reader sees it
    id: int = Field(default=None, primary_key=True)
    name: str = ""
    plan_json: str
    status: str = Field(default=JobStatus.QUEUED, index=True)  # a JobStatus value
    created_at: datetime = _when(default_factory=now)
    # Place in the queue, assigned by the database in the statement that (re-)queues the job,
    # so it follows commit order even when submitters race; a resumed job goes to the back.
    queue_seq: int | None = Field(default=None, index=True)
    queued_at: datetime = _when(default_factory=now)
    started_at: datetime | None = _when(default=None)
    finished_at: datetime | None = _when(default=None)
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
    phase_started_at: datetime | None = _when(default=None)
    evaluation_json: str | None = None  # base vs adapter on held-out rows (engine.evaluate.heldout)
    parent_id: int | None = Field(default=None, index=True)  # the run whose advice this one follows
    # The step heartbeat: when the worker last finished a step, and its measured pace (jobs.stall).
    heartbeat_at: datetime | None = _when(default=None)
    step_seconds: float | None = None
    host: str | None = None  # the machine the worker ran on
    ray_job_id: str | None = None  # set when the job was submitted to a Ray cluster
    sweep_id: int | None = Field(default=None, index=True)  # the search this job is a trial of (jobs.sweep)


class Metric(SQLModel, table=True):
    id: int = Field(default=None, primary_key=True)  # None until inserted, as Job.id
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


class Adapter(SQLModel, table=True):
    """An entry of the adapter library (jobs.library)."""

    __table_args__ = {"sqlite_autoincrement": True}  # a deleted id is never reused (lineage names ids)

    id: int = Field(default=None, primary_key=True)  # None until inserted, as Job.id
    name: str = Field(index=True, unique=True)
    base_model: str = Field(index=True)  # a spec engine.train.run.model_source resolves
    path: str
    method: str = "lora"  # lora | qlora | composed
    r: int = 0
    alpha: float = 0.0
    targets: str = ""  # comma-separated module names
    bytes: int = 0
    skill: str | None = None  # demo skill name when known: its held-out split scores the adapter
    description: str = ""
    scores_json: str | None = None  # {"base": %, "adapter": %} on the skill's held-out split
    job_id: int | None = Field(default=None, index=True)
    lineage_json: str | None = None  # composed: {"sources": [...], "weights": [...], "combination": ...}
    created_at: datetime = _when(default_factory=now)

    @property
    def scores(self) -> dict:
        return json.loads(self.scores_json) if self.scores_json else {}

    @property
    def lineage(self) -> dict:
        return json.loads(self.lineage_json) if self.lineage_json else {}


class SweepStatus(StrEnum):
    QUEUED = "queued"  # created or resumed; its driver process is starting
    RUNNING = "running"
    SUCCEEDED = "succeeded"  # the budget is spent and a best trial exists
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"  # the driver process died; `sweep resume` continues


SWEEP_FINISHED = (SweepStatus.SUCCEEDED, SweepStatus.FAILED, SweepStatus.CANCELLED, SweepStatus.INTERRUPTED)
SWEEP_RESUMABLE = (SweepStatus.FAILED, SweepStatus.CANCELLED, SweepStatus.INTERRUPTED)


class Sweep(SQLModel, table=True):
    """A search for better settings (jobs.sweep): what the user asked for and where it stands. Its trials
    are an Optuna study (jobs.sweep_study), each an ordinary job whose `sweep_id` names this row."""

    id: int = Field(default=None, primary_key=True)  # None until inserted, as Job.id
    name: str = ""
    status: str = Field(default=SweepStatus.QUEUED, index=True)
    metric: str = "loss"  # loss | exact_match | f1 | rougeL, on the held-out rows
    direction: str = "minimize"
    budget_trials: int | None = None
    budget_seconds: float | None = None
    plan_json: str  # trial 0: the plan the search starts from
    space_json: str  # engine.advice.space dimensions, as searched
    created_at: datetime = _when(default_factory=now)
    queued_at: datetime = _when(default_factory=now)  # (re)started: its driver should claim it soon
    finished_at: datetime | None = _when(default=None)
    pid: int | None = None  # the driver process (jobs.sweep_driver)
    elapsed_seconds: float = 0.0  # time spent searching, summed over the driver's runs (resumes)
    cancel_requested: bool = False
    best_job_id: int | None = None
    adapter_name: str | None = None  # the library entry the best trial's adapter became
    error: str | None = None  # why it stopped, for humans


metadata = SQLModel.metadata  # every table above: the schema jobs.schema migrates and Alembic autogenerates from
