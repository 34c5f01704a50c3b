"""Preference tuning (DPO, ORPO) on a tiny model generated in the test.

The rule to learn: an answer that opens politely ("Sure, item 3 is red.") is preferred to
the same answer opened rudely ("Ugh, item 3 is red."), four words of each kind in every
combination. A random base model's preference between two such words is a coin toss, so it
gets some of the held-out pairs right and some wrong; a trained adapter must prefer every
polite word to every rude one. Bad pairs are refused before a job exists.
"""

from __future__ import annotations

import json

import pytest

from engine.data.dataset import check_data
from engine.errors import UserError
from engine.estimate.combined import estimate
from engine.plan import TrainingPlan
from jobs import dispatcher, store
from tests.tiny import make_tiny_model

POLITE = ["Sure", "Thanks", "Gladly", "Certainly"]
RUDE = ["Ugh", "Whatever", "Duh", "Obviously"]
COLOURS = ["red", "blue", "green", "yellow"]


def _pair(i: int) -> dict:
    colour, polite, rude = COLOURS[i % 4], POLITE[i % 4], RUDE[(i // 4) % 4]
    return {
        "prompt": f"Item {i}: what colour is it?",
        "chosen": f"{polite}, item {i} is {colour}.",
        "rejected": f"{rude}, item {i} is {colour}.",
    }


ROWS = [_pair(i) for i in range(64)]  # every polite word against every rude one, 4 times


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-pref")
    texts = [r["prompt"] + " " + r["chosen"] + " " + r["rejected"] for r in ROWS]
    model = make_tiny_model(root / "model", vocab_texts=texts)
    data = root / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")
    return model, data


def _write(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def _plan(tiny, **kw) -> TrainingPlan:
    model, data = tiny
    values = dict(
        model=str(model),
        dataset=str(data),
        objective="dpo",
        method="lora",
        r=8,
        alpha=16,
        seq_len=48,
        batch_size=8,
        max_steps=10,
        learning_rate=2e-2,
        save_steps=5,
        logging_steps=1,
        eval_split=0.25,
        eval_generations=4,
        warmup_ratio=0.0,
        gpu="cpu",
        beta=0.1,
        patience=0,
    )
    values.update(kw)
    return TrainingPlan.build(**values)


def test_the_data_check_reports_pairs_sides_and_a_formatted_pair(tiny, tmp_path):
    model, _ = tiny
    rows = ROWS[:6] + [
        {"prompt": "p", "chosen": "same", "rejected": "same"},
        {"prompt": "q", "chosen": "an answer", "rejected": " "},
    ]
    report = check_data(_write(tmp_path / "p.jsonl", rows), model=str(model), seq_len=25, objective="dpo")
    pref = report.preference
    assert report.format == "preference" and pref["pairs"] == 7  # the blank side's row is not a pair
    assert pref["identical"] == 1 and pref["empty_sides"] == 1
    assert pref["chosen"]["max"] > 0 and pref["rejected"]["max"] > 0 and pref["prompt"]["min"] > 0
    assert pref["over_seq_len"]["chosen"] == 6  # the six colour rows run past 25 tokens, the short pair does not
    texts = [p.text() for p in report.problems]
    assert any("row 8: rejected: is empty" in t for t in texts), texts
    assert any("row 7: rejected: is the same as chosen" in t for t in texts), texts
    assert not report.ok  # an empty side blocks training
    shown = report.examples[0]
    assert "--- chosen ---" in shown and "--- rejected ---" in shown and "Item 0: what colour is it?" in shown


def test_conversational_pairs_without_a_prompt_field_are_understood(tiny, tmp_path):
    model, _ = tiny
    user = {"role": "user", "content": "Is red warm?"}
    rows = [
        {
            "chosen": [user, {"role": "assistant", "content": "Yes."}],
            "rejected": [user, {"role": "assistant", "content": "No."}],
        }
    ] * 3
    report = check_data(_write(tmp_path / "c.jsonl", rows), model=str(model), objective="orpo")
    assert report.format == "preference" and report.ok and report.preference["pairs"] == 3


@pytest.mark.parametrize(
    "rows, words",
    [
        ([{"prompt": "a", "chosen": "b"}] * 4, ["rejected", "is missing"]),
        ([{"prompt": "a", "chosen": "b", "rejected": "b"}] * 4, ["rejected", "same as chosen in every pair"]),
    ],
)
def test_bad_preference_data_is_refused_before_a_job_exists(tiny, tmp_path, rows, words):
    plan = _plan(tiny, dataset=_write(tmp_path / "bad.jsonl", rows))
    with pytest.raises(UserError) as exc:
        dispatcher.submit(plan, start=False)
    assert all(w in str(exc.value) for w in words), str(exc.value)
    assert store.list_jobs() == []


def test_the_objective_and_the_data_must_agree(tiny, tmp_path):
    chat = _write(
        tmp_path / "chat.jsonl",
        [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}] * 4,
    )
    with pytest.raises(UserError, match="objective: dpo learns from preference pairs"):
        dispatcher.submit(_plan(tiny, dataset=chat), start=False)
    with pytest.raises(UserError, match="objective: the data holds preference pairs"):
        dispatcher.submit(_plan(tiny, objective="sft"), start=False)
    with pytest.raises(UserError, match="objective dpo runs with method lora or qlora"):
        _plan(tiny, method="full")
    assert store.list_jobs() == []
    assert "--objective" in _plan(tiny, objective="orpo").to_cli_args()


# DPO learns the rule outright; ORPO, whose loss is mostly the chosen answer's NLL, moves it less in 10 steps
@pytest.mark.parametrize("objective, lr, at_least", [("dpo", 1e-2, 90.0), ("orpo", 1e-2, 70.0)])
def test_a_tiny_preference_run_moves_held_out_preference_accuracy(tiny, tmp_path, objective, lr, at_least):
    from engine.train.events import Evaluation
    from engine.train.run import train

    events = []
    result = train(_plan(tiny, objective=objective, learning_rate=lr), tmp_path / "job", report=events.append)
    assert result.steps == 10 and (tmp_path / "job" / "adapter_model.safetensors").is_file()
    evaluation = [e.evaluation for e in events if isinstance(e, Evaluation)][-1]
    base, adapter = evaluation["base"], evaluation["adapter"]
    assert evaluation["rows"] == 16
    assert base["reward_margin"] == 0.0 and adapter["reward_margin"] > 0
    assert adapter["preference_accuracy"] >= base["preference_accuracy"] + 25, (base, adapter)
    assert adapter["preference_accuracy"] >= at_least, (base, adapter)
    # the estimate the job was queued with (jobs.dispatcher.validate) against the peak the run measured
    report = check_data(str(tiny[1]), model=str(tiny[0]), seq_len=48, objective=objective)
    expected = estimate(
        _plan(tiny, objective=objective, learning_rate=lr),
        lengths=report.token_lengths,
        label_share=report.label_share,
    ).memory.expected
    assert 0.9 <= expected.allocated_bytes / result.peak_bytes <= 1.1, (expected.terms, result.peak_bytes)
    sample = evaluation["samples"][0]
    assert {"prompt", "chosen", "rejected", "base", "adapter"} <= set(sample)
    curve = evaluation["curve"]
    assert len(curve) == 10 and curve[-1]["margin"] > curve[0]["margin"]


def test_the_estimate_counts_both_sides_and_a_reference_pass_but_no_second_copy_of_the_base():
    def est(objective):
        return estimate(
            TrainingPlan.build(
                model="llama-2-7b",
                gpu="A100 80GB",
                objective=objective,
                seq_len=512,
                batch_size=4,
                dataset_rows=1000,
                epochs=1,
            )
        )

    sft, dpo, orpo = est("sft"), est("dpo"), est("orpo")
    assert dpo.memory.terms["base weights"] == sft.memory.terms["base weights"]  # one copy of the weights
    assert dpo.memory.terms["activations"] == 2 * sft.memory.terms["activations"]  # chosen + rejected rows
    assert dpo.memory.terms["reference pass"] > 0 and "reference pass" not in orpo.memory.terms
    assert any("adapter switched off" in a and "no second copy" in a for a in dpo.memory.assumptions)
    # 2 x 4 rows of logits, then the chosen half's copy and log-softmax, in bf16
    assert orpo.memory.terms["full logits"] == 8 * 512 * 32000 * 2 * 2
    assert dpo.time.seconds == pytest.approx(sft.time.seconds * 2 * (1 + 1 / 3))
    assert orpo.time.seconds == pytest.approx(sft.time.seconds * 2)


def _evaluation(base_acc, acc, curve):
    return {
        "rows": 16,
        "base": {"preference_accuracy": base_acc, "loss": 2.0},
        "adapter": {"preference_accuracy": acc, "loss": 1.9},
        "curve": curve,
    }


def _curve(margins, chosen=None, rejected=None):
    return [
        {
            "step": i + 1,
            "margin": m,
            "chosen": (chosen or [0.0] * len(margins))[i],
            "rejected": (rejected or [-m for m in margins])[i],
            "accuracy": 0.5,
        }
        for i, m in enumerate(margins)
    ]


def test_the_diagnosis_reads_preference_curves_as_plan_changes(tiny):
    from engine.advice.diagnose import apply, diagnose

    plan = _plan(tiny, learning_rate=1e-4, beta=0.1, max_steps=100)
    coin = diagnose([], _evaluation(50.0, 53.0, _curve([0.01, 0.02, 0.01, 0.02])), plan)
    assert coin[0].rule == "P2" and coin[0].change == {"learning_rate": 0.0003} and "coin toss" in coin[0].evidence
    assert {"beta": 0.05} in [f.change for f in coin] and {"max_steps": 200} in [f.change for f in coin]

    falling = diagnose(
        [],
        _evaluation(
            50.0,
            80.0,
            _curve([0.1] * 6, chosen=[0, -0.1, -0.2, -0.3, -0.4, -0.5], rejected=[0, -0.2, -0.3, -0.4, -0.5, -0.6]),
        ),
        plan,
    )
    assert [f.finding for f in falling] == ["unstable"] * 3 and falling[0].change == {"beta": 0.2}
    after, _ = apply(plan, falling, ["P1"])  # a higher beta, and ORPO (which keeps learning the chosen answer)
    assert after.beta == 0.2 and after.objective == "orpo"

    flat = diagnose([], _evaluation(50.0, 75.0, _curve([0.1, 0.3, 0.5, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6])), plan)
    assert flat[0].rule == "P2" and "stopped growing" in flat[0].evidence
    learned = diagnose([], _evaluation(50.0, 100.0, _curve([0.1, 0.3, 0.5, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6])), plan)
    assert learned == []


def test_the_job_page_show_and_compare_add_the_preference_scores():
    from ui.cli.runs import show_lines
    from ui.web.evaluation_view import compare_html, evaluation_html

    ev = {
        "rows": 16,
        "note": "",
        "base": {"loss": 2.0, "preference_accuracy": 43.8, "reward_margin": 0.0},
        "adapter": {"loss": 1.5, "preference_accuracy": 100.0, "reward_margin": 0.59},
        "samples": [
            {
                "prompt": "Item 3?",
                "reference": "Sure, red.",
                "chosen": "Sure, red.",
                "rejected": "Ugh, red.",
                "base": "",
                "adapter": "Sure, red.",
            }
        ],
    }
    page = evaluation_html(ev)
    assert "preference accuracy %" in page and "reward margin" in page and "<b>rejected</b> Ugh, red." in page
    text = "\n".join(show_lines({"id": 1, "evaluation": ev}))
    assert "preference acc. %" in text and "100" in text and "rejected  Ugh, red." in text
    row = {
        "id": 1,
        "name": "a",
        "status": "succeeded",
        "parent_id": None,
        "plan": {"beta": 0.1},
        "final_loss": 0.3,
        "best_eval_loss": None,
        "verdict": "good",
        "evaluation": ev,
    }
    assert "43.8 → 100" in compare_html([row, {**row, "id": 2}])
    sft = {**ev, "base": {"loss": 2.0}, "adapter": {"loss": 1.0}}
    assert "preference accuracy" not in evaluation_html(sft)


def test_the_exported_script_trains_the_same_pair_trainer(tiny, tmp_path):
    import os
    import subprocess
    import sys

    from engine.train import script

    plan = _plan(tiny, max_steps=2, eval_split=0.25, save_steps=50)
    code = script.python_script(plan)
    assert "DPOConfig(" in code and "beta=0.1" in code and "ref_model=" not in code  # the base is the reference
    path = tmp_path / "train_pairs.py"
    path.write_text(code, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # standalone: no LoRA Pilot on the path
    run = subprocess.run(
        [sys.executable, str(path), str(tmp_path / "adapter")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    assert "eval_rewards/margins" in run.stdout + run.stderr  # DPO evaluated the held-out pairs


def test_a_cancelled_dpo_job_leaves_a_checkpoint_and_resume_finishes_it(tiny, tmp_path):
    from engine.train.events import Evaluation, Progress
    from engine.train.run import train

    plan, out, seen = _plan(tiny, max_steps=4, save_steps=50, eval_generations=0), tmp_path / "job", []
    stopped = train(
        plan,
        out,
        report=lambda e: seen.append(e) if isinstance(e, Progress) else None,
        should_stop=lambda: len(seen) >= 2,
    )
    assert stopped.stopped and stopped.steps == 2 and (out / "checkpoints" / "checkpoint-2").is_dir()
    events = []
    resumed = train(plan, out, report=events.append, resume=True)
    assert not resumed.stopped and resumed.steps == 4
    adapter = [e.evaluation for e in events if isinstance(e, Evaluation)][-1]["adapter"]
    assert adapter["preference_accuracy"] is not None and adapter["reward_margin"] > 0
