"""Early stopping: a flat held-out loss ends training, says why, and keeps the best checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.plan import TrainingPlan
from engine.train import stopping
from engine.train.events import Note
from tests.tiny import make_tiny_model

ROWS = [(f"Convert {d} March 2021", f"2021-03-{d:02d}") for d in range(1, 29)]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-stop")
    model_dir = make_tiny_model(root / "model", vocab_texts=[q + " " + a for q, a in ROWS])
    data = root / "dates.jsonl"
    data.write_text(
        "".join(
            json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}) + "\n"
            for q, a in ROWS
        ),
        encoding="utf-8",
    )
    return model_dir, data


def test_improvement_needs_a_margin():
    assert stopping.improves(1.0, None)
    assert stopping.improves(0.9, 1.0)
    assert not stopping.improves(0.99, 1.0)  # 1% better: flat
    assert not stopping.improves(0.0105, 0.011)  # a thousandth of a nat near zero: flat
    assert not stopping.improves(1.2, 1.0)


def test_plan_patience_is_checked():
    from engine.errors import UserError

    with pytest.raises(UserError, match="patience"):
        TrainingPlan.build(patience=-1)
    plan = TrainingPlan.build(patience=0)
    assert not stopping.enabled(plan, has_eval=True) and stopping.trainer_args(plan, True) == {}
    assert not stopping.enabled(TrainingPlan.build(), has_eval=False)


def test_flat_held_out_loss_stops_the_run_and_says_why(tiny, tmp_path):
    from engine.train.run import train

    model_dir, data = tiny
    # a learning rate too small to move the loss: every evaluation after the first is flat
    plan = TrainingPlan.build(
        model=str(model_dir),
        dataset=str(data),
        r=4,
        alpha=8,
        seq_len=32,
        batch_size=4,
        max_steps=12,
        learning_rate=1e-9,
        warmup_ratio=0.0,
        save_steps=1,
        logging_steps=1,
        eval_split=0.25,
        patience=2,
        gpu="cpu",
    )
    events = []
    result = train(plan, tmp_path / "out", report=events.append)
    assert result.steps == 3 and result.total_steps == 12 and not result.stopped
    assert result.stop_reason == "stopped at step 3 of 12: held-out loss flat for 2 evaluations"
    assert Note(result.stop_reason) in events
    assert (tmp_path / "out" / "adapter_model.safetensors").is_file()
    # the trainer tracked the best checkpoint and loaded it as the adapter
    state = json.loads((tmp_path / "out" / "checkpoints" / "checkpoint-3" / "trainer_state.json").read_text())
    assert state["best_model_checkpoint"] and state["best_metric"] is not None
    # named where it was published (not the staging folder it was written in), so the trainer found it
    assert Path(state["best_model_checkpoint"]).parent == tmp_path / "out" / "checkpoints"
    assert Path(state["best_model_checkpoint"]).is_dir()


def test_the_worker_writes_the_reason_into_the_jobs_log():
    from jobs import store
    from jobs.callbacks import JobCallbacks

    job = store.insert_job(store.Job(name="early", plan_json=TrainingPlan().model_dump_json()))
    JobCallbacks(job.id).report(Note("stopped at step 3 of 12: held-out loss flat for 2 evaluations"))
    assert "stopped at step 3 of 12: held-out loss flat for 2 evaluations" in store.log_tail(job.id)
