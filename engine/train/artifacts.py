"""What a finished (or stopped) run leaves in its folder besides the weights.

plan.yaml (the exact plan, re-runnable), metrics.csv (one row per logged step),
loss.png (train and eval loss over steps) and README.md (a model card: what was
trained, how, on what, how well, and how to load it).
"""

from __future__ import annotations

import csv
from pathlib import Path

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


def write_model_card(plan, out_dir: Path, result, rows: list[dict], base_source: str,
                     train_rows: int | None = None, eval_rows: int | None = None) -> Path:
    """README.md in the Hugging Face model-card spirit, in plain words."""
    out_dir = Path(out_dir)
    name = plan.name or out_dir.name
    adapter = plan.method != "full"
    last_eval = next((r["eval_loss"] for r in reversed(rows) if r.get("eval_loss") is not None), None)
    method = {"lora": "LoRA", "qlora": "QLoRA (4-bit NF4 base, double quantization)", "full": "full fine-tune"}[plan.method]
    lines = [
        "---",
        f"base_model: {plan.model if plan.model != 'default' else 'HuggingFaceTB/SmolLM2-135M-Instruct'}",
        "library_name: peft" if adapter else "library_name: transformers",
        "tags: [lora-pilot, sft" + (", lora" if adapter else "") + "]",
        "---",
        "",
        f"# {name}",
        "",
        f"Trained with LoRA Pilot: a {method} of `{plan.model}` "
        + (f"(loaded from `{base_source}`)" if base_source != plan.model else "") + ".",
        "",
        "## Settings",
        "",
        "| setting | value |",
        "|---|---|",
    ]
    settings = [("method", plan.method)]
    if adapter:
        settings += [("rank r", plan.r), ("alpha", plan.alpha), ("dropout", plan.dropout), ("targets", plan.targets),
                     ("bias", plan.bias), ("DoRA", plan.use_dora), ("rsLoRA", plan.use_rslora)]
    settings += [("sequence length", plan.seq_len), ("batch size", plan.batch_size),
                 ("gradient accumulation", plan.grad_accum),
                 ("epochs / max steps", plan.max_steps if plan.max_steps else plan.epochs),
                 ("learning rate", plan.learning_rate), ("schedule", plan.lr_scheduler),
                 ("gradient checkpointing", plan.grad_ckpt), ("optimizer", plan.optimizer), ("seed", plan.seed)]
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
        "- measured peak memory: " + (f"{result.peak_bytes / 2**20:.1f} MiB ({result.device})" if result.peak_bytes
                                      else "not measured (no step ran in the run that wrote these files)"),
    ]
    if result.base_score is not None or result.adapter_score is not None:
        lines.append(f"- held-out exact match: base {_fmt(result.base_score, 3)}% → tuned {_fmt(result.adapter_score, 3)}%")
    lines += ["", "The loss curve is in `loss.png`, every logged step in `metrics.csv`, the full plan in `plan.yaml`.", ""]
    lines += ["## How to load", "", "```python"]
    if adapter:
        lines += [
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            "from peft import PeftModel",
            "",
            f'base = AutoModelForCausalLM.from_pretrained("{base_source}")',
            'model = PeftModel.from_pretrained(base, "path/to/this/folder")',
            'tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder")',
            "# optional, for serving without adapter overhead:",
            "model = model.merge_and_unload()",
        ]
    else:
        lines += [
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            "",
            'model = AutoModelForCausalLM.from_pretrained("path/to/this/folder")',
            'tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder")',
        ]
    lines += ["```", ""]
    path = out_dir / "README.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
