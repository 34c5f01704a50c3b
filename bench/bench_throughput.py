"""A LoRA Pilot job against the best plain TRL + PEFT script for the CPU at hand.

The plain script is what a practitioner writes from TRL's defaults: `SFTConfig`
turns bf16 on (and asks for `use_cpu=True` on a CPU), so it trains in bf16 autocast;
where this CPU's bf16 matmul is not native (engine.estimate.hardware measures it),
bf16 is ~100x slower and the practitioner sets `bf16=False`. That faster variant is the
baseline; the output names the CPU and the choice. Everything else is TRL's default
(including its gradient checkpointing; `--plain-no-ckpt` turns it off).

Setting (issue 10): the embedded SmolLM2-135M, 400 chat rows, batch 8, length 128,
r 8 all-linear, lr 2e-4, no eval, 30 steps. Each run is a fresh process, timed wall to
wall (start, imports, model load, data, 30 steps, save): the plain script as
`python bench_throughput.py --plain`, the job as `python app.py train PLAN --wait`
(dispatcher, worker process, artifacts). Loop tokens/s = tokens trained / seconds from
the trainer's train-begin to its last step. Runs alternate (plain, job, plain, job) so a
shared machine's load hits both alike; report ratios, and repeat.

    .venv/bin/python bench/bench_throughput.py --repeats 2
Target: job wall >= 1.3x faster than the plain script (ratio plain_wall / job_wall).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SETTING = dict(rows=400, batch_size=8, seq_len=128, r=8, alpha=16, learning_rate=2e-4, steps=30)


def write_data(path: Path) -> None:
    """400 chat rows: the demo skills' training rows (ticket, then json), as a plain JSONL file."""
    from engine.data import demo

    rows = demo.records("ticket", "train") + demo.records("json", "train")
    path.write_text("".join(json.dumps(r) + "\n" for r in rows[: SETTING["rows"]]), encoding="utf-8")


# --- the plain script (run in its own process) ---------------------------------------------
def plain(data: str, out: str, bf16: bool, ckpt: bool) -> None:
    t_start = time.time()
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from engine.model import default_model  # only to find the converted embedded model's folder

    class Stopwatch(TrainerCallback):  # the only addition: when the loop starts and its last step ends
        def on_train_begin(self, args, state, control, **kw):
            self.t0 = time.time()

        def on_step_end(self, args, state, control, **kw):
            self.t1 = time.time()

    watch = Stopwatch()
    extra = {} if bf16 else {"bf16": False}  # TRL's default is bf16=True
    if not ckpt:
        extra["gradient_checkpointing"] = False
    trainer = SFTTrainer(
        model=str(default_model.default_model_dir()),
        args=SFTConfig(
            output_dir=out,
            per_device_train_batch_size=SETTING["batch_size"],
            max_length=SETTING["seq_len"],
            max_steps=SETTING["steps"],
            learning_rate=SETTING["learning_rate"],
            use_cpu=True,
            report_to="none",
            logging_steps=min(10, SETTING["steps"]),
            **extra,
        ),  # a log (with tokens) at the last step
        train_dataset=load_dataset("json", data_files=data, split="train"),
        peft_config=LoraConfig(
            r=SETTING["r"], lora_alpha=SETTING["alpha"], target_modules="all-linear", task_type="CAUSAL_LM"
        ),
        callbacks=[watch],
    )
    trainer.train()
    trainer.save_model(out)
    tokens = max(e.get("num_tokens", 0) for e in trainer.state.log_history)
    print(json.dumps({"loop_s": watch.t1 - watch.t0, "tokens": tokens, "in_process_s": time.time() - t_start}))


