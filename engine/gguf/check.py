"""The proof of an export: llama.cpp answers the job's held-out prompts as the adapter does.

An exported file can load and still be wrong in ways no loader notices: a lost chat
template, an end-of-turn token that never stops generation, Q/K rows in the wrong RoPE
order. So after every export the file is loaded by llama.cpp itself (llama-cpp-python),
which answers the job's held-out prompts greedily, applying the chat template stored in
the file; the model as the product runs it (PEFT, transformers) answers the same prompts
the way the job's own evaluation does. `agreement` is the share of identical answers;
`exact_match` is llama.cpp's held-out exact match, to read beside the job's. When most
answers differ, the first differing token of the first differing answer says where.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.data.dataset import build_datasets
from engine.errors import UserError
from engine.evaluate import textmetrics
from engine.evaluate.heldout import Judge
from engine.train.run import load_base

FLAG_BELOW = 50.0  # agreement (%) under which a file is flagged rather than shipped silently


@dataclass
class HeldOut:
    prompts: list  # per row: the chat messages before the answer, or a plain prompt string
    references: list[str]
    answers: list[str]  # the product's own greedy answers (PEFT adapter, or the fine-tuned model)
    max_new_tokens: int
    system: str | None  # the system prompt every row shares, if they share one
    tokenizer: object = field(repr=False)


def held_out(plan, job_dir, method: str) -> HeldOut | None:
    """The job's held-out prompts and the product's answers to them; None when it held out none."""
    job_dir = Path(job_dir)
    model, tokenizer = _product_model(plan, job_dir, method)
    _, eval_ds = build_datasets(plan, tokenizer)
    if eval_ds is None:
        return None
    judge = Judge(plan, eval_ds, tokenizer, job_dir / ".gguf-check", report=lambda event: None)
    if not judge.rows:
        return None
    # The job's evaluation generates this way (batched, left-padded, its own answer length),
    # so these are the answers behind the job's exact match.
    answers = judge._generate(model, None, None)
    prompts = list(eval_ds.select(range(len(answers)))["prompt"])
    systems = {p[0]["content"] if isinstance(p, list) and p and p[0]["role"] == "system" else None for p in prompts}
    system = systems.pop() if len(systems) == 1 else None
    return HeldOut(
        prompts,
        [r["reference"] for r in judge.rows[: len(answers)]],
        answers,
        judge._max_new_tokens(),
        system,
        tokenizer,
    )


def _product_model(plan, job_dir: Path, method: str):
    if method == "full":
        from transformers import AutoModelForCausalLM, AutoTokenizer

        return AutoModelForCausalLM.from_pretrained(job_dir), AutoTokenizer.from_pretrained(job_dir)
    from peft import PeftModel

    base, tokenizer = load_base(plan, for_training=False)
    return PeftModel.from_pretrained(base, str(job_dir)), tokenizer


def llama_cpp_answers(model_file, held: HeldOut, lora_file=None) -> list[str]:
    """llama.cpp's greedy answers to the held-out prompts, with the chat template from the file."""
    try:
        from llama_cpp import Llama
    except ImportError as exc:
        raise UserError(
            "gguf",
            f"the check needs llama-cpp-python, which did not import ({exc}); install it with "
            "`pip install 'lorapilot[gguf]'`",
        ) from None
    # Half the cores: llama.cpp's threads spin at every barrier, and on a busy machine a thread per
    # core turned a seconds-long check into many minutes.
    llm = Llama(
        model_path=str(model_file),
        lora_path=str(lora_file) if lora_file else None,
        n_ctx=2048,
        n_threads=max(1, min(8, (os.cpu_count() or 2) // 2)),
        seed=0,
        verbose=False,
    )
    answers = []
    try:
        for prompt in held.prompts:
            # not streamed, so each call returns one response dict
            if isinstance(prompt, str):
                text: Any = llm.create_completion(prompt, max_tokens=held.max_new_tokens, temperature=0.0)
                answers.append(text["choices"][0]["text"].strip())
            else:
                chat: Any = llm.create_chat_completion(
                    messages=prompt, max_tokens=held.max_new_tokens, temperature=0.0
                )
                answers.append((chat["choices"][0]["message"]["content"] or "").strip())
    finally:
        llm.close()
    return answers


def compare(file: Path, held: HeldOut, answers: list[str], seconds: float) -> dict:
    """The record of one checked file: agreement, exact match and, when flagged, what differs."""
    same = sum(a == b for a, b in zip(held.answers, answers))
    record: dict[str, Any] = {
        "file": str(file),
        "rows": len(answers),
        "agreement": round(100.0 * same / len(answers), 1) if answers else None,
        "exact_match": textmetrics.scores(answers, held.references)["exact_match"] if answers else None,
        "product_exact_match": textmetrics.scores(held.answers, held.references)["exact_match"] if answers else None,
        "seconds": round(seconds, 1),
    }
    record["flagged"] = record["agreement"] is not None and record["agreement"] < FLAG_BELOW
    differ = next((i for i, (a, b) in enumerate(zip(held.answers, answers)) if a != b), None)
    if differ is not None:
        record["first_difference"] = first_difference(held.tokenizer, held.answers[differ], answers[differ], differ)
    return record


def first_difference(tokenizer, ours: str, theirs: str, row: int) -> str:
    a = tokenizer(ours, add_special_tokens=False)["input_ids"]
    b = tokenizer(theirs, add_special_tokens=False)["input_ids"]
    k = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))

    def said(ids):
        return repr(tokenizer.decode(ids[k : k + 1])) if k < len(ids) else "the end"

    return f"row {row + 1}, token {k + 1}: PEFT says {said(a)}, llama.cpp says {said(b)}"


def check(model_file, held: HeldOut, lora_file=None) -> dict:
    start = time.monotonic()
    answers = llama_cpp_answers(model_file, held, lora_file)
    return compare(Path(lora_file or model_file), held, answers, time.monotonic() - start)
