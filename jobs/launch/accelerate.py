"""Several training processes on one machine, through `accelerate launch` (data parallel).

The worker stays the job's one process the dispatcher knows (its pid, its process group);
it starts `accelerate launch` as a child in that group, so a cancel or a kill reaches every
rank, and turns what the ranks left behind into the job's verdict: rank 0's outcome file,
or, when a rank died without one (kill -9, out of memory), an interrupted job that resumes
from the last complete checkpoint with the same number of processes.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from types import SimpleNamespace

from jobs import store
from jobs.launch import rank


class RankLost(RuntimeError):
    """A training process ended without saying why: the job is interrupted, not failed."""


class RankFailed(RuntimeError):
    """Rank 0 caught an error and explained it (the explanation is the message)."""


def command(job_id: int, processes: int, resume: bool) -> list[str]:
    # `--multi_gpu` starts the processes through torch's elastic launcher on GPUs and CPUs alike;
    # on a CPU the Trainer's `use_cpu=True` then joins them with the gloo backend. accelerate's
    # `--cpu` flag would not do: it routes to its simple launcher, which starts one process unless
    # MPI is installed (accelerate 1.15, commands/launch.py, launch_command).
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        str(processes),
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",  # the plan's dtype decides, through the Trainer's arguments
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(_free_port()),
        "-m",
        "jobs.launch.rank",
        str(job_id),
    ]
    return cmd + (["--resume"] if resume else [])


def run(job_id: int, processes: int, resume: bool) -> SimpleNamespace:
    """Train the job with `processes` ranks and return rank 0's outcome (steps, stopped, peak, scores)."""
    outcome = store.job_dir(job_id) / rank.OUTCOME
    outcome.unlink(missing_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", str(_threads_per_rank(processes))))
    store.append_log(job_id, f"launching {processes} training processes with accelerate")
    proc = subprocess.Popen(command(job_id, processes, resume), env=env, stdin=subprocess.DEVNULL)
    while proc.poll() is None:  # a signal to the process group reaches the ranks directly
        time.sleep(0.5)
    if outcome.exists():
        data = json.loads(outcome.read_text())
        if "error" in data:
            raise RankFailed(data["error"])
        if proc.returncode == 0:
            return SimpleNamespace(**data)
    raise RankLost(
        f"a training process ended without reporting (accelerate exited with code {proc.returncode}): "
        "one was killed (kill -9, out of memory) or lost its peers. "
        "Resume to continue from the last checkpoint with the same number of processes."
    )


def _threads_per_rank(processes: int) -> int:
    return max(1, (os.cpu_count() or 1) // processes)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
