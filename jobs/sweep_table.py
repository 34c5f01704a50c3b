"""The `sweep` table: one row per search, beside the job table (Alembic revision 0006).

The row holds what the user asked for (plan, space, metric, budget) and where the search
stands (status, the driver's pid, time spent, the best trial). The trials themselves are an
Optuna study (jobs.sweep_study) and every trial is an ordinary job whose `sweep_id` names
this row.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlmodel import Field, SQLModel

from jobs import store


class SweepStatus(StrEnum):
    QUEUED = "queued"  # created; its driver process is starting
    RUNNING = "running"
    SUCCEEDED = "succeeded"  # the budget is spent and a best trial exists
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"  # the driver process died; `sweep resume` continues


SWEEP_FINISHED = (SweepStatus.SUCCEEDED, SweepStatus.FAILED, SweepStatus.CANCELLED, SweepStatus.INTERRUPTED)
SWEEP_RESUMABLE = (SweepStatus.FAILED, SweepStatus.CANCELLED, SweepStatus.INTERRUPTED)


class Sweep(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    name: str = ""
    status: str = Field(default=SweepStatus.QUEUED, index=True)
    metric: str = "loss"  # loss | exact_match | f1 | rougeL, on the held-out rows
    direction: str = "minimize"
    budget_trials: int | None = None
    budget_seconds: float | None = None
    plan_json: str  # trial 0: the plan the search starts from
    space_json: str  # engine.advice.space dimensions, as searched
    created_at: datetime = Field(default_factory=store.now)
    queued_at: datetime = Field(default_factory=store.now)  # (re)started: its driver should claim it soon
    finished_at: datetime | None = None
    pid: int | None = None  # the driver process (jobs.sweep_driver)
    elapsed_seconds: float = 0.0  # time spent searching, summed over the driver's runs (resumes)
    cancel_requested: bool = False
    best_job_id: int | None = None
    adapter_name: str | None = None  # the library entry the best trial's adapter became
    error: str | None = None  # why it stopped, for humans
