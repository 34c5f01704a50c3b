"""The estimator's allocated-memory figure against the peak a real training run measures.

Each configuration trains through `engine.train.train` (the job path) in a fresh child
process, so nothing from another run is alive; on the CPU the peak is the largest sum
of live tensor storage over the first two optimizer steps (engine/peak.py). Configs:
the demo (embedded SmolLM2-135M, `demo.default_plan()`), and four tiny-model ones.

The figure checked is the one the job page shows: the estimate with batches padded to the
data's expected longest row among the rows the peak spans (engine.estimate.lengths: the
first two optimizer steps on the CPU), from the token lengths `check_data` measures, as
jobs.dispatcher.submit does. The worst case (every batch padded to
seq_len) is shown beside it. The tiny configs' rows are longer than seq_len, so there
both are the same; the demo's rows are short. The child also records the shape of every
micro-batch the trainer computes a loss on, to show the padded lengths really seen.

Where the ratio is off by more than 10%, the measured peak is split the way the trainer
sees it: live bytes at step 1's start (weights + adapters + data), what step 1 left
behind (optimizer states), and the rest of the peak (gradients, activations, logits,
transients), each beside the estimator's matching terms.

    .venv/bin/python bench/bench_memory.py            # all five
    .venv/bin/python bench/bench_memory.py --only tiny-lora
Target: estimate / measured within 0.90 .. 1.10.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

MiB = 2**20
TINY = {
    "tiny-lora": dict(method="lora", r=8, targets="all-linear", batch_size=4, seq_len=64, grad_ckpt=False),
    "tiny-qlora-ckpt": dict(method="qlora", r=8, targets="attention", batch_size=4, seq_len=128, grad_ckpt=True),
    "tiny-qlora": dict(method="qlora", r=8, targets="all-linear", batch_size=4, seq_len=64, grad_ckpt=False),
    "tiny-full": dict(method="full", batch_size=2, seq_len=64, grad_ckpt=False, dropout=0.0),
    # rows of 8 to 100 words under a seq_len of 256: batches padded well short of seq_len
    "tiny-lora-varied": dict(method="lora", r=8, targets="all-linear", batch_size=4, seq_len=256, grad_ckpt=False),
}


def plan_for(name: str, work: Path):
    from engine.data import demo
    from engine.plan import TrainingPlan

    if name == "demo":
        base = demo.default_plan()
        data = work / "demo.jsonl"  # the demo's rows as a file: same memory, no before/after scoring
        data.write_text(demo.dataset_path(demo.DEFAULT_SKILL, "train").read_text(), encoding="utf-8")
        return base.updated(dataset=str(data), max_steps=3, save_steps=100, eval_split=0.0)
    from tests.tiny import make_tiny_model

    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()
    sizes = [8 + (37 * i) % 93 for i in range(24)] if name.endswith("varied") else [400] * 24  # 400 >> seq_len
    rows = [" ".join(words[(i + j) % len(words)] for j in range(n)) for i, n in enumerate(sizes)]
    data = work / "long.jsonl"
    data.write_text("".join(json.dumps({"text": r}) + "\n" for r in rows), encoding="utf-8")
    model = make_tiny_model(work / "tiny", vocab_texts=rows[:3])
    return TrainingPlan.build(
        model=str(model),
        dataset=str(data),
        data_format="text",
        max_steps=3,
        save_steps=100,
        eval_split=0.0,
        gpu="cpu",
        learning_rate=1e-3,
        **TINY[name],
    )


def measure_one(name: str) -> dict:
    """Runs in the child: train 3 steps, return measured and estimated figures."""
    from trl import SFTTrainer

    from engine.data.dataset import check_data
    from engine.estimate.combined import memory_for
    from engine.train.run import train

    work = Path(tempfile.mkdtemp(prefix=f"bench-mem-{name}-"))
    os.environ["LORAPILOT_HOME"] = os.environ.get("LORAPILOT_HOME") or str(work / "home")
    plan = plan_for(name, work)
    report = check_data(plan.dataset, model=plan.model, seq_len=plan.seq_len, data_format=plan.data_format)
    est = memory_for(plan, lengths=report.token_lengths, label_share=report.label_share)
    shapes: list[tuple[int, int]] = []  # (batch, padded length) of each training micro-batch, in order
    compute_loss = SFTTrainer.compute_loss

    def recording(self, model, inputs, *args, **kwargs):
        if model.training:
            shapes.append(tuple(inputs["input_ids"].shape))
        return compute_loss(self, model, inputs, *args, **kwargs)

    SFTTrainer.compute_loss = recording  # bench-only spy: the run itself is unchanged
    result = train(plan, work / "out")
    expected = est.expected
    return {
        "name": name,
        "estimated": expected.allocated_bytes,
        "worst": est.allocated_bytes,
        "expected_length": expected.padded_length,
        "rows": expected.rows,
        "measured": result.peak_bytes,
        "marks": result.peak_marks,
        "seq_len": plan.seq_len,
        "batch_size": plan.batch_size,
        "seen": [list(s) for s in shapes],
        "terms": expected.terms,
    }


def report(r: dict) -> None:
    ratio = r["estimated"] / r["measured"]
    seen = sorted({length for _, length in r["seen"]})
    line = (
        f"{r['name']:16s} measured {r['measured'] / MiB:8.2f} MiB  estimate (padded to {r['expected_length']}, "
        f"the expected longest of {r['rows']} rows) {r['estimated'] / MiB:8.2f} MiB ratio {ratio:5.3f}"
        f"   | worst case (padded to {r['seq_len']}) {r['worst'] / MiB:8.2f} MiB ratio "
        f"{r['worst'] / r['measured']:5.3f} | padded lengths seen {seen}"
    )
    terms = r["terms"]
    print(line + ("   OK" if 0.9 <= ratio <= 1.1 else "   OFF"), flush=True)
    marks = r.get("marks") or []
    if not 0.9 <= ratio <= 1.1 and len(marks) >= 2:
        static_m, states_m, dynamic_m = marks[0], marks[1] - marks[0], r["measured"] - marks[1]
        static_e = terms.get("base weights", 0) + terms.get("adapter weights", 0)
        states_e = terms.get("optimizer states", 0)
        static = ("base weights", "adapter weights", "optimizer states")
        dynamic_e = sum(v for k, v in terms.items() if k not in static)
        for label, m, e in (
            ("weights+adapters (+data)", static_m, static_e),
            ("optimizer states", states_m, states_e),
            ("grads+activations+logits+transient", dynamic_m, dynamic_e),
        ):
            print(
                f"    {label:36s} measured {m / MiB:8.2f} MiB  estimated {e / MiB:8.2f} MiB  "
                f"diff {(e - m) / MiB:+8.2f} MiB",
                flush=True,
            )
    print("    estimator terms (MiB): " + ", ".join(f"{k} {v / MiB:.2f}" for k, v in terms.items()), flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=["demo", *TINY], action="append")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print("RESULT " + json.dumps(measure_one(args.child)), flush=True)
        return 0
    for name in args.only or ["demo", *TINY]:
        proc = subprocess.run([sys.executable, __file__, "--child", name], capture_output=True, text=True, cwd=ROOT)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            print(f"{name}: failed\n{proc.stderr[-3000:]}", flush=True)
            continue
        report(json.loads(lines[-1][len("RESULT ") :]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
