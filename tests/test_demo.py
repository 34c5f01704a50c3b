"""Demo skills: deterministic generated data, held-out split, exact-match evaluation."""

import json

import pytest

from engine.data import dataset, demo
from engine.errors import UserError
from tests.tiny import make_tiny_model


def test_skills_are_deterministic_and_test_never_overlaps_train():
    assert len(demo.SKILLS) >= 3
    for name in demo.SKILLS:
        train, test = demo.records(name, "train"), demo.records(name, "test")
        assert train == demo.records(name, "train")  # same rows every call, every machine
        assert len(train) == demo.TRAIN_ROWS and len(test) == demo.TEST_ROWS
        prompts = {r["messages"][1]["content"] for r in train}
        assert not prompts & {r["messages"][1]["content"] for r in test}
        assert all(r["messages"][-1]["role"] == "assistant" and r["messages"][-1]["content"] for r in train)


def test_dataset_path_writes_jsonl_under_home(lorapilot_home):
    path = demo.dataset_path("json", "test")
    assert path.parent == lorapilot_home / "demo" and path.suffix == ".jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert rows == demo.records("json", "test")
    assert json.loads(rows[0]["messages"][-1]["content"]).keys() == {"name", "age", "city"}
    assert dataset.load_records("demo:json") == demo.records("json", "train")
    with pytest.raises(UserError, match="unknown demo skill 'nope'.*ticket"):
        demo.dataset_path("nope")


def test_default_plan_and_skill_of():
    plan = demo.default_plan("isodate")
    assert plan.model == "default" and plan.dataset == "demo:isodate" and plan.max_steps
    assert demo.skill_of(plan).name == "isodate"
    assert demo.skill_of(plan.updated(dataset="x.jsonl")) is None
    assert demo.default_plan().dataset == f"demo:{demo.DEFAULT_SKILL}"


def test_evaluate_is_exact_match_on_greedy_answers(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = make_tiny_model(tmp_path / "tiny")
    model, tok = AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)
    rows = demo.records("isodate", "test")[:6]
    assert demo.evaluate(model, tok, "isodate", records=rows) == 0.0  # a random model knows no dates
    # Make the reference equal to what the model says for half the rows: score must be 50.
    prompts = [tok.apply_chat_template(r["messages"][:-1], tokenize=False, add_generation_prompt=True) for r in rows]
    tok.padding_side = "left"
    batch = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    out = model.generate(
        **batch,
        max_new_tokens=demo.SKILLS["isodate"].max_new_tokens,
        do_sample=False,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
    )
    said = tok.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    tok.padding_side = "right"
    for r, s in list(zip(rows, said))[:3]:
        r["messages"][-1]["content"] = s.strip()
    assert demo.evaluate(model, tok, demo.SKILLS["isodate"], records=rows) == 50.0
    assert tok.padding_side == "right" and model.training is False