def run_plain(work: Path, i: int, bf16: bool, ckpt: bool, env: dict) -> dict:
    out = work / f"plain-{i}"
    cmd = [sys.executable, __file__, "--plain", str(work / "data.jsonl"), str(out), "--steps", str(SETTING["steps"])]
    cmd += ["--bf16"] if bf16 else []
    cmd += [] if ckpt else ["--plain-no-ckpt"]
    start = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    wall = time.time() - start
    if proc.returncode:
        sys.exit(f"plain script failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"wall": wall, "tps": result["tokens"] / result["loop_s"], **result}


def run_job(work: Path, i: int, env: dict) -> dict:
    from engine.plan import TrainingPlan

    plan = TrainingPlan.build(
        name=f"bench-{i}",
        model="default",
        dataset=str(work / "data.jsonl"),
        data_format="messages",
        eval_split=0.0,
        r=SETTING["r"],
        alpha=SETTING["alpha"],
        dropout=0.0,
        targets="all-linear",
        seq_len=SETTING["seq_len"],
        batch_size=SETTING["batch_size"],
        grad_accum=1,
        max_steps=SETTING["steps"],
        learning_rate=SETTING["learning_rate"],
        save_steps=SETTING["steps"],
        logging_steps=min(10, SETTING["steps"]),
        gpu="cpu",
    )
    plan_file = work / f"plan-{i}.yaml"
    plan_file.write_text(plan.to_yaml(), encoding="utf-8")
    start = time.time()
    proc = subprocess.run(
        [sys.executable, "app.py", "train", str(plan_file), "--wait"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
    )
    wall = time.time() - start
    if proc.returncode:
        sys.exit(f"job failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    job_dir = next(line.split(":", 1)[1].strip() for line in proc.stdout.splitlines() if line.startswith("artifacts:"))
    state = json.loads(
        (Path(job_dir) / "checkpoints" / f"checkpoint-{SETTING['steps']}" / "trainer_state.json").read_text()
    )
    tokens = max(e.get("num_tokens", 0) for e in state["log_history"])
    loop_s = max(e.get("time", 0.0) for e in state["log_history"])  # the reporter's train-begin → last log
    return {"wall": wall, "tps": tokens / loop_s, "tokens": tokens, "loop_s": loop_s}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=2, help="pairs of runs (plain, job)")
    parser.add_argument("--steps", type=int, default=SETTING["steps"], help="optimizer steps per run (issue: 30)")
    parser.add_argument(
        "--plain-no-ckpt", action="store_true", help="the plain script without TRL's default gradient checkpointing"
    )
    parser.add_argument("--plain", nargs=2, metavar=("DATA", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--bf16", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    SETTING["steps"] = args.steps
    if args.plain:
        plain(*args.plain, bf16=args.bf16, ckpt=not args.plain_no_ckpt)
        return 0

    from engine.estimate import hardware
    from engine.model import default_model

    work = Path(tempfile.mkdtemp(prefix="bench-throughput-"))
    env = {
        **os.environ,
        "LORAPILOT_HOME": os.environ.get("LORAPILOT_HOME", str(work / "home")),
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONPATH": str(ROOT),
    }
    os.environ["LORAPILOT_HOME"] = env["LORAPILOT_HOME"]
    default_model.default_model_dir()  # the one-time conversion happens before any timing
    write_data(work / "data.jsonl")
    cal = hardware.calibration()  # the job's own first-run calibration is not timed either
    bf16 = cal.bf16_native
    print(
        f"CPU: {cal.cpu}, {cal.threads} threads, bf16 flags {cal.bf16_flags or 'none'}; matmul "
        f"fp32 {cal.fp32_tflops:.3g} / bf16 {cal.bf16_tflops:.3g} TFLOP/s"
    )
    print(
        "plain baseline: TRL defaults with "
        + ("bf16 autocast (native here)" if bf16 else "bf16=False (bf16 not native here)")
        + (", gradient checkpointing off" if args.plain_no_ckpt else ", TRL's default gradient checkpointing on")
    )
    print(f"job: dtype auto -> {hardware.cpu_precision()[0]}; setting {SETTING}", flush=True)

    runs = {"plain": [], "job": []}
    for i in range(args.repeats):
        for kind in ("plain", "job"):
            r = run_plain(work, i, bf16, not args.plain_no_ckpt, env) if kind == "plain" else run_job(work, i, env)
            runs[kind].append(r)
            print(
                f"run {i + 1} {kind:5s}: {r['tokens']} tokens in {r['loop_s']:6.1f} s loop = {r['tps']:7.1f} tok/s; "
                f"wall to wall {r['wall']:6.1f} s",
                flush=True,
            )
    med = {k: {m: statistics.median(r[m] for r in v) for m in ("tps", "wall")} for k, v in runs.items()}
    print(f"plain TRL : {med['plain']['tps']:7.1f} tok/s loop, {med['plain']['wall']:6.1f} s wall (median)")
    print(f"LoRA Pilot: {med['job']['tps']:7.1f} tok/s loop, {med['job']['wall']:6.1f} s wall (median)")
    print(
        f"job speed-up: loop tokens/s x{med['job']['tps'] / med['plain']['tps']:.2f}, "
        f"wall to wall x{med['plain']['wall'] / med['job']['wall']:.2f} (target >= 1.3)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
