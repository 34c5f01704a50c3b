"""What a training run reports while it runs: one small type per kind of event.

The trainer (engine.train.run) sends them to its `report` callback; the worker (jobs/)
turns them into rows. Typed, so a misspelt field fails where it is written, not as a
silently missing value in the database.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Started:
    total_steps: int
    device: str  # "cpu" or "cuda"
    base_score: float | None = None  # demo skills: the base model's held-out score before training


@dataclass(frozen=True)
class Progress:
    step: int
    total_steps: int
    eta_seconds: float
    step_seconds: float | None = None  # the measured pace, for stall detection (jobs.stall)


@dataclass
class Metrics:
    """One row of the loss curve; a train log and an eval at the same step merge into one."""

    step: int
    epoch: float | None = None
    loss: float | None = None
    eval_loss: float | None = None
    learning_rate: float | None = None
    grad_norm: float | None = None
    tokens_per_second: float | None = None
    time: float | None = None  # training seconds so far, across resumes

    def values(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Scores:
    base_score: float | None
    adapter_score: float | None


@dataclass(frozen=True)
class Phase:
    """What the job is doing now: loading model, preparing data, scoring base, training, ..."""

    name: str


@dataclass(frozen=True)
class Evaluation:
    """The held-out before/after so far (engine.evaluate.heldout), as `show --json` gives it."""

    evaluation: dict


@dataclass(frozen=True)
class Note:
    """A line for the job's log, e.g. why training stopped early."""

    message: str


Event = Started | Progress | Metrics | Scores | Phase | Evaluation | Note
