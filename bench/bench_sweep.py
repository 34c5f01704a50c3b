"""Does a search beat the recommendation? A generated task the defaults do not fully learn.

The task: reverse the order of four words ("apple river green seven" -> "seven green river apple"),
generated here from a fixed seed, on the embedded SmolLM2-135M. The plan is the wizard's
recommendation for a simple task on the CPU; `sweep` then runs it as trial 0 and TPE variations,
ranked by held-out exact match. Reported: trial 0's and the best trial's exact match, how many
trials ran and were pruned, and the wall time.

    .venv/bin/python bench/bench_sweep.py --trials 4 [--rows 200] [--max-steps 60]
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

WORDS = (
    "apple river green seven table cloud happy stone music bread orange window quiet silver garden tiger "
    "yellow candle winter paper ocean forest little lemon rocket purple mirror castle summer planet"
).split()


def make_task(rows: int, folder: Path) -> Path:
    rng, seen, out = random.Random("bench-sweep-reverse"), set(), []
    while len(out) < rows:
        words = rng.sample(WORDS, 4)
        prompt = " ".join(words)
        if prompt in seen:
            continue
        seen.add(prompt)
        out.append(
            {
                "messages": [
                    {"role": "system", "content": "Reverse the order of the words."},
                    {"role": "user", "content": prompt},
                    {"role": "assistant", "content": " ".join(reversed(words))},
                ]
            }
        )
    path = folder / "reverse.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in out), encoding="utf-8")
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--rows", type=int, default=200)
    parser.add_argument(
        "--max-steps", type=int, default=None, help="cap every trial (the recommendation's epochs otherwise)"
    )
    args = parser.parse_args(argv)
    os.environ.setdefault("LORAPILOT_HOME", tempfile.mkdtemp(prefix="bench-sweep-"))
    from engine.advice import recommend
    from engine.plan import TrainingPlan
    from jobs import dispatcher, sweep
    from jobs.launch import resident

    data = make_task(args.rows, Path(tempfile.mkdtemp(prefix="bench-sweep-data-")))
    rec = recommend.recommend(
        "default",
        "simple",
        gpu="cpu",
        dataset_rows=args.rows,
        base=TrainingPlan.build(model="default", dataset=str(data), gpu="cpu"),
    )
    plan = rec.plan.updated(name="reverse-words-search", max_steps=args.max_steps)
    start = time.time()
    row = sweep.create(plan, trials=args.trials, metric="exact_match")
    while sweep.get(row.id).status not in ("succeeded", "failed", "cancelled", "interrupted"):
        dispatcher._reap()
        time.sleep(2)
    wall = time.time() - start
    resident.stop()  # the bench's home is temporary: its resident worker goes with it
    detail = sweep.detail(sweep.get(row.id))
    trials = detail["trials"]
    print(
        json.dumps(
            {
                "status": detail["status"],
                "trials": len(trials),
                "pruned": sum(t["state"] == "pruned" for t in trials),
                "failed": sum(t["state"] == "failed" for t in trials),
                "trial0_exact_match": trials[0]["value"],
                "best": detail["best"],
                "wall_s": round(wall, 1),
                "what_mattered": sweep.figures(sweep.get(row.id))["what_mattered"],
                "trial_list": [{k: t[k] for k in ("number", "state", "value", "params")} for t in trials],
            },
            indent=2,
        )
    )
    return 0 if detail["status"] == "succeeded" else 1


if __name__ == "__main__":
    raise SystemExit(main())
