"""`next` and `compare` on real job rows (SQLite, the CLI as a subprocess); no training here:
the parent's curves are written as a worker would write them, so the test takes seconds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.errors import UserError
from engine.plan import TrainingPlan
from jobs import dispatcher, runs, store
from tests.tiny import make_tiny_model

ROOT = Path(__file__).resolve().parent.parent
EVALUATION = {
    "rows": 4,
    "base": {"loss": 3.0, "perplexity": 20.1, "exact_match": 0.0, "f1": 5.0, "rougeL": 5.0},
    "adapter": {"loss": 2.2, "perplexity": 9.0, "exact_match": 25.0, "f1": 40.0, "rougeL": 38.0},
    "samples": [{"prompt": "Say yes.", "reference": "yes", "base": "", "adapter": "yes"}],
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-runs")
    data = folder / "words.jsonl"
    data.write_text(
        "".join(
            json.dumps({"messages": [{"role": "user", "content": f"Say {w}."}, {"role": "assistant", "content": w}]})
            + "\n"
            for w in ("yes", "no", "maybe", "red", "green", "blue", "one", "two")
        )
    )
    return {"model": str(make_tiny_model(folder / "model")), "dataset": str(data)}


def _finished_job(tiny, eval_curve, **plan_kw) -> int:
    """A succeeded job whose rows hold the given eval curve (train loss falling throughout)."""
    plan = TrainingPlan.build(
        model=tiny["model"],
        dataset=tiny["dataset"],
        gpu="cpu",
        seq_len=32,
        max_steps=40,
        r=16,
        alpha=32,
        dropout=0.05,
        **plan_kw,
    )
    job = dispatcher.submit(plan, start=False)
    for step in range(1, 41):
        store.record_metrics(
            job.id,
            {
                "step": step,
                "loss": 2.0 * 0.95**step + 0.3,
                "grad_norm": 1.0,
                "eval_loss": eval_curve(step) if step % 5 == 0 else None,
            },
        )
    store.update_job(job.id, status="succeeded", finished_at=store.now(), evaluation_json=json.dumps(EVALUATION))
    return job.id


def overfit(s):
    return 1.5 - 0.02 * s if s <= 15 else 1.2 + 0.05 * (s - 15)


def clean(s):
    return 2.2 * 0.96**s + 0.7


def test_next_creates_the_linked_job_with_the_advice(tiny):
    parent = _finished_job(tiny, overfit)
    job, changes = runs.next_run(parent, start=False)
    assert job.parent_id == parent and job.status == "queued"
    assert changes == {"r": 8, "alpha": 16, "dropout": 0.1, "max_steps": 15}
    plan = store.job_plan(job)
    assert (plan.r, plan.alpha, plan.dropout, plan.max_steps) == (8, 16, 0.1, 15)
    assert plan.dataset == tiny["dataset"] and plan.seq_len == 32  # the rest of the plan is the parent's
    # only the chosen rules
    job2, changes2 = runs.next_run(parent, rules=["D2"], start=False)
    assert changes2 == {"dropout": 0.1} and store.job_plan(job2).r == 16
    with pytest.raises(UserError, match="U1 is not in job"):
        runs.next_run(parent, rules=["U1"], start=False)
    good = _finished_job(tiny, clean)
    before = len(store.list_jobs())
    with pytest.raises(UserError, match="no advice to follow"):
        runs.next_run(good, start=False)
    assert len(store.list_jobs()) == before  # nothing half-created


def cli(*args, **env):
    return subprocess.run(
        [sys.executable, str(ROOT / "app.py"), *map(str, args)],
        capture_output=True,
        text=True,
        check=False,
        timeout=180,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
    )


def test_cli_next_show_and_compare(tiny):
    parent = _finished_job(tiny, overfit)
    out = cli("next", parent, "--apply", "U2", LORAPILOT_MAX_CONCURRENT="0")  # queued, not started
    assert out.returncode == 0, out.stderr
    child = max(j.id for j in store.list_jobs())
    assert f"job {child} queued" in out.stdout and "r 8" in out.stdout and "dropout" not in out.stdout

    shown = json.loads(cli("show", parent, "--json").stdout)
    assert shown["evaluation"] == EVALUATION and shown["verdict"] == "overfitting"
    assert [a["rule"] for a in shown["advice"]] == ["U2", "D2", "U2", "U2"]
    assert set(shown["advice"][0]) >= {"rule", "finding", "evidence", "change"}
    assert shown["advice"][0]["change"] == {"r": 8, "alpha": 16}
    assert {"phase", "phase_seconds", "parent_id"} <= set(shown)

    compared = json.loads(cli("compare", parent, child, "--json").stdout)
    assert [c["id"] for c in compared] == [parent, child]
    assert compared[1]["parent_id"] == parent
    assert compared[0]["plan"] == {"r": 16, "alpha": 32, "max_steps": 40} and compared[1]["plan"]["r"] == 8
    assert compared[0]["best_eval_loss"] == {"step": 15, "loss": pytest.approx(1.2)}
    assert len(compared[0]["metrics"]) == 40


def test_compare_as_text_and_its_errors(tiny, capsys):
    from ui.cli import main

    a, b = _finished_job(tiny, overfit), _finished_job(tiny, clean, learning_rate=1e-4)
    assert main.run(["compare", str(a), str(b)]) == 0
    text = capsys.readouterr().out
    assert "learning_rate" in text and "loss base -> adapter" in text and "3 -> 2.2" in text
    assert "overfitting" in text and "good" in text
    assert main.run(["compare", str(a)]) == 2
    assert capsys.readouterr().err.strip() == "error: jobs: give two or more job ids to compare"
    assert main.run(["compare", str(a), "999"]) == 2
    assert "no job with id 999" in capsys.readouterr().err
