"""The sweep's driver process: `python -m jobs.sweep_driver SWEEP_ID` runs one search to its end.

One trial at a time, read top to bottom in `Driver.run`: follow any trial left running by a
driver before this one (a resume), then, while the budget lasts, ask the study for a trial,
check its plan (the memory estimate, and against a time budget its ETA), queue it as an
ordinary job, and follow that job: each held-out loss it writes is reported to the study, and
a trial the pruner finds clearly worse is stopped through the job's graceful cancel. The best
trial's adapter then becomes the library entry named after the sweep.

Everything it knows is in the database (jobs.sweep), so it can be killed at any point and a
new driver carries on.
"""

from __future__ import annotations

import os
import sys
import time
import traceback

from engine.advice import space
from engine.errors import UserError
from engine.units import human_seconds
from jobs import dispatcher, store, sweep, sweep_study
from jobs.tables import FINISHED, JobStatus, SweepStatus, now

POLL_S = 0.5
MAX_JOB_RESUMES = 3  # a trial whose job keeps dying is failed, not resumed forever


class Cancelled(Exception):
    """The user cancelled the sweep: stop following, leave the running trial to a resume."""


class Driver:
    def __init__(self, sweep_id: int):
        self.id = sweep_id
        self.row = sweep.get(sweep_id)
        self.plan = sweep.plan_of(self.row)
        self.dims = sweep.space_of(self.row)
        self.study = sweep_study.load(sweep_id, seed=self.plan.seed)
        self.t0, self.spent_before = time.monotonic(), self.row.elapsed_seconds
        self._ticked = 0.0

    # --- the search, top to bottom -----------------------------------------------------------
    def run(self) -> None:
        from optuna.trial import TrialState

        for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            self.follow(t.number)  # left running by an earlier driver
        while not self.budget_spent():
            trial = self.study.ask()
            params = space.suggest(trial, self.dims)
            if not self.start(trial, params):
                break
            self.follow(trial.number)
        self.finish()

    def budget_spent(self) -> bool:
        from optuna.trial import TrialState

        if self.row.budget_trials is not None:
            asked = [t for t in self.study.get_trials(deepcopy=False) if t.state != TrialState.WAITING]
            return len(asked) >= self.row.budget_trials
        return self.elapsed() >= self.row.budget_seconds

    # --- one trial -----------------------------------------------------------------------------
    def start(self, trial, params: dict) -> bool:
        """Queue the trial's job; False when it does not fit the time left (the search ends)."""
        plan = space.apply(self.plan, params).updated(name=f"{self.row.name} · trial {trial.number}")
        try:
            estimate = dispatcher.validate(plan)
        except UserError as exc:
            self.fail(trial.number, f"not started: {exc}")
            return True
        if estimate.memory.fits is False:
            self.fail(trial.number, f"not started: {estimate.memory.verdict}")
            return True
        eta = self.predicted_seconds(estimate)
        if self.row.budget_seconds is not None and eta is not None and trial.number > 0:
            left = self.row.budget_seconds - self.elapsed()
            if eta > left:
                self.fail(
                    trial.number,
                    f"not started: its ETA ({human_seconds(eta)}) is more than the "
                    f"{human_seconds(max(0.0, left))} left of the time budget",
                )
                return False
        job = dispatcher.submit(plan, standby=dispatcher.standby())
        store.update_job(job.id, sweep_id=self.id)
        self.study._storage.set_trial_user_attr(trial._trial_id, "job_id", job.id)
        if eta is not None:
            self.study._storage.set_trial_user_attr(trial._trial_id, "eta_seconds", round(eta, 1))
        store.append_log(job.id, f"trial {trial.number} of sweep {self.id} ({self.row.name}): {params}")
        sweep.append_log(
            self.id,
            f"trial {trial.number}: job {job.id}, {params}"
            + (f", ETA {human_seconds(eta)}" if eta is not None else ""),
        )
        return True

    def predicted_seconds(self, estimate) -> float | None:
        """The estimator's training time, plus what this sweep's finished trials measured beyond their
        estimate (loading, scoring the base and the adapter, saving), on average."""
        seconds = estimate.time.seconds if estimate.time is not None else None
        if seconds is None:
            return None
        extra = [
            t.user_attrs["wall_seconds"] - t.user_attrs["eta_seconds"]
            for t in self.study.get_trials(deepcopy=False)
            if t.state.name == "COMPLETE" and "wall_seconds" in t.user_attrs and "eta_seconds" in t.user_attrs
        ]
        return seconds + (sum(extra) / len(extra) if extra else 0.0)

    def follow(self, number: int) -> None:
        """Report the trial's held-out losses as its job writes them, prune it when clearly worse,
        and tell the study how it ended."""
        import optuna

        frozen = self.study.get_trials(deepcopy=False)[number]
        job_id = frozen.user_attrs.get("job_id") or self.adopt(number)
        if job_id is None:
            params = space.suggest(optuna.Trial(self.study, frozen._trial_id), self.dims)  # the same values again
            self.start(optuna.Trial(self.study, frozen._trial_id), params)
            job_id = self.study.get_trials(deepcopy=False)[number].user_attrs.get("job_id")
            if job_id is None:
                return  # told failed in start()
        trial = optuna.Trial(self.study, frozen._trial_id)
        reported = set(frozen.intermediate_values)
        while True:
            self.tick()
            job = store.get_job(job_id)
            if job.status == JobStatus.RUNNING and job.pid and not dispatcher.worker_alive(job.pid, job.id):
                dispatcher.reconcile()
                job = store.get_job(job_id)
            for m in store.job_metrics(job_id):
                if m.eval_loss is not None and m.step not in reported:
                    reported.add(m.step)
                    trial.report(m.eval_loss, m.step)
                    self.maybe_prune(trial, job, m.step, m.eval_loss)
            if job.status in FINISHED:
                if self.conclude(trial, job):
                    return
                continue  # its job was resumed
            time.sleep(POLL_S)

    def maybe_prune(self, trial, job, step: int, loss: float) -> None:
        if "pruned_at" in self.attrs(trial) or job.status in FINISHED or not trial.should_prune():
            return
        why = sweep_study.worse_by(loss, sweep_study.others_at(self.study, step, trial.number)) or "pruned"
        self.set_attr(trial, "pruned_at", step)
        self.set_attr(trial, "reason", f"pruned at step {step}: {why}")
        store.append_log(job.id, f"pruned by sweep {self.id} at step {step}: {why}; stopping the job")
        sweep.append_log(self.id, f"trial {trial.number} pruned at step {step}: {why}")
        try:
            dispatcher.cancel(job.id, wait=False)
        except UserError:  # the job ran its last steps before the cancel: the prune decision stands
            store.append_log(job.id, "the job had already finished; the trial stays pruned")

    def conclude(self, trial, job) -> bool:
        """Tell the study how the trial's job ended; False when the job was resumed instead."""
        from optuna.trial import TrialState

        attrs = self.attrs(trial)
        if "pruned_at" in attrs:
            self.study.tell(trial.number, state=TrialState.PRUNED)
            store.update_job(job.id, (job.status,), error=attrs["reason"])
            return True
        if job.status == JobStatus.SUCCEEDED:
            value = sweep.trial_value(job, self.row.metric)
            if value is None:
                self.fail(trial.number, f"job {job.id} has no held-out {self.row.metric}")
                return True
            wall = (job.finished_at - job.started_at).total_seconds() if job.finished_at and job.started_at else None
            if wall is not None:
                self.set_attr(trial, "wall_seconds", round(wall, 1))
            self.study.tell(trial.number, value)
            sweep.append_log(self.id, f"trial {trial.number} complete: {self.row.metric} {value:.4f}")
            return True
        resumes = attrs.get("resumes", 0)
        if self.cancel_requested():
            raise Cancelled
        if (job.status == JobStatus.INTERRUPTED or attrs.get("paused")) and resumes < MAX_JOB_RESUMES:
            self.set_attr(trial, "resumes", resumes + 1)
            self.set_attr(trial, "paused", False)
            sweep.append_log(self.id, f"trial {trial.number}: job {job.id} was {job.status}; resuming it")
            dispatcher.resume(job.id)
            return False
        why = "cancelled outside the sweep" if job.status == JobStatus.CANCELLED else (job.error or job.status)
        self.fail(trial.number, f"job {job.id} {job.status}: {why}")
        return True

    def adopt(self, number: int) -> int | None:
        """A job queued for this trial by a driver killed before it recorded the link."""
        from optuna.trial import TrialState

        linked = {t.user_attrs.get("job_id") for t in self.study.get_trials(deepcopy=False)}
        orphans = [
            j
            for j in store.list_jobs()
            if j.sweep_id == self.id and j.id not in linked and j.status != JobStatus.CANCELLED
        ]
        if not orphans or self.study.get_trials(deepcopy=False)[number].state != TrialState.RUNNING:
            return None
        job_id = orphans[0].id  # newest first: the driver queues one trial at a time
        self.set_attr(self.study.get_trials(deepcopy=False)[number], "job_id", job_id)
        return job_id

    # --- the end -----------------------------------------------------------------------------------
    def finish(self) -> None:
        best = sweep_study.best(self.study)
        if best is None:
            sweep.update(
                self.id,
                (SweepStatus.RUNNING,),
                status=SweepStatus.FAILED,
                finished_at=now(),
                elapsed_seconds=self.elapsed(),
                error="no trial completed; see each trial's reason",
            )
            return
        name = sweep.publish_best(self.row, best)
        sweep.update(
            self.id,
            (SweepStatus.RUNNING,),
            status=SweepStatus.SUCCEEDED,
            finished_at=now(),
            elapsed_seconds=self.elapsed(),
            best_job_id=best["job_id"],
            adapter_name=name,
            error=None,
        )
        sweep.append_log(
            self.id,
            f"succeeded: best trial {best['number']} (job {best['job_id']}), "
            f"{self.row.metric} {best['value']:.4f}" + (f"; adapter '{name}'" if name else ""),
        )

    # --- bookkeeping ---------------------------------------------------------------------------------
    def elapsed(self) -> float:
        return self.spent_before + time.monotonic() - self.t0

    def tick(self) -> None:
        """Record the time spent (so a resume continues the clock) and notice a cancel."""
        if time.monotonic() - self._ticked >= 2 * POLL_S:
            self._ticked = time.monotonic()
            sweep.update(self.id, elapsed_seconds=self.elapsed())
        if self.cancel_requested():
            raise Cancelled

    def cancel_requested(self) -> bool:
        return bool(sweep.get(self.id).cancel_requested)

    def attrs(self, trial) -> dict:
        return self.study._storage.get_trial(trial._trial_id).user_attrs

    def set_attr(self, trial, key: str, value) -> None:
        self.study._storage.set_trial_user_attr(trial._trial_id, key, value)

    def fail(self, number: int, reason: str) -> None:
        from optuna.trial import TrialState

        self.set_attr(self.study.get_trials(deepcopy=False)[number], "reason", reason)
        self.study.tell(number, state=TrialState.FAIL)
        sweep.append_log(self.id, f"trial {number} failed: {reason}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or not argv[0].isdigit():
        print("usage: python -m jobs.sweep_driver SWEEP_ID", file=sys.stderr)
        return 2
    sweep_id = int(argv[0])
    # claim: one driver per sweep, whatever races (a double resume, a stale spawn)
    if not sweep.update(sweep_id, (SweepStatus.QUEUED,), status=SweepStatus.RUNNING, pid=os.getpid()):
        print(f"sweep driver: sweep {sweep_id} is not queued; nothing to do", flush=True)
        return 0
    sweep.append_log(sweep_id, f"driver pid {os.getpid()} started")
    try:
        Driver(sweep_id).run()
    except Cancelled:
        sweep.update(
            sweep_id,
            (SweepStatus.RUNNING,),
            status=SweepStatus.CANCELLED,
            finished_at=now(),
            error="cancelled; `sweep resume` continues from the trial that was running",
        )
        sweep.append_log(sweep_id, "cancelled")
    except BaseException as exc:
        traceback.print_exc()
        reason = exc.message if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}"
        sweep.update(
            sweep_id,
            (SweepStatus.RUNNING,),
            status=SweepStatus.FAILED,
            finished_at=now(),
            error=f"the sweep's driver failed: {reason}; `sweep resume {sweep_id}` retries",
        )
        sweep.append_log(sweep_id, f"failed: {reason}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
