"""Reading training data and recognising its layout.

Files (JSONL, JSON, CSV, Parquet, TXT), hub dataset ids and built-in demo skills all
become a list of dict records with the 1-based row number each came from, so that every
message can point at the line to fix. Five layouts are understood: chat `messages`,
Alpaca (`instruction`/`input`/`output`), `prompt`/`completion`, plain `text`, and
`preference` pairs (TRL's `prompt`/`chosen`/`rejected`, each side plain text or a
conversation; `prompt` may be left out when both sides are conversations that share it);
a column mapping renames a user's columns onto those field names.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
from pathlib import Path

from engine.data import demo
from engine.data.ref import DatasetRef
from engine.errors import UserError, one_of

FORMATS = ("messages", "alpaca", "prompt_completion", "text", "preference")
EXTENSIONS = (".jsonl", ".json", ".csv", ".parquet", ".txt")
ROLES = ("system", "user", "assistant")
# ShareGPT-style conversations use from/value with these role names.
_SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
    "model": "assistant",
}
ACCEPTED = (
    "'messages' (a list of {role, content}), 'instruction' + 'output' (+ optional 'input'), "
    "'prompt' + 'completion', 'text', or 'prompt' + 'chosen' + 'rejected' (preference pairs)"
)


class Rows(list):
    """A list of records that also remembers each record's 1-based row (line) number."""

    def __init__(self, records=(), rownums=None, unit="row"):
        super().__init__(records)
        self.rownums = list(rownums) if rownums is not None else list(range(1, len(self) + 1))
        self.unit = unit  # "line" for JSONL/TXT, "row" otherwise; used in messages


# --- sources ---------------------------------------------------------------------------
def no_dataset() -> UserError:
    """The one wording of "no training data given", wherever that is found out."""
    return UserError(
        "dataset", "no training data given; give a file (" + one_of(EXTENSIONS) + "), a hub dataset id or demo:NAME"
    )


def dataset_of(plan) -> str:
    """The plan's training data, which every step past the data check needs: no_dataset() without it."""
    if not plan.dataset:
        raise no_dataset()
    return plan.dataset


def read_source(source: str) -> Rows:
    """Records from a file, 'demo:NAME' or a hub dataset id; UserError names file and row."""
    if not source or not str(source).strip():
        raise no_dataset()
    source = str(source).strip()
    ref = DatasetRef.parse(source)
    if ref.skill is not None:  # demo:NAME
        return read_file(demo.dataset_path(ref.skill, "train"))
    path = Path(source).expanduser()
    if path.exists():
        if path.is_dir():
            raise UserError("dataset", f"{path} is a folder; give one data file ({one_of(EXTENSIONS)})")
        return read_file(path)
    if path.suffix.lower() in EXTENSIONS or source.startswith((".", "/", "~")):
        raise UserError("dataset", f"file {source} does not exist")
    return read_hub(source)


def read_file(path: Path) -> Rows:
    path = Path(path)
    ext = path.suffix.lower()
    if ext not in EXTENSIONS:
        raise UserError("dataset", f"{path.name}: unknown file type '{ext or 'none'}'; accepted: {one_of(EXTENSIONS)}")
    raw = path.read_bytes()
    if not raw.strip():
        raise UserError("dataset", f"{path.name} is empty; it needs at least 2 examples")
    if ext == ".parquet":
        return _read_parquet(path)
    text = _decode(path, raw)
    if ext == ".jsonl":
        return _read_jsonl(path, text)
    if ext == ".json":
        return _read_json(path, text)
    if ext == ".csv":
        return _read_csv(path, text)
    return _read_txt(text)


def _decode(path: Path, raw: bytes) -> str:
    if b"\x00" in raw[:8192]:
        raise UserError(
            "dataset",
            f"{path.name} looks like a binary file, not text; accepted: {one_of(EXTENSIONS)} "
            "(JSONL/JSON/CSV/TXT as UTF-8 text)",
        )
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise UserError(
            "dataset",
            f"{path.name} line {line}: not UTF-8 text (byte 0x{raw[exc.start]:02x}); "
            "save the file as UTF-8 and try again",
        ) from None


def _read_jsonl(path: Path, text: str) -> Rows:
    records, rownums = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(
                "dataset",
                f"{path.name} line {number}: not valid JSON ({exc.msg} at column "
                f"{exc.colno}); each line must be one JSON object such as "
                '{"prompt": "...", "completion": "..."}',
            ) from None
        if not isinstance(value, dict):
            raise UserError(
                "dataset", f"{path.name} line {number}: expected a JSON object {{...}}, got {type(value).__name__}"
            )
        records.append(value)
        rownums.append(number)
    return Rows(records, rownums, unit="line")


