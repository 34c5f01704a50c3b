"""Generate a small chat dataset that is not a demo skill, for a before/after run on the embedded model.

Shop orders in free words become one canonical line, "QTY x colour item":
"Could I get three blue mugs, please?" -> "3 x blue mug". A rule the base model does not
follow by itself, learnable in a few dozen LoRA steps. Seeded, so the file is the same
on every machine.

    python bench/gen_orders.py orders.jsonl [--rows 200]
"""

from __future__ import annotations

import argparse
import json
import random

NUMBERS = {
    1: "one",
    2: "two",
    3: "three",
    4: "four",
    5: "five",
    6: "six",
    7: "seven",
    8: "eight",
    9: "nine",
    10: "ten",
    12: "a dozen",
}
COLOURS = ["red", "blue", "green", "black", "white", "yellow", "grey", "pink"]
ITEMS = ["mug", "pen", "notebook", "lamp", "chair", "plate", "towel", "candle", "bottle", "basket", "pillow"]
FORMS = [
    "Could I get {n} {c} {i}, please?",
    "I'd like {n} {c} {i}.",
    "Please send {n} {c} {i}.",
    "We need {n} {c} {i} for the office.",
    "Order {n} {c} {i} for me.",
    "Can you add {n} {c} {i} to my order?",
]
SYSTEM = "Write the order as one line: QTY x colour item."


def rows(count: int, seed: int = 7) -> list[dict]:
    rng, seen, out = random.Random(seed), set(), []
    while len(out) < count:
        qty, colour, item = rng.choice(list(NUMBERS)), rng.choice(COLOURS), rng.choice(ITEMS)
        plural = item + "s" if qty != 1 else item
        prompt = rng.choice(FORMS).format(n=NUMBERS[qty], c=colour, i=plural)
        if prompt in seen:
            continue
        seen.add(prompt)
        out.append(
            {
                "messages": [
                    {"role": "system", "content": SYSTEM},
                    {"role": "user", "content": prompt},
                    {"role": "assistant", "content": f"{qty} x {colour} {item}"},
                ]
            }
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--rows", type=int, default=200)
    args = parser.parse_args()
    with open(args.out, "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in rows(args.rows))
    print(f"wrote {args.rows} rows to {args.out}")


if __name__ == "__main__":
    main()
