"""Send a run to the experiment tracker its plan names (`report_to`: tensorboard, trackio or mlflow).

transformers logs the trainer's metrics itself once `report_to` is among the trainer's keywords
(engine.train.config): its TensorBoardCallback, TrackioCallback and MLflowCallback. This module does the
rest, one function per moment of a job:

- `require`, at submit and again when the job starts: a tracker whose package is missing is refused in
  one line that names the extra to install;
- `destination`, before the trainer exists: points the tool at this job through the variables its
  callback reads (TensorBoard: the job folder's tensorboard/; Trackio and MLflow: LORAPILOT_HOME, project
  or experiment `lorapilot`), unless the user set them, and names the run after the job;
- `publish`, once the card is written: adds what the trainer never sees to the same run — the plan, the
  held-out evaluation before and after, the adapter card. A tracker that fails there costs the finished
  job one line in its log, never the job.

Nothing here reaches the network: only the user's own variables can point a tool elsewhere.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from engine import paths
from engine.data import demo
from engine.errors import UserError, first_line
from engine.plan import TrainingPlan
from engine.train import distributed

PROJECT = "lorapilot"  # Trackio's project and MLflow's experiment, unless MLFLOW_EXPERIMENT_NAME says otherwise
CARD = "README.md"  # the adapter card engine.train.artifacts writes
EVALUATION = "evaluation.json"  # the held-out before/after engine.evaluate.heldout writes

_set_here: dict[str, str] = {}  # the variables this process set, so the next job here may move them


# --- at submit -------------------------------------------------------------------------------------
def require(plan: TrainingPlan) -> None:
    """Refuse a tracker whose package is not installed; each choice's module and extra share its name."""
    name = plan.report_to
    if name != "none" and importlib.util.find_spec(name) is None:
        raise UserError("report_to", f"'{name}' needs the {name} extra: pip install 'lorapilot[{name}]'")


def trainer_settings(plan: TrainingPlan) -> dict:
    """The tracker's own `SFTConfig` keywords, beside `report_to`: a local Trackio project, no Hub Space."""
    if plan.report_to == "trackio":
        # no static Space on the Hub after training or at a push (transformers' TrackioCallback makes one otherwise)
        return {"project": PROJECT, "trackio_static_space_id": False}
    return {}


# --- before the trainer exists ---------------------------------------------------------------------
def run_name(plan: TrainingPlan, out_dir: Path) -> str:
    """The run's name in the tracker: the job (its folder's name), after the plan's name when it has one."""
    job = f"job {Path(out_dir).name}"
    return f"{plan.name} ({job})" if plan.name else job


def destination(plan: TrainingPlan, out_dir: Path) -> dict:
    """Point the plan's tracker at this job; the trainer keywords that name its run (none for `none`)."""
    if plan.report_to == "none":
        return {}
    require(plan)  # a plan queued before the package went away
    TRACKERS[plan.report_to].point(Path(out_dir))
    return {"run_name": run_name(plan, out_dir)}


def _point(variable: str, value: str) -> str:
    """Set a tool's variable for this job unless the user set it; returns the value in force."""
    current = os.environ.get(variable)
    if current is None or current == _set_here.get(variable):
        os.environ[variable] = _set_here[variable] = value
    return os.environ[variable]


# --- after training --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Record:
    """What a finished run adds to its tracker run."""

    run_name: str
    out_dir: Path
    step: int  # the last training step: the held-out scores sit there on the trainer's curves
    plan: dict[str, str]  # field -> value as text (MLflow's params)
    plan_yaml: str
    scalars: dict[str, float]  # heldout/base/<metric>, heldout/adapter/<metric>, base_score, adapter_score
    card: str | None  # the card's markdown; None when the job wrote none

    @property
    def card_path(self) -> Path:
        return self.out_dir / CARD


def publish(
    plan: TrainingPlan,
    out_dir: Path,
    step: int,
    base_score: float | None,
    adapter_score: float | None,
    log: Callable[[str], None] = print,
) -> None:
    """Add the plan, the held-out before/after and the card to the run the trainer's callback made."""
    if plan.report_to == "none":
        return
    try:
        TRACKERS[plan.report_to].publish(record(plan, Path(out_dir), step, base_score, adapter_score))
    except Exception as exc:  # the job has finished: a tracker that fails costs a line in its log, not the job
        log(f"report_to: could not send the plan, evaluation and card to {plan.report_to} ({first_line(exc)})")


def record(plan: TrainingPlan, out_dir: Path, step: int, base_score, adapter_score) -> Record:
    card = out_dir / CARD
    return Record(
        run_name=run_name(plan, out_dir),
        out_dir=out_dir,
        step=step,
        plan={name: _text(value) for name, value in plan.model_dump().items()},
        plan_yaml=plan.to_yaml(),
        scalars=_scalars(plan, out_dir, base_score, adapter_score),
        card=card.read_text(encoding="utf-8") if card.is_file() else None,
    )


def _scalars(plan: TrainingPlan, out_dir: Path, base_score, adapter_score) -> dict[str, float]:
    """Every number of the held-out evaluation, before (base) and after (adapter); a demo's headline score."""
    try:
        evaluation = json.loads((out_dir / EVALUATION).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        evaluation = {}
    scalars = {
        f"heldout/{side}/{name}": float(value)
        for side in ("base", "adapter")
        for name, value in (evaluation.get(side) or {}).items()
        if _number(value)
    }
    skill = demo.skill_of(plan)
    for name, value in (("base_score", base_score), ("adapter_score", adapter_score)):
        if _number(value) and skill is not None:  # the demo's before -> after, in its score_key
            scalars[f"heldout/{name}"] = float(value)
    return scalars


def _number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _text(value) -> str:
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items())
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)


