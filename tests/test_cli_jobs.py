"""The job commands as a script uses them: `python app.py train|jobs|show|cancel|resume|export|demo`.

Bad input (issue section 8) must stop before a job exists: exit 2, one `error:` line naming
the file/row/field, no traceback, and an empty job table.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from jobs import store
from tests.tiny import make_tiny_model

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.usefixtures("no_worker_left_behind")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-cli")
    rows = [
        {"messages": [{"role": "user", "content": f"Say {w}."}, {"role": "assistant", "content": w}]}
        for w in ("yes", "no", "maybe", "red", "green", "blue", "one", "two")
    ]
    data = folder / "words.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    model = make_tiny_model(folder / "model")
    return {"model": str(model), "dataset": str(data), "folder": folder}


def cli(*args, timeout=180):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, str(ROOT / "app.py"), *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _tiny_flags(tiny, **kw):
    flags = {
        "model": tiny["model"],
        "dataset": tiny["dataset"],
        "gpu": "cpu",
        "max-steps": 3,
        "batch-size": 2,
        "seq-len": 32,
        "eval-split": 0,
        "save-steps": 50,
    }
    flags.update(kw)
    return [x for k, v in flags.items() if v is not None for x in (f"--{k}", v)]


def _write(folder: Path, name: str, content) -> str:
    path = folder / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return str(path)


def _row(q, a):
    return json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})


GOOD = "\n".join(_row(f"q{i}", f"a{i}") for i in range(4)) + "\n"

# name → (file name, content, extra flags, words the message must contain)
BAD_FILES = {
    "malformed_jsonl": (
        "broken.jsonl",
        _row("q", "a") + '\n{"messages": [\n' + _row("x", "y") + "\n",
        {},
        ["broken.jsonl", "2"],
    ),
    "not_utf8": ("latin1.jsonl", '{"text": "caf\u00e9"}\n'.encode("latin-1") * 3, {}, ["latin1.jsonl"]),
    "binary": ("blob.jsonl", bytes(range(256)) * 8, {}, ["blob.jsonl"]),
    "empty": ("empty.jsonl", b"", {}, ["empty.jsonl"]),
    "missing_field": (
        "nocompletion.jsonl",
        "\n".join(json.dumps({"prompt": f"p{i}"}) for i in range(4)),
        {"data-format": "prompt_completion"},
        ["nocompletion.jsonl", "completion"],
    ),
    "too_few_rows": ("one.jsonl", _row("q", "a") + "\n", {}, ["one.jsonl", "rows"]),
    "all_too_long": ("long.jsonl", GOOD, {"seq-len": 3}, ["long.jsonl", "seq_len"]),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_data_creates_no_job(case, tiny, tmp_path):
    name, content, extra, words = BAD_FILES[case]
    path = _write(tmp_path, name, content)
    out = cli("train", *_tiny_flags(tiny, dataset=path, **extra))
    _assert_refused(out, words)


@pytest.mark.parametrize(
    "flags, words",
    [
        ({"model": "/nonexistent/model-folder"}, ["model"]),
        ({"model": "nobody-xyz/no-such-model"}, ["model", "nobody-xyz/no-such-model"]),
        ({"r": 0}, ["r:"]),
        ({"dropout": 1.5}, ["dropout"]),
        ({"learning-rate": -1}, ["learning_rate"]),
        ({"method": "prefix"}, ["method", "lora"]),
        ({"dataset": "/nonexistent/data.jsonl"}, ["data.jsonl"]),
        ({"targets": "no_such_proj"}, ["targets", "no_such_proj"]),
    ],
    ids=["model_folder", "model_hub", "r", "dropout", "lr", "method", "no_file", "targets"],
)
def test_bad_plan_values_create_no_job(flags, words, tiny):
    _assert_refused(cli("train", *_tiny_flags(tiny, **flags)), words)


def test_bad_plan_file_creates_no_job(tiny, tmp_path):
    plan = tmp_path / "plan.yaml"
    plan.write_text(f"model: {tiny['model']}\ndataset: {tiny['dataset']}\nrank: 8\n")
    _assert_refused(cli("train", plan), ["rank", "not a plan field"])
    _assert_refused(cli("train", "--model", tiny["model"]), ["dataset"])  # nothing to train on


def _assert_refused(out, words):
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert out.stderr.startswith("error: "), out.stderr
    assert "Traceback" not in out.stderr + out.stdout
    for word in words:
        assert word in out.stderr, (word, out.stderr)
    assert store.list_jobs() == []  # no job row, not even a failed one


def test_train_wait_jobs_show_export_and_errors(tiny, tmp_path):
    assert "no jobs yet" in cli("jobs").stdout
    plan = tmp_path / "plan.yaml"
    plan.write_text(f"name: words\nmodel: {tiny['model']}\ndataset: {tiny['dataset']}\nmax_steps: 50\n")
    # The file gives the base; flags override it (max_steps 50 → 3).
    out = cli("train", plan, *_tiny_flags(tiny, model=None, dataset=None), "--wait")
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.startswith("job 1 ") and f"artifacts: {store.job_dir(1)}" in out.stdout
    assert "succeeded" in out.stdout

    listed = json.loads(cli("jobs", "--json").stdout)
    assert len(listed) == 1
    assert {"id", "name", "status", "created_at", "progress", "base_score", "adapter_score"} <= set(listed[0])
    assert (listed[0]["id"], listed[0]["name"], listed[0]["status"]) == (1, "words", "succeeded")
    table = cli("jobs").stdout
    # every job's held-out exact match before -> after (issue 21), not only a demo's score columns
    assert "HELD-OUT EXACT MATCH" in table and "ETA" in table and "succeeded" in table

    shown = json.loads(cli("show", 1, "--json").stdout)
    assert {
        "id",
        "status",
        "pid",
        "error",
        "artifact_dir",
        "estimate",
        "measured_peak_bytes",
        "metrics",
        "base_score",
        "adapter_score",
    } <= set(shown)
    assert shown["plan"]["max_steps"] == 3 and shown["error"] is None
    assert shown["estimate"] and shown["measured_peak_bytes"] > 0
    assert [m["step"] for m in shown["metrics"]] == [1, 2, 3]
    assert {"step", "loss", "eval_loss", "learning_rate", "tokens_per_second"} <= set(shown["metrics"][0])
    assert "status     succeeded" in cli("show", 1).stdout

    out = cli("export", 1)
    assert out.returncode == 0, out.stderr
    with zipfile.ZipFile(out.stdout.strip()) as zf:
        assert {
            "adapter_model.safetensors",
            "adapter_config.json",
            "plan.yaml",
            "README.md",
            "metrics.csv",
            "loss.png",
        } <= set(zf.namelist())

    for args, word in (
        (("cancel", 1), "only queued or running"),
        (("resume", 1), "can resume"),
        (("show", 99), "no job with id 99"),
        (("export", "x"), "not a job id"),
    ):
        out = cli(*args)
        assert out.returncode == 2 and out.stderr.startswith("error: job: ") and word in out.stderr, out.stderr


def test_train_without_wait_returns_at_once_then_cancel_and_resume(tiny):
    out = cli("train", *_tiny_flags(tiny, **{"max-steps": 400}))
    assert out.returncode == 0, out.stderr
    assert "runs in the background" in out.stdout
    out = cli("cancel", 1)
    assert out.returncode == 0 and out.stdout.startswith("job 1 cancelled"), out.stdout + out.stderr
    out = cli("resume", 1)
    assert out.returncode == 0 and "job 1 running" in out.stdout, out.stdout + out.stderr
    assert cli("cancel", 1).returncode == 0
    assert store.get_job(1).status == "cancelled"


def test_demo_rejects_an_unknown_skill():
    out = cli("demo", "--skill", "juggling")
    assert out.returncode == 2 and out.stderr.startswith("error: skill: ") and "juggling" in out.stderr


def test_a_plan_that_cannot_fit_is_not_queued_unless_anyway(tiny):
    # a full fine-tune of an 8B model on a 16 GB T4: the estimate says no, as the wizard's launch step does
    flags = [
        "--model",
        "llama-3.1-8b",
        "--method",
        "full",
        "--gpu",
        "T4",
        "--dataset",
        tiny["dataset"],
        "--max-steps",
        "3",
    ]
    _assert_refused(cli("train", *flags), ["error: memory: not queued: does not fit", "to fit:", "--anyway"])
    out = cli("train", *flags, "--anyway")  # past the memory gate; the plan's own checks still run
    assert "error: memory" not in out.stderr and "Traceback" not in out.stderr + out.stdout
