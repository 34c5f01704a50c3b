"""Where LoRA Pilot keeps its files: `$LORAPILOT_HOME`, `~/.lorapilot` by default."""

import os
import tempfile
from pathlib import Path

from engine.errors import UserError

ASSETS = Path(__file__).resolve().parent.parent / "assets"

_writable: set[Path] = set()  # homes already proven writable in this process


def home() -> Path:
    """The home folder, created if needed; a UserError (one line) when it cannot be written."""
    path = Path(os.environ.get("LORAPILOT_HOME") or Path.home() / ".lorapilot").expanduser()
    if path not in _writable:
        _check_writable(path)
        _writable.add(path)
    return path


def _check_writable(path: Path) -> None:
    # Probe with a real file: permissions bits say nothing on a read-only mount, and root ignores them.
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        reason = exc.strerror or exc.__class__.__name__
        raise UserError(
            "LORAPILOT_HOME",
            f"{path} is not writable ({reason}); make it writable or set LORAPILOT_HOME to a folder you can write to",
        ) from None


def subdir(name: str) -> Path:
    path = home() / name
    path.mkdir(parents=True, exist_ok=True)
    return path
