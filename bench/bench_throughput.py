"""Throughput of our training path against a plain TRL + PEFT script.

Same model, data, settings, machine and process; the runs alternate (plain, ours,
plain, ours, ...) so that drift in a shared machine's load hits both alike. Tokens/s
= tokens in the training batches / seconds from the trainer's train-begin to its last
optimizer step (evaluations and checkpoints in between included, for both). Our path
includes everything a job does in that span: the reporting callback, ETA, stop checks
and the CPU peak-memory tracking of the first steps. The end-to-end wall time (model
load to artifacts written) is printed too.

    .venv/bin/python bench/bench_throughput.py                 # embedded SmolLM2-135M, demo data
    .venv/bin/python bench/bench_throughput.py --tiny --steps 40 # tiny generated model
Target: ratio ours / plain >= 0.95.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def make_plan(args, work: Path):
    from engine.data import demo
    from engine.plan import TrainingPlan

    # The demo skill's rows, as a plain file: no demo scoring (the plain script has none).
    data = work / "data.jsonl"
    data.write_text(demo.dataset_path(args.skill, "train").read_text(), encoding="utf-8")
    model = "default"
    if args.tiny:
        from tests.tiny import make_tiny_model

        texts = [m["content"] for line in data.read_text().splitlines()[:50] for m in json.loads(line)["messages"]]
        model = str(make_tiny_model(work / "tiny", vocab_texts=texts))
    base = demo.default_plan(args.skill)
    return TrainingPlan.build(**{**base.model_dump(), "model": model, "dataset": str(data), "max_steps": args.steps,
                                 "eval_split": 0.1, "save_steps": max(args.steps // 2, 1), "name": "bench"})


def plain_run(plan, out_dir: Path) -> tuple[float, int, float]:
    """The script a practitioner would write with TRL + PEFT, given the same settings."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from engine.data.dataset import build_datasets  # same rows, same split: the data is not what we compare
    from engine.train.run import model_source

    wall = time.time()
    source = model_source(plan.model)
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, attn_implementation=plan.attention)
    model.config.use_cache = False
    train_ds, eval_ds = build_datasets(plan, tokenizer)
    assert isinstance(train_ds, Dataset)

    class Stopwatch(TrainerCallback):  # the only addition: when the loop starts and its last step ends
        def on_train_begin(self, args, state, control, **kw):
            self.t0 = time.time()

        def on_step_end(self, args, state, control, **kw):
            self.t1 = time.time()

    watch = Stopwatch()
    trainer = SFTTrainer(
        model=model,
        args=SFTConfig(
            output_dir=str(out_dir / "checkpoints"), max_length=plan.seq_len,
            per_device_train_batch_size=plan.batch_size, per_device_eval_batch_size=plan.batch_size,
            gradient_accumulation_steps=plan.grad_accum, max_steps=plan.max_steps,
            learning_rate=plan.learning_rate, lr_scheduler_type=plan.lr_scheduler, warmup_steps=plan.warmup_ratio,
            activation_checkpointing=plan.grad_ckpt, optim=plan.optimizer, seed=plan.seed,
            logging_steps=plan.logging_steps, save_steps=plan.save_steps, save_total_limit=2,
            eval_strategy="steps" if eval_ds is not None else "no", eval_steps=plan.save_steps,
            bf16=False, fp16=False, use_cpu=True, report_to="none", disable_tqdm=True,
        ),
        train_dataset=train_ds, eval_dataset=eval_ds, processing_class=tokenizer,
        peft_config=LoraConfig(r=plan.r, lora_alpha=int(plan.alpha), lora_dropout=plan.dropout,
                               target_modules="all-linear", task_type="CAUSAL_LM"),
        callbacks=[watch],
    )
    trainer.train()
    tokens = max(e.get("num_tokens", 0) for e in trainer.state.log_history)
    trainer.save_model(str(out_dir))
    return watch.t1 - watch.t0, int(tokens), time.time() - wall


def our_run(plan, out_dir: Path) -> tuple[float, int, float]:
    from engine.train import events
    from engine.train.run import train

    marks = {}

    def report(event):
        if isinstance(event, events.Started):
            marks["t0"] = time.time()
        elif isinstance(event, events.Progress):
            marks["t1"] = time.time()

    wall = time.time()
    result = train(plan, out_dir, report=report)
    wall = time.time() - wall
    ckpt = out_dir / "checkpoints" / f"checkpoint-{result.steps}" / "trainer_state.json"
    tokens = max(e.get("num_tokens", 0) for e in json.loads(ckpt.read_text())["log_history"])
    return marks["t1"] - marks["t0"], int(tokens), wall


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="a tiny generated model instead of SmolLM2-135M")
    parser.add_argument("--skill", default="ticket")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=2, help="pairs of runs (plain, ours)")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="bench-throughput-"))
    os.environ.setdefault("LORAPILOT_HOME", str(work / "home"))
    plan = make_plan(args, work)
    # one untimed warm-up of each, so first-use costs (imports, conversion, caches) hit neither
    print(f"model={plan.model} steps={plan.max_steps} batch={plan.batch_size} seq_len={plan.seq_len} "
          f"r={plan.r} targets={plan.targets}", flush=True)
    plain_run(plan.updated(max_steps=2, save_steps=2), work / "warm-plain")
    our_run(plan.updated(max_steps=2, save_steps=2), work / "warm-ours")

    results = {"plain": [], "ours": []}
    for i in range(args.repeats):
        for kind, fn in (("plain", plain_run), ("ours", our_run)):
            loop_s, tokens, wall = fn(plan, work / f"{kind}-{i}")
            results[kind].append((tokens / loop_s, wall))
            print(f"run {i + 1} {kind:5s}: {tokens} tokens in {loop_s:6.2f} s loop = {tokens / loop_s:8.1f} tok/s; "
                  f"end-to-end {wall:6.2f} s", flush=True)
    plain_tps = statistics.median(t for t, _ in results["plain"])
    ours_tps = statistics.median(t for t, _ in results["ours"])
    plain_wall = statistics.median(w for _, w in results["plain"])
    ours_wall = statistics.median(w for _, w in results["ours"])
    print(f"plain TRL+PEFT : {plain_tps:8.1f} tok/s (median), end-to-end {plain_wall:.2f} s")
    print(f"LoRA Pilot     : {ours_tps:8.1f} tok/s (median), end-to-end {ours_wall:.2f} s")
    print(f"ratio ours/plain tokens/s = {ours_tps / plain_tps:.3f} (target >= 0.95)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
