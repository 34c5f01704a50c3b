"""What composing two demo-skill adapters keeps: linear, cat and ties against each source alone.

Takes two library adapters with demo skills (e.g. from `python app.py demo --skill ticket` and
`--skill isodate`), composes them with weights 0.5/0.5 (and 1/1) per combination, and scores
base, each source alone and each composition on each skill's held-out split (exact match, %).
Base and sources are scored once; the compositions are saved as library entries.

    python bench/bench_retention.py ADAPTER_A ADAPTER_B [--combinations linear,cat,ties] [--weights 0.5,0.5]
"""

import argparse
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
    ap.add_argument("--rows", type=int, default=None, help="score only the first N held-out rows (a busy machine)")
    args = ap.parse_args()

    from engine.adapters import retention
    from jobs import library, workbench

    weights = [float(w) for w in args.weights.split(",")]
    sources = [library.find(args.a), library.find(args.b)]
    host = workbench.host_for(sources)
    t0 = time.time()
    scores = {}
    for s in sources:
        scores[("base", s.skill)] = retention.score(host, None, s.skill, args.rows)
        scores[(s.name, s.skill)] = retention.score(host, s.name, s.skill, args.rows)
    for key, value in scores.items():
        print(f"  {key[0]} on {key[1]}: {value}%", flush=True)  # a long run leaves figures as it goes
    mixes = []
    for combination in args.combinations.split(","):
        name = f"{sources[0].name}_{sources[1].name}_{combination}_{'-'.join(f'{w:g}' for w in weights)}"
        try:
            entry = library.find(name)
        except Exception:  # not made yet
            entry = workbench.compose([s.id for s in sources], weights, combination, name)
        host = workbench.host_for([*sources, entry])
        for s in sources:
            scores[(combination, s.skill)] = retention.score(host, entry.name, s.skill, args.rows)
            print(f"  {combination} on {s.skill}: {scores[(combination, s.skill)]}%", flush=True)
        mixes.append(combination)
    print(
        f"held-out exact match (%) on {args.rows or 'all'} rows per skill, weights {args.weights}, "
        f"{time.time() - t0:.0f} s of scoring",
        flush=True,
    )
    head = ["skill", "base", "alone", *mixes]
    print("  " + "  ".join(h.ljust(10) for h in head))
    for s in sources:
        row = [s.skill, scores[("base", s.skill)], scores[(s.name, s.skill)], *[scores[(m, s.skill)] for m in mixes]]
        print("  " + "  ".join(str(v).ljust(10) for v in row))


if __name__ == "__main__":
    main()
