"""`ruff check` (settings in pyproject.toml: line length 119 as PEFT/TRL, pyflakes, pycodestyle,
import sorting, bugbear, pyupgrade, simplify, imports at the top) is clean on the whole source, the
source is as `ruff format` writes it, and mypy is clean on engine/ and jobs/."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ruff_check_is_clean():
    out = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", "engine", "jobs", "ui", "tests", "bench", "app.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-2000:]


def test_the_source_is_ruff_formatted():
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "ruff",
            "format",
            "--check",
            "--no-cache",
            "engine",
            "jobs",
            "ui",
            "tests",
            "bench",
            "app.py",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, "run `ruff format`:\n" + out.stdout[-6000:] + out.stderr[-2000:]


def test_mypy_is_clean_on_engine_and_jobs():
    """mypy (settings in pyproject.toml's [tool.mypy]: engine/ and jobs/, the ML libraries untyped)."""
    out = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-incremental"], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-2000:]
