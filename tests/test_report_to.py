"""`report_to`: a real tiny job per tracker, read back with the tool's own reader.

TensorBoard's EventAccumulator, MLflow's MlflowClient on the SQLite store under LORAPILOT_HOME, and
Trackio's own API on its local project each find the trainer's loss (logged by transformers' callback),
the held-out before/after the job measured, the plan and the adapter card (engine.train.tracking). A missing
package is refused in one line naming the extra; `none` writes nothing.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys

import pytest

from engine.errors import UserError
from engine.plan import TrainingPlan, add_plan_flags, plan_from_args
from engine.train import resolved, script, tracking
from jobs import store
from tests.jobwait import tiny_alpaca

pytestmark = pytest.mark.slow

VARIABLES = ("TENSORBOARD_LOGGING_DIR", "MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "TRACKIO_DIR")
STEPS = 4


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_alpaca(tmp_path_factory.mktemp("tiny-report-to"))


@pytest.fixture(autouse=True)
def no_tracker_variables(monkeypatch):
    """The user set none of the tools' variables; whatever a job sets here is undone after the test."""
    for name in VARIABLES:
        monkeypatch.setenv(name, "")  # recorded as unset, so the teardown removes what the job set
        monkeypatch.delenv(name)


def _plan(tiny, **kw) -> TrainingPlan:
    model, data = tiny
    values = dict(
        name="colours",
        model=str(model),
        dataset=str(data),
        gpu="cpu",
        r=4,
        alpha=8,
        targets="all-linear",
        seq_len=64,
        batch_size=2,
        max_steps=STEPS,
        eval_split=0.2,
        eval_generations=2,
        save_steps=2,
        patience=0,
    )
    return TrainingPlan.build(**{**values, **kw})


def _train(plan: TrainingPlan, home):
    from engine.train.run import train

    out_dir = home / "jobs" / "7"
    result = train(plan, out_dir)
    assert result.steps == STEPS
    evaluation = json.loads((out_dir / "evaluation.json").read_text())
    return out_dir, evaluation


