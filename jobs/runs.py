"""From one run to the next: the advice a job's curves and scores give, a new job that
follows it (linked by `parent_id`), and several runs side by side.

The diagnosis itself is engine.advice.diagnose; this module only reads the rows it needs
and writes the new job through the dispatcher, so a next run is validated and queued like
any other.
"""

from __future__ import annotations

import json

from engine.advice import diagnose
from engine.errors import UserError
from engine.plan import TrainingPlan
from jobs import dispatcher, store
from jobs.tables import FINISHED, METRIC_FIELDS, Job


def metric_dicts(job_id: int) -> list[dict]:
    return [{"step": m.step, **{k: getattr(m, k) for k in METRIC_FIELDS}} for m in store.job_metrics(job_id)]


def findings(job: Job) -> list[diagnose.Finding]:
    return diagnose.diagnose(
        metric_dicts(job.id), store.job_evaluation(job), store.job_plan(job), finished=job.status in FINISHED
    )


def next_plan(job: Job, rules: list[str] | None = None) -> tuple[TrainingPlan, dict]:
    """The job's plan with the advice's changes (those of `rules`, or all); raises when there is nothing to apply."""
    if job.status not in FINISHED:
        raise UserError("job", f"job {job.id} is {job.status}; the next run follows a finished one")
    found = findings(job)
    if not found:
        raise UserError(
            "job",
            f"job {job.id} has no advice to follow (verdict: "
            f"{diagnose.verdict(found, job.status == 'succeeded') or 'none'}); change the plan with "
            "`python app.py train PLAN.yaml` instead",
        )
    known = list(dict.fromkeys(f.rule for f in found))
    unknown = [r for r in rules or [] if r not in known]
    if unknown:
        raise UserError("apply", f"{', '.join(unknown)} is not in job {job.id}'s advice; it has {', '.join(known)}")
    plan, changes = diagnose.apply(store.job_plan(job), found, rules or None)
    if not changes:
        raise UserError("apply", f"the chosen advice ({', '.join(rules or known)}) changes no plan field")
    return plan, changes


def next_run(job_id, rules: list[str] | None = None, start: bool = True) -> tuple[Job, dict]:
    """Queue the next run of `job_id` with the advice applied; returns (new job, changes)."""

    parent = store.get_job(job_id)
    plan, changes = next_plan(parent, rules)
    plan = plan.updated(name=f"{parent.name} (next of #{parent.id})")
    job = dispatcher.submit(plan, start=start, parent_id=parent.id)
    store.append_log(job.id, f"next run of job {parent.id}: " + json.dumps(changes))
    return job, changes


def compare(job_ids: list) -> list[dict]:
    """One dict per job: the plan fields that differ between them, before/after, curves, verdict."""
    if len(job_ids) < 2:
        raise UserError("jobs", "give two or more job ids to compare")
    jobs = [store.get_job(j) for j in job_ids]
    plans = [store.job_plan(j).model_dump() for j in jobs]
    differ = [k for k in plans[0] if k != "name" and any(p[k] != plans[0][k] for p in plans)]
    out = []
    for job, plan in zip(jobs, plans):
        metrics = metric_dicts(job.id)
        found = findings(job)
        evals = [(m["step"], m["eval_loss"]) for m in metrics if m["eval_loss"] is not None]
        best = min(evals, key=lambda p: p[1]) if evals else None
        out.append(
            {
                "id": job.id,
                "name": job.name,
                "status": job.status,
                "parent_id": job.parent_id,
                "plan": {k: plan[k] for k in differ},
                "final_loss": next((m["loss"] for m in reversed(metrics) if m["loss"] is not None), None),
                "best_eval_loss": {"step": best[0], "loss": best[1]} if best else None,
                "evaluation": store.job_evaluation(job),
                "verdict": diagnose.verdict(found, job.status == "succeeded"),
                "advice": [f.to_json() for f in found],
                "metrics": [{"step": m["step"], "loss": m["loss"], "eval_loss": m["eval_loss"]} for m in metrics],
            }
        )
    return out
