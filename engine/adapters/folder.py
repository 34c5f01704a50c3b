"""What an adapter folder is: its config, its base model, its size, and whether it fits a base.

An adapter folder holds `adapter_config.json` (a PEFT LoRA config naming its base in
`base_model_name_or_path`) and `adapter_model.safetensors`. `inspect` reads both
without loading a model and turns every problem into one `UserError` naming the file.
`check_fits` compares the adapter's tensor shapes with the base's modules (on the meta
device), which is how an adapter trained on another base is caught before it is used.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from engine.errors import UserError
from engine.model import catalog, default_model, introspect

CONFIG = "adapter_config.json"
WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")
# Hub ids that are the embedded default (it ships as a GGUF of this model).
DEFAULT_ALIASES = ("HuggingFaceTB/SmolLM2-135M-Instruct",)


@dataclass
class AdapterInfo:
    path: Path
    base_model: str  # a spec the product loads: 'default', a local folder, a catalog name or a hub id
    method: str  # lora or qlora
    r: int
    alpha: float
    targets: list[str]
    bytes: int
    config: dict = field(default_factory=dict)


def read_config(folder: Path) -> dict:
    folder = Path(folder)
    if not folder.exists():
        raise UserError("adapter", f"{folder} does not exist; give a PEFT adapter folder (or a .zip of one)")
    if not folder.is_dir():
        raise UserError("adapter", f"{folder} is a file; give a PEFT adapter folder (or a .zip of one)")
    cfg_file = folder / CONFIG
    if not cfg_file.is_file():
        raise UserError("adapter", f"{folder} has no {CONFIG}; it is not a PEFT adapter folder")
    try:
        config = json.loads(cfg_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError("adapter", f"{cfg_file} is not readable JSON ({exc.__class__.__name__})") from None
    if not isinstance(config, dict) or str(config.get("peft_type", "")).upper() != "LORA":
        raise UserError(
            "adapter",
            f"{cfg_file} is not a LoRA config (peft_type {config.get('peft_type')!r}); "
            "only LoRA/QLoRA adapters are accepted",
        )
    if not any((folder / w).is_file() for w in WEIGHTS):
        raise UserError("adapter", f"{folder} has no {WEIGHTS[0]}; the adapter weights are missing")
    return config


def resolve_base(name: str | None) -> str:
    """The spec this product loads for a config's `base_model_name_or_path`."""

    name = (name or "").strip()
    if not name:
        raise UserError("base_model", "the adapter config names no base model; give one with --base")
    if name in DEFAULT_ALIASES or name == "default":
        return "default"
    path = Path(name).expanduser()
    if path.name == default_model.FOLDER_NAME:  # trained on the embedded default, on any machine
        return "default"
    if path.is_dir() and (path / "config.json").is_file():
        return str(path.resolve())
    if catalog.find_model(name) is not None:
        return name
    if name.count("/") == 1 and not name.startswith((".", "/", "~")):
        try:  # a hub id whose config an earlier download cached
            from transformers import AutoConfig

            AutoConfig.from_pretrained(name, local_files_only=True)
            return name
        except Exception:  # not cached: fall through to the error below
            pass
    raise UserError(
        "base_model",
        f"the adapter's base model '{name}' is not a local model folder, a catalog "
        "model or a cached hub id here; give the base with --base (a folder, a .gguf file, a hub id "
        "or 'default')",
    )


def weight_shapes(folder: Path) -> dict[str, tuple[int, ...]]:
    folder = Path(folder)
    st = folder / WEIGHTS[0]
    if st.is_file():
        from safetensors import safe_open

        try:
            with safe_open(str(st), framework="pt") as fh:
                return {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}  # noqa: SIM118 - safe_open is not iterable
        except Exception as exc:  # a corrupt file is the user's file
            raise UserError("adapter", f"{st} is not a readable safetensors file ({exc.__class__.__name__})") from None
    import torch

    state = torch.load(str(folder / WEIGHTS[1]), map_location="cpu", weights_only=True)
    return {k: tuple(v.shape) for k, v in state.items()}


