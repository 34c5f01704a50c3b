"""Where a job's wall time goes, phase by phase (issue 10, section 4).

Runs one job the way the worker does (`engine.train.run.train` on a plan) in this
process, with each phase's function wrapped in a timer: imports, model load, data
preparation, estimate, base evaluation, trainer set-up (tokenization), the training loop,
adapter evaluation, saving and artifacts. Prints one row per phase and its share.

    .venv/bin/python bench/profile_job.py                 # the CPU demo (ticket skill)
    .venv/bin/python bench/profile_job.py --steps 10
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
from pathlib import Path

T0 = time.time()
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
PHASES: list[tuple[str, float]] = []


def timed(owner, name: str, label: str) -> None:
    fn = getattr(owner, name)

    @functools.wraps(fn)
    def wrapper(*a, **kw):
        start = time.time()
        try:
            return fn(*a, **kw)
        finally:
            PHASES.append((label, time.time() - start))

    setattr(owner, name, wrapper)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--skill", default="ticket")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--home", default=None, help="LORAPILOT_HOME (default: a new temporary one)")
    args = parser.parse_args(argv)
    if args.home:
        os.environ["LORAPILOT_HOME"] = args.home
    else:
        import tempfile

        os.environ.setdefault("LORAPILOT_HOME", tempfile.mkdtemp(prefix="profile-job-"))
    from engine.data import demo
    from engine.model import default_model

    default_model.default_model_dir()  # the one-time conversion is not a job's cost
    start = time.time()
    import torch  # noqa: F401
    import trl  # noqa: F401

    from engine.estimate import combined
    from engine.train import artifacts, run

    PHASES.append(("imports (torch, transformers, trl, peft)", time.time() - start))
    timed(run, "load_base", "model load")
    import engine.data.dataset as dataset_mod

    timed(dataset_mod, "build_datasets", "data preparation")
    timed(run, "_evaluate_skill", "skill evaluation (base, then adapter)")
    timed(trl.SFTTrainer, "__init__", "trainer set-up (tokenization)")
    timed(trl.SFTTrainer, "train", "training loop (incl. evaluations, checkpoints)")
    timed(trl.SFTTrainer, "save_model", "save adapter")
    for name in ("write_plan", "write_metrics_csv", "write_loss_png", "write_model_card"):
        timed(artifacts, name, "artifacts")

    plan = demo.default_plan(args.skill)
    if args.steps:
        plan = plan.updated(max_steps=args.steps)
    t = time.time()
    est = combined.estimate(plan)
    PHASES.append(("estimate", time.time() - t))
    t = time.time()
    result = run.train(plan, Path(os.environ["LORAPILOT_HOME"]) / "profile-out")
    total = time.time() - start
    rows: dict[str, float] = {}
    for label, seconds in PHASES:
        rows[label] = rows.get(label, 0.0) + seconds
    print(f"plan: {plan.max_steps} steps, dtype {est.dtype}; estimate said {est.time.seconds:.0f} s of training")
    for label, seconds in rows.items():
        print(f"{label:48s} {seconds:7.1f} s  {seconds / total:5.1%}")
    accounted = sum(rows.values())
    print(f"{'other (worker-side glue)':48s} {total - accounted:7.1f} s  {(total - accounted) / total:5.1%}")
    print(f"{'total (imports to artifacts)':48s} {total:7.1f} s; scores base {result.base_score} -> "
          f"adapter {result.adapter_score}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
