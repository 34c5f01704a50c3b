"""Handlers of the wizard's first three steps and of launch: plain functions of values.

Each returns what the page shows (HTML, figures, values); a `UserError` becomes a
styled notice, never a traceback. ui/wizard.py wires them to controls; tests call
them directly.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import uuid
from pathlib import Path

from engine import paths, units
from engine.data.dataset import check_data
from engine.data.demo import SKILLS
from engine.data.ref import DatasetRef
from engine.errors import UserError
from engine.model import availability
from engine.model.catalog import find_gpu, list_gpus, list_models
from engine.model.introspect import resolve
from engine.plan import DIFFICULTIES
from jobs.dispatcher import submit
from ui.web import charts, html

UPLOAD_TYPES = [".jsonl", ".json", ".csv", ".parquet", ".txt"]

DIFFICULTY_CHOICES = [(f"{d.title}: {d.description}", d.name) for d in DIFFICULTIES.values()]
# What the data teaches (the plan's `objective`), in plain words; the example shows the layout each needs.
OBJECTIVE_QUESTION = "What does your data teach?"
OBJECTIVE_CHOICES = [
    ("Answers: each example shows the right answer", "sft"),
    ("Preferences: each example pairs a better and a worse answer (DPO)", "dpo"),
    ("Preferences, learning the better answer too, without a reference model (ORPO)", "orpo"),
]
OBJECTIVE_HELP = (
    '<div class="lp-hint" id="objective-help"><b>Answers</b> teach by example: the model learns to write the '
    'answer you give (<code>{"prompt": "Printer jammed", "completion": "[HIGH] printer"}</code>). '
    "<b>Preferences</b> teach by comparison: for one prompt you give an answer you like and one you do not, and "
    'the model learns to lean towards the first (<code>{"prompt": "Printer jammed", "chosen": "Sorry '
    'about that, we will fix it today.", "rejected": "Not my problem."}</code>). Use preferences when '
    "a good answer is easier to recognise than to write, such as tone, politeness or safety. DPO compares against "
    "the model as it was; ORPO learns the better answer and the preference at once.</div>"
)
HARDWARE = [("A GPU from the list", "gpu"), ("I know my GPU's memory", "vram"), ("No GPU: train on this CPU", "cpu")]


def max_upload_mb() -> int:
    return int(os.environ.get("LORAPILOT_MAX_UPLOAD_MB") or 200)


def default_model() -> str:
    """The model the wizard starts with; LORAPILOT_DEFAULT_MODEL lets tests and demos pick another."""
    return os.environ.get("LORAPILOT_DEFAULT_MODEL", "").strip() or "default"


# --- step 1: base model ----------------------------------------------------------------


def catalog_choices() -> list[tuple[str, str]]:
    return [(f"{m.name} ({m.params_b:g}B)", m.key) for m in list_models()]


def catalog_cards() -> str:
    try:
        return html.model_cards(list_models())
    except Exception as exc:  # a broken catalog must not take the page down
        return html.error_notice(exc)


def model_facts(spec: str) -> tuple[str, bool]:
    """(HTML of the architecture facts or the error, ok)."""
    spec = (spec or "").strip()
    if not spec:
        return html.notice("Type a catalog name, a hub id, a local folder or a .gguf file.", "warn"), False
    try:
        info = resolve(spec)
        weights = availability.weights(spec)
    except Exception as exc:
        return html.error_notice(exc), False
    heads = f"{info.heads} query / {info.kv_heads} key-value" if info.kv_heads != info.heads else str(info.heads)
    rows = [
        (
            "Source",
            {
                "default": "embedded default (SmolLM2-135M-Instruct)",
                "catalog": "catalog (offline config)",
                "hub": "Hugging Face hub",
                "local": "local folder",
                "gguf": "GGUF file",
            }.get(info.source, info.source),
        ),
        ("Architecture", info.architecture),
        ("Parameters", f"{units.human_count(info.total_params)} ({info.total_params:,})"),
        ("Layers × hidden", f"{info.layers} × {info.hidden}"),
        ("Attention heads", heads),
        ("MLP width", info.intermediate),
        ("Vocabulary", f"{info.vocab:,}" + (" (tied embeddings)" if info.tied_embeddings else "")),
        ("Context", f"{info.max_position:,} tokens" if info.max_position else "unknown"),
        ("Adapter targets", ", ".join(info.target_names)),
    ]
    if info.extra.get("card"):  # a catalog name: which checkpoint it names, which one the card describes
        rows.insert(
            1,
            (
                "Checkpoint",
                f"{info.extra['hub_id']} ({info.extra['variant']}); the catalog card "
                f"describes the {info.extra['card']}",
            ),
        )
    # where the weights are comes first: a model that cannot be trained here is said so before its numbers
    where = html.notice(weights.message, "ok" if weights.can_train else "warn")
    return where + html.notice(f"Found {spec}.", "ok") + html.facts_table(rows), True


# --- step 2: task and data -------------------------------------------------------------


def skill_choices() -> list[tuple[str, str]]:
    return [(s.title, name) for name, s in SKILLS.items()]


def objective_of(found_format: str | None, current: str) -> str:
    """The objective the checked data calls for: pairs need a preference objective, answers sft."""
    if found_format == "preference" and current == "sft":
        return "dpo"
    if found_format not in (None, "preference") and current != "sft":
        return "sft"
    return current


def skill_description(name: str | None) -> str:
    try:
        skill = SKILLS[name]
    except KeyError:
        return ""
    return f'<div class="lp-hint">{html.escape(skill.description)}</div>'


def safe_upload(path: str | None) -> str:
    """Copy an upload into $LORAPILOT_HOME/uploads under a sanitised, unique name."""
    if not path:
        raise UserError("dataset", "no file was uploaded; choose a JSONL, JSON, CSV, Parquet or TXT file")
    src = Path(path)
    size_mb, limit = src.stat().st_size / 1024**2, max_upload_mb()
    if size_mb > limit:
        raise UserError(
            "dataset",
            f"{src.name} is {size_mb:.0f} MB; the limit is {limit} MB (set LORAPILOT_MAX_UPLOAD_MB to raise it)",
        )
    suffix = src.suffix.lower()
    if suffix not in UPLOAD_TYPES:
        raise UserError(
            "dataset",
            f"{src.name}: '{suffix or 'no extension'}' files are not accepted; "
            "use .jsonl, .json, .csv, .parquet or .txt",
        )
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", src.stem).strip("._")[:60] or "data"
    dest = paths.subdir("uploads") / f"{uuid.uuid4().hex[:8]}-{stem}{suffix}"
    shutil.copyfile(src, dest)
    return str(dest)


def data_source(kind: str, skill: str | None, upload: str | None) -> str:
    if kind == "demo":
        if not skill:
            raise UserError("dataset", "pick a demo skill, or choose 'My own file'")
        return str(DatasetRef.demo(skill))
    return safe_upload(upload)


# The engine's hints name the CLI's --columns flag; the wizard has no column mapping, so it says
# what the wizard offers instead: rename the file's columns and upload it again.
_CLI_HINTS = (
    (
        re.compile(r"; or map yours with --columns, e\.g\. [^;]*$"),
        "; rename your file's columns to one of these layouts (e.g. instruction and output, or prompt and "
        "completion) and upload it again",
    ),
    (re.compile(r" \(rename with --columns field=column\)"), " (rename that column in your file and upload it again)"),
)


def wizard_words(text: str) -> str:
    for pattern, words in _CLI_HINTS:
        text = pattern.sub(words, text)
    return text


def check_data_view(kind: str, skill: str | None, upload: str | None, model: str, seq_len: int = 512) -> dict:
    """The data check as the page shows it. Keys: dataset, rows, lengths, ok, summary, histogram, examples."""
    out = {
        "dataset": None,
        "rows": None,
        "lengths": None,
        "ok": False,
        "examples": "",
        "histogram": charts.empty("Token lengths", "Check the data to see token lengths", 280),
    }
    source = None
    try:
        source = data_source(kind, skill, upload)

        report = check_data(source, model=(model or "default").strip(), seq_len=int(seq_len or 512))
    except Exception as exc:
        if isinstance(exc, UserError) and source and upload:  # name the user's file, not our stored copy
            exc = UserError(exc.field, exc.message.replace(Path(source).name, Path(upload).name))
        if isinstance(exc, UserError):
            exc = UserError(exc.field, wizard_words(exc.message))
        out["summary"] = html.error_notice(exc)
        return out
    out.update(
        dataset=source,
        rows=report.rows,
        ok=bool(report.ok),
        lengths=tuple(report.token_lengths) or None,
        label_share=report.label_share,  # the estimate at submit uses both (jobs.dispatcher.validate)
        format=report.format,
    )
    if report.errors():  # training would refuse this data: the wizard stops here, Review says data is missing
        out.update(dataset=None, rows=None, lengths=None, label_share=None)
    out["summary"] = data_summary(report, Path(upload).name if upload and kind != "demo" else None)
    hist = report.histogram
    out["histogram"] = charts.token_histogram(
        hist["edges"], hist["counts"], int(seq_len or 512), report.truncated_share
    )
    out["examples"] = "".join(f'<pre class="lp-example">{html.escape(e)}</pre>' for e in report.examples[:3])
    return out


def data_summary(report, shown_name: str | None = None) -> str:
    name = shown_name or DatasetRef.parse(report.source).label
    facts = html.stat_tiles(
        {
            "format": str(report.format),
            "rows": f"{report.rows:,}",
            "empty": str(report.empty_rows),
            "duplicates": str(report.duplicate_rows),
            "cut at seq_len": f"{100 * (report.truncated_share or 0):.1f}%",
        }
    )
    parts = []
    if report.problems:
        first = report.problems[0]
        parts.append(
            html.notice(
                f"{len(report.problems)} problem(s) in {name}. First: "
                f"{first.where(report.row_unit)}, {first.field}: {wizard_words(first.message)}",
                "error",
                title="Data problems:",
            )
        )
        rows = [(p.where(report.row_unit), p.field, wizard_words(p.message)) for p in report.problems[:50]]
        parts.append(html.table(["Row", "Field", "Problem"], rows, cls="lp-table lp-problems"))
    else:
        parts.append(html.notice(f"{name}: {report.rows:,} rows in {report.format} format, no problems found.", "ok"))
    if report.preference:  # pairs: how many, and each side's length against seq_len
        parts.append(html.notice(pair_line(report), "info", title="Preference pairs:"))
    if not report.eos_ok and report.eos_message:
        parts.append(html.notice(report.eos_message, "warn", title="End of answer:"))
    return "".join(parts) + facts


def pair_line(report) -> str:
    pref = report.preference
    sides = "; ".join(
        f"{side} {pref[side].get('mean', 0):.0f} tokens on average (max {pref[side].get('max', 0)}), "
        f"{pref['over_seq_len'].get(side, 0)} cut at seq_len {report.seq_len}"
        for side in ("chosen", "rejected")
        if pref.get(side)
    )
    return (
        f"{pref['pairs']:,} pairs, {pref['identical']} with identical answers, {pref['empty_sides']} with an "
        f"empty side; prompts {pref.get('prompt', {}).get('mean', 0):.0f} tokens on average; {sides}."
    )


# --- step 3: hardware ------------------------------------------------------------------


def gpu_choices() -> list[tuple[str, str]]:
    return [(f"{g.name} ({g.memory_gb:g} GiB)", g.name) for g in list_gpus() if g.memory_gb]


def detect_hardware() -> tuple[str, str | None, float | None]:
    """('gpu', name, None) when nvidia-smi names a catalog GPU, ('vram', None, GB), or ('cpu', ...).

    Uses nvidia-smi rather than torch so the page loads without importing torch.
    """
    if not shutil.which("nvidia-smi"):
        return "cpu", None, None
    try:
        line = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.splitlines()[0]
        name, mem = [s.strip() for s in line.split(",")[:2]]
    except Exception:
        return "cpu", None, None

    try:
        return "gpu", find_gpu(name.replace("NVIDIA", "")).name, None
    except UserError:
        return "vram", None, round(float(mem) / 1024, 1)


def hardware_context(kind: str, gpu: str | None, budget_gb: float | None) -> dict:
    if kind == "cpu":
        return {"gpu": "cpu", "budget_gb": None}
    if kind == "gpu":
        if not gpu:
            raise UserError("gpu", "pick a GPU from the list, or give its memory in GB")
        return {"gpu": gpu, "budget_gb": None}
    if not budget_gb or float(budget_gb) <= 0:
        raise UserError("budget_gb", "give the GPU's memory in GB (e.g. 24)")
    return {"gpu": None, "budget_gb": float(budget_gb)}


# --- step 5: launch --------------------------------------------------------------------


def launch(plan, anyway: bool = False) -> tuple[int | None, str]:
    """Submit the plan; (job id, notice). The job row is the truth from here on."""
    try:
        job = submit(plan, anyway=anyway)
    except Exception as exc:
        return None, html.error_notice(exc)
    return job.id, html.notice(f"Job {job.id} queued: {job.name}.", "ok")
