"""`ruff check` (settings in pyproject.toml: line length 119 as PEFT/TRL, pyflakes, pycodestyle,
import sorting, bugbear) is clean on the whole source."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ruff_check_is_clean():
    out = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "engine", "jobs", "ui", "tests",
                          "bench", "app.py"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-2000:]
