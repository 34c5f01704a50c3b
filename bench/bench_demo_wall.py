"""`python app.py demo --wait`, wall to wall, in a fresh LoRA Pilot home, with where the time went.

The first-run conversion of the embedded model (`python -m engine.model.default_model`, what
`make run` does before the wizard opens) runs first and is not timed. Then the demo runs N times:
the first is cold (no resident worker: the CLI and the worker each import torch, and the machine's
hardware calibration is measured), the later ones warm: each waits until the resident that the
last job's end started answers (about 8 s of imports), as a user's next demo finds it. Per run:
wall seconds, the CLI until the job's row exists, the worker from start to finish, scoring the
base, the trainer's `train_runtime`, scoring the adapter, and the held-out exact match before ->
after, read from the job's row, its log and its evaluation.json. The machine's matmul rates are
timed before and after, since a shared machine's speed drifts.

    .venv/bin/python bench/bench_demo_wall.py --runs 4
Target (issue 25): the warm runs <= 35 s on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _seconds(stamp: str) -> float:
    return datetime.fromisoformat(stamp).replace(tzinfo=UTC).timestamp()


def one_run(home: Path, env: dict) -> dict:
    t0 = time.time()
    done = subprocess.run(
        [sys.executable, "app.py", "demo", "--wait"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    wall = time.time() - t0
    if done.returncode != 0:
        raise SystemExit(f"demo failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    with sqlite3.connect(home / "lorapilot.db") as db:
        job_id, created, started, finished, folder = db.execute(
            "select id, created_at, started_at, finished_at, artifact_dir from job order by id desc limit 1"
        ).fetchone()
    evaluation = json.loads((Path(folder) / "evaluation.json").read_text())
    runtime = re.findall(r"'train_runtime': '([0-9.]+)'", (Path(folder) / "job.log").read_text())
    return {
        "job": job_id,
        "wall_s": round(wall, 2),
        "cli_to_queued_s": round(_seconds(created) - t0, 2),
        "worker_s": round(_seconds(finished) - _seconds(started), 2),
        "score_base_s": evaluation["base"]["seconds"],
        "train_runtime_s": float(runtime[-1]) if runtime else None,
        "score_adapter_s": evaluation["adapter"]["seconds"],
        "exact_match": f"{evaluation['base']['exact_match']:g}% -> {evaluation['adapter']['exact_match']:g}%",
    }


def _rates(env: dict) -> str:
    """This moment's matmul rates (a separate process: this one never imports torch)."""
    probe = (
        "import torch; from engine.estimate.hardware import _matmul_tflops as r; "
        "print(f'matmul fp32 {r(torch.float32):.3f} / bf16 {r(torch.bfloat16):.3f} TFLOP/s')"
    )
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True)
    return done.stdout.strip()


def _resident_answers(wait_s: float = 30.0) -> bool:
    """Wait until the home's resident worker answers (it imports for about 8 s after a job's end). Asked from
    this process, whose environment is the runs' (the resident's address depends on it): a probe process
    every half second would take CPU from the imports it waits for."""
    from jobs.launch import resident

    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        if resident.ask({"op": "ping"}, 1.0) is not None:
            return True
        time.sleep(0.5)
    return False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=4, help="demo runs in the fresh home (the first is cold)")
    args = ap.parse_args()

    home = Path(tempfile.mkdtemp(prefix="lorapilot-demo-bench-"))
    os.environ.update(LORAPILOT_HOME=str(home), GRADIO_ANALYTICS_ENABLED="False")
    os.environ.pop("LORAPILOT_RESIDENT", None)  # the resident is part of what a user gets
    env = dict(os.environ)
    subprocess.run([sys.executable, "-m", "engine.model.default_model"], cwd=ROOT, env=env, check=True)
    print(f"home {home}; load average before: {os.getloadavg()[0]:.2f}; {_rates(env)}", flush=True)
    rows = []
    try:
        for i in range(args.runs):
            if i:  # as a user's next demo finds it: the resident the last job's end started has its libraries in
                ready = _resident_answers()
            row = {"run": "cold" if i == 0 else "warm" if ready else "warm (no resident yet)", **one_run(home, env)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    finally:  # the resident imports for seconds after a job's end, and its exit takes ~2 s of CPU (seen with
        # ps): both were read as the machine's speed (0.07 TFLOP/s fp32), so the rates wait for them
        from jobs.launch import resident

        _resident_answers()
        resident.stop()
        time.sleep(5)
    warm = [r["wall_s"] for r in rows if r["run"] == "warm"]
    if warm:
        print(
            f"warm runs: median {statistics.median(warm):.1f} s, range {min(warm):.1f}-{max(warm):.1f} s "
            f"(target <= 35 s); cold {rows[0]['wall_s']:.1f} s; load average after: {os.getloadavg()[0]:.2f}; "
            f"{_rates(env)}"
        )


if __name__ == "__main__":
    main()
