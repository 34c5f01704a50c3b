"""End-to-end training on a tiny model generated in the test (seconds per run).

LoRA and QLoRA each produce an adapter that PeftModel.from_pretrained loads and that
changes the model's output; a stop request leaves a checkpoint that resume continues
from; full fine-tuning runs; the artifacts a job promises exist.
"""

from __future__ import annotations

import csv
import json

import pytest

from engine.errors import UserError
from engine.plan import TrainingPlan
from engine.train.events import Metrics, Progress, Started
from tests.tiny import make_tiny_model

QUESTIONS = [
    (f"What colour is item {i}?", f"Item {i} is {c}.")
    for i, c in enumerate(["red", "blue", "green", "yellow", "black", "white", "orange", "purple"] * 4)
]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny llama + a chat dataset about it, shared by the tests in this module."""
    root = tmp_path_factory.mktemp("tiny")
    texts = [q + " " + a for q, a in QUESTIONS]
    model_dir = make_tiny_model(root / "model", vocab_texts=texts)
    data = root / "chat.jsonl"
    data.write_text(
        "".join(
            json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}) + "\n"
            for q, a in QUESTIONS
        ),
        encoding="utf-8",
    )
    return model_dir, data


def _plan(tiny, **kw) -> TrainingPlan:
    model_dir, data = tiny
    values = dict(
        model=str(model_dir),
        dataset=str(data),
        method="lora",
        r=4,
        alpha=8,
        seq_len=64,
        batch_size=4,
        max_steps=6,
        learning_rate=1e-2,
        save_steps=3,
        logging_steps=1,
        eval_split=0.2,
        warmup_ratio=0.0,
        gpu="cpu",
    )
    values.update(kw)
    return TrainingPlan.build(**values)


def _logits(model, tokenizer):
    import torch

    batch = tokenizer(["What colour is item 3?"], return_tensors="pt")
    with torch.no_grad():
        return model(**batch).logits


def _assert_adapter_changes_output(model_dir, out_dir):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    before = _logits(base, tokenizer)
    tuned = PeftModel.from_pretrained(base, out_dir)
    after = _logits(tuned, tokenizer)
    assert not torch.allclose(before, after, atol=1e-4), "the adapter did not change the output"


def test_lora_run_writes_a_loadable_adapter_and_reports_events(tiny, tmp_path):
    from engine.train.run import train

    events = []
    out = tmp_path / "job"
    result = train(_plan(tiny), out, report=events.append)

    assert result.steps == 6 and not result.stopped and result.total_steps == 6
    assert result.final_loss is not None and result.peak_bytes > 0
    for name in (
        "adapter_model.safetensors",
        "adapter_config.json",
        "plan.yaml",
        "README.md",
        "metrics.csv",
        "loss.png",
    ):
        assert (out / name).is_file(), name
    assert (out / "checkpoints" / "checkpoint-6").is_dir()
    assert TrainingPlan.from_yaml((out / "plan.yaml").read_text()) == _plan(tiny)
    card = (out / "README.md").read_text()
    assert "PeftModel.from_pretrained" in card and "rank r | 4" in card
    _assert_adapter_changes_output(tiny[0], out)

    assert next(e for e in events if isinstance(e, Started)) == Started(total_steps=6, device="cpu")
    metrics = [e for e in events if isinstance(e, Metrics)]
    assert [m.step for m in metrics] == [1, 2, 3, 4, 5, 6]  # one row per step, eval merged in
    assert None not in (metrics[0].epoch, metrics[0].learning_rate, metrics[0].grad_norm, metrics[0].time)
    assert metrics[2].eval_loss is not None and metrics[2].loss is not None  # save_steps=3 → eval at 3
    progress = [e for e in events if isinstance(e, Progress)]
    assert progress[-1].step == 6 and progress[-1].eta_seconds == 0
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5, 6]


def test_qlora_run_writes_a_loadable_adapter(tiny, tmp_path):
    try:  # bitsandbytes 0.50 quantizes on the CPU; skip only where it truly cannot
        import bitsandbytes.functional as bnbf
        import torch

        bnbf.quantize_4bit(torch.randn(64, 64), quant_type="nf4")
    except Exception as exc:  # pragma: no cover - depends on the machine
        pytest.skip(f"bitsandbytes cannot quantize to 4-bit on this machine: {exc}")
    from engine.train.run import load_base, train

    model, _ = load_base(_plan(tiny, method="qlora"))
    assert type(model.model.layers[0].self_attn.q_proj).__name__ == "Linear4bit"
    del model
    out = tmp_path / "job"
    result = train(_plan(tiny, method="qlora", targets="attention"), out)
    assert result.steps == 6 and (out / "adapter_model.safetensors").is_file()
    config = json.loads((out / "adapter_config.json").read_text())
    assert sorted(config["target_modules"]) == ["k_proj", "o_proj", "q_proj", "v_proj"]
    _assert_adapter_changes_output(tiny[0], out)


def test_stop_request_checkpoints_and_resume_continues_from_it(tiny, tmp_path):
    from engine.train.run import train

    out = tmp_path / "job"
    plan = _plan(tiny, max_steps=8, save_steps=5, eval_split=0.0)
    first: list = []
    steps_seen = []

    def should_stop():
        return len(steps_seen) >= 2  # after the second step

    def report(event):
        first.append(event)
        if isinstance(event, Progress):
            steps_seen.append(event.step)

    stopped = train(plan, out, report=report, should_stop=should_stop)
    assert stopped.stopped and stopped.steps == 2
    assert (out / "checkpoints" / "checkpoint-2").is_dir()  # saved on stop, not only every save_steps

    second: list = []
    resumed = train(plan, out, report=second.append, resume=True)
    assert not resumed.stopped and resumed.steps == 8
    assert next(e for e in second if isinstance(e, Started)).total_steps == 8
    assert [e.step for e in second if isinstance(e, Metrics)] == [3, 4, 5, 6, 7, 8]
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    assert [int(r["step"]) for r in rows] == list(range(1, 9))  # history restored, nothing doubled
    times = [float(r["time"]) for r in rows]
    assert times == sorted(times)  # elapsed time continues across the resume
    _assert_adapter_changes_output(tiny[0], out)


def test_full_fine_tune_updates_the_weights(tiny, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from engine.train.run import train

    out = tmp_path / "job"
    result = train(_plan(tiny, method="full", learning_rate=1e-3, max_steps=3), out)
    assert result.steps == 3 and (out / "model.safetensors").is_file() and (out / "loss.png").is_file()
    tokenizer = AutoTokenizer.from_pretrained(tiny[0])
    before = _logits(AutoModelForCausalLM.from_pretrained(tiny[0]), tokenizer)
    after = _logits(AutoModelForCausalLM.from_pretrained(out), tokenizer)
    assert not torch.allclose(before, after, atol=1e-4)


def test_missing_models_are_user_errors(tiny, tmp_path):
    from engine.train.run import load_base

    with pytest.raises(UserError) as err:
        load_base(_plan(tiny, model=str(tmp_path / "nope")))
    assert err.value.field == "model" and "does not exist" in err.value.message
    # the tests run offline (HF_HUB_OFFLINE=1), so a hub id that is not cached cannot load
    with pytest.raises(UserError) as err:
        load_base(_plan(tiny, model="lorapilot-test/definitely-not-cached"))
    assert err.value.field == "model" and "definitely-not-cached" in err.value.message


def test_cpu_peak_counts_live_tensors_and_frees_them():
    import torch

    from engine.train.peak import LiveTensorPeak

    with LiveTensorPeak() as meter:
        start = meter.live
        a = torch.ones(1000, 1000)  # 4 MB
        b = a * 2  # another 4 MB
        del a, b
        c = torch.zeros(10)
    assert meter.peak - start >= 8_000_000
    assert meter.live - start < 1_000_000  # freed storages leave the live count
    del c


def test_the_adapters_held_out_loss_comes_from_the_final_evaluation_only_when_it_saw_the_final_weights(tiny, tmp_path):
    import time

    from engine.evaluate.heldout import Judge
    from engine.train import run

    plan = _plan(tiny, dtype="fp32", max_steps=6, save_steps=3)  # evaluations at steps 3 and 6
    prepared = run._prepare(plan, tmp_path / "job", lambda event: None, None)
    trainer = prepared.trainer
    judge = Judge(plan, prepared.eval_ds, prepared.tokenizer, tmp_path / "job", lambda event: None, t0=time.time())
    trainer.train()

    own, tokens, batches = judge._loss(trainer, None, None)  # the Judge's own pass over the final weights
    assert batches >= 1 and tokens > 0
    step, tally = trainer.last_evaluation
    assert step == 6 and len(tally) == batches and sum(count for _, count in tally) == tokens
    judge.result["loss_batches"] = batches
    assert judge._evaluated_loss(trainer) == pytest.approx(own, rel=1e-6)

    judge.result["loss_batches"] = 1  # the base pass stopped after one batch: the same one batch
    first, _, _ = judge._loss(trainer, 1, None)
    assert judge._evaluated_loss(trainer) == pytest.approx(first, rel=1e-6)

    judge.result["loss_batches"] = batches
    trainer.state.best_model_checkpoint = str(tmp_path / "job" / "checkpoints" / "checkpoint-3")
    assert judge._evaluated_loss(trainer) is None  # the best (earlier) weights were loaded back: score them afresh
    trainer.state.best_model_checkpoint = str(tmp_path / "job" / "checkpoints" / "checkpoint-6")
    assert judge._evaluated_loss(trainer) is not None
    trainer.state.global_step += 1  # trained on after that evaluation
    assert judge._evaluated_loss(trainer) is None
