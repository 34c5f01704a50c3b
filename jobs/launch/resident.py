"""Talking to the resident worker (`jobs.resident`): find it, ask it, start it.

The resident is a fork server: one long-lived process per LoRA Pilot home, database and
interpreter that has imported torch, transformers, PEFT and TRL once, and forks a child for each
request, so a job (or a submit's validation) starts with its libraries already imported. Every
call here answers None when no resident answers, and the caller does the work the ordinary way;
a resident is a speed-up, never a dependency.

Off with LORAPILOT_RESIDENT=0 (the test suite's default: a resident per temporary home would
outlive the test that started it).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from engine import paths
from jobs.launch import ray_resources

ROOT = Path(__file__).resolve().parent.parent.parent
CONNECT_S = 2.0  # a resident answers a connect at once; longer means it is not there
RUN_S = 30.0  # a fork and its pid
SUBMIT_S = 900.0  # a submit's child validates the plan and reads the whole dataset
# What a job's outcome depends on besides its plan: a resident started with other values is another resident.
_KEYED = ("DATABASE_URL", "OMP_NUM_THREADS", "CUDA_VISIBLE_DEVICES")
_KEYED_PREFIXES = ("LORAPILOT_", "HF_", "TRANSFORMERS_")
# ...except what only the wizard or the API reads (the wizard sets the first two itself when it starts, and its
# resident must be the one a CLI in the same shell finds)
_UNKEYED = {
    "HF_HUB_DISABLE_TELEMETRY",
    "LORAPILOT_MAX_UPLOAD_MB",
    "LORAPILOT_AUTH",
    "LORAPILOT_API_KEY",
    "LORAPILOT_WARM",
    "LORAPILOT_DEFAULT_MODEL",
}


def enabled() -> bool:
    """On unless switched off, or jobs run on a Ray cluster (whose nodes start their own workers)."""
    return os.environ.get("LORAPILOT_RESIDENT", "1") != "0" and not ray_resources.address()


def address() -> bytes:
    """An abstract-namespace socket name (Linux): no file to clean up, no path-length limit."""
    env = {k: v for k, v in os.environ.items() if (k in _KEYED or k.startswith(_KEYED_PREFIXES)) and k not in _UNKEYED}
    key = json.dumps([str(paths.home()), sys.executable, str(ROOT), sorted(env.items())])
    return b"\0lorapilot-resident-" + hashlib.sha256(key.encode()).hexdigest()[:24].encode()


def ask(request: dict, timeout: float) -> dict | None:
    """Send one request, read one reply; None when no resident answers (or it says it is stale)."""
    if not enabled():
        return None
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(CONNECT_S)
            sock.connect(address())
            sock.settimeout(timeout)
            sock.sendall(json.dumps(request).encode() + b"\n")
            reply = sock.makefile("rb").readline()
    except OSError:  # none listening, or it went away mid-request
        return None
    try:
        answer = json.loads(reply)
    except ValueError:
        return None
    return None if not isinstance(answer, dict) or answer.get("stale") else answer


def run(job_id: int) -> int | None:
    """Have the resident fork a worker for a claimed job; its pid, or None."""
    answer = ask({"op": "run", "job": job_id}, RUN_S)
    pid = (answer or {}).get("pid")
    return int(pid) if isinstance(pid, int) and pid > 0 else None


def start() -> subprocess.Popen | None:
    """Start a resident for the jobs that come next; it imports its libraries in the background.
    Two starters at once are harmless: the second resident cannot take the address and exits."""
    if not enabled():
        return None
    log_path = paths.home() / "resident.log"
    try:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "jobs.resident"],
                cwd=str(ROOT),
                env=dict(os.environ),  # as this process has it: the resident's address is made from it
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # outlives the CLI or UI that started it, like a worker
            )
    except OSError:
        return None


def ensure() -> None:
    """Start a resident unless one answers. Called as a worker ends, when the CPU it used is free again,
    so the next job finds its libraries imported."""
    if enabled() and ask({"op": "ping"}, CONNECT_S) is None:
        start()


def stop() -> None:
    """Ask the resident of this home to exit once its children are done (tests; `python app.py`
    never needs it: a resident exits by itself when idle)."""
    with contextlib.suppress(OSError):
        ask({"op": "exit"}, RUN_S)
