"""TrainingPlan: validation names the field, YAML and CLI flags round-trip."""

import argparse

import pytest

from engine.errors import UserError
from engine.plan import TrainingPlan, add_plan_flags, plan_from_args


def parse(argv):
    parser = argparse.ArgumentParser()
    add_plan_flags(parser)
    return plan_from_args(parser.parse_args(argv))


@pytest.mark.parametrize(
    "field, value, expected",
    [
        ("r", 0, "r: must be a whole number of 1 or more"),
        ("alpha", -1, "alpha: must be greater than 0"),
        ("dropout", 1.0, "dropout: must be at least 0 and below 1"),
        ("budget_gb", 0, "budget_gb: must be greater than 0 GB"),
        ("method", "lorra", "method: got 'lorra'; expected 'lora', 'qlora' or 'full'"),
        ("targets", " , ", "targets: must name at least one module"),
    ],
)
def test_bad_values_name_the_field(field, value, expected):
    with pytest.raises(UserError) as err:
        TrainingPlan.build(**{field: value})
    assert str(err.value).startswith(expected)
    assert err.value.field == field


def test_unknown_field_lists_known_ones():
    with pytest.raises(UserError) as err:
        TrainingPlan.build(rank=8)
    assert err.value.field == "rank"
    assert "seq_len" in err.value.message


def test_dora_is_refused_for_full_fine_tuning():
    with pytest.raises(UserError, match="use_dora"):
        TrainingPlan.build(method="full", use_dora=True)


def test_yaml_round_trip_keeps_every_field():
    plan = TrainingPlan.build(
        model="qwen2.5-0.5b",
        method="qlora",
        r=32,
        alpha=64,
        targets="q_proj, v_proj",
        columns={"instruction": "question"},
        modules_to_save=["lm_head"],
        max_steps=50,
        grad_ckpt=True,
    )
    again = TrainingPlan.from_yaml(plan.to_yaml())
    assert again == plan
    assert again.targets == "q_proj,v_proj"


def test_bad_yaml_is_a_user_error():
    with pytest.raises(UserError, match="plan.yaml: must be a YAML mapping"):
        TrainingPlan.from_yaml("- just\n- a list\n", source="plan.yaml")
    with pytest.raises(UserError, match="not valid YAML"):
        TrainingPlan.from_yaml("r: [1,\n", source="plan.yaml")


def test_cli_flags_round_trip():
    plan = TrainingPlan.build(
        model="llama-3.1-8b",
        r=16,
        alpha=32,
        dropout=0.1,
        targets="attention",
        grad_ckpt=True,
        columns={"instruction": "q", "output": "a"},
        modules_to_save=["lm_head", "embed_tokens"],
        budget_gb=24.0,
        dataset_rows=1000,
        max_steps=10,
    )
    assert parse(plan.to_cli_args()) == plan


def test_flags_only_override_what_is_given():
    base = TrainingPlan.build(r=32, grad_ckpt=True)
    parser = argparse.ArgumentParser()
    add_plan_flags(parser)
    plan = plan_from_args(parser.parse_args(["--alpha", "8", "--no-grad-ckpt"]), base=base)
    assert (plan.r, plan.alpha, plan.grad_ckpt) == (32, 8, False)


def test_help_text_comes_from_the_field():
    assert "capacity" in TrainingPlan.help("r")
