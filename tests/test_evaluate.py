"""Before/after on held-out rows and the diagnosis, end to end on a tiny model (a few seconds a run).

The tiny model is tests/tiny.py's, with its embeddings scaled up: a random model with
small embeddings has logits too flat for LoRA to make it confident (its loss cannot fall
far below log(vocab)), so it can neither learn a rule nor overfit; scaled, it does both in
a few dozen steps, like a pretrained model would. Torch runs on one thread here: tiny
matrix products on a loaded 2-core machine are ~50x slower with two spinning threads.
"""

from __future__ import annotations

import json
import random

import pytest

from engine.advice import diagnose
from engine.evaluate import split, textmetrics
from engine.plan import TrainingPlan
from engine.train.events import Evaluation, Metrics, Phase
from tests.tiny import make_tiny_model

WORDS = ["apple", "river", "stone", "cloud", "tiger", "piano", "lemon", "chair"]
SCALE = 20  # embedding scale (see the module docstring)
PHASES = ["loading model", "preparing data", "scoring base", "training", "scoring adapter", "saving"]


@pytest.fixture(scope="module")
def one_thread():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _chat_file(path, pairs):
    path.write_text(
        "".join(
            json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}) + "\n"
            for q, a in pairs
        ),
        encoding="utf-8",
    )
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory, one_thread):
    import torch
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("evaluate")
    rng = random.Random(0)
    codes = [(f"Code for {w}?", "".join(rng.choice("abcdefghijkmnpqrstuvwxyz") for _ in range(6))) for w in WORDS]
    notes = [(f"Log entry {i}: {w}.", "Noted.") for i, w in enumerate(WORDS * 2)]
    # The same prompts, but the rows the split holds out (seed 42, half of 8) are answered
    # differently: the more confidently the adapter memorises its rows, the worse it does there.
    held = set(_held_out(8, 0.5, 42))
    shifted = [(f"Log entry {i}: {w}.", "Rejected!" if i in held else "Noted.") for i, w in enumerate(WORDS)]
    model = make_tiny_model(root / "model", vocab_texts=[q + " " + a for q, a in codes + notes + shifted])
    weights = AutoModelForCausalLM.from_pretrained(model)
    with torch.no_grad():
        weights.get_input_embeddings().weight.mul_(SCALE)  # tied to the output head: confident logits
    weights.save_pretrained(model)
    return {
        "model": str(model),
        "codes": str(_chat_file(root / "codes.jsonl", codes)),
        "notes": str(_chat_file(root / "notes.jsonl", notes)),
        "shifted": str(_chat_file(root / "shifted.jsonl", shifted)),
    }


def _held_out(n: int, share: float, seed: int) -> list[int]:
    """The row indices engine.data.dataset.build_datasets holds out (its seeded shuffle)."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return order[: split.holdout_size(n, share)]


def _run(files, tmp_path, data, **kw):
    from engine.train.run import train

    values = dict(
        model=files["model"],
        dataset=files[data],
        method="lora",
        seq_len=32,
        batch_size=4,
        logging_steps=1,
        warmup_ratio=0.0,
        gpu="cpu",
        eval_generations=4,
        dropout=0.0,
    )
    values.update(kw)
    plan = TrainingPlan.build(**values)
    events = []
    train(plan, tmp_path / "job", report=events.append)
    metrics = [e.values() for e in events if isinstance(e, Metrics)]
    evaluation = [e.evaluation for e in events if isinstance(e, Evaluation)][-1]
    return plan, events, metrics, evaluation


def test_overfitting_run_is_diagnosed_with_u2_changes(files, tmp_path):
    # four training rows, 60 epochs, a high learning rate and rank
    plan, events, metrics, ev = _run(
        files,
        tmp_path,
        "shifted",
        r=32,
        alpha=64,
        learning_rate=5e-3,
        max_steps=60,
        save_steps=6,
        eval_split=0.5,
        warmup_ratio=0.1,
    )
    assert [e.name for e in events if isinstance(e, Phase)] == PHASES
    assert ev["rows"] == 4 and ev["generated_rows"] == 4
    for side in ("base", "adapter"):
        assert {"loss", "perplexity", "exact_match", "f1", "rougeL"} <= set(ev[side])
    assert ev["adapter"]["loss"] < ev["base"]["loss"]
    assert len(ev["samples"]) == 4 and set(ev["samples"][0]) == {"prompt", "reference", "base", "adapter"}
    assert ev["samples"][0]["prompt"].startswith("Log entry ") and ev["samples"][0]["reference"] == "Rejected!"
    assert "before training" in ev["note"]
    assert json.loads((tmp_path / "job" / "evaluation.json").read_text())["adapter"] == ev["adapter"]

    found = diagnose.diagnose(metrics, ev, plan)
    assert found and found[0].finding == "overfitting", [f.to_json() for f in found]
    assert found[0].rule == "U2" and found[0].change == {"r": 16, "alpha": 32}
    assert "the eval loss rose from" in found[0].evidence
    assert ("D2", {"dropout": 0.1}) in [(f.rule, f.change) for f in found]
    stop = next(f for f in found if "max_steps" in f.change)
    assert 0 < stop.change["max_steps"] < 60


def test_clean_run_is_not_flagged(files, tmp_path):
    plan, _, metrics, ev = _run(
        files,
        tmp_path,
        "notes",
        r=8,
        alpha=16,
        learning_rate=5e-3,
        max_steps=16,
        save_steps=4,
        eval_split=0.25,
        warmup_ratio=0.1,
    )
    assert ev["rows"] == 4 and ev["adapter"]["loss"] < 0.7 * ev["base"]["loss"]
    found = diagnose.diagnose(metrics, ev, plan)
    assert found == [], [f.to_json() for f in found]
    assert diagnose.verdict(found, finished=True) == "good"


def test_diverging_run_is_flagged_unstable(files, tmp_path):
    # 100 is ~500,000x a usual LoRA rate: the tiny model's norms keep the loss finite, so the update
    # saturates the network instead (the gradient vanishes, the loss freezes) - unstable all the same
    plan, _, metrics, ev = _run(
        files, tmp_path, "notes", r=8, alpha=16, learning_rate=100.0, max_steps=8, save_steps=4, eval_split=0.25
    )
    found = diagnose.diagnose(metrics, ev, plan)
    assert found and found[0].finding == "unstable", [f.to_json() for f in found]
    assert found[0].rule == "U4" and found[0].change == {"learning_rate": 10}
    assert [f.rule for f in found] == ["U4", "A4", "U4"]


def test_too_little_data_holds_nothing_out_and_says_so(files, tmp_path):
    _, _, _, ev = _run(files, tmp_path, "codes", max_steps=1, eval_split=0.0, eval_generations=0)
    assert ev == {"rows": 0, "note": split.why_none(8, 0.0)}
    assert split.holdout_size(3, 0.5) == 0 and "too few" in split.why_none(3, 0.5)
    assert split.holdout_size(10, 0.1) == 2 and split.holdout_size(100, 0.1) == 10


def test_text_metrics_come_from_rouge_score():
    scores = textmetrics.scores(["3 x blue mug", "the cat"], ["3 x blue mug", "the black cat"])
    assert scores["exact_match"] == 50.0
    assert scores["f1"] == pytest.approx(100 * (1 + 0.8) / 2, abs=0.1)  # 2 of 3 words: P 1, R 2/3 -> F1 0.8
    assert textmetrics.scores([], []) == {"exact_match": None, "f1": None, "rougeL": None}
    assert textmetrics.scores(["Привет мир"], ["привет"])["f1"] == pytest.approx(66.7, abs=0.1)  # any script
