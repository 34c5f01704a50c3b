"""Preference pairs: one prompt, a chosen answer and a rejected one (TRL's DPO/ORPO convention).

engine.data.dataset reads the rows and calls here for what is particular to pairs: the
trainer's row (conversational `prompt`/`chosen`/`rejected`, or rendered strings where the
template does not end answers with EOS), the checks a pair needs (an empty side, both sides
the same, whether the data suits the plan's objective), and the figures the data check shows
(pairs, identical pairs, empty sides, the token length of each side against seq_len).

A pair trains as two sequences, prompt + chosen and prompt + rejected, padded to the longer
one in one batch; so the length that sizes memory is a pair's longer side.
"""

from __future__ import annotations

from engine.data.chat import render

PREFERENCE_OBJECTIVES = ("dpo", "orpo")


def example(
    tokenizer, prompt: list[dict], chosen: list[dict], rejected: list[dict], as_strings: bool, pair_fn
) -> tuple[dict, str]:
    """(the trainer's row, the chosen side's full text); ValueError(field, message) for an unusable pair.

    `pair_fn(messages)` is engine.data.dataset's prompt/completion conversion, so a side is rendered
    exactly as an SFT answer would be (EOS included)."""
    if not any(m["content"].strip() for m in prompt):
        raise ValueError("prompt", "is empty: there is no prompt to answer")
    for name, side in (("chosen", chosen), ("rejected", rejected)):
        if not side[-1]["content"].strip():
            raise ValueError(name, f"is empty: a pair needs both answers (the {name} one is blank)")
    if not as_strings:
        return {"prompt": prompt, "chosen": chosen, "rejected": rejected}, render(tokenizer, prompt + chosen)
    good, full = pair_fn(prompt + chosen)
    bad, _ = pair_fn(prompt + rejected)
    return {"prompt": good["prompt"], "chosen": good["completion"], "rejected": bad["completion"]}, full


def identical(e: dict) -> bool:
    return e["chosen"] == e["rejected"]


def objective_problems(objective: str, fmt: str) -> list[dict]:
    """An error (as engine.data.dataset.Problem fields) when the data and the plan's objective do not go together."""
    if objective in PREFERENCE_OBJECTIVES and fmt != "preference":
        return [
            dict(
                row=None,
                field="objective",
                message=f"{objective} learns from preference pairs, but the data "
                f"is in the {fmt} format; give rows with prompt, chosen and rejected, or use objective sft",
            )
        ]
    if objective == "sft" and fmt == "preference":
        return [
            dict(
                row=None,
                field="objective",
                message="the data holds preference pairs (chosen/rejected); "
                "use objective dpo or orpo to learn from them",
            )
        ]
    return []


def texts(tokenizer, e: dict) -> tuple[str, str, str]:
    """(prompt text with the generation prompt, prompt + chosen, prompt + rejected) as the trainer sees them."""
    if isinstance(e["prompt"], str):
        return e["prompt"], e["prompt"] + e["chosen"], e["prompt"] + e["rejected"]
    prompt = render(tokenizer, e["prompt"], add_generation_prompt=True)
    return prompt, render(tokenizer, e["prompt"] + e["chosen"]), render(tokenizer, e["prompt"] + e["rejected"])


def _side_lengths(tokenizer, examples: list[dict]) -> tuple[list[int], list[int], list[int]]:
    """Token lengths of prompt, prompt + chosen and prompt + rejected, per pair."""
    rendered = [texts(tokenizer, e) for e in examples]
    if not rendered:
        return [], [], []
    columns = list(zip(*rendered))
    prompt, chosen, rejected = (
        [len(ids) for ids in tokenizer(list(c), add_special_tokens=False)["input_ids"]] for c in columns
    )
    return prompt, chosen, rejected


def lengths(tokenizer, examples: list[dict]) -> tuple[list[int], float]:
    """Per pair the longer side's length, and the share of all tokens that are answers (the loss's)."""
    prompt, chosen, rejected = _side_lengths(tokenizer, examples)
    longest = [max(c, r) for c, r in zip(chosen, rejected)]
    total = sum(chosen) + sum(rejected)
    answers = total - 2 * sum(prompt)
    return longest, round(min(1.0, max(answers, 1) / max(total, 1)), 4)


def shown(tokenizer, e: dict) -> str:
    """One pair as the data check shows it: the prompt once, then each answer."""
    prompt, chosen, rejected = texts(tokenizer, e)
    return (
        f"{prompt}\n--- chosen ---\n{chosen[len(prompt) :] if chosen.startswith(prompt) else chosen}"
        f"\n--- rejected ---\n{rejected[len(prompt) :] if rejected.startswith(prompt) else rejected}"
    )


def _stats(values: list[int]) -> dict:
    if not values:
        return {}
    s = sorted(values)
    return {
        "min": s[0],
        "mean": round(sum(s) / len(s), 1),
        "p95": s[min(len(s) - 1, round(0.95 * (len(s) - 1)))],
        "max": s[-1],
    }


def summary(tokenizer, examples: list[dict], empty_sides: int, seq_len: int, max_rows: int) -> tuple[dict, list[dict]]:
    """The pair figures of the data check, and its problems (as Problem fields): an error when every pair's
    sides are the same, a warning per side that runs past seq_len. Lengths on the first `max_rows` pairs."""
    problems = []
    same = sum(identical(e) for e in examples)
    if examples and same == len(examples):
        problems.append(
            dict(
                row=None,
                field="rejected",
                message="is the same as chosen in every pair, so there is "
                "nothing to prefer; each rejected answer must differ from its chosen one",
            )
        )
    sample = examples[:max_rows]
    prompt, chosen, rejected = _side_lengths(tokenizer, sample)
    over = {"chosen": sum(n > seq_len for n in chosen), "rejected": sum(n > seq_len for n in rejected)}
    for side, n in over.items():
        if n:
            problems.append(
                dict(
                    row=None,
                    field="seq_len",
                    level="warning",
                    message=f"{n} of {len(sample)} prompt + {side} sequences are longer than {seq_len} "
                    "tokens and will be cut (their end, EOS included)",
                )
            )
    figures = {
        "pairs": len(examples),
        "identical": same,
        "empty_sides": empty_sides,
        "prompt": _stats(prompt),
        "chosen": _stats([c - p for c, p in zip(chosen, prompt)]),
        "rejected": _stats([r - p for r, p in zip(rejected, prompt)]),
        "prompt_chosen": _stats(chosen),
        "prompt_rejected": _stats(rejected),
        "over_seq_len": over,
    }
    return figures, problems
