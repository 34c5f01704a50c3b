"""Demo skills on the embedded default: base vs adapter exact-match score and wall time.

Plain TRL + PEFT with exactly `demo.default_plan(skill)`'s settings, so the figures say
what the `demo` command can reach on this machine. Prints, per skill: base score, score
after training, and the wall/CPU seconds of each phase, plus the machine load (the
target, <= 180 s in all and +30 points, assumes two otherwise idle cores).

    python bench/bench_demo.py [ticket,json,isodate] [--eval-every N]
"""

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("skills", nargs="?", default="ticket")
    ap.add_argument("--eval-every", type=int, default=0, help="also score every N steps (adds time)")
    args = ap.parse_args()

    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from engine.data import dataset, demo
    from engine.estimate import hardware
    from engine.model.default_model import default_model_dir

    folder = default_model_dir()
    for skill in args.skills.split(","):
        plan = demo.default_plan(skill)
        t0 = time.time()
        tok = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(
            folder, dtype=torch.float32, attn_implementation=hardware.attention_to_load(plan.attention)
        )
        t_load = time.time() - t0
        t = time.time()
        base = demo.evaluate(model, tok, skill)
        t_base = time.time() - t
        train, ev = dataset.build_datasets(plan, tok)

        class Every(TrainerCallback):
            def __init__(self, skill, tok):
                self.skill, self.tok = skill, tok

            def on_step_end(self, a, state, control, model=None, **kw):
                if args.eval_every and state.global_step % args.eval_every == 0:
                    score = demo.evaluate(model, self.tok, self.skill)
                    print(f"  [{self.skill}] step {state.global_step}: {score}%", flush=True)

        cfg = SFTConfig(
            output_dir=f"/tmp/bench-demo-{skill}",
            max_steps=plan.max_steps,
            per_device_train_batch_size=plan.batch_size,
            learning_rate=plan.learning_rate,
            lr_scheduler_type=plan.lr_scheduler,
            warmup_steps=plan.warmup_ratio,
            max_length=plan.seq_len,
            report_to="none",
            logging_steps=10,
            use_cpu=True,
            save_strategy="no",
            eval_strategy="no",
            seed=plan.seed,
            disable_tqdm=True,
            activation_checkpointing=False,
            bf16=False,
        )
        lora = LoraConfig(
            r=plan.r,
            lora_alpha=plan.alpha,
            lora_dropout=plan.dropout,
            target_modules="all-linear",
            task_type="CAUSAL_LM",
        )
        trainer = SFTTrainer(
            model=model,
            args=cfg,
            train_dataset=train,
            processing_class=tok,
            peft_config=lora,
            callbacks=[Every(skill, tok)],
        )
        t, c = time.time(), time.process_time()
        trainer.train()
        t_train, c_train = time.time() - t, time.process_time() - c
        t = time.time()
        after = demo.evaluate(trainer.model, tok, skill)
        t_after = time.time() - t
        total = time.time() - t0
        print(
            f"{skill}: base {base}% -> adapter {after}% (+{after - base:.1f} points); wall: load {t_load:.0f}s, "
            f"base eval {t_base:.0f}s, train {t_train:.0f}s ({plan.max_steps} steps, cpu {c_train:.0f}s), "
            f"adapter eval {t_after:.0f}s, total {total:.0f}s; load average {os.getloadavg()[0]:.1f} "
            f"on {os.cpu_count()} cores",
            flush=True,
        )


if __name__ == "__main__":
    main()
