"""An unwritable LORAPILOT_HOME is one line from every command, before anything else fails.

Tests run as root on some machines, where permission bits do not stop a write, so the
unwritable home is made two ways that hold for everyone: a home whose parent is a file
(it cannot be created), and a write refused by a read-only disk (injected).
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from engine import paths
from engine.errors import UserError
from ui.cli.main import run as cli

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = [
    ["serve"],
    ["estimate"],
    ["recommend"],
    ["check-data", "x.jsonl"],
    ["train", "--dataset", "x.jsonl"],
    ["jobs"],
    ["show", "1"],
    ["cancel", "1"],
    ["resume", "1"],
    ["export", "1"],
    ["demo"],
]


@pytest.fixture
def home_under_a_file(tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    home = blocker / "home"
    monkeypatch.setenv("LORAPILOT_HOME", str(home))
    return home


@pytest.mark.parametrize("args", COMMANDS, ids=lambda a: a[0])
def test_every_command_says_so_in_one_line(home_under_a_file, capsys, args):
    assert cli(args) == 2
    captured = capsys.readouterr()
    assert captured.err == (
        f"error: LORAPILOT_HOME: {home_under_a_file} is not writable (Not a directory); "
        "make it writable or set LORAPILOT_HOME to a folder you can write to\n"
    )
    assert captured.out == ""


def test_a_read_only_home_is_refused(tmp_path, monkeypatch):
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setenv("LORAPILOT_HOME", str(tmp_path / "ro"))
    monkeypatch.setattr(tempfile, "TemporaryFile", read_only)
    with pytest.raises(UserError, match=r"ro is not writable \(Read-only file system\)"):
        paths.home()


def test_from_a_real_process_there_is_no_traceback(home_under_a_file):
    env = {**os.environ, "LORAPILOT_HOME": str(home_under_a_file)}
    out = subprocess.run(
        [sys.executable, str(ROOT / "app.py"), "jobs"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "is not writable" in out.stderr, out.stderr
