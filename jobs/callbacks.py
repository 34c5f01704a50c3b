"""The callbacks a training run gets from its job, and the plain-language verdict of a failure.

One job's process (jobs.worker) or rank 0 of a multi-process job (jobs.launch.rank) trains
with these: events become rows of the store, and a cancel flag or a signal stops the run at
the next step.
"""

from __future__ import annotations

import json
import time
import traceback
from typing import Any

from engine.train import events, failures
from jobs import store

POLL_S = 0.25  # how often should_stop reads the cancel flag from the database


class JobCallbacks:
    """What engine.train.train is given by the job around it: `report` turns events into rows,
    `should_stop` answers from the job's cancel flag or a SIGTERM."""

    def __init__(self, job_id: int):
        self.job_id = job_id
        self.step = 0
        self.terminated = False
        self._cancel = False
        self._polled = 0.0

    # --- callbacks given to engine.train.train ----------------------------------------
    def report(self, event: events.Event) -> None:
        if isinstance(event, events.Metrics):
            store.record_metrics(self.job_id, event.values())
            self.step = max(self.step, event.step)
        elif isinstance(event, events.Progress):
            self.step = max(self.step, event.step)
            store.update_job(
                self.job_id,
                step=event.step,
                total_steps=event.total_steps,
                eta_seconds=event.eta_seconds,
                progress=min(1.0, event.step / event.total_steps) if event.total_steps else 0.0,
                heartbeat_at=store.now(),
                step_seconds=event.step_seconds,
            )  # jobs.stall
        elif isinstance(event, events.Started):
            values: dict[str, Any] = {
                "total_steps": event.total_steps,
                "device": event.device,
                "base_score": event.base_score,
            }
            store.update_job(self.job_id, **{k: v for k, v in values.items() if v is not None})
            store.append_log(self.job_id, f"training on {event.device}: {event.total_steps} steps")
        elif isinstance(event, events.Scores):
            scores: dict[str, Any] = {
                k: v
                for k, v in (("base_score", event.base_score), ("adapter_score", event.adapter_score))
                if v is not None
            }
            if scores:  # an UPDATE with nothing to set is a SQL error
                store.update_job(self.job_id, **scores)
        elif isinstance(event, events.Phase):
            store.update_job(self.job_id, phase=event.name, phase_started_at=store.now())
            store.append_log(self.job_id, f"phase: {event.name}")
        elif isinstance(event, events.Evaluation):
            store.update_job(self.job_id, evaluation_json=json.dumps(event.evaluation))
        elif isinstance(event, events.Note):  # e.g. why training stopped early; shown in the job's log
            store.append_log(self.job_id, event.message)

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


def explain(exc: BaseException, plan, step: int | None) -> str:
    try:
        return failures.explain(exc, plan, step)
    except Exception:  # the explainer itself must never lose the verdict
        traceback.print_exc()
        return f"{type(exc).__name__}: {exc}"
