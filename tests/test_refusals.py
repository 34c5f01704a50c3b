"""The wizard's refusals as plain functions (the browser walk is tests/test_browser_refusals.py)."""

from __future__ import annotations

import pytest

from engine.errors import UserError
from engine.plan import TrainingPlan
from ui.web import refusals, review, steps

HUGE = dict(model="default", gpu="cpu", dataset="demo:ticket", r=5_000_000)


def test_an_out_of_range_field_gets_its_line_in_its_own_panel_and_the_charts_say_why_they_are_empty():
    with pytest.raises(UserError) as e:
        review.plan_from_values({"model": "default", "gpu": "cpu", "dataset": "demo:ticket"},
                                [None if f != "r" else -3 for f in review.FORM_FIELDS])
    verdict, memory, summary, params, main, advanced = refusals.invalid_view(e.value)
    assert "Rank (r):" in verdict and "must be a whole number of 1 or more" in verdict
    assert "Rank (r): must be a whole number of 1 or more" in main and advanced == "" and summary == ""
    for fig in (memory, params, refusals.sweep_placeholder(e.value)):
        assert fig.layout["annotations"][0]["text"] == "Fix Rank (r) to see the estimate"
    main, advanced = refusals.field_messages(UserError("warmup_ratio", "must be at least 0 and below 1"))
    assert main == "" and "Warmup ratio: must be at least 0 and below 1" in advanced


def test_number_controls_leave_range_checks_to_the_plan():
    # A Gradio minimum answers a bad value with a bare "Error" and no update: the plan answers instead.
    for field in ("r", "seed", "learning_rate", "warmup_ratio", "max_steps"):
        assert getattr(review.make_control(field), "minimum", None) is None, field


def test_a_plan_that_cannot_fit_on_the_cpu_needs_the_override_that_says_what_happens():
    plan = TrainingPlan.build(**HUGE)
    consequence = refusals.misfit(plan)
    assert consequence.startswith("Launch anyway: it needs about") and "of RAM" in consequence
    assert "killed for lack of memory" in consequence
    assert "Not launched:" in refusals.launch_refusal(plan, override=False)
    assert refusals.launch_refusal(plan, override=True) is None
    small = plan.updated(r=8)
    assert refusals.misfit(small) is None and refusals.launch_refusal(small, override=False) is None


def test_a_rank_above_the_layers_width_is_flagged_with_its_rule():
    text = refusals.warnings_html(TrainingPlan.build(**HUGE))
    assert "[R6]" in text and "above 192" in text and "k_proj" in text  # SmolLM2: 3 KV heads x 64
    assert refusals.warnings_html(TrainingPlan.build(**{**HUGE, "r": 64})) == ""
    assert refusals.warnings_html(TrainingPlan.build(**{**HUGE, "method": "full"})) == ""


def test_data_messages_in_the_wizard_do_not_point_to_a_cli_flag(tmp_path):
    csv = tmp_path / "questions.csv"
    csv.write_text("question,answer\nWhat is 2+2?,4\nCapital of France?,Paris\n")
    view = steps.check_data_view("upload", None, str(csv), "default")
    assert "question, answer" in view["summary"] and "--columns" not in view["summary"]
    assert "rename your file&#x27;s columns" in view["summary"]
    png = tmp_path / "picture.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n")
    view = steps.check_data_view("upload", None, str(png), "default")
    assert "picture.png" in view["summary"] and "not accepted" in view["summary"] and view["dataset"] is None
