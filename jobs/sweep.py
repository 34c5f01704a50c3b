"""Search for better settings: create, list, show, cancel and resume a sweep.

A sweep is a row (jobs.tables.Sweep), an Optuna study (jobs.sweep_study) and a driver process
(jobs.sweep_driver) that asks the study for a trial, queues it as an ordinary job (linked by
`job.sweep_id`), reports the job's held-out loss to the study, prunes it through the job's
graceful cancel, and stops when the budget is spent. Trial 0 is the plan the sweep starts from.

Why a process of its own rather than the `--wait` CLI: one path for the CLI and the web page
(a sweep outlives the request or terminal that started it), and resume is one rule. Every
fact the driver needs is in the database: the study's trials, each trial's job id, the time
spent. A killed driver leaves a row marked running with a dead pid, which `reconcile` turns
into `interrupted`; `resume` starts a new driver, which follows the trial that was running
(resuming its job from its checkpoint if the job was killed too) and carries on.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import timedelta

from sqlalchemy import update as sql_update
from sqlmodel import col, select

from engine import paths
from engine.advice import space
from engine.errors import UserError, one_of
from engine.model import introspect
from engine.plan import TrainingPlan
from jobs import dispatcher, library, store, sweep_study
from jobs.db import session
from jobs.tables import SWEEP_FINISHED, SWEEP_RESUMABLE, JobStatus, Sweep, SweepStatus, now
from jobs.views import iso

METRICS = {"loss": "minimize", "exact_match": "maximize", "f1": "maximize", "rougeL": "maximize"}
SPAWN_GRACE_S = 60  # a queued sweep waits this long for its driver to claim it before it counts as lost


def log_path(sweep_id: int):
    folder = paths.subdir("sweeps") / str(int(sweep_id))
    folder.mkdir(parents=True, exist_ok=True)
    return folder / "sweep.log"


def append_log(sweep_id: int, line: str) -> None:
    with open(log_path(sweep_id), "a", encoding="utf-8") as fh:
        fh.write(f"[{now().isoformat(timespec='seconds')}] {line}\n")


# --- reads -------------------------------------------------------------------------------------
def get(sweep_id) -> Sweep:
    try:
        key = int(sweep_id)
    except (TypeError, ValueError):
        raise UserError("sweep", f"'{sweep_id}' is not a sweep id; ids are whole numbers (see `sweeps`)") from None
    with session() as s:
        row = s.get(Sweep, key)
    if row is None:
        raise UserError("sweep", f"no sweep with id {key}; `python app.py sweeps` lists them")
    return row


def list_sweeps() -> list[Sweep]:
    with session() as s:
        return list(s.exec(select(Sweep).order_by(col(Sweep.id).desc())))


def plan_of(row: Sweep) -> TrainingPlan:
    return TrainingPlan.build(**json.loads(row.plan_json))


def space_of(row: Sweep) -> dict[str, space.Dim]:
    return {d["field"]: space.Dim.from_json(d) for d in json.loads(row.space_json)}


def update(sweep_id: int, only_if_status: tuple[str, ...] | None = None, **values) -> bool:
    stmt = sql_update(Sweep).where(col(Sweep.id) == int(sweep_id)).values(**values)
    if only_if_status:
        stmt = stmt.where(col(Sweep.status).in_(only_if_status))
    with session() as s:
        result = s.exec(stmt)
        s.commit()
        return result.rowcount == 1


def detail(row: Sweep) -> dict:
    """The stable keys of `sweep show --json`."""
    study = sweep_study.load(row.id)
    return {
        "id": row.id,
        "name": row.name,
        "status": row.status,
        "metric": row.metric,
        "direction": row.direction,
        "budget": {
            "trials": row.budget_trials,
            "minutes": row.budget_seconds / 60 if row.budget_seconds is not None else None,
        },
        "elapsed_seconds": round(row.elapsed_seconds, 1),
        "error": row.error,
        "adapter": row.adapter_name,
        "created_at": iso(row.created_at),
        "finished_at": iso(row.finished_at),
        "plan": json.loads(row.plan_json),
        "space": json.loads(row.space_json),
        "trials": [sweep_study.trial_json(t) for t in study.get_trials(deepcopy=False)],
        "best": sweep_study.best(study),
    }


def summary(row: Sweep) -> dict:
    return {
        "id": row.id,
        "name": row.name,
        "status": row.status,
        "metric": row.metric,
        "created_at": iso(row.created_at),
        "best_job_id": row.best_job_id,
        "adapter": row.adapter_name,
    }


# --- create ----------------------------------------------------------------------------------
def check_budget(trials: int | None, minutes: float | None) -> None:
    if (trials is None) == (minutes is None):
        raise UserError("budget", "give a number of trials (--trials N) or a time (--budget-minutes M), one of them")
    if trials is not None and trials < 1:
        raise UserError("trials", f"got {trials}; a sweep needs 1 trial or more (trial 0 is the plan itself)")
    if minutes is not None and not minutes > 0:
        raise UserError("budget_minutes", f"got {minutes:g}; give a time above 0 minutes")


def check_metric(metric: str, plan: TrainingPlan) -> None:
    if metric not in METRICS:
        raise UserError("metric", f"got '{metric}'; expected {one_of(METRICS)}")
    if plan.eval_split <= 0:
        raise UserError("eval_split", "is 0: a sweep ranks its trials on held-out rows; set eval_split above 0")
    if metric != "loss" and plan.eval_generations <= 0:
        raise UserError(
            "metric",
            f"{metric} needs answers generated on held-out rows; set eval_generations above 0 or rank by loss",
        )


def trial_value(job, metric: str) -> float | None:
    """The job's held-out figure a sweep ranks on: the adapter's, after training."""
    scores = (store.job_evaluation(job) or {}).get("adapter") or {}
    value = scores.get(metric)
    return float(value) if value is not None else None


def create(
    plan: TrainingPlan | None = None,
    trials: int | None = None,
    minutes: float | None = None,
    space_specs: list[str] | dict | None = None,
    metric: str = "loss",
    start: bool = True,
    from_job: int | None = None,
) -> Sweep:
    """Check everything, then write the row and the study with the plan enqueued as trial 0.

    `from_job`: a succeeded job is trial 0 as it ran (its plan, its measured score), and the
    budget's other trials are variations of it ("Try N variations").
    On any UserError nothing exists: no row, no study, no process."""
    job = None
    if from_job is not None:
        job = store.get_job(from_job)
        if job.status != JobStatus.SUCCEEDED:
            raise UserError("job", f"job {job.id} is {job.status}; variations start from a succeeded job")
        plan = store.job_plan(job).updated(name=plan.name if plan is not None and plan.name else None)
        if trial_value(job, metric) is None:
            raise UserError("metric", f"job {job.id} has no held-out {metric} to start from; pick another metric")
    if plan is None:
        raise UserError("plan", "give a plan (a plan file or plan flags) or a finished job to start from")
    check_budget(trials, minutes)
    check_metric(metric, plan)
    overrides = space.parse(space_specs, plan)
    estimate = dispatcher.validate(plan)  # the model, the data, the estimate: what `train` checks
    if estimate.memory.fits is False:
        raise UserError("memory", f"not started: trial 0, the plan itself, does not fit: {estimate.memory.verdict}")
    dims = space.build(plan, introspect.resolve(plan.model).total_params / 1e9, overrides)
    row = Sweep(
        name=plan.name or "",
        metric=metric,
        direction=METRICS[metric],
        budget_trials=trials,
        budget_seconds=minutes * 60 if minutes is not None else None,
        plan_json=plan.model_dump_json(),
        space_json=json.dumps([d.to_json() for d in dims.values()]),
    )
    with session() as s:
        s.add(row)
        s.commit()
        s.refresh(row)
    try:
        if not row.name:
            row.name = f"sweep-{row.id}"
            update(row.id, name=row.name)
        study = sweep_study.create(row.id, row.direction, plan.seed)
        if job is not None:
            sweep_study.add_finished(study, job, space.start_point(plan, dims), dims, trial_value(job, metric))
        else:
            study.enqueue_trial(space.start_point(plan, dims), user_attrs={"start": "the plan itself"})
    except BaseException:
        sweep_study.delete(row.id)
        with session() as s:
            s.delete(s.get(Sweep, row.id))
            s.commit()
        raise
    append_log(
        row.id,
        f"created: {row.metric} ({row.direction}), budget "
        + (f"{trials} trials" if trials else f"{minutes:g} minutes")
        + "; space "
        + "; ".join(f"{d.field} {d.describe()}" for d in dims.values()),
    )
    if start:
        spawn(row.id)
    return get(row.id)


# --- the driver process --------------------------------------------------------------------------
def spawn(sweep_id: int) -> None:
    log = open(log_path(sweep_id), "ab")
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "jobs.sweep_driver", str(sweep_id)],
            cwd=str(dispatcher.ROOT),
            env=dispatcher.worker_env(),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # outlives the CLI or UI
    except OSError as exc:
        update(sweep_id, status=SweepStatus.FAILED, error=f"could not start the sweep's driver process: {exc}")
        raise
    finally:
        log.close()
    dispatcher._children.append(proc)  # reaped by the next kick, so it never lingers as a zombie


def driver_alive(pid: int | None, sweep_id: int) -> bool:
    cmd = dispatcher.live_cmdline(pid)
    if cmd is None:
        return False
    if not cmd:
        return True  # exists but not ours to inspect
    return "jobs.sweep_driver" in cmd and str(sweep_id) in cmd


def reconcile() -> list[int]:
    """Sweeps marked running (or queued too long) whose driver is gone become 'interrupted'."""
    changed = []
    for row in list_sweeps():
        if row.status == SweepStatus.RUNNING and not driver_alive(row.pid, row.id):
            reason = f"the sweep's driver (pid {row.pid}) ended without finishing; `sweep resume {row.id}` continues"
        elif (
            row.status == SweepStatus.QUEUED
            and row.pid is None
            and now() - row.queued_at > timedelta(seconds=SPAWN_GRACE_S)
        ):
            reason = f"the sweep's driver never started; `sweep resume {row.id}` starts it"
        else:
            continue
        if update(row.id, (row.status,), status=SweepStatus.INTERRUPTED, error=reason, finished_at=now()):
            append_log(row.id, "interrupted: " + reason)
            changed.append(row.id)
    return changed


# --- cancel and resume ---------------------------------------------------------------------------
def cancel(sweep_id) -> Sweep:
    """Stop the search: the running trial's job is cancelled gracefully (it keeps a checkpoint and
    continues if the sweep is resumed); no new trial starts."""
    reconcile()
    row = get(sweep_id)
    if row.status in SWEEP_FINISHED:
        raise UserError("sweep", f"sweep {row.id} is {row.status}; only a queued or running sweep can be cancelled")
    if update(
        row.id,
        (SweepStatus.QUEUED,),
        status=SweepStatus.CANCELLED,
        finished_at=now(),
        error="cancelled before its driver started",
    ):
        append_log(row.id, "cancelled while queued")
        return get(row.id)
    update(row.id, cancel_requested=True)  # the driver sees it at its next poll and stops
    study = sweep_study.load(row.id)
    from optuna.trial import TrialState

    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        job_id = t.user_attrs.get("job_id")
        if job_id is None:
            continue
        study._storage.set_trial_user_attr(t._trial_id, "paused", True)  # resume continues this trial's job
        if store.get_job(job_id).status in (JobStatus.QUEUED, JobStatus.RUNNING):
            dispatcher.cancel(job_id, wait=False)
    if not driver_alive(get(row.id).pid, row.id):  # nobody else will write the verdict
        update(row.id, (SweepStatus.RUNNING,), status=SweepStatus.CANCELLED, finished_at=now(), error="cancelled")
    append_log(row.id, "cancel requested")
    return get(row.id)


def resume(sweep_id, start: bool = True) -> Sweep:
    reconcile()
    row = get(sweep_id)
    if row.status not in SWEEP_RESUMABLE:
        raise UserError("sweep", f"sweep {row.id} is {row.status}; only {one_of(SWEEP_RESUMABLE)} sweeps can resume")
    if not update(
        row.id,
        SWEEP_RESUMABLE,
        status=SweepStatus.QUEUED,
        pid=None,
        cancel_requested=False,
        error=None,
        finished_at=None,
        queued_at=now(),
    ):
        raise UserError("sweep", f"sweep {row.id} changed state meanwhile; look again with `sweep show {row.id}`")
    append_log(row.id, "resume requested")
    if start:
        spawn(row.id)
    return get(row.id)


# --- the result ----------------------------------------------------------------------------------
def publish_best(row: Sweep, best: dict) -> str | None:
    """The best trial's adapter becomes the library entry named after the sweep; returns its name."""
    entry = next((a for a in library.list_adapters() if a.job_id == best["job_id"]), None)
    if entry is None:
        return None  # a full fine-tune has no adapter entry
    taken = {a.name for a in library.list_adapters()} - {entry.name}
    base = library.check_name(row.name) if library.NAME_RE.match(row.name or "") else f"sweep-{row.id}"
    name, n = base, 2
    while name in taken:
        name, n = f"{base}-{n}", n + 1
    library.rename(entry.id, name)
    return name


def figures(row: Sweep) -> dict:
    """Optuna's own Plotly figures of the study and the sentence its importances give."""
    import optuna.visualization as vis
    from optuna.trial import TrialState

    study = sweep_study.load(row.id)
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    out: dict = {"history": vis.plot_optimization_history(study, target_name=space.METRIC_WORDS[row.metric])}
    if len(done) >= 2:
        out["parallel"] = vis.plot_parallel_coordinate(study, target_name=space.METRIC_WORDS[row.metric])
    importances = {}
    if len(done) >= 2:
        try:
            import optuna

            importances = optuna.importance.get_param_importances(study)
        except (ValueError, RuntimeError, ZeroDivisionError):  # too few trials, or nothing varied
            importances = {}
        if importances:
            out["importances"] = vis.plot_param_importances(study, target_name=space.METRIC_WORDS[row.metric])
    out["what_mattered"] = space.what_mattered(importances, row.metric)
    return out
