"""Merge an adapter into its base: a standalone Hugging Face model folder.

The folder holds safetensors weights, config, generation config, tokenizer with its chat
template, and a model card naming base and adapter; plain
`AutoModelForCausalLM.from_pretrained(folder)` loads it and needs no PEFT. It is a model
folder like any other, so it can be the base of a new job.

A QLoRA adapter was trained against the 4-bit base as the GPU saw it: NF4 weights
dequantized to the compute precision on every forward. So the merge loads the base in
4-bit as training did, dequantizes it to the compute precision, and adds the adapter
there. Adding it to the 4-bit weights instead would re-quantize the sum, and the NF4
rounding step is larger than most of the adapter's small update: the merge would lose
much of what was learned.
"""

from __future__ import annotations

import os
import shutil
import zipfile
from pathlib import Path

from engine.adapters import folder
from engine.errors import UserError
from engine.model import introspect
from engine.plan import TrainingPlan
from engine.train.run import load_base, model_source, torch_dtype

CHECKPOINT_DTYPES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}  # config.json's name -> the plan's


def merge(
    adapter_dir, base_model: str, out_dir, adapter_name: str = "adapter", method: str = "lora", dtype: str = "auto"
) -> Path:
    """Write base + adapter as one model to `out_dir` (which must not exist yet); return it.

    `dtype` auto keeps the base checkpoint's precision (an fp32 base merges in fp32: merging in the
    training precision would round the base's own weights); a QLoRA merge is in the precision the
    adapter was trained against (the dequantized 4-bit base)."""
    import torch

    adapter_dir, out_dir = Path(adapter_dir), Path(out_dir).expanduser()
    folder.read_config(adapter_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise UserError("out", f"{out_dir} exists and is not empty; give a new folder")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype == "auto" and method != "qlora":
        dtype = CHECKPOINT_DTYPES.get(introspect.resolve(base_model).dtype, "auto")
        if dtype == "fp16" and device == "cpu":
            dtype = "fp32"  # no fp16 arithmetic on a CPU: fp32 holds every fp16 value exactly
    plan = TrainingPlan.build(
        model=base_model,
        method="qlora" if method == "qlora" else "lora",
        dtype=dtype,
        gpu=None if device == "cuda" else "cpu",
    )
    target_dtype = torch_dtype(plan, device)
    model, tokenizer = load_base(plan, for_training=False)
    if method == "qlora":
        model = model.dequantize(dtype=target_dtype)  # the weights the adapter was trained against
        if hasattr(model.config, "quantization_config"):
            delattr(model.config, "quantization_config")
    folder.check_fits_model(adapter_dir, model, base_model)

    from peft import PeftModel

    merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.merging-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        merged.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))  # the chat template travels with the tokenizer files
        write_card(
            tmp,
            base_model=base_model,
            base_source=model_source(base_model),
            adapter_dir=adapter_dir,
            adapter_name=adapter_name,
            method=method,
            dtype=str(target_dtype).removeprefix("torch."),
        )
        if out_dir.exists():
            out_dir.rmdir()  # empty (checked above)
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def write_card(
    out_dir: Path, base_model: str, base_source: str, adapter_dir: Path, adapter_name: str, method: str, dtype: str
) -> Path:
    hub_base = "HuggingFaceTB/SmolLM2-135M-Instruct" if base_model == "default" else base_model
    lines = [
        "---",
        f"base_model: {hub_base}",
        "library_name: transformers",
        "tags: [lora-pilot, merged-lora]",
        "---",
        "",
        f"# {adapter_name} (merged)",
        "",
        f"The LoRA adapter `{adapter_name}` merged into its base model `{base_model}` "
        f"(loaded from `{base_source}`), so it loads without PEFT. Made by LoRA Pilot.",
        "",
        "| | |",
        "|---|---|",
        f"| base model | `{base_model}` |",
        f"| adapter | `{adapter_name}` (from `{adapter_dir}`) |",
        f"| adapter method | {method} |",
        f"| weights precision | {dtype} |",
        "",
    ]
    if method == "qlora":
        lines += [
            "## Why the base was dequantized",
            "",
            "This adapter was trained with QLoRA: the base was stored in 4-bit NF4 and dequantized to "
            f"{dtype} on every forward pass. The merge does the same: it loads the base in 4-bit, "
            f"dequantizes it to {dtype}, and adds the adapter there. Adding the adapter to the 4-bit "
            "weights instead would round the sum back to 4 bits, and that rounding step is larger than most "
            "of the adapter's small update, so much of what was learned would be lost. The cost: this "
            f"folder is the size of a {dtype} model, not a 4-bit one (quantize it again for serving if "
            "memory is tight).",
            "",
        ]
    lines += [
        "## How to load",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        'model = AutoModelForCausalLM.from_pretrained("path/to/this/folder")',
        'tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder")',
        "```",
        "",
        "It is also a valid base for a new LoRA Pilot job: give this folder as the model.",
        "",
    ]
    path = Path(out_dir) / "README.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def zip_folder(folder: Path, target: Path | None = None) -> Path:
    """One zip of a merged model folder (written beside it, renamed into place when complete)."""

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise UserError("model", f"{folder} is not a model folder (no config.json)")
    target = Path(target) if target else folder.parent / f"{folder.name}.zip"
    tmp = target.with_suffix(".zip.part")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file() and not path.is_symlink():
                zf.write(path, arcname=f"{folder.name}/{path.relative_to(folder)}")
    tmp.replace(target)
    return target
