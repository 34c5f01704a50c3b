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

The first job runs in a fresh LoRA Pilot home with no resident worker (jobs.resident): it
pays every import in the CLI and in its worker, as a user's first job does. Its end starts
the resident, so the jobs after it find torch, transformers, PEFT and TRL imported (the CLI
submits through the resident and never imports torch), as a user's later jobs do. The
output marks each job cold or warm; the plain script is cold every time, as it is for a
practitioner. Share of the limit: loop tokens/s x useful FLOPs per token (the estimator's
formula, without checkpointing's recompute) over the bf16 matmul rate this CPU measured.

    .venv/bin/python bench/bench_throughput.py --repeats 4
Target (issue 25): median of the pairs >= 2.0x wall to wall, every pair >= 1.5x.
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
    from jobs.launch import resident

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
    warm = resident.ask({"op": "ping"}, 2.0) is not None
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
    return {"wall": wall, "tps": tokens / loop_s, "tokens": tokens, "loop_s": loop_s, "warm": warm}


def useful_flops_per_token(data: Path) -> float:
    """The estimator's training FLOPs per token for this setting, at the data's longest row, with no
    recompute (the plain script's checkpointing recomputes the forward: that is its cost, not work)."""
    from engine.data import dataset
    from engine.estimate import combined, timing
    from engine.model import introspect

    info = introspect.resolve("default")
    longest = max(dataset.check_data(str(data), model="default", seq_len=SETTING["seq_len"]).token_lengths)
    adapter = combined.estimate(_plan_for_flops(data)).trainable_params
    return timing.flops_per_token(info, "lora", adapter, longest, grad_ckpt=False)


def _plan_for_flops(data: Path):
    from engine.plan import TrainingPlan

    return TrainingPlan.build(
        model="default", dataset=str(data), r=SETTING["r"], alpha=SETTING["alpha"], targets="all-linear", gpu="cpu"
    )


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
    from jobs.launch import resident

    work = Path(tempfile.mkdtemp(prefix="bench-throughput-"))
    env = {
        **os.environ,
        "LORAPILOT_HOME": os.environ.get("LORAPILOT_HOME", str(work / "home")),
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONPATH": str(ROOT),
    }
    os.environ.update(env)  # this process asks the jobs' resident whether it is up: the same address
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

    fpt = useful_flops_per_token(work / "data.jsonl")
    runs: dict[str, list[dict]] = {"plain": [], "job": []}
    for i in range(args.repeats):
        for kind in ("plain", "job"):
            r = run_plain(work, i, bf16, not args.plain_no_ckpt, env) if kind == "plain" else run_job(work, i, env)
            runs[kind].append(r)
            share = r["tps"] * fpt / (cal.bf16_tflops * 1e12)
            state = "" if kind == "plain" else (" (warm: resident)" if r["warm"] else " (cold: no resident)")
            print(
                f"run {i + 1} {kind:5s}: {r['tokens']} tokens in {r['loop_s']:6.1f} s loop = {r['tps']:7.1f} tok/s "
                f"= {share:.0%} of the bf16 matmul rate; wall to wall {r['wall']:6.1f} s{state}",
                flush=True,
            )
    resident.stop()  # the bench's home is temporary: its resident goes with it
    ratios = [p["wall"] / j["wall"] for p, j in zip(runs["plain"], runs["job"])]
    med = {k: {m: statistics.median(r[m] for r in v) for m in ("tps", "wall")} for k, v in runs.items()}
    for name, kind in (("plain TRL ", "plain"), ("LoRA Pilot", "job")):
        share = med[kind]["tps"] * fpt / (cal.bf16_tflops * 1e12)
        print(
            f"{name}: {med[kind]['tps']:7.1f} tok/s loop ({share:.0%} of the bf16 matmul rate), "
            f"{med[kind]['wall']:6.1f} s wall (median)"
        )
    print(f"useful FLOPs per token: {fpt / 1e9:.3f} G (LoRA r {SETTING['r']} all-linear, no recompute)")
    print(
        f"job speed-up: loop tokens/s x{med['job']['tps'] / med['plain']['tps']:.2f}; wall to wall per pair "
        + ", ".join(f"x{r:.2f}" for r in ratios)
        + f"; median x{statistics.median(ratios):.2f}, range x{min(ratios):.2f}-x{max(ratios):.2f} "
        "(target: median >= 2.0, every pair >= 1.5)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
