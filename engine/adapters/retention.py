"""Skill retention: how much of each source skill a composed adapter keeps.

For every source adapter with a known demo skill, the held-out exact match of the base,
of the source alone, and of the composition, on that skill's test split: greedy answers with
the skill's answer length, as `engine.data.demo.evaluate` scores them. Three things keep it
short:

- one pass of answers for everything still unknown: the rows of every (model, skill) pair go
  through the host in left-padded batches (engine.adapters.batch; mixed-adapter where a batch
  holds rows of two models);
- a row stops as soon as its answer can no longer equal the reference (its text so far, without
  whitespace, is not the start of the reference's): greedy decoding makes the rest of the row what
  it would have been, so its verdict is known. A base or a composition that lost a skill rambles to
  the answer length on every row; here each such row costs its prompt and a token or two;
- a figure once scored is kept, per host, keyed by the adapter's folder and the time its weights were
  written, the rows and the answer length, so a second composition of the same sources scores only
  itself. The caller may also hand in figures it knows (a training job's own, see jobs.workbench).
"""

from __future__ import annotations

import hashlib
import json
import threading
import weakref
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from engine.adapters import batch
from engine.data import demo
from engine.evaluate import split, textmetrics

# Rows decoded together: a demo split, as demo.evaluate batches it, so a pass's rows are padded alike. On a
# 2-core CPU the work is compute-bound: 48 rows at once were slower than two batches of 24, 8 or 16 no faster.
ROWS_PER_BATCH = split.DEMO_GENERATE_BATCH

SCORED: Counter[tuple[str | None, str]] = Counter()  # (adapter or None, skill) -> times its answers were decoded

_memo: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # host -> {key: percent}
_memo_lock = threading.Lock()


@dataclass(frozen=True)
class Pass:
    """One figure: `adapter` (a name loaded on the host; None: the base) on `skill`'s held-out rows."""

    adapter: str | None
    skill: str


def score(host, adapter: str | None, skill: str, rows: int | None = None) -> float:
    """Held-out exact match (%) of `adapter` (None: the base); `rows` limits the split to its first rows."""

    return scores(host, [Pass(adapter, skill)], rows)[Pass(adapter, skill)]


def scores(host, passes: list[Pass], rows: int | None = None, known: dict[Pass, float] | None = None) -> dict:
    """{pass: held-out exact match %} for each of `passes`; those in `known` or scored before on this host are
    not decoded again, the rest are decoded together."""

    found: dict[Pass, float] = {p: known[p] for p in passes if known and p in known}
    keys = {p: _key(host, p, rows) for p in passes if p not in found}
    with _memo_lock:
        memo = _memo.setdefault(host, {})
        found |= {p: memo[k] for p, k in keys.items() if k in memo}
    todo = [p for p in dict.fromkeys(passes) if p not in found]
    if todo:
        records = {skill: _records(skill, rows) for skill in {p.skill for p in todo}}
        figures = exact_matches(host, [(p.adapter, records[p.skill], demo.get(p.skill).max_new_tokens) for p in todo])
        for p, figure in zip(todo, figures):
            SCORED[(p.adapter, p.skill)] += 1
            found[p] = figure
        with _memo_lock:
            _memo.setdefault(host, {}).update({keys[p]: found[p] for p in todo})
    return found


def exact_matches(host, jobs: list[tuple[str | None, list[dict], int]]) -> list[float]:
    """Percent of rows whose greedy answer equals the reference after strip, for each (adapter, rows,
    max_new_tokens); rows are chat records (`messages`, the last one the reference), all jobs decoded together.

    The figure `demo.evaluate` gives for the same rows: the same prompts (chat template, generation prompt),
    greedy, the same answer length and end of sequence; a row stopped early is one that could not match.
    """

    tok = host.tokenizer
    requests, verdicts = [], []
    for adapter, records, max_new_tokens in jobs:
        for record in records:
            prompt = tok.apply_chat_template(record["messages"][:-1], tokenize=False, add_generation_prompt=True)
            verdict = _Verdict(record["messages"][-1]["content"])
            requests.append(
                batch.Request(
                    tok(prompt, add_special_tokens=False)["input_ids"],
                    adapter=adapter,
                    max_tokens=max_new_tokens,
                    temperature=0.0,
                    until=verdict.settled,
                )
            )
            verdicts.append(verdict)
    run = batch.HostRunner(host)
    results = []
    for start in range(0, len(requests), ROWS_PER_BATCH):
        results += run(requests[start : start + ROWS_PER_BATCH])
    for outcome in results:
        if isinstance(outcome, BaseException):
            raise outcome
    correct = [v.right(r.text) for v, r in zip(verdicts, results)]
    figures, start = [], 0
    for _, records, _ in jobs:
        right = correct[start : start + len(records)]
        figures.append(round(100.0 * sum(right) / len(records), 1) if records else 0.0)
        start += len(records)
    return figures


