"""`python app.py estimate` and `python app.py recommend`, run as a user runs them."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PYTHON = str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv").exists() else sys.executable


def app(*args, home=None):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if home:
        env["LORAPILOT_HOME"] = str(home)
    return subprocess.run([PYTHON, "app.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=240, env=env)


def test_estimate_json_has_the_stable_keys_and_the_seed_figures():
    p = app(
        "estimate",
        "--model",
        "meta-llama/Llama-2-7b-hf",
        "--r",
        "8",
        "--targets",
        "q_proj,v_proj",
        "--gpu",
        "A100 80GB",
        "--dataset-rows",
        "1000",
        "--json",
    )
    assert p.returncode == 0, p.stderr
    data = json.loads(p.stdout)
    assert data["trainable_params"] == 4_194_304
    assert data["total_params"] == 6_742_609_920
    assert data["adapter_bytes"] > 0
    mem = data["memory"]
    assert mem["allocated_bytes"] <= mem["reserved_bytes"] <= mem["device_bytes"]
    assert sum(mem["terms"].values()) == pytest.approx(mem["allocated_bytes"], rel=1e-6)
    assert data["fits"] is True
    assert data["time"]["tokens_per_second"] > 0 and data["time"]["seconds"] > 0


def test_estimate_prints_a_readable_summary():
    p = app("estimate", "--model", "llama-3.1-8b", "--method", "qlora", "--budget-gb", "8", "--no-grad-ckpt")
    assert p.returncode == 0, p.stderr
    out = p.stdout
    for word in ("Trainable parameters", "%", "Adapter file", "allocated", "reserved", "device total"):
        assert word in out, word
    assert "GiB" in out


def test_recommend_json_and_text():
    p = app(
        "recommend",
        "--model",
        "llama-3.1-8b",
        "--difficulty",
        "balanced",
        "--gpu",
        "A100 80GB",
        "--dataset-rows",
        "5000",
        "--json",
    )
    assert p.returncode == 0, p.stderr
    data = json.loads(p.stdout)
    assert set(data) >= {"plan", "reasons", "adjustments", "estimate", "fits", "advice"}
    assert data["plan"]["method"] == "lora" and data["plan"]["targets"] == "all-linear"
    assert data["plan"]["alpha"] == 2 * data["plan"]["r"]
    assert data["reasons"]["r"]["rule"] == "R2"
    assert data["fits"] is True and data["estimate"]["fits"] is True

    # a 70B model on 24 GB: settings with rule ids, the fitting steps, and advice on the budget
    p = app("recommend", "--model", "llama-3.3-70b", "--difficulty", "hard", "--gpu", "RTX 4090")
    assert p.returncode == 0, p.stderr
    for text in (
        "method",
        "qlora",
        "[M3]",
        "[A1]",
        "Fitted to the budget",
        "1. gradient checkpointing on",
        "Estimate of this plan",
        "Advice: Nothing fits in 24 GiB",
    ):
        assert text in p.stdout, text


def _bad_config_folder(tmp_path, text):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(text)
    return str(folder)


BAD = [  # field, arguments, text the message must hold (what is accepted)
    ("model", ["estimate", "--model", "no-such-org/no-such-model-xyz"], "no-such-model-xyz"),
    ("r", ["estimate", "--model", "gpt2", "--r", "0"], "1 or more"),
    ("alpha", ["estimate", "--model", "gpt2", "--alpha", "-1"], "greater than 0"),
    ("dropout", ["estimate", "--model", "gpt2", "--dropout", "1"], "below 1"),
    ("targets", ["estimate", "--model", "gpt2", "--targets", "q_proj"], "c_attn"),
    ("budget_gb", ["estimate", "--model", "gpt2", "--budget-gb", "0"], "greater than 0"),
    ("gpu", ["estimate", "--model", "gpt2", "--gpu", "GTX 9999"], "A100 80GB"),
    ("difficulty", ["recommend", "--model", "gpt2", "--difficulty", "extreme", "--gpu", "T4"], "very_hard"),
    ("budget_gb", ["recommend", "--model", "gpt2", "--difficulty", "simple", "--budget-gb", "-2"], "greater than 0"),
    ("gpu", ["recommend", "--model", "gpt2", "--difficulty", "simple", "--gpu", "voodoo2"], "T4"),
]


@pytest.mark.parametrize("field,args,accepted", BAD, ids=[f"{f}-{a[0]}" for f, a, _ in BAD])
def test_bad_input_is_one_line_naming_the_field(field, args, accepted):
    p = app(*args)
    assert p.returncode == 2, (p.stdout, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {field}: "), p.stderr
    assert accepted in lines[0]
    assert "Traceback" not in p.stderr


def test_unreadable_and_unsupported_configs(tmp_path):
    broken = _bad_config_folder(tmp_path, "{not json")
    p = app("estimate", "--model", broken)
    assert p.returncode == 2 and p.stderr.startswith("error: model: "), p.stderr
    assert "Traceback" not in p.stderr
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "config.json").write_text(json.dumps({"model_type": "no_such_architecture"}))
    p = app("recommend", "--model", str(odd), "--difficulty", "simple", "--gpu", "T4")
    assert p.returncode == 2 and p.stderr.startswith("error: model: "), p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


def test_estimate_with_the_data_shows_the_figure_the_job_stores(tmp_path):
    """`estimate --dataset` measures the data's lengths as submit does, so it prints the job's own figure."""
    from engine.estimate.combined import headline
    from engine.plan import TrainingPlan
    from jobs import dispatcher
    from tests.tiny import make_tiny_model

    rows = [{"prompt": f"Say {w} twice.", "completion": f"{w} {w}."} for w in "red blue green black white".split() * 4]
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    model = make_tiny_model(tmp_path / "model", vocab_texts=[r["prompt"] + " " + r["completion"] for r in rows])
    args = ["--model", str(model), "--dataset", str(data), "--gpu", "cpu", "--seq-len", "256", "--r", "4"]

    p = app("estimate", *args, "--json")
    assert p.returncode == 0, p.stderr
    shown = json.loads(p.stdout)["headline"]
    stored = headline(
        dispatcher.validate(TrainingPlan.build(model=str(model), dataset=str(data), gpu="cpu", seq_len=256, r=4))
    )
    assert shown["memory_bytes"] == stored["memory_bytes"] < shown["worst_case_bytes"] == stored["worst_case_bytes"]
    text = app("estimate", *args).stdout
    assert "with your data (batches padded to" in text and "the worst case" in text
