"""The wizard's refusals as plain functions (the browser walk is tests/test_browser_refusals.py)."""

from __future__ import annotations

import pytest

from engine.errors import UserError
from engine.plan import TrainingPlan
from ui.web import refusals, review, steps

HUGE = dict(model="default", gpu="cpu", dataset="demo:ticket", r=5_000_000)


def test_an_out_of_range_field_gets_its_line_in_its_own_panel_and_the_charts_say_why_they_are_empty():
    with pytest.raises(UserError) as e:
        review.plan_from_values({"model": "default", "gpu": "cpu", "dataset": "demo:ticket"}, {"r": -3})
    verdict, memory, summary, params, main, advanced = refusals.invalid_view(e.value)
    assert "Rank (r):" in verdict and "must be a whole number of 1 or more" in verdict
    assert "Rank (r): must be a whole number of 1 or more" in main and advanced == "" and summary == ""
    for fig in (memory, params, refusals.sweep_placeholder(e.value)):
        assert fig.layout["annotations"][0]["text"] == "Fix Rank (r) to see the estimate"
    main, advanced = refusals.field_messages(UserError("warmup_ratio", "must be at least 0 and below 1"))
    assert main == "" and "Warmup ratio: must be at least 0 and below 1" in advanced


def test_text_that_is_not_a_number_gets_the_same_one_line_refusal_naming_the_value_the_plan_keeps():
    # A browser's number box sends nothing for "abc": the box is refused in place, never read as "unchanged"
    # (which ran a job at the default 2e-4 while the page had shown 0.002).
    ctx = {"model": "default", "gpu": "cpu", "dataset": "demo:ticket"}
    with pytest.raises(UserError) as e:
        review.plan_from_values(ctx, {"learning_rate": None, "r": 8}, kept={"learning_rate": 0.002})
    assert e.value.field == "learning_rate"
    assert e.value.message == (
        "is empty or not a number; expected a number from 1e-06 to 0.01 (rule L1); the plan keeps 0.002"
    )
    verdict, memory, _, _, main, advanced = refusals.invalid_view(e.value)
    assert "Learning rate: is empty or not a number" in main and advanced == ""
    assert memory.layout["annotations"][0]["text"] == "Fix Learning rate to see the estimate"
    with pytest.raises(UserError, match="is empty or not a number; expected a whole number$"):
        review.plan_from_values(ctx, {"r": ""})
    # an empty step limit means "no limit", not a refusal
    assert review.plan_from_values(ctx, {"max_steps": None}).max_steps is None


def test_an_absurd_value_is_accepted_with_a_warning_naming_its_rule_and_range():
    plan = TrainingPlan.build(model="default", gpu="cpu", dataset="demo:ticket", learning_rate=1e9)
    shown = refusals.warnings_html(plan)
    assert "[L1]" in shown and "Learning rate 1e+09 is far outside 1e-06 to 0.01" in shown
    assert refusals.warnings_html(plan.updated(learning_rate=2e-3)) == ""


def test_leaving_an_empty_number_box_puts_back_the_last_valid_value():
    from ui.web import wizard

    assert wizard.restore("learning_rate")(None, {"learning_rate": 0.002}) == 0.002
    assert not isinstance(wizard.restore("learning_rate")(0.01, {"learning_rate": 0.002}), float)  # kept as typed
    assert not isinstance(wizard.restore("max_steps")(None, {"max_steps": 30}), int)  # empty = no limit


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
