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
import time
import traceback

from jobs import store

POLL_S = 0.25  # how often should_stop reads the cancel flag from the database


class Worker:
    def __init__(self, job_id: int):
        self.job_id = job_id
        self.step = 0
        self.terminated = False
        self._cancel = False
        self._polled = 0.0

    # --- callbacks given to engine.train.train ----------------------------------------
    def report(self, event: dict) -> None:
        kind = event.get("event")
        if kind == "metrics" and event.get("step") is not None:
            store.record_metrics(self.job_id, event)
            self.step = max(self.step, int(event["step"]))
        elif kind == "progress":
            step, total = int(event.get("step") or 0), event.get("total_steps")
            self.step = max(self.step, step)
            store.update_job(self.job_id, step=step, total_steps=total, eta_seconds=event.get("eta_seconds"),
                             progress=min(1.0, step / total) if total else 0.0,
                             heartbeat_at=store.now(), step_seconds=event.get("step_seconds"))  # jobs.stall
        elif kind == "start":
            values = {"total_steps": event.get("total_steps"), "device": event.get("device")}
            if event.get("base_score") is not None:
                values["base_score"] = event["base_score"]
            store.update_job(self.job_id, **{k: v for k, v in values.items() if v is not None})
            store.append_log(self.job_id, f"training on {event.get('device')}: {event.get('total_steps')} steps")
        elif kind == "note":  # e.g. why training stopped early; shown in the job's log
            store.append_log(self.job_id, event["message"])
        elif kind == "scores":
            store.update_job(self.job_id, **{k: event[k] for k in ("base_score", "adapter_score")
                                             if event.get(k) is not None})

    def should_stop(self) -> bool:
        if self.terminated or self._cancel:
            return True
        if time.monotonic() - self._polled >= POLL_S:  # a cheap read, but not on every micro-step
            self._polled = time.monotonic()
            self._cancel = bool(store.get_job(self.job_id).cancel_requested)
        return self._cancel

    def on_sigterm(self, signum, frame) -> None:
        # Graceful: the trainer sees should_stop() at the next step and saves a checkpoint.
        self.terminated = True
        print(f"worker: received signal {signum}; stopping at the next step", flush=True)


def _train_entry():
    from engine.train.run import train

    return train


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or not argv[0].isdigit():
        print("usage: python -m jobs.worker JOB_ID", file=sys.stderr)
        return 2
    return run_job(int(argv[0]))


def run_job(job_id: int) -> int:
    worker = Worker(job_id)
    signal.signal(signal.SIGTERM, worker.on_sigterm)
    signal.signal(signal.SIGINT, worker.on_sigterm)
    try:
        return _run(worker)
    finally:
        try:
            from jobs import dispatcher

            dispatcher.kick()  # start the next queued job before this process goes away
        except Exception:  # noqa: BLE001 - a failed kick must not hide the job's own verdict
            traceback.print_exc()


def _run(worker: Worker) -> int:
    job_id = worker.job_id
    job = store.get_job(job_id)
    if job.status != "running":
        print(f"worker: job {job_id} is {job.status}, not claimed for running; nothing to do", flush=True)
        return 0
    store.update_job(job_id, ("running",), pid=os.getpid(), host=socket.gethostname())
    store.append_log(job_id, f"worker pid {os.getpid()} started")
    if job.cancel_requested:  # cancelled between claim and start: do not even load torch
        _finish(job_id, "cancelled", error="cancelled before training started")
        return 0

    plan = store.job_plan(job)
    from jobs.dispatcher import last_checkpoint_step

    ckpt = last_checkpoint_step(job_id)
    resume = ckpt is not None
    # Steps after the checkpoint will be trained again: drop their rows so none appears twice.
    dropped = store.delete_metrics_after(job_id, ckpt or 0)
    if resume:
        store.append_log(job_id, f"resuming from checkpoint at step {ckpt} (dropped {dropped} later metric rows)")
        worker.step = ckpt
    out_dir = store.job_dir(job_id)
    from jobs.launch import accelerate

    try:
        if plan.processes > 1:
            result = accelerate.run(job_id, plan.processes, resume)
        else:
            result = _train_entry()(plan, out_dir, report=worker.report, should_stop=worker.should_stop, resume=resume)
    except accelerate.RankFailed as exc:
        _finish(job_id, "failed", error=str(exc))
        return 1
    except accelerate.RankLost as exc:
        _finish(job_id, "interrupted", error=str(exc))
        return 1
    except BaseException as exc:  # noqa: BLE001 - every failure becomes a reason on the job
        traceback.print_exc()
        sys.stdout.flush()
        if worker.terminated and isinstance(exc, KeyboardInterrupt):
            _finish(job_id, "interrupted", error="stopped by a signal before the next step; resume to continue")
            return 1
        _finish(job_id, "failed", error=explain(exc, plan, worker.step))
        return 1

    if getattr(result, "stopped", False):
        if worker._cancel or store.get_job(job_id).cancel_requested:
            _finish(job_id, "cancelled", step=result.steps, error=f"cancelled at step {result.steps}; resume to continue")
        else:
            _finish(job_id, "interrupted", step=result.steps,
                    error=f"stopped by a signal at step {result.steps}; resume to continue from the checkpoint")
        return 0
    _finish(job_id, "succeeded", step=result.steps, progress=1.0, error=None,
            measured_peak_bytes=_int(result.peak_bytes),
            **{k: getattr(result, k) for k in ("base_score", "adapter_score") if getattr(result, k, None) is not None})
    return 0


def _finish(job_id: int, status: str, **values) -> None:
    store.update_job(job_id, ("running",), status=status, finished_at=store.now(), eta_seconds=None, **values)
    store.append_log(job_id, f"{status}" + (f": {values['error']}" if values.get("error") else ""))


def explain(exc: BaseException, plan, step: int | None) -> str:
    try:
        from engine.train import failures

        return failures.explain(exc, plan, step)
    except Exception:  # noqa: BLE001 - the explainer itself must never lose the verdict
        traceback.print_exc()
        return f"{type(exc).__name__}: {exc}"


def _int(value):
    return int(value) if value is not None else None


if __name__ == "__main__":
    sys.exit(main())