def folder_bytes(folder: Path) -> int:
    """Bytes on disk, without a job's checkpoints/ (training state, not the adapter)."""
    folder = Path(folder)
    return sum(
        p.stat().st_size for p in folder.rglob("*") if p.is_file() and "checkpoints" not in p.relative_to(folder).parts
    )


def inspect(folder, base: str | None = None) -> AdapterInfo:
    """Read and check an adapter folder; `base` overrides the base its config names."""
    folder = Path(folder).expanduser()
    config = read_config(folder)
    spec = base if base else resolve_base(config.get("base_model_name_or_path"))
    shapes = weight_shapes(folder)
    targets = config.get("target_modules") or []
    targets = [targets] if isinstance(targets, str) else sorted(targets)
    quantized = _was_qlora(folder)
    return AdapterInfo(
        path=folder,
        base_model=spec,
        method="qlora" if quantized else "lora",
        r=int(config.get("r") or 0),
        alpha=float(config.get("lora_alpha") or 0),
        targets=targets,
        bytes=folder_bytes(folder),
        config=config | {"_shapes": shapes},
    )


def _was_qlora(folder: Path) -> bool:
    plan = folder / "plan.yaml"  # written by this product's trainer
    if plan.is_file():
        try:
            return (yaml.safe_load(plan.read_text(encoding="utf-8")) or {}).get("method") == "qlora"
        except yaml.YAMLError:
            return False
    return False


def check_fits(info: AdapterInfo) -> None:
    """Every adapted module exists in the base with the adapter's in/out sizes; else UserError."""

    modules = {m.name: m for m in introspect.resolve(info.base_model).linear_modules}
    shapes = info.config.get("_shapes") or weight_shapes(info.path)
    for key, shape in shapes.items():
        for part, side in ((".lora_A.", "in"), (".lora_B.", "out")):
            if part not in key:
                continue
            module = key.split(part)[0].removeprefix("base_model.model.")
            found = modules.get(module)
            if found is None:
                raise UserError(
                    "base_model",
                    f"the adapter adapts '{module}', which base '{info.base_model}' "
                    "does not have; it was trained on another base model",
                )
            want = found.in_features if side == "in" else found.out_features
            got = shape[1] if side == "in" else shape[0]
            if len(shape) == 2 and got != want:
                raise UserError(
                    "base_model",
                    f"the adapter's '{module}' expects {got} {side}puts but base "
                    f"'{info.base_model}' has {want}; it was trained on another base model",
                )


def check_fits_model(folder: Path, model, base_name: str) -> None:
    """Like `check_fits`, against a loaded model (before PEFT touches it)."""
    for key, shape in weight_shapes(folder).items():
        for part, side in ((".lora_A.", "in"), (".lora_B.", "out")):
            if part not in key or len(shape) != 2:
                continue
            module_name = key.split(part)[0].removeprefix("base_model.model.")
            try:
                module = model.get_submodule(module_name)
            except AttributeError:
                raise UserError(
                    "adapter",
                    f"{folder} adapts '{module_name}', which base '{base_name}' does not "
                    "have; it was trained on another base model",
                ) from None
            want = _features(module, side)
            got = shape[1] if side == "in" else shape[0]
            if want is not None and got != want:
                raise UserError(
                    "adapter",
                    f"{folder}'s '{module_name}' expects {got} {side}puts but base "
                    f"'{base_name}' has {want}; it was trained on another base model",
                )


def _features(module, side: str) -> int | None:
    value = getattr(module, f"{side}_features", None)
    if value is None and getattr(module, "weight", None) is not None and module.weight.dim() == 2:
        rows, cols = module.weight.shape  # transformers Conv1D keeps (in, out)
        value = rows if side == "in" else cols
    return value