def test_tensorboard_has_the_trainers_loss_the_heldout_before_after_the_plan_and_the_card(tiny, lorapilot_home):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    plan = _plan(tiny, report_to="tensorboard")
    out_dir, evaluation = _train(plan, lorapilot_home)

    events = EventAccumulator(str(out_dir / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    scalars = events.Tags()["scalars"]
    # the trainer's metrics, from transformers' TensorBoardCallback
    assert [e.step for e in events.Scalars("train/loss")] == list(range(1, STEPS + 1))
    assert [e.step for e in events.Scalars("eval/loss")] == [2, 4]
    # the held-out before/after, at the last step, as the job measured them
    for side in ("base", "adapter"):
        for metric in ("loss", "exact_match", "f1"):
            (point,) = events.Scalars(f"heldout/{side}/{metric}")
            assert point.step == STEPS and point.value == pytest.approx(evaluation[side][metric], abs=1e-4)
    assert "heldout/base_score" not in scalars  # not a demo skill: no headline score
    # the plan and the card, as text
    plan_text = events.Tensors("plan/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "report_to: tensorboard" in plan_text and "name: colours" in plan_text
    card = events.Tensors("card/text_summary")[0].tensor_proto.string_val[0].decode()
    assert card == (out_dir / "README.md").read_text()

    # what the job ran says so, and the exported script trains with the same tracker
    record = resolved.read(out_dir)
    assert record is not None and record.sft["report_to"] == "tensorboard"
    assert "report_to='tensorboard'" in script.python_script(plan, record)


def test_mlflow_run_has_the_metrics_the_plan_as_params_and_the_card(tiny, lorapilot_home):
    from mlflow import MlflowClient

    plan = _plan(tiny, report_to="mlflow")
    out_dir, evaluation = _train(plan, lorapilot_home)

    client = MlflowClient(f"sqlite:///{lorapilot_home / 'mlflow' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("lorapilot")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "colours (job 7)" and run.info.status == "FINISHED"
    # the trainer's loss, from transformers' MLflowCallback, one value per step
    assert [m.step for m in client.get_metric_history(run.info.run_id, "loss")] == list(range(1, STEPS + 1))
    metrics, params = run.data.metrics, run.data.params
    for side in ("base", "adapter"):
        assert metrics[f"heldout/{side}/loss"] == pytest.approx(evaluation[side]["loss"], abs=1e-4)
        assert metrics[f"heldout/{side}/exact_match"] == evaluation[side]["exact_match"]
    assert (params["plan.r"], params["plan.report_to"], params["plan.targets"]) == ("4", "mlflow", "all-linear")
    # the card and the plan are the run's artifacts, beside the database (not in the working folder)
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"README.md", "plan.yaml"}
    card = client.download_artifacts(run.info.run_id, "README.md", str(out_dir / "downloaded"))
    assert open(card).read() == (out_dir / "README.md").read_text()
    assert experiment.artifact_location.startswith((lorapilot_home / "mlflow").as_uri())


def test_trackio_project_has_the_metrics_the_plan_and_the_card(tiny, lorapilot_home, monkeypatch):
    # Trackio reads TRACKIO_DIR when it is imported; a worker runs one job, so it imports it fresh: so does this test
    for name in [m for m in sys.modules if m == "trackio" or m.startswith("trackio.")]:
        monkeypatch.delitem(sys.modules, name)
    plan = _plan(tiny, report_to="trackio")
    out_dir, evaluation = _train(plan, lorapilot_home)

    import trackio
    from trackio.sqlite_storage import SQLiteStorage

    assert (lorapilot_home / "trackio" / "lorapilot.db").is_file()  # local, under the home: no Space, no network
    (run,) = trackio.Api().runs("lorapilot")
    assert run.name == "colours (job 7)"
    assert run.config["plan"]["report_to"] == "trackio" and run.config["plan"]["r"] == "4"
    logs = SQLiteStorage.get_logs("lorapilot", run.name)
    losses = [row for row in logs if "train/loss" in row]
    assert [row["train/global_step"] for row in losses] == list(range(1, STEPS + 1))
    (heldout,) = [row for row in logs if "heldout/adapter/loss" in row]
    for side in ("base", "adapter"):
        assert heldout[f"heldout/{side}/loss"] == pytest.approx(evaluation[side]["loss"], abs=1e-4)
    assert heldout["train/global_step"] == STEPS
    assert "report_to: trackio" in heldout["plan"]["_value"]
    assert heldout["card"]["_value"] == (out_dir / "README.md").read_text()


def test_report_to_none_writes_nothing(tiny, lorapilot_home):
    plan = _plan(tiny)
    assert plan.report_to == "none"
    out_dir, _ = _train(plan, lorapilot_home)
    assert not (out_dir / "tensorboard").exists() and not (out_dir / "checkpoints" / "runs").exists()
    assert not (lorapilot_home / "mlflow").exists() and not (lorapilot_home / "trackio").exists()
    assert not any(name in os.environ for name in VARIABLES)
    assert resolved.read(out_dir).sft["report_to"] == "none"


def _without(module: str, monkeypatch):
    """Simulate an uninstalled package: importlib.util.find_spec finds no `module` (the rest as usual)."""
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == module else find_spec(name, *a))


@pytest.mark.parametrize("tracker", ["tensorboard", "trackio", "mlflow"])
def test_a_missing_tracker_is_refused_in_one_line_naming_the_extra(tracker, tiny, monkeypatch, capsys):
    from ui.cli.main import run

    _without(tracker, monkeypatch)
    model, data = tiny
    code = run(["train", "--model", str(model), "--dataset", str(data), "--gpu", "cpu", "--report-to", tracker])
    assert code == 2
    assert capsys.readouterr().err == (
        f"error: report_to: '{tracker}' needs the {tracker} extra: pip install 'lorapilot[{tracker}]'\n"
    )
    assert store.list_jobs() == []  # refused before a job exists
    # and a job queued before the package went away fails at its start with the same line
    with pytest.raises(UserError, match=rf"^report_to: '{tracker}' needs the {tracker} extra"):
        tracking.destination(_plan(tiny, report_to=tracker), store.job_dir(1))


def test_report_to_is_a_plan_flag_with_its_choices(monkeypatch):
    import argparse

    parser = argparse.ArgumentParser()
    add_plan_flags(parser)
    assert plan_from_args(parser.parse_args(["--report-to", "mlflow"])).report_to == "mlflow"
    assert TrainingPlan.build(report_to="trackio").to_cli_args() == ["--report-to", "trackio"]
    with pytest.raises(UserError) as exc:
        plan_from_args(parser.parse_args(["--report-to", "wandb"]))
    assert exc.value.field == "report_to" and "'tensorboard'" in exc.value.message
    assert "--report-to {none,tensorboard,trackio,mlflow}" in parser.format_help()


def test_a_tracker_that_fails_after_training_costs_one_log_line_not_the_job(tmp_path, monkeypatch):
    def broken(record):
        raise ConnectionError("tracking server refused the connection\nsecond line")

    monkeypatch.setattr(tracking.TRACKERS["mlflow"], "publish", broken)
    lines: list[str] = []
    tracking.publish(TrainingPlan.build(report_to="mlflow"), tmp_path, 4, None, None, log=lines.append)
    assert lines == [
        "report_to: could not send the plan, evaluation and card to mlflow (tracking server refused the connection)"
    ]