class _Verdict:
    """Follows one row's answer and ends the row once it cannot equal the reference."""

    def __init__(self, reference: str):
        self.reference = reference.strip()
        self.squeezed = _squeeze(self.reference)
        self.hopeless = False

    def settled(self, answer: str) -> bool:
        """True once `answer` (so far) cannot grow into the reference. Whitespace is left out of the comparison,
        as the decode may drop a space before punctuation once the next token arrives; a trailing U+FFFD is a
        character whose bytes are still coming."""
        self.hopeless = not self.squeezed.startswith(_squeeze(answer.rstrip("\ufffd")))
        return self.hopeless

    def right(self, answer: str) -> bool:
        return not self.hopeless and textmetrics.exact_match(answer, self.reference)


def _squeeze(text: str) -> str:
    return "".join(text.split())


def _records(skill: str, rows: int | None) -> list[dict]:
    records = demo.records(skill, "test")
    return records[:rows] if rows else records


def _key(host, p: Pass, rows: int | None) -> tuple:
    """What a figure depends on besides the host's base: the adapter's files, the rows, the answer length."""
    folder = host.path_of(p.adapter) if p.adapter else None
    written = max((f.stat().st_mtime_ns for f in Path(folder).glob("adapter_model.*")), default=0) if folder else 0
    records = _records(p.skill, rows)
    digest = hashlib.sha256(json.dumps(records, sort_keys=True).encode()).hexdigest()
    return (folder, written, p.skill, digest, demo.get(p.skill).max_new_tokens)


def table(
    host, composed: str, sources: list[tuple[str, str | None]], progress=None, known: dict[Pass, float] | None = None
) -> list[dict]:
    """Rows {skill, source, base, alone, composed, kept}; `sources` is [(host name, skill or None)].

    `kept` is composed / alone in percent (None when the source alone scores 0). `known` holds figures
    already scored elsewhere. `progress(text)` hears, in words, what is scored before it runs.
    """
    scored = [(name, skill) for name, skill in sources if skill]
    passes = [p for name, skill in scored for p in (Pass(name, skill), Pass(composed, skill), Pass(None, skill))]
    if progress is not None:
        progress(_plan_text(host, composed, passes, known))
    figures = scores(host, passes, known=known)
    rows = []
    for name, skill in scored:
        alone, mixed = figures[Pass(name, skill)], figures[Pass(composed, skill)]
        rows.append(
            {
                "skill": skill,
                "source": name,
                "base": figures[Pass(None, skill)],
                "alone": alone,
                "composed": mixed,
                "kept": round(100.0 * mixed / alone, 1) if alone else None,
            }
        )
    return rows


def _plan_text(host, composed: str, passes: list[Pass], known: dict[Pass, float] | None) -> str:
    """'scoring dates alone on isodate; the composition on ticket and isodate (72 held-out rows); 3 of 6 figures
    reused…': the sources alone first, then the composition, then the base."""
    with _memo_lock:
        memo = dict(_memo.get(host, {}))
    todo = [p for p in passes if not (known and p in known) and _key(host, p, None) not in memo]
    order = {"the composition": 1, "the base": 2}
    what: dict[str, list[str]] = {}
    for p in todo:
        who = "the base" if p.adapter is None else "the composition" if p.adapter == composed else f"{p.adapter} alone"
        what.setdefault(who, []).append(p.skill)
    said = "; ".join(f"{who} on {' and '.join(what[who])}" for who in sorted(what, key=lambda w: order.get(w, 0)))
    rows = sum(len(demo.records(p.skill, "test")) for p in todo)
    text = f"scoring {said} ({rows} held-out rows)" if todo else "nothing left to score"
    if len(todo) < len(passes):
        text += f"; {len(passes) - len(todo)} of {len(passes)} figures reused (scored before, or by the sources' "
        text += "training jobs)"
    return text + "…"