# --- the trackers: where each writes, and how a finished run's record reaches it ----------------------
class Tracker(Protocol):
    """One choice of `report_to`. A new one is a module name and extra of its name (`require`), a choice in
    engine.plan's ReportTo, the name transformers' `report_to` knows it by, and these two hooks."""

    def point(self, out_dir: Path) -> None:
        """Before the trainer exists: set where its callback writes (its variables), unless the user did."""

    def publish(self, rec: Record) -> None:
        """After the card is written: add the record to the run the callback made (or one named after the job)."""


class _TensorBoard:
    """Event files in the job folder's tensorboard/ (`tensorboard --logdir $LORAPILOT_HOME/jobs`)."""

    def point(self, out_dir: Path) -> None:
        _point("TENSORBOARD_LOGGING_DIR", str(out_dir / "tensorboard"))  # TensorBoardCallback's variable

    def publish(self, rec: Record) -> None:
        from torch.utils.tensorboard import SummaryWriter  # what TensorBoardCallback writes with

        with SummaryWriter(log_dir=os.environ.get("TENSORBOARD_LOGGING_DIR") or str(rec.out_dir / "tensorboard")) as w:
            w.add_text("plan", _code_block(rec.plan_yaml), rec.step)
            for tag, value in rec.scalars.items():
                w.add_scalar(tag, value, rec.step)
            if rec.card is not None:
                w.add_text("card", rec.card, rec.step)


class _Trackio:
    """A local SQLite project, `lorapilot`, under $LORAPILOT_HOME/trackio (`trackio show --project lorapilot`)."""

    def point(self, out_dir: Path) -> None:
        # trackio reads TRACKIO_DIR once, when it is imported (its callback imports it): one job per worker process
        _point("TRACKIO_DIR", str(paths.subdir("trackio")))

    def publish(self, rec: Record) -> None:
        import trackio

        # the run the callback made (resumed by its name), no dashboard, no system metrics
        trackio.init(
            project=PROJECT,
            name=rec.run_name,
            resume="allow",
            config={"plan": rec.plan},
            embed=False,
            auto_log_cpu=False,
            auto_log_gpu=False,
        )
        try:
            texts = {"plan": trackio.Markdown(_code_block(rec.plan_yaml))}
            if rec.card is not None:
                texts["card"] = trackio.Markdown(rec.card)
            # after the trainer's rows (Trackio counts its own steps; the callback logs the trainer's beside them)
            trackio.log({**rec.scalars, **texts, "train/global_step": rec.step})
        finally:
            trackio.finish()


class _MLflow:
    """An SQLite store under $LORAPILOT_HOME/mlflow, experiment `lorapilot` (`mlflow ui --backend-store-uri ...`)."""

    def point(self, out_dir: Path) -> None:
        _point("MLFLOW_EXPERIMENT_NAME", PROJECT)
        folder = paths.subdir("mlflow")
        uri = _point("MLFLOW_TRACKING_URI", f"sqlite:///{folder / 'mlflow.db'}")
        if uri == _set_here.get("MLFLOW_TRACKING_URI") and distributed.is_main():
            # our store keeps the experiment's artifacts beside its database (MLflow's default is the working folder)
            from mlflow import MlflowClient

            client = MlflowClient(uri)
            name = os.environ["MLFLOW_EXPERIMENT_NAME"]
            if client.get_experiment_by_name(name) is None:
                client.create_experiment(name, artifact_location=(folder / "artifacts").as_uri())

    def publish(self, rec: Record) -> None:
        from mlflow import MlflowClient
        from mlflow.entities import Metric, Param

        client = MlflowClient()  # MLFLOW_TRACKING_URI: ours, or the user's
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or PROJECT
        experiment = client.get_experiment_by_name(name)
        experiment_id = experiment.experiment_id if experiment else client.create_experiment(name)
        # the run MLflowCallback made (a resume makes another; the newest is this process's)
        recent = client.search_runs([experiment_id], order_by=["attributes.start_time DESC"], max_results=50)
        run = next((r for r in recent if r.info.run_name == rec.run_name), None)
        run_id = run.info.run_id if run else client.create_run(experiment_id, run_name=rec.run_name).info.run_id
        now = int(time.time() * 1000)
        client.log_batch(
            run_id,
            metrics=[Metric(tag, value, now, rec.step) for tag, value in rec.scalars.items()],
            params=[Param(f"plan.{field}", value[:6000]) for field, value in rec.plan.items()],  # MLflow's limit
        )
        client.log_text(run_id, rec.plan_yaml, "plan.yaml")
        if rec.card is not None:
            client.log_artifact(run_id, str(rec.card_path))
        if run is None:
            client.set_terminated(run_id)


TRACKERS: dict[str, Tracker] = {"tensorboard": _TensorBoard(), "trackio": _Trackio(), "mlflow": _MLflow()}


def _code_block(text: str) -> str:
    """Text shown as it is by a markdown viewer (TensorBoard's text tab, Trackio's)."""
    return "```yaml\n" + text + "```"
