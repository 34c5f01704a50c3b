"""Where LoRA Pilot keeps its files: `$LORAPILOT_HOME`, `~/.lorapilot` by default."""

import os
from pathlib import Path

ASSETS = Path(__file__).resolve().parent.parent / "assets"


def home() -> Path:
    path = Path(os.environ.get("LORAPILOT_HOME") or Path.home() / ".lorapilot").expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def subdir(name: str) -> Path:
    path = home() / name
    path.mkdir(parents=True, exist_ok=True)
    return path