def _read_json(path: Path, text: str) -> Rows:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(
            "dataset",
            f"{path.name} line {exc.lineno}: not valid JSON ({exc.msg}); expected a list "
            "of objects, or use JSONL with one object per line",
        ) from None
    if isinstance(value, dict):  # {"data": [...]} or {"train": [...]} wrappers
        lists = [v for v in value.values() if isinstance(v, list)]
        if len(lists) != 1:
            raise UserError("dataset", f"{path.name}: expected a JSON list of objects [{{...}}, ...]")
        value = lists[0]
    if not isinstance(value, list):
        raise UserError("dataset", f"{path.name}: expected a JSON list of objects [{{...}}, ...]")
    for i, item in enumerate(value, start=1):
        if not isinstance(item, dict):
            raise UserError(
                "dataset", f"{path.name} row {i}: expected a JSON object {{...}}, got {type(item).__name__}"
            )
    return Rows(value)


def _read_csv(path: Path, text: str) -> Rows:
    try:
        dialect = csv.Sniffer().sniff(text[:4096], delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel
    reader = csv.DictReader(io.StringIO(text), dialect=dialect)
    if not reader.fieldnames:
        raise UserError("dataset", f"{path.name}: the CSV has no header row; the first row must name the columns")
    records = []
    try:
        for row in reader:
            if None in row:
                raise UserError(
                    "dataset",
                    f"{path.name} row {reader.line_num - 1}: more values than the "
                    f"{len(reader.fieldnames)} header columns",
                )
            records.append({k: (v if v is not None else "") for k, v in row.items()})
    except csv.Error as exc:
        raise UserError("dataset", f"{path.name} row {reader.line_num - 1}: {exc}") from None
    return Rows(records)


def _read_parquet(path: Path) -> Rows:
    try:
        import pyarrow.parquet as pq

        table = pq.read_table(path)
    except Exception as exc:
        raise UserError("dataset", f"{path.name}: not a readable Parquet file ({exc.__class__.__name__})") from None
    return Rows(table.to_pylist())


def _read_txt(text: str) -> Rows:
    # Blocks separated by blank lines are one example each; a file without blank lines
    # is one example per line.
    lines = text.splitlines()
    records, rownums, start = [], [], 0
    block: list[str] = []
    for number, line in enumerate(lines + [""], start=1):
        if line.strip():
            if not block:
                start = number
            block.append(line)
        elif block:
            records.append({"text": "\n".join(block)})
            rownums.append(start)
            block = []
    return Rows(records, rownums, unit="line")


def read_hub(dataset_id: str) -> Rows:
    try:
        import datasets

        ds = datasets.load_dataset(dataset_id, split="train")
    except Exception as exc:
        raise UserError(
            "dataset",
            f"could not load hub dataset '{dataset_id}' ({exc.__class__.__name__}: "
            f"{str(exc).splitlines()[0][:160] if str(exc) else 'no detail'}). Without network access "
            f"give a local file ({one_of(EXTENSIONS)}) or demo:NAME",
        ) from None
    return Rows(ds.to_list())


# --- layouts ---------------------------------------------------------------------------
def _get(record: dict, field: str, columns: dict):
    return record.get(columns.get(field, field))


def _has(record: dict, field: str, columns: dict) -> bool:
    return columns.get(field, field) in record


def detect_format(records, columns: dict | None = None) -> str:
    """The layout of `records` (messages|alpaca|prompt_completion|text), from the first rows."""
    columns = columns or {}
    if not records:
        raise UserError("dataset", "has no rows; it needs at least 2 examples")
    votes: dict[str, int] = {}
    for record in list(records)[:20]:
        fmt = _format_of(record, columns)
        if fmt:
            votes[fmt] = votes.get(fmt, 0) + 1
    if not votes:
        found = ", ".join(map(str, records[0].keys())) or "none"
        raise UserError(
            "data_format",
            f"could not recognise the layout: the columns are {found}; accepted: "
            f"{ACCEPTED}; or map yours with --columns, e.g. instruction=question,output=answer",
        )
    return max(votes, key=lambda fmt: votes[fmt])


def _format_of(record: dict, columns: dict) -> str | None:
    # first: a pair also has a `prompt`, which would otherwise read as half of prompt/completion
    if _has(record, "chosen", columns) or _has(record, "rejected", columns):
        return "preference"
    if _has(record, "messages", columns) or "conversations" in record:
        return "messages"
    if _has(record, "instruction", columns) and _has(record, "output", columns):
        return "alpaca"
    if _has(record, "prompt", columns) and _has(record, "completion", columns):
        return "prompt_completion"
    if _has(record, "text", columns):
        return "text"
    return None


def to_messages(record: dict, fmt: str, columns: dict | None = None) -> list[dict] | None:
    """The record as chat messages; None for the text format (see `to_text`).

    Raises ValueError(field, message) for a record that does not fit the layout; the
    caller turns it into a problem with the row number.
    """
    columns = columns or {}
    if fmt == "text":
        return None
    if fmt == "messages":
        raw = _get(record, "messages", columns)
        if raw is None and "conversations" in record:
            raw = record["conversations"]
        return _chat(raw, columns.get("messages", "messages"))
    if fmt == "alpaca":
        instruction = _text(record, "instruction", columns)
        extra = _get(record, "input", columns)
        extra = "" if extra is None else str(extra)
        prompt = instruction + ("\n\n" + extra if extra.strip() else "")
        messages = [
            {"role": "user", "content": prompt},
            {"role": "assistant", "content": _text(record, "output", columns)},
        ]
    elif fmt == "prompt_completion":
        messages = [
            {"role": "user", "content": _text(record, "prompt", columns)},
            {"role": "assistant", "content": _text(record, "completion", columns)},
        ]
    else:
        raise ValueError("data_format", f"unknown format {fmt!r}; accepted: {one_of(FORMATS)}")
    system = _get(record, "system", columns)
    if isinstance(system, str) and system.strip():
        messages.insert(0, {"role": "system", "content": system})
    return messages


def to_pair(record: dict, columns: dict | None = None) -> tuple[list[dict], list[dict], list[dict]]:
    """A preference record as (prompt messages, chosen answer, rejected answer) chat messages.

    TRL's conventions: `prompt` is text or a list of messages; `chosen` and `rejected` are text
    or conversations. Conversations without a `prompt` carry it themselves (every message before
    the last), which must then be the same on both sides. Raises ValueError(field, message).
    """
    columns = columns or {}
    sides = {}
    for side in ("chosen", "rejected"):
        name = columns.get(side, side)
        if name not in record or record[name] is None:
            raise ValueError(name, f"is missing (the {side} answer of the pair)")
        value = record[name]
        if isinstance(value, str) and value.lstrip().startswith("["):
            with contextlib.suppress(json.JSONDecodeError):  # CSV/Parquet cells may hold a conversation as JSON
                value = json.loads(value)
        sides[side] = (
            _chat(value, name)
            if isinstance(value, list)
            else [{"role": "assistant", "content": _text(record, side, columns)}]
        )
    chosen, rejected = sides["chosen"], sides["rejected"]
    if _has(record, "prompt", columns):
        raw = _get(record, "prompt", columns)
        prompt = (
            _prompt_chat(raw, columns.get("prompt", "prompt"))
            if isinstance(raw, list)
            else [{"role": "user", "content": _text(record, "prompt", columns)}]
        )
        prompt = prompt + chosen[:-1]  # a side that carries turns of its own keeps them
        if chosen[:-1] != rejected[:-1]:
            raise ValueError(columns.get("rejected", "rejected"), "continues a different conversation than chosen")
    else:
        if len(chosen) < 2 or chosen[:-1] != rejected[:-1]:
            raise ValueError(
                columns.get("prompt", "prompt"),
                "is missing: give a prompt field, or chosen and "
                "rejected as conversations that start with the same prompt",
            )
        prompt = chosen[:-1]
    system = _get(record, "system", columns)
    if isinstance(system, str) and system.strip() and not any(m["role"] == "system" for m in prompt):
        prompt = [{"role": "system", "content": system}] + prompt
    return prompt, chosen[-1:], rejected[-1:]


def _prompt_chat(raw, field: str) -> list[dict]:
    """A prompt given as messages: like `_chat`, but it ends with the user's turn, not an answer."""
    return _chat(raw + [{"role": "assistant", "content": ""}], field)[:-1]


def to_text(record: dict, columns: dict | None = None) -> str:
    return _text(record, "text", columns or {})


def _text(record: dict, field: str, columns: dict) -> str:
    name = columns.get(field, field)
    if name not in record:
        raise ValueError(name, f"is missing (the {field} field)")
    value = record[name]
    if value is None:
        raise ValueError(name, "is empty (null)")
    if isinstance(value, (dict, list)):
        raise ValueError(name, f"must be text, got a {type(value).__name__}")
    return str(value)


def _chat(raw, field: str) -> list[dict]:
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)  # CSV/Parquet cells may hold the list as a JSON string
        except json.JSONDecodeError:
            raise ValueError(field, "must be a list of {role, content} objects") from None
    if not isinstance(raw, list) or not raw:
        raise ValueError(field, "must be a non-empty list of {role, content} objects")
    messages = []
    for i, m in enumerate(raw, start=1):
        if not isinstance(m, dict):
            raise ValueError(field, f"message {i} must be an object with role and content")
        role = m.get("role", _SHAREGPT_ROLES.get(str(m.get("from", "")).lower()))
        content = m.get("content", m.get("value"))
        if role not in ROLES:
            raise ValueError(field, f"message {i} has role {role!r}; accepted: {one_of(ROLES)}")
        if not isinstance(content, str):
            raise ValueError(field, f"message {i} ({role}) has no text 'content'")
        messages.append({"role": role, "content": content})
    if messages[-1]["role"] != "assistant":
        raise ValueError(field, "the last message must be from the assistant (the answer to learn)")
    return messages
