"""Is a running job stalled? Read from the step heartbeat, never guessed from the process.

A worker that is alive but makes no step (a hung data loader, a deadlock, a device hang)
still looks "running". The worker stamps `heartbeat_at` and its measured `step_seconds`
on the job at every step; a running job whose last sign of life is older than the
threshold is stalled since that moment. The threshold is LORAPILOT_STALL_AFTER_S when
set, else a generous multiple of the job's own step time with a floor (evaluation and
checkpoint saves also pass without a step), and longer before the first step, while
the model loads or downloads.

A job on a Ray cluster has no first step while Ray holds it pending; `waiting` says so at once
("waiting for the cluster: asks CPU 1, GPU 1; free CPU 2, GPU 0"), and a wait past the threshold
is a stall that names the wait rather than "no first step".
"""

from __future__ import annotations

import os
from datetime import UTC, datetime

from engine.errors import UserError
from jobs.launch import ray_resources

ENV = "LORAPILOT_STALL_AFTER_S"
MULTIPLE = 20  # steps of the job's own pace
FLOOR_S = 600.0
BEFORE_FIRST_STEP_S = 1800.0


def threshold_s(job) -> float:
    raw = os.environ.get(ENV)
    if raw:
        try:
            value = float(raw)
        except ValueError:
            value = 0.0
        if value <= 0:
            raise UserError(ENV, f"'{raw}' is not a number of seconds above 0 (e.g. 900)")
        return value
    if _heartbeat(job) is None:
        return BEFORE_FIRST_STEP_S
    return max(FLOOR_S, MULTIPLE * (job.step_seconds or 0.0))


def _heartbeat(job) -> datetime | None:
    """The last step of this run (a resumed job's heartbeat from before its restart does not count)."""
    if job.heartbeat_at is None:
        return None
    beat = job.heartbeat_at  # times come back from the store in UTC (jobs.tables.UTCDateTime)
    return beat if job.started_at is None or beat >= job.started_at else None


def stalled_since(job, now: datetime | None = None) -> datetime | None:
    """The job's last sign of progress when that is longer ago than the threshold, else None."""
    if job.status != "running":
        return None
    last = _heartbeat(job) or job.started_at
    if last is None:
        return None
    now = now or datetime.now(UTC)
    return last if (now - last).total_seconds() > threshold_s(job) else None


def waiting(job) -> ray_resources.Pending | None:
    """What a running job that Ray has not started yet waits for; None for any other job."""
    if job.status != "running" or _heartbeat(job) is not None or not job.ray_job_id:
        return None
    return ray_resources.pending(job.ray_job_id)


def describe(job, now: datetime | None = None) -> str | None:
    """One line for people ('stalled since …', or Ray's wait), or None when the job is neither."""
    pending = waiting(job)
    since = stalled_since(job, now)
    if since is None:
        return pending.line() if pending else None
    now = now or datetime.now(UTC)
    quiet = _minutes((now - since).total_seconds())
    if pending:
        return (
            f"stalled since {since.strftime('%Y-%m-%d %H:%M:%S')} UTC: {pending.line()}, for {quiet} (threshold "
            f"{_minutes(threshold_s(job))}, set by {ENV}). Ray starts it when a node has what it asks; "
            "cancel takes it off the cluster."
        )
    what = "no step finished" if _heartbeat(job) else "no first step"
    return (
        f"stalled since {since.strftime('%Y-%m-%d %H:%M:%S')} UTC: {what} for {quiet} (threshold "
        f"{_minutes(threshold_s(job))}, set by {ENV}). It may be hung; the log tail shows its last "
        "words, and cancel stops it (a worker that does not stop is killed)."
    )


def _minutes(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"
