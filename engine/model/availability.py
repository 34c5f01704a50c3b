"""Are a model's weights on this machine? Answered from files alone, before anything is estimated.

A catalog entry ships its config, so every estimate works offline; the weights do not, and a
run whose weights cannot be had used to fail at Launch with "could not load the tokenizer
(OSError)". This module says where the weights are: the embedded default, a local folder or
.gguf file, the Hugging Face cache (huggingface_hub's `try_to_load_from_cache`, a file lookup,
no network), or nowhere here (a download, which needs the hub to be reachable). Step 1 shows
the line; `jobs.dispatcher.validate` refuses a plan whose weights cannot be had with it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from engine.errors import UserError
from engine.model import catalog, default_model, hub

# Weight files as `save_pretrained` writes them: one file, or an index naming the shards.
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
WEIGHT_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")  # either lets AutoTokenizer load


class Where(StrEnum):
    EMBEDDED = "embedded"
    LOCAL = "local"
    HUB_CACHE = "hub cache"
    DOWNLOAD = "download"  # not here; the hub is reachable, so training downloads them first
    MISSING = "missing"  # not here, and no way to get them from this machine


@dataclass(frozen=True)
class Weights:
    where: Where
    message: str  # one line, for step 1, the CLI and the refusal

    @property
    def can_train(self) -> bool:
        return self.where is not Where.MISSING


def weights(spec: str) -> Weights:
    """Where the weights of `spec` (default, a folder, a .gguf file, a catalog name or a hub id) are."""
    spec = (spec or "").strip()
    if spec == "default":
        default_model.embedded_gguf()  # raises the install hint when the package is missing
        return Weights(Where.EMBEDDED, "Weights: the embedded default, shipped with LoRA Pilot; no download.")
    path = Path(spec).expanduser()
    if path.suffix.lower() == ".gguf" and path.is_file():
        return Weights(Where.LOCAL, f"Weights: on this machine, in {path}.")
    if path.is_dir():
        if _has_weights(lambda name: _file_in(path, name)):
            return Weights(Where.LOCAL, f"Weights: on this machine, in {path}.")
        return Weights(
            Where.MISSING,
            f"Weights: the folder {path} has no weight file ({', '.join(WEIGHT_FILES)} "
            "or a sharded index), so it can be estimated but not trained; save the model there "
            "with save_pretrained",
        )
    hub_id = catalog.hub_id_of(spec)
    if _in_hub_cache(hub_id):
        return Weights(
            Where.HUB_CACHE,
            f"Weights: {hub_id} is in the Hugging Face cache on this machine ({hub_cache_dir()}); no download.",
        )
    size = _download_size(spec)
    if hub.reachable():
        return Weights(
            Where.DOWNLOAD,
            f"Weights: {hub_id} is not on this machine; training downloads it first{size} from the Hugging Face hub.",
        )
    why = "HF_HUB_OFFLINE is set" if hub.offline() else "this machine cannot reach the Hugging Face hub"
    folder = hub_id.split("/")[-1]
    return Weights(
        Where.MISSING,
        f"Weights: {hub_id} is not on this machine and cannot be downloaded ({why}); "
        f"estimates work, training does not. Download it where there is a network{size}: "
        f"`hf download {hub_id} --local-dir {folder}`, bring that folder here and give its path as "
        "the model, or pick the embedded default",
    )


def require(spec: str) -> Weights:
    """The weights' line, or a UserError with it when they cannot be had: before any job exists."""
    found = weights(spec)
    if not found.can_train:
        raise UserError("model", found.message.removeprefix("Weights: "))
    return found


def hub_cache_dir() -> Path:
    """The hub cache as huggingface_hub resolves it, read now (its constants are fixed at import)."""
    explicit = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    home = os.environ.get("HF_HOME") or Path(xdg) / "huggingface"
    return Path(home).expanduser() / "hub"


def _file_in(folder: Path, name: str) -> Path | None:
    return folder / name if (folder / name).is_file() else None


def _cached(hub_id: str, name: str) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(hub_id, name, cache_dir=hub_cache_dir())
    return Path(found) if isinstance(found, str) else None  # else None or the "known absent" sentinel


def _has_weights(lookup) -> bool:
    """A single weight file, or an index whose every shard is present."""
    if any(lookup(name) for name in WEIGHT_FILES):
        return True
    for index_name in WEIGHT_INDEXES:
        index = lookup(index_name)
        if index is None:
            continue
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (OSError, ValueError, KeyError, AttributeError):
            return False
        return bool(shards) and all(lookup(shard) for shard in shards)
    return False


def _in_hub_cache(hub_id: str) -> bool:
    if hub_id.count("/") != 1:
        return False  # not a hub id (an unknown name): nothing to look up
    lookup = lambda name: _cached(hub_id, name)  # noqa: E731 - one lookup, three uses
    return lookup("config.json") is not None and any(lookup(n) for n in TOKENIZER_FILES) and _has_weights(lookup)


def _download_size(spec: str) -> str:
    entry = catalog.find_model(spec)  # 16-bit weights: 2 bytes a parameter, as the hub stores these
    return f" (about {entry.params_b * 2:.1f} GB)" if entry else ""
