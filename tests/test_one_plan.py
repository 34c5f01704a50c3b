"""One plan, one truth: the review, the launch summary, the job page and `show` describe the plan
that runs with the same figures, and the ETA counts every phase of a job, not only its steps.

A tiny local model stands in for the embedded default (its conversion takes a minute); the demo
skill's data is the real one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from engine.advice.rules import DEMO_FIELDS
from engine.data import demo
from engine.estimate import timing
from engine.estimate.combined import estimate, headline
from engine.plan import TrainingPlan
from jobs import dispatcher, outcome, store
from jobs.tables import now
from ui.web import jobs_page, review, steps, wizard

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from tests.tiny import make_tiny_model

    return str(make_tiny_model(tmp_path_factory.mktemp("tiny") / "model"))


def _answers(tiny) -> dict:
    return {
        "model": tiny,
        "difficulty": "simple",
        "dataset": "demo:ticket",
        "rows": demo.TRAIN_ROWS,
        "hw_kind": "cpu",
        "gpu": None,
        "budget": None,
        "name": "",
    }


def test_the_demo_recipe_is_a_row_of_the_rules_table_so_the_texts_and_the_estimate_describe_the_plan_shown(tiny):
    ctx = wizard.context_from(**_answers(tiny))
    rec, plan = review.recommend_for(ctx)
    recipe = demo.default_plan("ticket")
    for field in DEMO_FIELDS:
        assert getattr(plan, field) == getattr(recipe, field), field
        assert rec.reasons[field].rule == "X1", field
    shown = review.reasons_html(rec)
    # B2's "8 examples per update" was shown beside an effective batch of 4 when the recipe came afterwards
    assert "8 examples per update" not in shown and "demo recipe, measured to learn this skill in 30 steps" in shown
    # the recommendation's own estimate (and the CPU note's minutes) are of this plan
    assert rec.estimate.to_json() == estimate(plan).to_json()
    # any other data: the rules as before
    other, _ = review.recommend_for({**ctx, "dataset": "/tmp/rows.jsonl"})
    assert other.reasons["r"].rule != "X1"


def test_the_review_the_launch_summary_the_job_page_and_show_give_one_estimate(tiny):
    answers = _answers(tiny)
    rec, plan = review.recommend_for(wizard.context_from(**answers))
    data = steps.check_data_view("demo", "ticket", None, tiny, plan.seq_len)
    lengths, share = data["lengths"], data["label_share"]
    form = review.form_of(plan)

    numbers = wizard.update_numbers(wizard.context_from(**answers), lengths, share, {}, **form)
    summary, _, notice = wizard.launch_summary(lengths=lengths, label_share=share, **answers, **form)
    assert notice == ""  # entering the launch step clears an earlier launch's notice

    job = dispatcher.submit(plan, start=False)  # the submit's estimate is stored with the job
    stored = headline(store.job_estimate(job))
    shown = review.headline_tiles(stored, plan.seq_len)
    assert "memory with your data" in shown and f"worst case: padded to {plan.seq_len}" in shown
    page = jobs_page.job_view(job.id)["header"]
    assert "Estimate with the checked data: the longest batch is padded to about" in page  # what the data changed
    for name, figure in shown.items():
        assert f">{figure}<" in numbers[1], (name, figure)  # the review's tiles
        assert f">{figure}<" in summary, (name, figure)  # the launch summary
        assert f">{figure}<" in page, (name, figure)  # the job page
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, str(ROOT / "app.py"), "show", str(job.id), "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    detail = json.loads(out.stdout)
    assert detail["estimate"]["headline"] == stored
    assert set(detail["estimate"]["time"]["phases"]) == set(timing.PHASES)
    assert detail["eta"]["seconds"] == pytest.approx(stored["seconds"], abs=0.5)  # queued: every phase ahead


def test_the_eta_counts_every_phase_and_is_not_zero_at_the_last_step_with_scoring_left(tiny):
    plan = demo.default_plan("ticket").updated(model=tiny)
    est = estimate(plan)
    phases = est.time.phases
    assert list(phases) == list(timing.PHASES)
    assert phases["scoring base"] > 0 and phases["scoring adapter"] > 0 and phases["saving"] > 0
    # training holds the held-out evaluations every save_steps as well as the steps
    assert phases["training"] > est.time.seconds
    assert est.time.total_seconds == pytest.approx(sum(phases.values()), abs=0.2)

    job = dispatcher.submit(plan, start=False)
    # the trainer's last step: its own ETA is 0 while the adapter's scoring and the save are still ahead
    store.update_job(
        job.id,
        status="running",
        phase="training",
        phase_started_at=now(),
        step=30,
        total_steps=30,
        eta_seconds=0.0,
        progress=1.0,
    )
    left = outcome.eta(store.get_job(job.id))
    assert left["phases"]["training"] == 0 and left["phases"]["scoring base"] == 0
    assert left["seconds"] == pytest.approx(phases["scoring adapter"] + phases["saving"], abs=0.2)
    # the adapter is scored on the rows the base pass got through: its time follows the base's measured one
    evaluation = {"rows": 24, "base": {"seconds": 40.0, "exact_match": 4.0}}
    store.update_job(
        job.id,
        evaluation_json=json.dumps(evaluation),
        phase="scoring adapter",
        phase_started_at=now() - timedelta(seconds=10),
    )
    left = outcome.eta(store.get_job(job.id))
    assert left["phases"]["scoring adapter"] == pytest.approx(40.0 * timing.ADAPTER_FORWARD - 10, abs=1.0)
    assert "ETA, every phase" in jobs_page.job_view(job.id)["header"]


def test_the_memory_by_length_chart_says_where_qlora_passes_full_fine_tuning_and_why():
    below = {"full": [(128, 5.0), (256, 6.0)], "qlora": [(128, 2.0), (256, 3.0)]}
    assert review.qlora_crossing(below) is None
    crossing = {"full": [(128, 5.0), (256, 6.0), (512, 8.0)], "qlora": [(128, 2.0), (256, 6.5), (512, 11.0)]}
    assert review.qlora_crossing(crossing).startswith("QLoRA passes full fine-tuning from 256 tokens")
    # a catalog model on a GPU (bf16): the estimator's own curves cross, and the chart says so under its title
    figure = review.sweep_view(TrainingPlan.build(model="qwen2.5-0.5b", gpu="RTX 4090", dataset="demo:ticket"))
    notes = [a["text"] for a in figure.layout.get("annotations", [])]
    assert any("QLoRA passes full fine-tuning from" in n and "fp32" in n for n in notes), notes
