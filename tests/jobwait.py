"""Helpers for tests that run real worker processes: a tiny job, and waiting on its rows.

Waits are bounded by progress, not by a wall-clock budget: `wait_for` fails only when the
job shows no sign of life (status, step and log all unchanged) for `quiet_s`, so a machine
busy with other work makes a test slower, never red.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from engine.plan import TrainingPlan
from jobs import dispatcher, store
from jobs.tables import FINISHED
from tests.tiny import make_tiny_model


def tiny_files(folder: Path) -> dict:
    """A tiny model and a small chat dataset in `folder`: {"model": ..., "dataset": ...}."""
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"What is {i} plus {i}?"},
                {"role": "assistant", "content": f"The answer is {2 * i}."},
            ]
        }
        for i in range(24)
    ]
    data = Path(folder) / "sums.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    model = make_tiny_model(Path(folder) / "model", texts=[r["messages"][1]["content"] for r in rows])
    return {"model": str(model), "dataset": str(data)}


def tiny_alpaca(folder: Path) -> tuple[Path, Path]:
    """A tiny model and 12 instruction/output rows ("What colour is item 3?" -> "Item 3 is black.")."""
    rows = [
        {"instruction": f"What colour is item {i}?", "output": f"Item {i} is {c}."}
        for i, c in enumerate(["red", "blue", "green", "black"] * 3)
    ]
    data = Path(folder) / "alpaca.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    model = make_tiny_model(Path(folder) / "model", vocab_texts=[r["instruction"] + " " + r["output"] for r in rows])
    return model, data


def plan(tiny: dict, **kw) -> TrainingPlan:
    values = dict(
        model=tiny["model"],
        dataset=tiny["dataset"],
        gpu="cpu",
        batch_size=1,
        seq_len=48,
        eval_split=0,
        logging_steps=1,
        save_steps=5,
        max_steps=20,
        warmup_ratio=0,
    )
    return TrainingPlan.build(**{**values, **kw})


def finished(job) -> bool:
    return job.status in FINISHED


def _sign_of_life(job) -> tuple:
    log = store.log_path(job.id)
    return job.status, job.step, job.pid, log.stat().st_size if log.exists() else 0


def wait_for(job_id, until, quiet_s: float = 180.0, poll: float = 0.05):
    """The job once `until(job)` holds; AssertionError if it shows no progress for `quiet_s`."""
    last, since = None, time.monotonic()
    while True:
        dispatcher._reap()  # this test process is the workers' parent: reap them like kick() does
        job = store.get_job(job_id)
        if until(job):
            return job
        sign = _sign_of_life(job)
        if sign != last:
            last, since = sign, time.monotonic()
        elif time.monotonic() - since > quiet_s:
            raise AssertionError(
                f"job {job_id} made no progress for {quiet_s:.0f}s: {job.status} at step "
                f"{job.step}; log:\n{store.log_tail(job_id)}"
            )
        time.sleep(poll)
