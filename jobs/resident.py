"""The resident worker: `python -m jobs.resident`, a fork server for jobs and submits.

A job started from a fresh process pays the imports of torch, transformers, PEFT and TRL (~4 s
on 2 cores) twice: in the submitter, whose check of the model builds it on the meta device, and
in the worker. The plain TRL script pays them once. The resident pays them once per stretch of
work: it imports them, then forks a child for each request:

- `run JOB`: the child is the job's worker (`jobs.worker.run_job`), exactly as a spawned one;
- `submit PLAN`: the child validates and queues (`jobs.dispatcher.submit`) and answers the CLI,
  whose own process then never imports torch.

Each request gets its own child, for three reasons. A crash, an out-of-memory kill or a SIGKILL
ends that child only. The child runs in its own session and process group with its pid on the
job's row, so cancel, kill, reconcile and resume treat it as they treat a spawned worker. And
this process never computes with torch: a child of a process whose OpenMP pool has started
hangs at its first parallel matmul (measured here), so the server only imports, accepts, forks
and reaps.

It exits after LORAPILOT_RESIDENT_IDLE_S seconds (default 900) with no request and no child,
and at once when a source file of the project changes, so it never runs older code than the
checkout holds. Clients (`jobs.launch.resident`) fall back to the ordinary way whenever it does
not answer.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import struct
import sys
import time
import traceback
from pathlib import Path

from engine.errors import UserError
from engine.plan import TrainingPlan
from jobs import db, dispatcher, store, worker
from jobs.launch import resident

ROOT = resident.ROOT
IDLE_S = float(os.environ.get("LORAPILOT_RESIDENT_IDLE_S", "900"))
ACCEPT_S = 0.5  # how often the loop reaps children and checks its idle time


def source_stamp(root: Path = ROOT) -> float:
    """The newest modification time of the project's Python files: a change means new code."""
    files = [root / "app.py", *(p for d in ("engine", "jobs", "ui") for p in (root / d).rglob("*.py"))]
    return max((f.stat().st_mtime for f in files if f.exists()), default=0.0)


def serve() -> int:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:  # first, before the slow imports: a second resident for the same address gives up at once
        listener.bind(resident.address())
    except OSError:
        return 0
    worker.import_libraries()
    os.environ.update(dispatcher.worker_env())  # what a spawned worker's environment would add
    stamp = source_stamp()
    listener.listen(16)
    listener.settimeout(ACCEPT_S)
    _say(f"listening (pid {os.getpid()})")
    children: set[int] = set()
    last = time.monotonic()
    while True:
        _reap(children)
        if not children and time.monotonic() - last > IDLE_S:
            _say(f"idle for {IDLE_S:.0f} s; exiting")
            return 0
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            continue
        last = time.monotonic()
        with conn:
            request = _read(conn)
            if request is None:
                continue
            if source_stamp() != stamp:
                _reply(conn, {"stale": True})
                _say("the project's source changed; exiting so the next request starts a fresh resident")
                return 0
            if request.get("op") == "ping":
                _reply(conn, {"ok": True})
                continue
            if request.get("op") == "exit":  # its children are jobs in their own sessions: they go on
                _reply(conn, {"ok": True})
                return 0
            if request.get("op") not in ("run", "submit"):
                _reply(conn, {"error": {"field": "op", "message": f"unknown request {request.get('op')!r}"}})
                continue
            pid = os.fork()
            if pid == 0:
                _child(listener, conn, request)  # never returns
            children.add(pid)
            _say(f"{request['op']} {request.get('job', '')} -> child {pid}".replace("  ", " "))
            if request["op"] == "run":
                _reply(conn, {"pid": pid})


def _child(listener: socket.socket, conn: socket.socket, request: dict) -> None:
    code = 1
    try:
        listener.close()  # only the server accepts: a child must not keep the address alive
        os.setsid()  # its own session and process group, which cancel signals as a whole
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        db.forget_engines()  # nothing was opened before the fork; make sure nothing is shared
        if request["op"] == "run":
            conn.close()
            code = worker.run_job_into_its_log(int(request["job"]))
        else:
            code = _submit(conn, request)
    except BaseException:
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _submit(conn: socket.socket, request: dict) -> int:
    """Validate and queue as `dispatcher.submit` does in the CLI; the reply carries the job or the one-line error."""
    try:
        plan = TrainingPlan.model_validate_json(request["plan"])
        job = dispatcher.submit(plan, anyway=bool(request.get("anyway")), parent_id=request.get("parent_id"))
        answer: dict = {"job": job.id}
    except UserError as exc:
        kind = "does_not_fit" if isinstance(exc, dispatcher.DoesNotFit) else "user"
        answer = {"error": {"kind": kind, "field": exc.field, "message": exc.message}}
    _reply(conn, answer)
    return 0


def _read(conn: socket.socket) -> dict | None:
    """One JSON line from a client of this same user; None for anything else."""
    try:
        uid = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))[1]
        if uid != os.getuid():
            return None
        conn.settimeout(5.0)
        request = json.loads(conn.makefile("rb").readline())
    except (OSError, ValueError):
        return None
    return request if isinstance(request, dict) else None


def _reply(conn: socket.socket, answer: dict) -> None:
    with contextlib.suppress(OSError):
        conn.sendall(json.dumps(answer).encode() + b"\n")


def _reap(children: set[int]) -> None:
    for pid in list(children):
        with contextlib.suppress(ChildProcessError):
            done, _ = os.waitpid(pid, os.WNOHANG)
            if not done:
                continue
        children.discard(pid)


def _say(text: str) -> None:
    print(f"[{store.now().isoformat(timespec='seconds')}] resident: {text}", flush=True)


if __name__ == "__main__":
    sys.exit(serve())
