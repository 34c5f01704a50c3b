"""A job as JSON: the stable keys of `jobs --json` and `show --json` (and the UI's job page).

A view reads; the diagnosis of a finished run (engine.advice.diagnose through jobs.runs)
is part of the detail, so this sits above both the store and the runs.
"""

from __future__ import annotations

import json
from datetime import datetime

from engine.advice import diagnose
from jobs import outcome, runs, stall, store
from jobs.tables import Job, now


def iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def job_summary(job: Job) -> dict:
    return {
        "id": job.id,
        "name": job.name,
        "status": job.status,
        "created_at": iso(job.created_at),
        "started_at": iso(job.started_at),
        "finished_at": iso(job.finished_at),
        "step": job.step,
        "total_steps": job.total_steps,
        "progress": job.progress,
        "eta_seconds": job.eta_seconds,
        "base_score": job.base_score,
        "adapter_score": job.adapter_score,
        "error": job.error,
        "artifact_dir": job.artifact_dir,
        "stalled_since": iso(stall.stalled_since(job)),
        **outcome.readings(job),  # eta by phase, held-out before/after, stopped early, outcome
    }


def phase_seconds(job: Job) -> float | None:
    """How long the running job has been in its current phase."""
    if job.status != "running" or not job.phase or not job.phase_started_at:
        return None
    return max(0.0, (now() - job.phase_started_at).total_seconds())


def job_detail(job: Job) -> dict:
    detail = job_summary(job)
    findings = runs.findings(job)
    detail.update(
        {
            "phase": job.phase if job.status == "running" else None,
            "phase_seconds": phase_seconds(job),
            "parent_id": job.parent_id,
            "evaluation": store.job_evaluation(job),
            "verdict": diagnose.verdict(findings, finished=job.status == "succeeded"),
            "advice": [f.to_json() for f in findings],
            "pid": job.pid,
            "device": job.device,
            "cancel_requested": job.cancel_requested,
            "host": job.host,
            "ray_job_id": job.ray_job_id,
            "plan": json.loads(job.plan_json),
            "estimate": store.job_estimate(job),
            "estimated_peak_bytes": job.estimated_peak_bytes,
            "measured_peak_bytes": job.measured_peak_bytes,
            "metrics": runs.metric_dicts(job.id),
        }
    )
    return detail
