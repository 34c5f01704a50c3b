"""Deliberate faults, switched on by environment variables, so tests can show recovery.

Never set in normal use. A worker inherits its environment from the process that
starts it, so a test sets a variable before it submits (or resumes) a job:

- LORAPILOT_FAULT_STEP_DELAY_S=S   every step takes at least S seconds longer (a lower bound
                                   on a run's length, whatever the machine's load)
- LORAPILOT_FAULT_HANG_AT_STEP=N   after step N the worker hangs inside the next step and
                                   never reaches a step boundary (a deliberate hang)
- LORAPILOT_FAULT_DISK_FULL_AT=W   writing W fails with ENOSPC, W = checkpoint-N (after its
                                   files are half written) or final (the adapter save)
"""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

DELAY = "LORAPILOT_FAULT_STEP_DELAY_S"
HANG = "LORAPILOT_FAULT_HANG_AT_STEP"
DISK_FULL = "LORAPILOT_FAULT_DISK_FULL_AT"


def callbacks() -> list:
    """Trainer callbacks for the step faults that are switched on (usually none)."""
    delay, hang = os.environ.get(DELAY), os.environ.get(HANG)
    if not delay and not hang:
        return []
    from transformers import TrainerCallback

    class StepFaults(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            if delay:
                time.sleep(float(delay))
            if hang and state.global_step >= int(hang):
                print(f"faults: {HANG}={hang}: hanging inside step {state.global_step + 1} on purpose", flush=True)
                while True:  # a deliberate hang: only a signal that kills the process ends it
                    time.sleep(3600)

    return [StepFaults()]


def check_write(what: str, folder: Path | None = None) -> None:
    """Raise ENOSPC if the test asked the write of `what` to fail; half-write `folder` first."""
    if os.environ.get(DISK_FULL) != what:
        return
    if folder is not None:  # the disk fills part-way: a file cut short, as a real ENOSPC leaves it
        for file in sorted(Path(folder).glob("*.safetensors")):
            with open(file, "r+b") as fh:
                fh.truncate(max(0, file.stat().st_size // 2))
    raise OSError(errno.ENOSPC, f"No space left on device (injected by {DISK_FULL}={what})")
