"""Stop when learned: small simple tasks trained with and without early stopping.

Three tasks of 300 chat rows each, as a new user brings them (issue 10, section 3):
date reformatting, sentiment labels and JSON extraction, generated here from fixed
seeds with a 40-row held-out test set that never overlaps training. Each is trained
with the wizard's recommendation for a simple task on the CPU (`recommend`), once with
early stopping (the plan's default patience) and, with --compare, once with patience 0
(every epoch). Reported per run: steps, training time, wall time and held-out exact
match of the adapter (greedy, engine.data.demo.evaluate) against the base's.

    .venv/bin/python bench/bench_early_stop.py                     # all three, early stopping only
    .venv/bin/python bench/bench_early_stop.py --tasks dates --compare
Target: each task <= 3 minutes on 2 cores with the same held-out score as a full run.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TRAIN_ROWS, TEST_ROWS = 300, 40
_MONTHS = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]


def _dates(rng):
    y, m, d = rng.randint(1950, 2030), rng.randint(1, 12), rng.randint(1, 28)
    forms = [
        f"{_MONTHS[m - 1]} {d}, {y}",
        f"{d} {_MONTHS[m - 1]} {y}",
        f"{m}/{d}/{y}",
        f"{d}.{m}.{y}",
        f"{_MONTHS[m - 1][:3]} {d} {y}",
    ]
    return "Date: " + rng.choice(forms), f"{y:04d}-{m:02d}-{d:02d}"


_GOOD = ["loved", "enjoyed", "was delighted with", "would recommend", "was impressed by"]
_BAD = ["hated", "regret buying", "was disappointed by", "would not recommend", "returned"]
_ITEMS = [
    "the blender",
    "this phone",
    "the hotel",
    "the new album",
    "the jacket",
    "this laptop",
    "the restaurant",
    "the headphones",
    "the movie",
    "the sofa",
    "the game",
    "this book",
]
_WHY = ["the price", "the quality", "the service", "how it looks", "the battery", "the sound", "the delivery"]


def _sentiment(rng):
    good = rng.random() < 0.5
    verb = rng.choice(_GOOD if good else _BAD)
    text = f"I {verb} {rng.choice(_ITEMS)} because of {rng.choice(_WHY)}."
    return "Review: " + text, "positive" if good else "negative"


def _json(rng):
    from engine.data import demo

    return demo._json(rng)  # the demo's JSON extraction generator (name, age, city)


TASKS = {
    "dates": ("Rewrite the date as YYYY-MM-DD.", _dates),
    "sentiment": ("Label the review.", _sentiment),
    "json": ("Extract the person as JSON.", _json),
}


def make_task(name: str, folder: Path) -> tuple[Path, list[dict]]:
    system, gen = TASKS[name]
    rng, seen, rows = random.Random(f"bench-early-{name}"), set(), []
    while len(rows) < TRAIN_ROWS + TEST_ROWS:
        prompt, answer = gen(rng)
        if prompt not in seen:
            seen.add(prompt)
            rows.append(
                {
                    "messages": [
                        {"role": "system", "content": system},
                        {"role": "user", "content": prompt},
                        {"role": "assistant", "content": answer},
                    ]
                }
            )
    path = folder / f"{name}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows[:TRAIN_ROWS]), encoding="utf-8")
    return path, rows[TRAIN_ROWS:]


def run(name: str, data: Path, test: list[dict], patience: int, out: Path, overrides: dict | None = None) -> dict:
    from engine.advice import recommend
    from engine.data import demo
    from engine.plan import TrainingPlan
    from engine.train.run import load_base, train

    rec = recommend.recommend(
        "default",
        "simple",
        gpu="cpu",
        dataset_rows=TRAIN_ROWS,
        base=TrainingPlan.build(model="default", dataset=str(data), gpu="cpu"),
    )
    plan = rec.plan.updated(patience=patience, name=f"{name}-p{patience}", **(overrides or {}))
    skill = demo.Skill(name, name, name, test[0]["messages"][0]["content"], 24)
    start = time.time()
    marks = {}
    result = train(plan, out, report=lambda e: marks.setdefault(type(e).__name__, time.time()))  # typed events
    wall = time.time() - start
    from peft import PeftModel

    base, tok = load_base(plan, for_training=False)
    base_score = demo.evaluate(base, tok, skill, records=test) if patience else None
    model = PeftModel.from_pretrained(base, str(out))
    score = demo.evaluate(model, tok, skill, records=test)
    return {
        "task": name,
        "patience": patience,
        "steps": result.steps,
        "total_steps": result.total_steps,
        "train_s": round(wall - (marks.get("Started", start) - start), 1),
        "wall_s": round(wall, 1),
        "base_exact": base_score,
        "adapter_exact": score,
        "reason": result.stop_reason,
        "plan": {
            k: getattr(plan, k)
            for k in ("batch_size", "grad_accum", "epochs", "seq_len", "r", "learning_rate", "save_steps", "dtype")
        },
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--compare", action="store_true", help="also train every epoch (patience 0)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a field of the recommended plan (to try another setting)",
    )
    args = parser.parse_args(argv)
    overrides = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.set)}
    work = Path(tempfile.mkdtemp(prefix="bench-early-"))
    os.environ.setdefault("LORAPILOT_HOME", str(work / "home"))
    from engine.estimate import hardware
    from engine.model import default_model

    default_model.default_model_dir()
    print(f"CPU precision: {hardware.cpu_precision()[1]}", flush=True)
    for name in args.tasks.split(","):
        data, test = make_task(name, work)
        for patience in [3, 0] if args.compare else [3]:
            print(json.dumps(run(name, data, test, patience, work / f"{name}-{patience}", overrides)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
