"""Every command of the real parser, with documented and nonsense values: no traceback, ever.

The commands are read from `ui.cli.main.build_parser()`, so a command added later is walked
too. Each flag gets values a user might mistype (empty, negative, not a number, unknown
name, a missing file, a folder where a file belongs, NaN), alone and with `--json` where the
command has it. A refusal is exactly one `error:` line and exit 2; anything else must exit 0.

Runs in-process through `app.main(argv)` (a handful of real subprocesses check the shell
path). Nothing trains or serves: LORAPILOT_MAX_CONCURRENT=0 keeps any queued job queued, and
`serve`'s last step (binding the port, for the wizard or --api-only) is replaced by a marker, the one
double here.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import app
from ui.cli import main as cli_main

ROOT = Path(__file__).resolve().parent.parent
PYTHON = str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv").exists() else sys.executable

# Documented invocations (README, --help), per command; a command missing here still gets --help
# and every nonsense value below.
DOCUMENTED = {
    "estimate": [
        ["--model", "meta-llama/Llama-2-7b-hf"],
        ["--model", "default", "--gpu", "RTX-4090"],
        ["--model", "llama-3.1-8b", "--method", "qlora", "--budget-gb", "8", "--dataset-rows", "1000"],
        ["--model", "default", "--gpu", "cpu", "--max-steps", "10"],
    ],
    "recommend": [
        ["--model", "default", "--difficulty", "simple", "--gpu", "cpu"],
        ["--model", "llama-3.1-8b", "--difficulty", "hard", "--budget-gb", "24", "--dataset-rows", "5000"],
    ],
    "check-data": [["demo:json"]],
    "jobs": [[]],
    "demo": [[], ["--skill", "json"]],
}
# Flags that would block (follow a job forever); they are covered by test_cli_jobs.
NEVER = {"--wait", "--share"}
# The fixed arguments a command needs to reach the flag under test ({data}: a good data file).
BASE = {
    "recommend": ["--model", "default", "--difficulty", "simple", "--gpu", "cpu"],
    "train": ["--dataset", "{data}", "--gpu", "cpu", "--max-steps", "1"],
}


class _WouldServe(BaseException):  # not an Exception: the CLI's safety net must not swallow it
    pass


def _commands() -> dict[str, argparse.ArgumentParser]:
    parser = cli_main.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def _nonsense(action: argparse.Action, scratch: Path) -> list[str]:
    values = ["", "-3", "nonsense-xyz"]
    if action.type in (int, float):
        values += ["0", "abc", "1.5", "nan", "inf", "-inf", "99999999999999999999"]
    elif action.type is None or action.type is str:
        values += [
            str(scratch / "missing.jsonl"),
            str(scratch / "folder"),
            str(scratch / "picture.png"),
            str(scratch / "empty.jsonl"),
            "nobody/no-such-model",
            "demo:nope",
            "a=b,c",
        ]
    return values


def _cases(name: str, parser: argparse.ArgumentParser, scratch: Path) -> list[list[str]]:
    cases = [["--help"]] + [list(c) for c in DOCUMENTED.get(name, [])]
    base = [a.replace("{data}", str(scratch / "good.jsonl")) for a in BASE.get(name, [])]
    positionals = [a for a in parser._actions if not a.option_strings and a.dest != "help"]
    pos_fill = []
    for action in positionals:
        if action.nargs == "?":
            continue
        # a good file / an ID, that the nonsense below replaces in turn
        pos_fill.append(str(scratch / "good.jsonl") if "file" in action.dest else "1")
    for i, action in enumerate(a for a in positionals if a.nargs != "?"):
        for value in _nonsense(action, scratch):
            args = list(pos_fill)
            args[i] = value
            cases.append(args + base)
    for action in positionals:
        if action.nargs == "?":  # optional file argument, e.g. train PLAN.yaml
            cases += [[v] + base for v in _nonsense(action, scratch)]
    for action in parser._actions:
        if not action.option_strings or action.dest == "help" or set(action.option_strings) & NEVER:
            continue
        flag = action.option_strings[0]
        if action.nargs == 0:  # a switch: on its own
            cases.append(pos_fill + base + [flag])
            continue
        for value in _nonsense(action, scratch):
            cases.append(pos_fill + base + [flag, value])
        if action.metavar and str(action.metavar).startswith("{"):
            cases.append(pos_fill + base + [flag, "bogus"])
    if any("--json" in a.option_strings for a in parser._actions):
        cases += [c + ["--json"] for c in cases if c != ["--help"]]
    return cases


def _run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = app.main(argv)
        except SystemExit as exc:  # argparse: --help (0) or a bad flag (2)
            code = exc.code if isinstance(exc.code, int) else 2
        except _WouldServe:
            code = 0
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz")
    (folder / "folder").mkdir()
    (folder / "picture.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00binary")
    (folder / "empty.jsonl").write_text("")
    rows = [
        {"messages": [{"role": "user", "content": f"Say {w}."}, {"role": "assistant", "content": w}]}
        for w in ("yes", "no", "maybe", "red")
    ]
    (folder / "good.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


@pytest.fixture(scope="module")
def fuzz_home(tmp_path_factory):
    """One home for the module. Its embedded default is a tiny model of the same layout (a double:
    converting the real one takes a minute; test_default_model covers that)."""
    from engine.model import default_model
    from tests.tiny import make_tiny_model

    home = tmp_path_factory.mktemp("fuzz-home")
    make_tiny_model(home / "models" / default_model.FOLDER_NAME)
    return home


@pytest.fixture
def quiet_world(monkeypatch, fuzz_home):
    """No job starts, no port opens."""
    home = fuzz_home
    monkeypatch.setenv("LORAPILOT_HOME", str(home))
    monkeypatch.setenv("LORAPILOT_MAX_CONCURRENT", "0")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("LORAPILOT_AUTH", raising=False)
    monkeypatch.delenv("LORAPILOT_DEBUG", raising=False)
    # `serve` sets these for the process it runs in: here that is the test process, so they are
    # put back afterwards (a leaked Ray address would send later tests' jobs to a cluster)
    for name in ("LORAPILOT_RAY_ADDRESS", "LORAPILOT_MAX_UPLOAD_MB", "GRADIO_ANALYTICS_ENABLED"):
        monkeypatch.setenv(name, os.environ.get(name, ""))  # recorded, so whatever serve sets is undone
        if not os.environ[name]:
            monkeypatch.delenv(name)
    from ui.api import app as api
    from ui.web import server

    def would_serve(*args, **kwargs):
        raise _WouldServe()

    monkeypatch.setattr(server, "launch", would_serve)
    monkeypatch.setattr(api, "run_api_only", would_serve)  # `serve --api-only` binds its port there


@pytest.mark.parametrize("command", sorted(_commands()))
def test_every_command_refuses_nonsense_with_one_error_line(command, scratch, quiet_world):
    parser = _commands()[command]
    problems = []
    cases = _cases(command, parser, scratch)
    assert len(cases) > 1
    for args in cases:
        argv = [command, *args]
        code, out, err = _run(argv)
        where = " ".join(repr(a) if a == "" or " " in a else a for a in argv)
        if (args == ["--help"] or args in DOCUMENTED.get(command, [])) and code != 0:
            problems.append(f"{where}: documented, but exit {code}: {err.strip()[:300]}")
        elif "Traceback" in out + err:
            problems.append(f"{where}: traceback")
        elif "error: internal:" in err:
            problems.append(f"{where}: {err.strip()}")
        elif code == 2:
            lines = [line for line in err.splitlines() if line.strip()]
            if len(lines) != 1 or not lines[0].startswith("error: "):
                problems.append(f"{where}: refusal is not one error line: {err!r}")
        elif code != 0:
            problems.append(f"{where}: exit {code}: {err.strip()[:200]}")
    assert not problems, "\n".join(problems)


def test_the_readme_examples_run_from_a_shell(tmp_path):
    """The README's first command, as a shell runs it (no device, no row count)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "LORAPILOT_HOME": str(tmp_path), "PYTHONPATH": str(ROOT)}
    for args in (["estimate", "--model", "meta-llama/Llama-2-7b-hf"],):  # the rest run in-process above
        p = subprocess.run([PYTHON, "app.py", *args], cwd=ROOT, capture_output=True, text=True, timeout=240, env=env)
        assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
        assert "total time unknown" in p.stdout and "tokens/s" in p.stdout


