"""After a command queued a job: say where it is, and with --wait follow it until it finishes.

Shared by the commands that queue jobs (`train`, `demo`, `resume`, `next`).
"""

from __future__ import annotations

import sys
import time

from engine.units import human_seconds
from jobs import dispatcher, outcome, store
from jobs.tables import FINISHED, JobStatus


def follow(job, wait: bool) -> int:
    """After a submit: where the job's files go, then either return at once or wait for it."""
    print(f"artifacts: {job.artifact_dir}")
    if not wait:
        print(f"runs in the background; follow it with `python app.py show {job.id}`")
        return 0
    return wait_for(job.id)


def wait_for(job_id: int, poll_s: float = 0.2) -> int:
    """Follow the job's rows until it finishes; 0 only if it succeeded. Ctrl-C leaves the job running."""
    last, printed_at = None, 0.0
    try:
        while True:
            job = store.get_job(job_id)
            if job.status == JobStatus.RUNNING and job.pid and not dispatcher.worker_alive(job.pid, job_id):
                dispatcher.reconcile()
                job = store.get_job(job_id)
            metrics = store.job_metrics(job_id) if job.status == JobStatus.RUNNING else []
            loss = next((m.loss for m in reversed(metrics) if m.loss is not None), None)
            left = outcome.eta(job)  # every phase left, not only the training steps
            line = (
                f"{job.status}"
                + (f" ({job.phase})" if job.status == "running" and job.phase else "")
                + f"  step {job.step}/{job.total_steps or '?'}"
                + (f"  loss {loss:.4f}" if loss is not None else "")
            )
            # a new line on every change of state or step; between them the ETA counts down every 10 s
            if line != last or (left and time.monotonic() - printed_at >= 10):
                print(line + (f"  eta {human_seconds(left['seconds'])}" if left else ""), flush=True)
                last, printed_at = line, time.monotonic()
            if job.status in FINISHED:
                break
            time.sleep(poll_s)
    except KeyboardInterrupt:
        print(f"\nstopped waiting; job {job_id} keeps running (`python app.py show {job_id}`)", file=sys.stderr)
        return 130
    if job.base_score is not None or job.adapter_score is not None:
        print(f"score: base {pct(job.base_score)} -> adapter {pct(job.adapter_score)}")
    if job.status == JobStatus.SUCCEEDED:
        print(f"succeeded: adapter in {job.artifact_dir}")
        return 0
    print(f"{job.status}: {job.error or 'no reason recorded'} (log: {store.log_path(job_id)})", file=sys.stderr)
    return 1


def pct(v) -> str:
    return "-" if v is None else f"{v:.0f}%"
