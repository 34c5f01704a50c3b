"""Training data: check it before a job exists, and build the datasets the trainer uses.

Both paths share one conversion (`_examples`), so what `check-data` reports is what
training sees: the model's own chat template (ChatML when it has none), and an EOS
token at the end of every answer — verified on the tokenized example, because a tuned
model that never stops is the failure users meet most often.

Rows go to TRL's SFTTrainer in its conversational prompt/completion form (loss on the
answer only), or as `text` for plain documents; preference pairs go to DPOTrainer /
ORPOTrainer as prompt/chosen/rejected in the same form; see `build_datasets`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from pydantic import BaseModel

from engine.data import demo, pairs
from engine.data.chat import ends_with_eos, ensure_chat_template, render
from engine.data.formats import (
    FORMATS,
    Rows,
    dataset_of,
    detect_format,
    read_source,
    to_messages,
    to_pair,
    to_text,
)
from engine.data.ref import DatasetRef
from engine.errors import UserError, one_of
from engine.evaluate.split import holdout_rows
from engine.model import availability, catalog, default_model

MAX_PROBLEMS = 50  # more than this and the report lists the count, not each one
MAX_STAT_ROWS = 5000  # token statistics on a sample for very large files


class Problem(BaseModel):
    row: int | None  # 1-based line (JSONL/TXT) or data row (JSON/CSV/Parquet); None = whole file
    field: str
    message: str
    level: str = "error"  # error (blocks training) or warning

    def where(self, unit: str = "row") -> str:
        """'line 3', or 'the whole file' for a problem no single row has (never 'row None')."""
        return f"{unit} {self.row}" if self.row is not None else "the whole file"

    def text(self, unit: str = "row") -> str:
        where = f"{unit} {self.row}: " if self.row is not None else ""
        return f"{where}{self.field}: {self.message}"


class DataReport(BaseModel):
    source: str
    format: str
    rows: int
    empty_rows: int = 0
    duplicate_rows: int = 0
    problems: list[Problem] = []
    more_problems: int = 0
    row_unit: str = "row"
    seq_len: int = 512
    token_lengths: list[int] = []
    label_share: float = 1.0  # of those tokens, the share the loss is on (the answers, for chat-like rows)
    stats: dict[str, float] = {}
    truncated_share: float = 0.0
    histogram: dict[str, list] = {"edges": [], "counts": []}
    examples: list[str] = []
    eos_ok: bool = True
    eos_message: str = ""
    ok: bool = True
    # preference pairs: pairs, identical, empty_sides, and token-length stats of prompt, chosen,
    # rejected with how many of each side run past seq_len (engine.data.pairs)
    preference: dict = {}

    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.level == "error"]

    def raise_if_bad(self) -> None:
        errors = self.errors()
        if errors:
            p = errors[0]
            name = DatasetRef.parse(self.source).label
            where = f"{name} {self.row_unit} {p.row}: " if p.row is not None else f"{name}: "
            more = f" (and {len(errors) - 1 + self.more_problems} more problems)" if len(errors) > 1 else ""
            raise UserError("dataset", f"{where}{p.field}: {p.message}{more}")

    def to_json(self) -> dict:
        return self.model_dump(exclude={"token_lengths"})


# --- public entry points ------------------------------------------------------------------
def load_records(source: str) -> list[dict]:
    """Records of a file, hub dataset or 'demo:NAME' (its train split)."""
    return list(read_source(source))


def load_tokenizer(model: str | None):
    """The tokenizer of `model` ('default', a local folder, a .gguf file, a catalog key or hub id)."""
    from transformers import AutoTokenizer

    spec = (model or "default").strip()
    try:
        if spec == "default":
            folder = default_model.default_model_dir()
            tokenizer = AutoTokenizer.from_pretrained(folder)
        elif Path(spec).expanduser().is_dir():
            tokenizer = AutoTokenizer.from_pretrained(Path(spec).expanduser())
        elif spec.lower().endswith(".gguf") and Path(spec).expanduser().is_file():
            path = Path(spec).expanduser()
            tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        else:
            tokenizer = AutoTokenizer.from_pretrained(_hub_id(spec))
    except UserError:
        raise
    except Exception as exc:
        availability.require(spec)  # weights not here and no way to get them: say that, not the OSError
        raise UserError(
            "model",
            f"could not load the tokenizer of '{spec}' ({exc.__class__.__name__}); "
            "give 'default', a local model folder, a .gguf file, or a hub id that is "
            "available offline",
        ) from None
    return ensure_chat_template(tokenizer)


def check_data(
    source: str,
    model: str | None = None,
    seq_len: int = 512,
    data_format: str = "auto",
    columns: dict | None = None,
    tokenizer=None,
    min_rows: int = 2,
    objective: str | None = None,
) -> DataReport:
    """Validate a dataset for `model`; file-level failures raise UserError, row problems are reported.
    `objective` (the plan's, when known): the data must suit it (pairs for dpo/orpo, answers for sft)."""
    columns = dict(columns or {})
    rows = read_source(source)
    fmt = _resolve_format(rows, data_format, columns)
    if tokenizer is None:
        tokenizer = load_tokenizer(model)
    else:
        ensure_chat_template(tokenizer)
    examples, rendered, problems, empty = _examples(rows, fmt, columns, tokenizer)
    report = DataReport(
        source=str(source), format=fmt, rows=len(rows), row_unit=rows.unit, seq_len=seq_len, empty_rows=empty
    )

    # Duplicates train the model twice on the same thing: worth knowing, not blocking.
    seen: dict[str, int] = {}
    for i, record in enumerate(rows):
        key = hashlib.sha1(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()
        if key in seen:
            report.duplicate_rows += 1
            problems.append(
                Problem(
                    row=rows.rownums[i], field="row", level="warning", message=f"duplicates {rows.unit} {seen[key]}"
                )
            )
        else:
            seen[key] = rows.rownums[i]

    good = [t for t in rendered if t is not None]
    if objective is not None:
        problems[:0] = [Problem(**p) for p in pairs.objective_problems(objective, fmt)]
    if fmt == "preference":
        report.preference, found = pairs.summary(tokenizer, examples, _empty_sides(problems), seq_len, MAX_STAT_ROWS)
        problems[:0] = [Problem(**p) for p in found if p.get("level", "error") == "error"]
        problems += [Problem(**p) for p in found if p.get("level") == "warning"]
    if len(rows) < min_rows:
        problems.insert(0, Problem(row=None, field="rows", message=_too_few(rows, min_rows)))
    if good:
        if fmt == "preference":  # a pair trains as its longer side (the batch pads both sides to it)
            lengths, report.label_share = pairs.lengths(tokenizer, examples[:MAX_STAT_ROWS])
            good = [pairs.shown(tokenizer, e) for e in examples[:3]]
        else:
            lengths = _token_lengths(tokenizer, good[:MAX_STAT_ROWS])
            report.label_share = _label_share(tokenizer, examples[:MAX_STAT_ROWS], lengths)
        report.token_lengths = lengths
        report.stats = _stats(lengths)
        report.histogram = _histogram(lengths, seq_len)
        over = sum(n > seq_len for n in lengths)
        report.truncated_share = round(over / len(lengths), 4)
        if over == len(lengths):
            problems.insert(
                0,
                Problem(
                    row=None,
                    field="seq_len",
                    message=f"every example is longer than seq_len "
                    f"{seq_len} tokens (shortest {min(lengths)}); raise --seq-len to at least "
                    f"{_round_up(report.stats['p95'])} or shorten the examples",
                ),
            )
        elif over and fmt != "preference":  # pairs say it per side (engine.data.pairs)
            problems.append(
                Problem(
                    row=None,
                    field="seq_len",
                    level="warning",
                    message=f"{over} of {len(lengths)} examples are longer than {seq_len} tokens "
                    "and will be cut (losing their end, EOS included)",
                )
            )
        report.examples = good[:3]
        report.eos_ok, report.eos_message = _eos_verdict(tokenizer, examples)

    errors = [p for p in problems if p.level == "error"]
    report.more_problems = max(0, len(problems) - MAX_PROBLEMS)
    report.problems = (errors + [p for p in problems if p.level != "error"])[:MAX_PROBLEMS]
    report.ok = not errors and report.eos_ok
    return report


def build_datasets(plan, tokenizer):
    """(train, eval | None) as `datasets.Dataset`s in a form TRL 1.16's SFTTrainer takes.

    Chat-like rows become conversational prompt/completion pairs: `prompt` is every
    message before the last answer and `completion` is that answer, so SFTTrainer
    applies the model's template and (completion_only_loss, its default for this form)
    trains on the answer and its end-of-turn token only. Plain text rows become `text`.
    The eval split is the demo's own held-out split for demo:NAME, else `plan.eval_split`
    of the rows, drawn with `plan.seed` and sized by engine.evaluate.split (none when too few rows).
    """
    from datasets import Dataset

    source = dataset_of(plan)
    ensure_chat_template(tokenizer)
    rows = read_source(source)
    fmt = _resolve_format(rows, plan.data_format, dict(plan.columns))
    examples, _, problems, _ = _examples(rows, fmt, dict(plan.columns), tokenizer)
    problems[:0] = [Problem(**p) for p in pairs.objective_problems(plan.objective, fmt)]
    if fmt == "preference":  # a file whose pairs are all the same teaches nothing
        _, found = pairs.summary(tokenizer, examples, 0, plan.seq_len, 0)
        problems[:0] = [Problem(**p) for p in found if p.get("level", "error") == "error"]
    report = DataReport(source=plan.dataset, format=fmt, rows=len(rows), row_unit=rows.unit, problems=problems)
    report.raise_if_bad()

    eval_rows: list[dict] = []
    ref = DatasetRef.parse(plan.dataset)
    if ref.is_demo and plan.eval_split > 0:
        test = read_source(str(demo.dataset_path(ref.skill, "test")))
        eval_rows, _, _, _ = _examples(test, fmt, {}, tokenizer)
        train_rows = examples
    elif held := set(holdout_rows(len(examples), plan.eval_split, plan.seed)):
        eval_rows = [e for i, e in enumerate(examples) if i in held]
        train_rows = [e for i, e in enumerate(examples) if i not in held]
    else:
        train_rows = examples
    if not train_rows:
        raise UserError("dataset", f"{plan.dataset} has no usable training examples")
    return Dataset.from_list(train_rows), (Dataset.from_list(eval_rows) if eval_rows else None)


# --- shared conversion ----------------------------------------------------------------------
def _resolve_format(rows: Rows, data_format: str, columns: dict) -> str:
    if data_format in (None, "", "auto"):
        return detect_format(rows, columns)
    if data_format not in FORMATS:
        raise UserError("data_format", f"got {data_format!r}; accepted: auto, {one_of(FORMATS)}")
    return data_format


def _examples(rows: Rows, fmt: str, columns: dict, tokenizer):
    """Trainer rows, their full rendered text (None when unusable), problems, empty count."""
    examples, rendered, problems, empty = [], [], [], 0
    as_strings = _needs_string_form(tokenizer) if fmt != "text" else False
    for i, record in enumerate(rows):
        row = rows.rownums[i]
        try:
            if fmt == "preference":
                example, full = pairs.example(
                    tokenizer, *to_pair(record, columns), as_strings, lambda m: _pair(tokenizer, m, as_strings)
                )
                if pairs.identical(example):
                    problems.append(
                        Problem(
                            row=row,
                            field=columns.get("rejected", "rejected"),
                            level="warning",
                            message="is the same as chosen: this pair teaches nothing",
                        )
                    )
                examples.append(example)
                rendered.append(full)
                continue
            if fmt == "text":
                text = to_text(record, columns)
                if not text.strip():
                    raise ValueError(columns.get("text", "text"), "is empty")
                text = text if text.endswith(tokenizer.eos_token) else text + tokenizer.eos_token
                examples.append({"text": text})
                rendered.append(text)
                continue
            messages = to_messages(record, fmt, columns)
            answer = messages[-1]["content"]
            if not answer.strip():
                raise ValueError(_answer_field(fmt, columns), "is empty: there is no answer to learn")
            if not any(m["content"].strip() for m in messages[:-1]) and len(messages) > 1:
                raise ValueError(_prompt_field(fmt, columns), "is empty: there is no prompt to answer")
            example, full = _pair(tokenizer, messages, as_strings)
            examples.append(example)
            rendered.append(full)
        except ValueError as exc:
            field, message = exc.args if len(exc.args) == 2 else ("row", str(exc))
            if "is empty" in message:
                empty += 1
            problems.append(Problem(row=row, field=field, message=message + _accepted_hint(fmt, columns, message)))
            rendered.append(None)
    return examples, rendered, problems, empty


def _pair(tokenizer, messages: list[dict], as_strings: bool):
    prompt, answer = messages[:-1], messages[-1:]
    full = render(tokenizer, messages)
    if not as_strings:
        return {"prompt": prompt, "completion": answer}, full
    # The template does not end answers with EOS: render the strings ourselves and put it there.
    prompt_text = render(tokenizer, prompt, add_generation_prompt=True)
    completion = full[len(prompt_text) :].rstrip() if full.startswith(prompt_text) else answer[0]["content"]
    if not completion.endswith(tokenizer.eos_token):
        completion += tokenizer.eos_token
    if tokenizer.bos_token and prompt_text.startswith(tokenizer.bos_token) and _adds_bos(tokenizer):
        prompt_text = prompt_text[len(tokenizer.bos_token) :]  # the tokenizer adds it again
    return {"prompt": prompt_text, "completion": completion}, prompt_text + completion


def _needs_string_form(tokenizer) -> bool:
    probe = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]
    try:
        return not ends_with_eos(tokenizer, render(tokenizer, probe))
    except Exception:
        return True


def _adds_bos(tokenizer) -> bool:
    ids = tokenizer("a")["input_ids"]
    return bool(ids) and ids[0] == tokenizer.bos_token_id


def _eos_verdict(tokenizer, examples: list[dict]) -> tuple[bool, str]:
    eos = tokenizer.eos_token
    if not eos:
        return False, "the tokenizer has no EOS token, so a tuned model would never stop; use a model that has one"
    sample = examples[0]
    if "chosen" in sample:  # a pair: both sides render like an answer
        sample = {"prompt": sample["prompt"], "completion": sample["chosen"]}
    if "text" in sample:
        text = sample["text"]
    elif isinstance(sample["prompt"], str):
        text = sample["prompt"] + sample["completion"]
    else:
        text = render(tokenizer, sample["prompt"] + sample["completion"])
    if not ends_with_eos(tokenizer, text):
        return False, f"examples do not end with the EOS token {eos}; the tuned model would not learn to stop"
    how = (
        "the chat template ends each answer with it"
        if "prompt" in sample and not isinstance(sample["prompt"], str)
        else "it is appended to every example"
    )
    return True, f"every example ends with EOS {eos} ({how}), so the tuned model learns to stop"


def _empty_sides(problems: list[Problem]) -> int:
    return sum(1 for p in problems if p.field in ("chosen", "rejected") and p.message.startswith("is empty"))


def _too_few(rows: Rows, min_rows: int) -> str:
    """Too few examples, naming the rows there are, so the user sees which part of the file counted."""
    found = (
        "no examples"
        if not rows
        else f"{len(rows)} example{'s' * (len(rows) != 1)} "
        f"({rows.unit}{'s' * (len(rows) != 1)} {', '.join(map(str, rows.rownums))})"
    )
    return f"has {found}; at least {min_rows} are needed (training rows plus the held-out split)"


def _answer_field(fmt: str, columns: dict) -> str:
    return {
        "alpaca": columns.get("output", "output"),
        "prompt_completion": columns.get("completion", "completion"),
        "messages": columns.get("messages", "messages"),
    }.get(fmt, "text")


def _prompt_field(fmt: str, columns: dict) -> str:
    return {
        "alpaca": columns.get("instruction", "instruction"),
        "prompt_completion": columns.get("prompt", "prompt"),
        "messages": columns.get("messages", "messages"),
    }.get(fmt, "text")


def _accepted_hint(fmt: str, columns: dict, message: str) -> str:
    if not message.startswith("is missing"):
        return ""
    need = {
        "alpaca": "instruction, output (input optional)",
        "prompt_completion": "prompt, completion",
        "messages": "messages",
        "text": "text",
        "preference": "prompt, chosen, rejected",
    }[fmt]
    return f"; the {fmt} format needs {need} (rename with --columns field=column)"


# --- statistics -------------------------------------------------------------------------------
def _token_lengths(tokenizer, texts: list[str]) -> list[int]:
    encoded = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return [len(ids) for ids in encoded]


def _label_share(tokenizer, examples: list[dict], lengths: list[int]) -> float:
    """Share of the tokens the loss is on: the answers (plus their end of turn) of prompt/completion
    examples, which TRL trains on alone; every token of plain text."""
    answers = [e["completion"] for e in examples if "completion" in e]
    if not answers or len(answers) != len(lengths):
        return 1.0
    texts = [a if isinstance(a, str) else a[-1]["content"] for a in answers]
    end = [0 if isinstance(a, str) else 1 for a in answers]  # the template's end-of-turn token
    counts = [len(ids) + e for ids, e in zip(tokenizer(texts, add_special_tokens=False)["input_ids"], end)]
    return round(min(1.0, sum(counts) / max(1, sum(lengths))), 4)


def _stats(lengths: list[int]) -> dict[str, float]:
    s = sorted(lengths)

    def pct(p):
        return float(s[min(len(s) - 1, int(round(p * (len(s) - 1))))])

    return {
        "min": float(s[0]),
        "mean": round(sum(s) / len(s), 1),
        "p50": pct(0.5),
        "p95": pct(0.95),
        "max": float(s[-1]),
        "total": float(sum(s)),
    }


def _histogram(lengths: list[int], seq_len: int, bins: int = 10) -> dict[str, list]:
    """Equal-width bins from the shortest to the longest example; edges[i] <= n < edges[i+1]."""
    low, top = min(lengths), max(lengths)
    width = max(1, -(-(top - low + 1) // bins))
    bins = min(bins, -(-(top - low + 1) // width))
    edges = [low + i * width for i in range(bins + 1)]
    counts = [0] * bins
    for n in lengths:
        counts[min(bins - 1, (n - low) // width)] += 1
    return {"edges": edges, "counts": counts, "seq_len": [seq_len]}


def _round_up(n: float) -> int:
    step = 64
    return int(-(-int(n) // step) * step)


def _hub_id(spec: str) -> str:
    """A catalog name maps to the hub id it names; anything else is taken as a hub id."""
    return catalog.hub_id_of(spec)
