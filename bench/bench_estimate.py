"""Estimate latency: import, first call (meta build) and later calls, for catalog models.

python bench/bench_estimate.py
"""

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    t = time.perf_counter()
    from engine.estimate.combined import estimate
    from engine.plan import TrainingPlan
    from engine.units import human_bytes

    print(f"import engine.estimate: {1000 * (time.perf_counter() - t):.0f} ms (torch/transformers load lazily)")
    from engine.model.introspect import warm_up

    t = time.perf_counter()
    warm_up()
    print(
        f"warm_up(): torch + transformers modelling imports + the default model, once per process: "
        f"{time.perf_counter() - t:.2f} s"
    )
    for model in ["llama-3.3-70b", "qwen2.5-72b", "mixtral-8x7b", "default"]:
        plan = TrainingPlan.build(model=model, method="qlora", gpu="H100", grad_ckpt=True, dataset_rows=10_000)
        t = time.perf_counter()
        e = estimate(plan)
        first = time.perf_counter() - t
        later = []
        for i in range(20):
            p = plan.updated(r=8 * (1 + i % 4), batch_size=1 + i % 3)
            t = time.perf_counter()
            estimate(p)
            later.append(time.perf_counter() - t)
        print(
            f"{model:15s} first {first:.2f} s   later median {1000 * statistics.median(later):.1f} ms "
            f"max {1000 * max(later):.1f} ms   [{e.trainable_params:,} trainable, "
            f"{human_bytes(e.memory.device_bytes)}, {e.time.seconds / 3600:.2f} h]"
        )


if __name__ == "__main__":
    main()
