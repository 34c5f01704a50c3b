"""The GPU check: estimate against measured peak memory, a job against the plain TRL script, two
adapters served through /v1 — on one CUDA machine, printed as one table.

A lent GPU machine reaches no hub, so the models are the embedded SmolLM2-135M (real weights)
and two catalog architectures built from their shipped configs with random weights
(qwen2.5-0.5b, llama-3.2-1b): memory and speed do not depend on what the weights say. Each run
goes through `engine.train.run.train` (the job path) in a fresh child process, so the peak is
`torch.cuda.max_memory_allocated` of that run alone, beside the estimate for the same plan
(`engine.estimate.combined.memory_for` with the data's token lengths, as the job page shows).

    bash bench/gpu_check.sh          # installs what is missing, then runs this
    python bench/gpu_check.py [--only NAME] [--steps 20]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
MiB = 2**20
RUNS = {  # name -> (catalog key or "default", plan fields)
    "smollm2-135m lora": ("default", dict(method="lora", r=16, targets="all-linear", batch_size=8, seq_len=256)),
    "smollm2-135m qlora": ("default", dict(method="qlora", r=16, targets="all-linear", batch_size=8, seq_len=256)),
    "qwen2.5-0.5b lora": ("qwen2.5-0.5b", dict(method="lora", r=16, targets="all-linear", batch_size=8, seq_len=512)),
    "qwen2.5-0.5b qlora": (
        "qwen2.5-0.5b",
        dict(method="qlora", r=16, targets="all-linear", batch_size=8, seq_len=512),
    ),
    "llama-3.2-1b lora": (
        "llama-3.2-1b",
        dict(method="lora", r=16, targets="all-linear", batch_size=4, seq_len=512, grad_ckpt=True),
    ),
}


def random_weights(key: str, work: Path) -> str:
    """A local folder with the catalog config's architecture, random weights and the embedded tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from engine.model import catalog, default_model
    from engine.model.introspect import load_config

    folder = work / key
    if (folder / "config.json").is_file():
        return str(folder)
    config, _, _ = load_config(key)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(default_model.default_model_dir())  # ids fit any larger vocabulary
    tokenizer.save_pretrained(folder)
    assert catalog.find_model(key) is not None
    return str(folder)


def measure(name: str, steps: int) -> dict:
    """In the child: a few steps through the job path; the estimate for the same plan."""
    from engine.data import demo
    from engine.data.dataset import check_data
    from engine.estimate.combined import estimate, memory_for
    from engine.train.run import train

    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    os.environ.setdefault("LORAPILOT_HOME", str(work / "home"))
    key, fields = RUNS[name]
    model = "default" if key == "default" else random_weights(key, Path(tempfile.gettempdir()) / "gpu-check-models")
    data = work / "rows.jsonl"
    data.write_text(demo.dataset_path(demo.DEFAULT_SKILL, "train").read_text(), encoding="utf-8")
    plan = demo.default_plan().updated(
        model=model, dataset=str(data), gpu="H100", max_steps=steps, save_steps=10_000, eval_split=0.0, **fields
    )
    report = check_data(plan.dataset, model=plan.model, seq_len=plan.seq_len)
    expected = memory_for(plan, lengths=report.token_lengths, label_share=report.label_share).expected
    eta = estimate(plan, lengths=report.token_lengths, label_share=report.label_share).time.seconds
    t0 = time.time()
    result = train(plan, work / "out")
    return {
        "name": name,
        "measured": result.peak_bytes,
        "estimated": expected.allocated_bytes,
        "seconds": round(time.time() - t0, 1),
        "eta": eta,
        "steps": result.steps,
        "out": str(work / "out"),
    }


def child(name: str, steps: int) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--child", name, "--steps", str(steps)], capture_output=True, text=True, timeout=900
    )
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode or not lines:
        return {"name": name, "error": (out.stderr.strip().splitlines() or ["no output"])[-1][:160]}
    return json.loads(lines[-1])


def serve_two(adapters: list[str]) -> str:
    """Two job adapters through the /v1 endpoint with the official openai client: one mixed batch."""
    import concurrent.futures
    import socket

    from openai import OpenAI

    from jobs import library

    names = [library.import_adapter(a, name=f"gpu-check-{i}").name for i, a in enumerate(adapters)]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "serve", "--api-only", "--port", str(port)])
    try:
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=120)
        for _ in range(120):
            try:
                client.models.list()
                break
            except Exception:
                time.sleep(1)
        t0 = time.time()
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            answers = list(
                pool.map(
                    lambda i: client.chat.completions.create(
                        model=names[i % 2],
                        messages=[{"role": "user", "content": "My printer is broken in room 4."}],
                        max_tokens=32,
                        temperature=0,
                    ),
                    range(8),
                )
            )
        answered = sum(bool(a.choices) for a in answers)
        return f"8 requests over 2 adapters in {time.time() - t0:.2f} s, {answered} answered"
    finally:
        server.terminate()
        server.wait(timeout=30)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=list(RUNS), action="append")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(measure(args.child, args.steps)), flush=True)
        return 0
    import torch

    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; run it on a GPU machine")
        return 2
    print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}", flush=True)
    print(f"{'run':22s} {'measured MiB':>13s} {'estimate MiB':>13s} {'ratio':>6s} {'wall s':>7s} {'ETA s':>6s}")
    results = []
    for name in args.only or RUNS:
        r = child(name, args.steps)
        results.append(r)
        if "error" in r:
            print(f"{name:22s} failed: {r['error']}", flush=True)
            continue
        print(
            f"{name:22s} {r['measured'] / MiB:13.1f} {r['estimated'] / MiB:13.1f} "
            f"{r['estimated'] / r['measured']:6.3f} {r['seconds']:7.1f} {r['eta']:6.1f}",
            flush=True,
        )
    done = [r["out"] for r in results if "out" in r and "lora" in r["name"]][:2]
    if len(done) == 2:
        print("serving:", serve_two(done), flush=True)
    speed = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench_throughput.py"), "--repeats", "1"], capture_output=True, text=True
    )
    print("job vs plain TRL script (bench_throughput):", *speed.stdout.strip().splitlines()[-3:], sep="\n  ")
    return 0


if __name__ == "__main__":
    sys.exit(main())
