"""Export as code: `python app.py export ID --as python|yaml|cli`.

The YAML and the command rebuild the plan; the Python script is run as a user would run
it (its own process, no LoRA Pilot import) on a tiny model and Alpaca rows, and the
adapter it writes must carry the job's LoRA settings.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from engine.plan import TrainingPlan, add_plan_flags, plan_from_args
from engine.train import script
from jobs import store
from tests.jobwait import tiny_alpaca

ROOT = Path(__file__).resolve().parent.parent


def cli(*args, timeout=180):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, str(ROOT / "app.py"), *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _catalog_plan(**kw) -> TrainingPlan:
    return TrainingPlan.build(**{"model": "llama-3.1-8b", "dataset": "demo:ticket", "gpu": "RTX 4090", **kw})


def test_cli_command_and_yaml_rebuild_the_same_plan():
    plan = _catalog_plan(r=32, alpha=64, targets="q_proj,v_proj", grad_ckpt=True, learning_rate=1e-4, max_steps=50)
    parser = argparse.ArgumentParser()
    add_plan_flags(parser)
    args = shlex.split(script.cli_command(plan).replace("\\\n", " "))[3:]  # as a shell joins continued lines
    assert plan_from_args(parser.parse_args(args)) == plan
    assert TrainingPlan.from_yaml(script.plan_yaml(plan)) == plan
    for method in ("lora", "qlora", "full"):
        code = script.python_script(plan.updated(method=method))
        compile(code, "script", "exec")
        assert ("LoraConfig(" in code) == (method != "full")
        assert ("BitsAndBytesConfig(" in code) == (method == "qlora")
        assert "warmup_ratio" not in code and "\n    gradient_checkpointing=" not in code  # TRL 1.x names only


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_alpaca(tmp_path_factory.mktemp("tiny-export"))


def _job(plan: TrainingPlan) -> int:
    return store.insert_job(store.Job(name="export", plan_json=plan.model_dump_json())).id


def test_export_as_yaml_and_cli_print_the_jobs_plan(tiny):
    model, data = tiny
    plan = TrainingPlan.build(model=str(model), dataset=str(data), gpu="cpu", r=4, max_steps=2)
    job_id = _job(plan)
    out = cli("export", job_id, "--as", "yaml")
    assert out.returncode == 0, out.stderr
    assert TrainingPlan.from_yaml(out.stdout) == plan
    out = cli("export", job_id, "--as", "cli")
    assert out.returncode == 0 and "\npython app.py train" in "\n" + out.stdout, out.stderr
    bad = cli("export", job_id, "--as", "notebook")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "--as" in bad.stderr


def _run_script(code: str, folder: Path) -> subprocess.CompletedProcess:
    path = folder / "train_job.py"
    path.write_text(code, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # standalone: no LoRA Pilot on the path
    return subprocess.run(
        [sys.executable, str(path), str(folder / "adapter")],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_exported_script_runs_and_writes_the_jobs_adapter(tiny, tmp_path):
    model, data = tiny
    plan = TrainingPlan.build(
        model=str(model),
        dataset=str(data),
        gpu="cpu",
        method="lora",
        r=4,
        alpha=12,
        dropout=0.1,
        targets="attention",
        seq_len=64,
        batch_size=4,
        max_steps=2,
        eval_split=0.25,
        save_steps=50,
        warmup_ratio=0.1,
        learning_rate=1e-3,
    )
    out = cli("export", _job(plan), "--as", "python")
    assert out.returncode == 0, out.stderr
    run = _run_script(out.stdout, tmp_path)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]

    written = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert (written["r"], written["lora_alpha"], written["lora_dropout"]) == (4, 12, 0.1)
    assert sorted(written["target_modules"]) == ["k_proj", "o_proj", "q_proj", "v_proj"]  # the llama attention preset
    assert written["base_model_name_or_path"] == str(model)  # the folder the job loads the base from
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    assert "eval_loss" in run.stdout + run.stderr  # the held-out share of the job's rows was evaluated


@pytest.mark.slow
def test_the_exported_script_trains_the_jobs_adapter(tiny, tmp_path):
    """What the job ran is what it exports: same rows held out, precision, kernel, early stopping,
    LoRA and trainer settings (read from the job's resolved.json), so the same adapter."""
    from safetensors.torch import load_file

    from engine.train import resolved
    from engine.train.run import train

    model, data = tiny
    # 12 rows at 0.1: the job holds out 2 (engine.evaluate.split); an evaluation every 2 steps with
    # patience 1 stops early and keeps the best checkpoint, which the script must reproduce too.
    plan = TrainingPlan.build(
        model=str(model),
        dataset=str(data),
        gpu="cpu",
        method="lora",
        r=4,
        alpha=8,
        dropout=0.0,
        targets="all-linear",
        seq_len=64,
        batch_size=2,
        epochs=3,
        eval_split=0.1,
        save_steps=2,
        patience=1,
        learning_rate=5e-3,
        seed=7,
    )
    job_id = _job(plan)
    job_dir = store.job_dir(job_id)
    train(plan, job_dir)
    record = resolved.read(job_dir)
    assert record is not None and record.eval_source == "split" and len(record.eval_rows) == 2
    assert (record.device, record.precision) == ("cpu", "fp32")  # the test CPU has no native bf16 (conftest)
    assert record.sft["load_best_model_at_end"] and record.early_stopping["patience"] == 1

    out = cli("export", job_id, "--as", "python")
    assert out.returncode == 0, out.stderr
    assert f"EVAL_ROWS = {record.eval_rows!r}" in out.stdout and f"DTYPE = {record.precision!r}" in out.stdout
    assert f"attn_implementation={record.attention!r}" in out.stdout
    run = _run_script(out.stdout, tmp_path)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]

    ours, theirs = (
        load_file(job_dir / "adapter_model.safetensors"),
        load_file(tmp_path / "adapter" / "adapter_model.safetensors"),
    )
    assert ours.keys() == theirs.keys() and ours
    for name, tensor in ours.items():
        assert torch_allclose(tensor, theirs[name]), name
    # and the adapter moved away from its initialisation (B starts at zero), so the equality means something
    assert any(t.abs().max() > 0 for k, t in ours.items() if "lora_B" in k)

    for kind in ("yaml", "cli"):  # the other exports name the resolved values in a comment
        text = cli("export", job_id, "--as", kind).stdout
        assert text.startswith("# the job resolved this plan as: ran on cpu in fp32"), text[:200]


def torch_allclose(a, b) -> bool:
    import torch

    return torch.allclose(a.float(), b.float(), rtol=1e-4, atol=1e-6)
