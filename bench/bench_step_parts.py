"""Three A/B timings inside one demo job's trainer, each side alternated in the same process, so a
shared machine's drift hits both alike (printed, never asserted):

1. a training step with PEFT's fp32 cast of every adapter input on (PEFT's default) and off
   (`engine.train.run.adapter_inputs_left_to_autocast`, what a job does under bf16 autocast);
2. a step with the CPU peak watcher on (`engine.train.peak.LiveTensorPeak`, the job's first two
   steps) and off, and the watcher's start-up scan of live tensors;
3. the held-out loss pass over the demo's 24 rows through the model's full logits and through SFT's
   labelled-positions head (`engine.evaluate.heldout.Judge._loss`).

    .venv/bin/python bench/bench_step_parts.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    import torch
    from peft.helpers import disable_input_dtype_casting

    from engine.data import demo
    from engine.evaluate.heldout import _adapters_off, _inference
    from engine.train import run
    from engine.train.peak import LiveTensorPeak

    plan = demo.default_plan()
    prepared = run._prepare(plan, Path(tempfile.mkdtemp(prefix="lp-bench-steps-")), lambda event: None, None)
    trainer, model = prepared.trainer, prepared.trainer.model
    trainer.create_optimizer_and_scheduler(num_training_steps=plan.max_steps)
    trainer.current_gradient_accumulation_steps = 1
    model.train()
    batches = [batch for _, batch in zip(range(10), trainer.get_train_dataloader())]
    autocast = prepared.resolved.precision == "bf16"
    print(f"demo plan on {prepared.resolved.device}, {prepared.resolved.precision}; batches of {plan.batch_size} rows")

    def step(batch) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            trainer.training_step(model, batch)
        trainer.optimizer.step()
        trainer.optimizer.zero_grad()

    def steps() -> float:
        start = time.perf_counter()
        for batch in batches:
            step(batch)
        return (time.perf_counter() - start) / len(batches)

    steps()  # warm-up: kernels for these shapes, the optimizer's states
    for _ in range(args.rounds):
        cast = steps()
        with disable_input_dtype_casting(model):
            uncast = steps()
        print(f"1. step with PEFT's input cast {cast:.3f} s, without {uncast:.3f} s ({1 - uncast / cast:+.0%})")

    for _ in range(args.rounds):
        start = time.perf_counter()
        step(batches[0])
        plain = time.perf_counter() - start
        watcher = LiveTensorPeak()
        start = time.perf_counter()
        watcher.start()
        scan = time.perf_counter() - start
        step(batches[1])
        watcher.stop()
        tracked = time.perf_counter() - start
        print(f"2. step {plain:.3f} s; watched {tracked:.3f} s, of which the start-up scan {scan:.3f} s")

    def full_logits() -> float:
        total, tokens = 0.0, 0
        with _inference(model), torch.no_grad():
            for batch in trainer.get_eval_dataloader():
                n = int((batch["labels"][:, 1:] != -100).sum())
                total += float(model(**batch).loss) * n
                tokens += n
        return total / tokens

    def labelled_head() -> float:
        total, tokens = 0.0, 0
        with _inference(model), torch.no_grad():
            for batch in trainer.get_eval_dataloader():
                out = model(**batch, fused_lm_head=True)
                total -= float(out.log_probs.sum())
                tokens += int(out.label_mask.sum())
        return total / tokens

    with _adapters_off(model):
        for _ in range(args.rounds):
            start = time.perf_counter()
            full = full_logits()
            middle = time.perf_counter()
            labelled = labelled_head()
            end = time.perf_counter()
            print(
                f"3. held-out loss, full logits {middle - start:.3f} s (loss {full:.5f}); "
                f"labelled head {end - middle:.3f} s (loss {labelled:.5f})"
            )


if __name__ == "__main__":
    main()
