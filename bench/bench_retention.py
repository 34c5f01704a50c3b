"""Compose with retention on two demo-skill adapters: how long the playground's Compose takes, and what it keeps.

Takes two library adapters with demo skills (e.g. from `python app.py demo --skill ticket` and
`--skill json`), and for each combination runs the playground's Compose handler with "score skill
retention" ticked, as a click would: the first one cold (no base in memory yet), the next ones on the
loaded base with the sources' figures already known. Target (issue 25): <= 45 s on the demo pair.

With --reference it then scores the first composition's table the way retention did before issue 25,
one `demo.evaluate` pass (HF generate, batches of 24) per figure, on the same host, and prints both
tables: the figures must be the same.

    python bench/bench_retention.py ADAPTER_A ADAPTER_B [--combinations linear,cat,ties] [--weights 0.5,0.5]
        [--reference] [--threads N]

The machine load is printed beside the figures: on a shared machine they are upper bounds.
"""

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--combinations", default="linear,cat,ties")
    ap.add_argument("--weights", default="0.5,0.5")
    ap.add_argument("--reference", action="store_true", help="also score the first table one pass per figure")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    args = ap.parse_args()

    import torch

    from engine.adapters import host as host_mod
    from engine.adapters import retention
    from engine.data import demo
    from jobs import library, workbench
    from ui.web import playground

    if args.threads:
        torch.set_num_threads(args.threads)
    sources = [library.find(args.a), library.find(args.b)]
    stamp = time.strftime("%H%M%S")
    runs = []
    for combination in args.combinations.split(","):
        name = f"{sources[0].name}_{sources[1].name}_{combination}_{stamp}"
        density = 0.5 if combination in ("ties", "dare_ties") else None
        start, said = time.perf_counter(), []
        for message, _ in playground.compose(
            [s.name for s in sources], args.weights, combination, density, name, True
        ):
            said.append((time.perf_counter() - start, message))
        total = time.perf_counter() - start
        if "Skill retention" not in said[-1][1]:
            sys.exit(f"{combination}: no table; the handler said {said[-1][1][-400:]}")
        scoring = next((t for t, m in said if "scoring" in m.lower() or "nothing left" in m), total)
        rows = workbench.retention(name)  # figures now memoized: the same table, at once
        runs.append((combination, total, scoring, rows))
        print(f"  {combination}: {total:.1f} s (compose {scoring:.1f} s, then retention)", flush=True)

    load = os.getloadavg()
    print(
        f"machine: {os.cpu_count()} cores, load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}, "
        f"torch threads {torch.get_num_threads()}"
    )
    decoded = ", ".join(f"{adapter or 'the base'} on {skill}" for adapter, skill in retention.SCORED)
    print(f"base loads {dict(host_mod.BASE_LOADS)}; figures decoded: {decoded or 'none'}")
    print(f"{'combination':<12}{'seconds':>9}  target <= 45 s (the first one, cold)")
    for combination, total, _, _ in runs:
        print(f"{combination:<12}{total:>9.1f}")
    print("held-out exact match (%)")
    head = ["skill", "base", "alone", *[c for c, *_ in runs]]
    print("  " + "  ".join(h.ljust(10) for h in head))
    for i, s in enumerate(sources):
        first = runs[0][3][i]
        row = [s.skill, first["base"], first["alone"], *[r[3][i]["composed"] for r in runs]]
        print("  " + "  ".join(str(v).ljust(10) for v in row))

    if args.reference:
        composed = library.find(f"{sources[0].name}_{sources[1].name}_{runs[0][0]}_{stamp}")
        host = workbench.host_for([composed, *sources])
        start, mismatches = time.perf_counter(), []
        for i, s in enumerate(sources):
            for key, adapter in (("base", None), ("alone", s.name), ("composed", composed.name)):
                with host.using(adapter) as model:
                    figure = float(demo.evaluate(model, host.tokenizer, s.skill))
                if figure != runs[0][3][i][key]:
                    mismatches.append(f"{key} on {s.skill}: {figure} one pass each vs {runs[0][3][i][key]}")
        print(
            f"reference, one demo.evaluate pass per figure (6 passes, the scoring before issue 25): "
            f"{time.perf_counter() - start:.1f} s; "
            + ("the same figures" if not mismatches else "differs: " + "; ".join(mismatches))
        )


if __name__ == "__main__":
    main()
