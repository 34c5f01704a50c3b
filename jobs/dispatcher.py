"""Dispatch and lifecycle: submit, start (FIFO), reconcile, cancel, resume.

No daemon: the queue is the `job` table. `kick()` starts queued jobs while slots are free,
each as its own OS process in its own session (`python -m jobs.worker ID`), and every
worker calls `kick()` as it exits, so the queue drains with no UI or CLI open. Claiming a
job is one conditional UPDATE, so concurrent submitters and dispatchers never start the
same job twice. Because rows, not processes, are the truth, any process (a new UI, the
CLI) can `reconcile()` rows whose worker died.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import psutil

from engine.advice import fitting
from engine.data import dataset
from engine.data.formats import dataset_of
from engine.data.ref import DatasetRef
from engine.errors import UserError, one_of
from engine.estimate import combined
from engine.model import availability, introspect
from engine.plan import TrainingPlan
from engine.train import checkpoints, tracking
from jobs import stall, store
from jobs.launch import ray, resident
from jobs.tables import Job, JobStatus

ROOT = Path(__file__).resolve().parent.parent
# A claimed row waits this long for its worker to report a pid before it counts as lost.
SPAWN_GRACE_S = 60
CANCEL_GRACE_S = float(os.environ.get("LORAPILOT_CANCEL_GRACE_S", "120"))
TERM_GRACE_S = 15
STALLED_TERM_GRACE_S = 3  # a stalled worker gets SIGTERM at once and SIGKILL this much later
RESUMABLE = (JobStatus.INTERRUPTED, JobStatus.CANCELLED, JobStatus.FAILED)

_children: list[subprocess.Popen] = []  # reaped on each kick so no zombie looks alive


def max_concurrent() -> int:
    try:
        return max(0, int(os.environ.get("LORAPILOT_MAX_CONCURRENT", "1")))
    except ValueError:
        raise UserError("LORAPILOT_MAX_CONCURRENT", "must be a whole number (1 = one job at a time)") from None


# --- submit ----------------------------------------------------------------------------


def validate(plan: TrainingPlan):
    """Everything that can be checked before a job exists; returns the plan's `Estimate`.

    Order matters for the message a user sees: the plan, then the model (an unknown model
    is the root cause of any later failure), then the data, then the estimate.
    """
    source = dataset_of(plan)  # no data: said before anything else is looked at

    introspect.resolve(plan.model)
    if ray.address():
        ray.check(plan)  # a plan no node of the cluster can run would wait there forever
    else:  # on a Ray cluster the nodes load the weights; this machine's files say nothing of theirs
        availability.require(plan.model)  # before the data check, whose tokenizer would fail on the same cause

    report = dataset.check_data(
        source,
        model=plan.model,
        seq_len=plan.seq_len,
        data_format=plan.data_format,
        columns=plan.columns,
        objective=plan.objective,
    )
    report.raise_if_bad()
    tracking.require(plan)  # a tracker whose package is missing: the extra to install

    # the data's lengths and the share of them with a label: the expected peak
    return combined.estimate(plan, lengths=report.token_lengths, label_share=report.label_share)


class DoesNotFit(UserError):
    """The estimate says the plan needs more memory than its device has: not queued (it would fail at
    its first steps) unless the submit says `anyway`. Each entry point adds how to say that."""


def refuse_misfit(plan: TrainingPlan) -> None:
    """Raise DoesNotFit, naming the fitting steps that make the plan fit, when the estimate says it does
    not fit. A plan the estimator cannot read passes: `validate` names what is wrong with it."""
    try:
        memory = combined.memory_for(plan)
    except UserError:
        return
    if memory.fits is not False:
        return
    found = fitting.fix(plan)
    fix = (
        f"; to fit: {'; '.join(step.what for step in found[0])}"
        if found
        else "; nothing in LoRA Pilot's fitting steps makes it fit: a smaller model or a larger device"
    )
    raise DoesNotFit("memory", f"not queued: {memory.verdict}{fix}")


def submit(
    plan: TrainingPlan,
    start: bool = True,
    parent_id: int | None = None,
    standby: subprocess.Popen | None = None,
    anyway: bool = False,
) -> Job:
    """Validate, then queue. On any UserError no row exists. `parent_id`: the run whose advice this follows.
    A plan the estimate says cannot fit is refused (DoesNotFit) unless `anyway`.

    `standby` (from `standby()`) is a worker already importing its libraries while this validates;
    the job started by this submit takes it over, or it is let go.
    """
    try:
        if not isinstance(plan, TrainingPlan):
            plan = TrainingPlan.build(**dict(plan))
        if not anyway:  # first: a plan too big for its device is refused before its data is read
            refuse_misfit(plan)
        est = validate(plan)
        job = Job(
            name=plan.name or _default_name(plan),
            plan_json=plan.model_dump_json(),
            estimate_json=json.dumps(est.to_json()),
            estimated_peak_bytes=int(est.memory.expected_allocated_bytes),  # the worst case stays in estimate_json
            parent_id=parent_id,
        )
        job = store.insert_job(job)
        store.append_log(job.id, f"queued: {job.name}")
        if start:
            kick(standby)
            standby = None
    finally:
        _release(standby)
    return store.get_job(job.id)


def submit_in_resident(plan: TrainingPlan, anyway: bool = False) -> Job | None:
    """`submit` done by a child of the resident worker, whose libraries are imported already (the CLI then
    never imports torch); the same errors are raised here. None when no resident answers: submit here."""
    answer = resident.ask({"op": "submit", "plan": plan.model_dump_json(), "anyway": anyway}, resident.SUBMIT_S)
    if answer is None or ("job" not in answer and "error" not in answer):
        return None
    if "error" in answer:
        error = answer["error"]
        raise (DoesNotFit if error.get("kind") == "does_not_fit" else UserError)(error["field"], error["message"])
    return store.get_job(int(answer["job"]))


def _default_name(plan: TrainingPlan) -> str:
    data = DatasetRef.parse(plan.dataset).stem if plan.dataset else plan.dataset
    return f"{plan.method} {Path(plan.model).name} on {data}"


# --- start ---------------------------------------------------------------------------------


def kick(standby: subprocess.Popen | None = None) -> list[int]:
    """Start queued jobs while fewer than LORAPILOT_MAX_CONCURRENT run. Returns started ids.
    The first job started locally takes over `standby`, if given; otherwise it is let go."""
    _reap()
    reconcile()
    started: list[int] = []
    slots = max_concurrent()
    try:
        while True:
            job_id = store.claim_next(slots)
            if job_id is None:
                return started
            if ray.address():
                _submit_to_ray(job_id)
            else:
                _spawn(job_id, standby)
                standby = None
            started.append(job_id)
    finally:
        _release(standby)


def standby() -> subprocess.Popen | None:
    """A worker process started before its job exists: it imports torch, transformers, PEFT and
    TRL (about 4 s on 2 cores) while the submitter validates the plan (as long again: the model's
    introspection imports much the same), then reads its job id on stdin. None when jobs run on a
    Ray cluster or may not start here, or when the resident worker answers (its children start warm)."""
    if ray.address() or max_concurrent() < 1 or resident.ask({"op": "ping"}, resident.CONNECT_S) is not None:
        return None
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "jobs.worker", "--standby"],
            cwd=str(ROOT),
            env=worker_env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
    except OSError:
        return None  # the job will start the usual way


def _release(standby: subprocess.Popen | None) -> None:
    """Let an unused standby worker go: end of input makes it exit."""
    if standby is None:
        return
    with contextlib.suppress(OSError):
        assert standby.stdin is not None  # made with stdin=PIPE
        standby.stdin.close()
    _children.append(standby)  # reaped by a later kick, so it never lingers as a zombie


def _submit_to_ray(job_id: int) -> None:
    try:
        ray.submit(job_id)
    except Exception as exc:  # the row must not stay 'running' with nothing behind it
        reason = exc.message if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}"
        store.update_job(
            job_id,
            (JobStatus.RUNNING,),
            status=JobStatus.FAILED,
            finished_at=store.now(),
            error=f"could not submit to the Ray cluster: {reason}; resume once it is reachable",
        )
        raise


def worker_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _spawn(job_id: int, standby: subprocess.Popen | None = None) -> None:
    """Start a claimed job's worker: in the standby given, else forked by the resident worker, else a
    new process (whose end starts a resident for the jobs that come next: jobs.worker)."""
    if standby is None or standby.poll() is not None:
        pid = resident.run(job_id)
        if pid is not None:
            store.update_job(job_id, (JobStatus.RUNNING,), pid=pid)
            return
    if standby is not None and standby.poll() is None:
        assert standby.stdin is not None  # made with stdin=PIPE
        try:  # the standby worker sends its output to the job's log once it has the id
            standby.stdin.write(f"{job_id}\n".encode())
            standby.stdin.close()
        except OSError:  # it died meanwhile: start one the usual way
            pass
        else:
            _children.append(standby)
            store.update_job(job_id, (JobStatus.RUNNING,), pid=standby.pid)
            return
    log = open(store.log_path(job_id), "ab")
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "jobs.worker", str(job_id)],
            cwd=str(ROOT),
            env=worker_env(),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own session and process group: survives the UI, killable as a group
        )
    except OSError as exc:
        store.update_job(
            job_id,
            (JobStatus.RUNNING,),
            status=JobStatus.FAILED,
            finished_at=store.now(),
            error=f"could not start the worker process: {exc}",
        )
        raise
    finally:
        log.close()
    _children.append(proc)
    store.update_job(job_id, (JobStatus.RUNNING,), pid=proc.pid)


def _reap() -> None:
    for proc in list(_children):
        if proc.poll() is not None:
            with contextlib.suppress(ValueError):  # another thread of this process reaped it first
                _children.remove(proc)


# --- liveness ------------------------------------------------------------------------------


def live_cmdline(pid: int | None) -> list[str] | None:
    """A live process's command line; None when it is gone (or a zombie), [] when it exists but is
    not ours to inspect (so a caller never declares it dead)."""
    if not pid:
        return None
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return proc.cmdline()
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None
    except psutil.AccessDenied:
        return []


def worker_alive(pid: int | None, job_id: int) -> bool:
    """Is `pid` alive AND our worker for this job? (pids are reused after a process dies.)"""
    cmd = live_cmdline(pid)
    if cmd is None:
        return False
    if not cmd:
        return True  # exists but not ours to inspect: do not declare it dead
    # a standby worker (started before its job existed) names no id, nor does a child forked by the
    # resident worker (jobs.resident); the pid the row holds is its own
    return ("jobs.worker" in cmd and (str(job_id) in cmd or "--standby" in cmd)) or "jobs.resident" in cmd


def reconcile() -> list[int]:
    """Rows marked running whose worker is gone become 'interrupted', with the reason."""
    changed = []
    for job in store.list_jobs(status=JobStatus.RUNNING):
        if job.ray_job_id:
            if ray.status(job.ray_job_id) not in ray.TERMINAL:
                continue
            reason = (
                f"the Ray job {job.ray_job_id} ended without the worker reporting: its node was lost "
                "or it was stopped outside LoRA Pilot. Resume to continue from the last checkpoint."
            )
        elif job.pid is None:
            if job.started_at and store.now() - job.started_at < timedelta(seconds=SPAWN_GRACE_S):
                continue  # claimed a moment ago; the dispatcher is still starting it
            reason = "the dispatcher stopped before the worker process started; resume to run it"
        elif worker_alive(job.pid, job.id):
            continue
        else:
            reason = (
                f"the worker process (pid {job.pid}) ended without reporting: it was killed "
                "(kill -9, the host ran out of memory) or the machine restarted. "
                "Resume to continue from the last checkpoint."
            )
        status = JobStatus.INTERRUPTED
        if job.cancel_requested and job.pid is not None:  # a cancel that had to kill the worker
            status, reason = (
                JobStatus.CANCELLED,
                (
                    "cancelled; the worker did not stop at a step boundary and was "
                    "killed. Resume continues from the last checkpoint."
                ),
            )
        if store.update_job(
            job.id, (JobStatus.RUNNING,), status=status, error=reason, finished_at=store.now(), eta_seconds=None
        ):
            store.append_log(job.id, f"{status}: " + reason)
            changed.append(job.id)
    return changed


# --- cancel and resume ----------------------------------------------------------------


def cancel(job_id, wait: bool = True, grace_s: float | None = None) -> Job:
    """Queued → cancelled now. Running → ask the worker to stop at the next step (it saves
    a checkpoint), then SIGTERM, then SIGKILL to its process group if it does not. A stalled
    worker (jobs.stall) never reaches a step: it gets the signals without the grace period."""
    job = store.get_job(job_id)
    if job.status == JobStatus.QUEUED and store.update_job(
        job.id,
        (JobStatus.QUEUED,),
        status=JobStatus.CANCELLED,
        finished_at=store.now(),
        error="cancelled before it started",
    ):
        store.append_log(job.id, "cancelled while queued")
        return store.get_job(job.id)
    job = store.get_job(job.id)
    if job.status != JobStatus.RUNNING:
        raise UserError("job", f"job {job.id} is {job.status}; only queued or running jobs can be cancelled")
    store.update_job(job.id, (JobStatus.RUNNING,), cancel_requested=True)
    grace, term_grace = (CANCEL_GRACE_S if grace_s is None else grace_s), TERM_GRACE_S
    if stall.stalled_since(job) or stall.waiting(job):  # no step boundary will come: signal it now, kill it soon
        grace, term_grace = 0.0, STALLED_TERM_GRACE_S
        store.append_log(job.id, "cancel requested: the job is stalled or waiting for the cluster, stopping it")
    else:
        store.append_log(job.id, "cancel requested: stopping at the next step")
    if wait:
        _enforce_cancel(job.id, grace, term_grace)
    else:
        threading.Thread(target=_enforce_cancel, args=(job.id, grace, term_grace), daemon=True).start()
    return store.get_job(job.id)


def _enforce_cancel(job_id: int, grace: float, term_grace: float = TERM_GRACE_S) -> None:
    if _wait_finished(job_id, grace):
        return
    for sig, wait_s in ((signal.SIGTERM, term_grace), (signal.SIGKILL, 5)):
        job = store.get_job(job_id)
        if job.status != JobStatus.RUNNING:
            return
        if job.ray_job_id:
            store.append_log(job_id, f"worker did not stop within {grace:.0f}s; stopping Ray job {job.ray_job_id}")
            ray.stop(job.ray_job_id)
        elif job.pid is not None and worker_alive(job.pid, job_id):
            store.append_log(job_id, f"worker did not stop within {grace:.0f}s; sending {sig.name}")
            with contextlib.suppress(ProcessLookupError):
                os.killpg(job.pid, sig)
        if _wait_finished(job_id, wait_s):
            return
    store.update_job(
        job_id,
        (JobStatus.RUNNING,),
        status=JobStatus.CANCELLED,
        finished_at=store.now(),
        eta_seconds=None,
        error=f"cancelled; the worker did not stop within {grace:.0f}s and was killed",
    )
    kick()


def _wait_finished(job_id: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        _reap()
        job = store.get_job(job_id)
        if job.status != JobStatus.RUNNING:
            return True
        if job.pid and not job.ray_job_id and not worker_alive(job.pid, job_id):
            reconcile()
            return store.get_job(job_id).status != JobStatus.RUNNING
        time.sleep(0.2)
    return False


def last_checkpoint_step(job_id: int) -> int | None:
    """Step of the newest complete checkpoint (None when there is none); torn ones are set aside and logged.

    Only for a job no worker is writing to (resume, worker start)."""

    path = checkpoints.resume_point(store.job_dir(job_id), log=lambda line: store.append_log(job_id, line))
    return checkpoints.step_of(path) if path else None


def resume(job_id, start: bool = True) -> Job:
    """Re-queue an interrupted/cancelled/failed job under the same id; it continues from its
    last checkpoint, and metric rows past that checkpoint are dropped (they will be redone)."""
    reconcile()
    job = store.get_job(job_id)
    if job.status not in RESUMABLE:
        raise UserError("job", f"job {job.id} is {job.status}; only {one_of(RESUMABLE)} jobs can resume")
    step = last_checkpoint_step(job.id) or 0
    store.delete_metrics_after(job.id, step)
    if not store.update_job(
        job.id,
        RESUMABLE,
        status=JobStatus.QUEUED,
        queued_at=store.now(),
        queue_seq=store.next_queue_seq(),
        error=None,
        finished_at=None,
        pid=None,
        cancel_requested=False,
        eta_seconds=None,
        step=step,
    ):
        raise UserError("job", f"job {job.id} changed state meanwhile; look again with `show {job.id}`")
    store.append_log(job.id, f"resume requested: continuing from step {step}")
    if start:
        kick()
    return store.get_job(job.id)