def test_format_estimate_without_a_row_count_says_the_total_is_unknown():
    from engine.estimate.combined import estimate
    from engine.plan import TrainingPlan
    from ui.cli.estimate import format_estimate

    plan = TrainingPlan(model="default", gpu="RTX 4090")
    text = format_estimate(plan, estimate(plan))
    assert "total time unknown (give --dataset-rows N or --max-steps N)" in text
    text = format_estimate(plan.updated(dataset_rows=1000), estimate(plan.updated(dataset_rows=1000)))
    assert "steps)" in text and "unknown" not in text.split("Time on")[1].splitlines()[0]


def test_estimate_flags_a_rank_above_the_layers_width(quiet_world):
    code, out, err = _run(["estimate", "--model", "default", "--gpu", "cpu", "--r", "100000", "--json"])
    assert code == 0, err
    warnings = json.loads(out)["warnings"]
    assert [w["rule"] for w in warnings] == ["R6"] and "above 192" in warnings[0]["text"]
    code, out, err = _run(["estimate", "--model", "default", "--gpu", "cpu", "--r", "100000"])
    assert code == 0 and "[R6] Rank 100,000 is above 192" in out
    code, out, err = _run(["estimate", "--model", "default", "--gpu", "cpu", "--json"])
    assert json.loads(out)["warnings"] == []


def test_top_level_nonsense_is_one_error_line(quiet_world):
    for argv in (["bogus"], ["--bogus"], [""], ["--port", "abc"], ["--host", "0.0.0.0"]):
        code, out, err = _run(argv)
        assert code == 2 and len(err.strip().splitlines()) == 1 and err.startswith("error: "), (argv, err)
        assert "Traceback" not in out + err
    assert _run([])[0] == 0  # plain `python app.py` opens the wizard (its port binding replaced here)
