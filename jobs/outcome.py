"""How a job reads in a list or on its page: the time left in every phase, its progress in words,
its held-out before/after and whether it finished better or worse than the base.

One owner for these readings, so the jobs tab, the job page, `jobs` and `show` say the same.
They read the job's row and the estimate stored with it at submit (engine.estimate), never the
worker's memory. They take the row as it is and import no other part of jobs/, so the views (`show
--json`) and the library (which registers a finished job's adapter) both read them without a cycle.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

from engine.estimate import timing

QUEUED, RUNNING, SUCCEEDED = "queued", "running", "succeeded"  # jobs.store.JobStatus compares equal to these

WORSE = "finished, but worse than the base"


def eta(job) -> dict | None:
    """{'seconds': total left, 'phases': {phase: seconds left}} for a queued or running job, else None.

    The stored estimate gives every phase; the running phase counts down from it (training from the
    trainer's own pace), and the adapter's scoring follows the base's measured time (the same rows)."""
    if job.status not in (QUEUED, RUNNING):
        return None
    est = json.loads(job.estimate_json) if job.estimate_json else {}
    phases = ((est.get("time") or {}).get("phases")) or {}
    if not phases:
        return None if job.eta_seconds is None else {"seconds": job.eta_seconds, "phases": {}}
    base = (_evaluation(job).get("base") or {}).get("seconds")
    phase = job.phase if job.status == RUNNING else None
    left = timing.remaining(phases, phase, _in_phase(job), job.eta_seconds, base)
    return {"seconds": round(sum(left.values()), 1), "phases": left}


def _in_phase(job) -> float | None:
    """Seconds since the running job entered its phase (the row stores naive UTC)."""
    if job.status != RUNNING or not job.phase_started_at:
        return None
    started = job.phase_started_at.replace(tzinfo=UTC)
    return max(0.0, (datetime.now(UTC) - started).total_seconds())


def _evaluation(job) -> dict:
    return json.loads(job.evaluation_json) if job.evaluation_json else {}


def early_stop(job) -> bool:
    """Finished before its planned steps without being cancelled: early stopping ended it."""
    return (
        job.status == SUCCEEDED and bool(job.total_steps) and job.step is not None and 0 < job.step < job.total_steps
    )


def progress_text(job) -> str:
    """'40% 12/30', or 'stopped early at 140/480' where early stopping ended the run."""
    steps = f"{job.step}/{job.total_steps or '?'}"
    if early_stop(job):
        return f"stopped early at {steps}"
    return f"{100 * (job.progress or 0):.0f}% {steps}"


def heldout(job) -> tuple[float | None, float | None]:
    """(base, adapter) held-out exact match in percent, from the job's evaluation (any data, not only demos)."""
    evaluation = _evaluation(job)
    before = (evaluation.get("base") or {}).get("exact_match", job.base_score)
    after = (evaluation.get("adapter") or {}).get("exact_match", job.adapter_score)
    return before, after


def worse_than_base(job) -> bool:
    before, after = heldout(job)
    return job.status == SUCCEEDED and before is not None and after is not None and after < before


def status_text(job) -> str:
    """The status as a person reads it: a succeeded run whose held-out exact match fell says so."""
    return WORSE if worse_than_base(job) else str(job.status)


def heldout_text(job) -> str:
    """'4% → 0%', '12% → …' while the adapter is not scored yet, or '—'."""
    before, after = heldout(job)
    if before is None and after is None:
        return "—"
    fmt = lambda v: "…" if v is None else f"{v:.0f}%"  # noqa: E731
    return f"{fmt(before)} → {fmt(after)}"


def readings(job) -> dict:
    """The keys `jobs --json` and `show --json` add to a job (jobs.views): the ETA of every phase left,
    held-out exact match before/after, early stopping, and the status in words."""
    before, after = heldout(job)
    return {
        "eta": eta(job),
        "held_out_exact_match": {"base": before, "adapter": after},
        "stopped_early": early_stop(job),
        "outcome": status_text(job),
    }
