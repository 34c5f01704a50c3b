"""The worker process: `python -m jobs.worker JOB_ID` runs one job and records it.

It is the process around `engine.train.train`: it turns report events into rows
(metrics, progress, ETA, scores), answers `should_stop` from the job's cancel flag or a
SIGTERM, and writes the verdict: succeeded (with the measured peak beside the estimate),
cancelled/interrupted (resumable from the last checkpoint), or failed with a
plain-language reason. Tracebacks go to stdout, which the dispatcher points at job.log.
Before exiting it calls `kick()` so the next queued job starts with no UI open.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import traceback
from types import SimpleNamespace

from engine.train.run import TrainResult, train
from jobs import dispatcher, library, store
from jobs.callbacks import JobCallbacks, explain
from jobs.dispatcher import last_checkpoint_step
from jobs.launch import accelerate, resident
from jobs.tables import JobStatus


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv == ["--standby"]:
        return _standby()
    if len(argv) != 1 or not argv[0].isdigit():
        print("usage: python -m jobs.worker JOB_ID | --standby", file=sys.stderr)
        return 2
    return run_job(int(argv[0]))


def _standby() -> int:
    """Import what training needs first, then take a job id from stdin (dispatcher.standby).
    End of input means the submit did not start a job here (a bad plan, a full queue)."""
    import_libraries()
    line = sys.stdin.readline().strip()
    if not line.isdigit():
        return 0
    return run_job_into_its_log(int(line))


def import_libraries() -> None:
    """The imports engine.train.run makes first, paid ahead of the job (a standby worker, the resident).
    Imports only: no tensor is made, so a process forked after them starts its own OpenMP pool."""
    import matplotlib  # the loss chart a job's end draws (engine.train.artifacts)

    matplotlib.use("Agg")
    import matplotlib.pyplot
    import peft  # noqa: F401
    import rouge_score.rouge_scorer  # noqa: F401 - the held-out answers' metrics (engine.evaluate.textmetrics)
    import torch  # noqa: F401
    import transformers.models.llama.modeling_llama  # noqa: F401 - the embedded model's classes
    from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: F401
    from trl import SFTTrainer  # noqa: F401


def run_job_into_its_log(job_id: int) -> int:
    """`run_job` in a process that started before its job existed: from here on, its output goes to the
    job's log, where a spawned worker's goes (dispatcher._spawn)."""
    with open(store.log_path(job_id), "ab") as log:
        os.dup2(log.fileno(), sys.stdout.fileno())
        os.dup2(log.fileno(), sys.stderr.fileno())
    return run_job(job_id)


def run_job(job_id: int) -> int:
    worker = JobCallbacks(job_id)
    signal.signal(signal.SIGTERM, worker.on_sigterm)
    signal.signal(signal.SIGINT, worker.on_sigterm)
    try:
        return _run(worker)
    finally:
        try:
            dispatcher.kick()  # start the next queued job before this process goes away
            resident.ensure()  # and have the libraries imported for the one after
        except Exception:  # a failed kick must not hide the job's own verdict
            traceback.print_exc()


def _run(worker: JobCallbacks) -> int:
    job_id = worker.job_id
    job = store.get_job(job_id)
    if job.status != JobStatus.RUNNING:
        print(f"worker: job {job_id} is {job.status}, not claimed for running; nothing to do", flush=True)
        return 0
    store.update_job(job_id, (JobStatus.RUNNING,), pid=os.getpid(), host=socket.gethostname())
    store.append_log(job_id, f"worker pid {os.getpid()} started")
    if job.cancel_requested:  # cancelled between claim and start: do not even load torch
        _finish(job_id, JobStatus.CANCELLED, error="cancelled before training started")
        return 0

    plan = store.job_plan(job)

    ckpt = last_checkpoint_step(job_id)
    resume = ckpt is not None
    # Steps after the checkpoint will be trained again: drop their rows so none appears twice.
    dropped = store.delete_metrics_after(job_id, ckpt or 0)
    if ckpt is not None:
        store.append_log(job_id, f"resuming from checkpoint at step {ckpt} (dropped {dropped} later metric rows)")
        worker.step = ckpt
    out_dir = store.job_dir(job_id)

    result: TrainResult | SimpleNamespace  # rank 0's outcome, or this process's own run
    try:
        if plan.processes > 1:
            result = accelerate.run(job_id, plan.processes, resume)
        else:
            result = train(plan, out_dir, report=worker.report, should_stop=worker.should_stop, resume=resume)
    except accelerate.RankFailed as exc:
        _finish(job_id, JobStatus.FAILED, error=str(exc))
        return 1
    except accelerate.RankLost as exc:
        _finish(job_id, JobStatus.INTERRUPTED, error=str(exc))
        return 1
    except BaseException as exc:  # every failure becomes a reason on the job
        traceback.print_exc()
        sys.stdout.flush()
        if worker.terminated and isinstance(exc, KeyboardInterrupt):
            _finish(
                job_id, JobStatus.INTERRUPTED, error="stopped by a signal before the next step; resume to continue"
            )
            return 1
        _finish(job_id, JobStatus.FAILED, error=explain(exc, plan, worker.step))
        return 1

    if result.stopped:
        if worker._cancel or store.get_job(job_id).cancel_requested:
            _finish(
                job_id,
                JobStatus.CANCELLED,
                step=result.steps,
                error=f"cancelled at step {result.steps}; resume to continue",
            )
        else:
            _finish(
                job_id,
                JobStatus.INTERRUPTED,
                step=result.steps,
                error=f"stopped by a signal at step {result.steps}; resume to continue from the checkpoint",
            )
        return 0
    _finish(
        job_id,
        JobStatus.SUCCEEDED,
        step=result.steps,
        progress=1.0,
        error=None,
        measured_peak_bytes=_int(result.peak_bytes),
        **{k: getattr(result, k) for k in ("base_score", "adapter_score") if getattr(result, k) is not None},
    )
    library.register_finished(job_id)
    return 0


def _finish(job_id: int, status: str, **values) -> None:
    store.update_job(job_id, (JobStatus.RUNNING,), status=status, finished_at=store.now(), eta_seconds=None, **values)
    store.append_log(job_id, f"{status}" + (f": {values['error']}" if values.get("error") else ""))


def _int(value):
    return int(value) if value is not None else None


if __name__ == "__main__":
    sys.exit(main())
