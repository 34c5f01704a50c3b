"""The CLI as a shell uses it: exact flag names with their usual aliases, and a closed pipe.

Real subprocesses (`python app.py ...`), because both behaviours live at the process edge:
argparse's matching of what was typed, and what happens when the reader of stdout goes away.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from engine.plan import TrainingPlan
from jobs import store
from jobs.tables import Job
from ui.cli.main import build_parser

ROOT = Path(__file__).resolve().parent.parent


def app(*args, stdout=subprocess.PIPE):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, str(ROOT / "app.py"), *args],
        env=env,
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
        timeout=120,
    )


def test_lr_is_the_learning_rate_not_a_prefix_of_lr_scheduler():
    # Before: argparse's prefix matching took `--lr` as `--lr-scheduler` ("lr_scheduler: got 'abc'").
    p = app("train", "--lr", "abc")
    assert p.returncode == 2
    assert "--learning-rate/--lr: invalid float value: 'abc'" in p.stderr, p.stderr
    args = build_parser().parse_args(["train", "--lr", "0.001", "--lora-r", "16", "--num-train-epochs", "2"])
    assert (args.learning_rate, args.r, args.epochs, args.lr_scheduler) == (0.001, 16, 2.0, None)


def test_a_prefix_of_a_flag_is_refused_in_every_command():
    for argv in (
        ["train", "--lr-sched", "linear"],
        ["estimate", "--lear", "0.1"],
        ["adapters", "import", "x", "--na", "y"],
    ):
        p = app(*argv)
        assert p.returncode == 2, (argv, p.stderr)
        assert p.stderr.startswith("error: ") and "unrecognized arguments: " + argv[-2] in p.stderr, p.stderr
        assert "Traceback" not in p.stderr


def test_help_lists_the_aliases_beside_the_field_flag():
    p = app("train", "--help")
    assert p.returncode == 0
    assert "--learning-rate LEARNING_RATE, --lr LEARNING_RATE" in p.stdout
    assert "--r R, --lora-r R, --rank R" in p.stdout


def _closed_pipe_run(*args):
    """Run with stdout on a pipe nobody reads any more, like `... | head` once head has exited."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return app(*args, stdout=write_end)
    finally:
        os.close(write_end)


def test_show_into_a_closed_pipe_ends_quietly(lorapilot_home):
    store.insert_job(Job(name="piped", plan_json=TrainingPlan().model_dump_json()))
    p = _closed_pipe_run("show", "1")
    assert "error" not in p.stderr and "BrokenPipe" not in p.stderr, p.stderr
    assert p.returncode == 141  # what a command stopped by SIGPIPE returns; a shell pipeline ignores it


def test_help_and_json_into_a_closed_pipe_end_quietly(lorapilot_home):
    p = _closed_pipe_run("jobs", "--json")
    assert (p.returncode, p.stderr) == (141, "")
    p = _closed_pipe_run("train", "--help")
    # argparse itself swallows the failed write of its help (so 0 or 141); what matters is silence
    assert p.returncode in (0, 141) and p.stderr == "", p.stderr


def test_a_command_that_loaded_torch_ends_with_its_code_its_output_and_its_exit_handlers(tmp_path):
    # app.end_process skips the interpreter's teardown once torch is loaded: the code, everything
    # printed (unflushed too) and the atexit handlers must still come through
    script = (
        "import atexit, sys, torch\n"
        "import app\n"
        f"atexit.register(lambda: open({str(tmp_path / 'ran')!r}, 'w').write('yes'))\n"
        "sys.stdout.write('last words without a newline')\n"
        "app.end_process(3)\n"
    )
    p = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (p.returncode, p.stdout) == (3, "last words without a newline"), p.stderr
    assert (tmp_path / "ran").read_text() == "yes"
    p = app("estimate", "--model", "default")  # builds the model on the meta device: torch is loaded
    assert p.returncode == 0 and p.stdout.rstrip().endswith("total time unknown"), (p.stdout[-300:], p.stderr)
