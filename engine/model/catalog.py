"""The offline catalogs: base models (configs only, in assets/) and GPUs.

Both are plain JSON read once and kept; nothing here imports torch or transformers,
so the app can list models and GPUs at start-up without paying for heavy imports.

A model entry's config describes one checkpoint (`hub_id`, its `variant`: base or
instruct); `variants` names the base and instruct checkpoints of the same architecture
(same shapes, so the same estimate), and every one of them resolves to the entry,
by hub id, by its name without the owner, or by the key with -base / -instruct. The bare
key (e.g. llama-3.2-3b) names the checkpoint the card describes, also where it reads like
a hub name without its owner: give the owner/name id to pick the other one.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache

from pydantic import BaseModel

from engine.errors import UserError, one_of
from engine.paths import ASSETS

MODELS_FILE = ASSETS / "models.json"
GPUS_FILE = ASSETS / "gpus.json"
CONFIG_DIR = ASSETS / "model_configs"

# The CPU has no tensor cores and no CUDA context; this figure is a stated, modest
# assumption for a few-core machine running fp32 matmuls (nothing is measured at import).
CPU_PEAK_TFLOPS = 0.1


class CatalogModel(BaseModel):
    key: str
    hub_id: str
    name: str
    params_b: float
    architecture: str
    context: int
    licence: str
    config: str  # file name under assets/model_configs/
    variant: str = "base"  # the checkpoint the config and this card describe: base or instruct
    variants: dict[str, str] = {}  # base / instruct hub ids sharing the architecture

    def config_dict(self) -> dict:
        return json.loads((CONFIG_DIR / self.config).read_text())

    def describes(self) -> str:
        """One line for cards and facts: which checkpoint this entry describes, and its siblings."""
        others = [f"{v} {hub}" for v, hub in self.variants.items() if hub != self.hub_id]
        return f"{self.variant} variant ({self.hub_id})" + (
            f"; also answers to the {', '.join(others)} (same architecture)" if others else ""
        )


class CatalogMatch(BaseModel):
    """A spec found in the catalog: the entry, and the checkpoint the spec names."""

    entry: CatalogModel
    hub_id: str
    variant: str


class Gpu(BaseModel):
    name: str
    memory_gb: float | None  # GiB; None for the CPU pseudo-device (host RAM is not a budget)
    bf16_tflops: float
    fp16_tflops: float
    bandwidth_gbs: float
    supports_bf16: bool
    aliases: list[str] = []

    @property
    def is_cpu(self) -> bool:
        return self.name == "cpu"

    def peak_tflops(self, dtype: str) -> float:
        if self.is_cpu or dtype == "fp32":
            # GPUs: TF32 tensor cores are not assumed; fp32 runs at roughly 1/8..1/16 of bf16.
            return CPU_PEAK_TFLOPS if self.is_cpu else self.fp16_tflops / 8
        return self.bf16_tflops if dtype == "bf16" else self.fp16_tflops


CPU = Gpu(
    name="cpu",
    memory_gb=None,
    bf16_tflops=CPU_PEAK_TFLOPS,
    fp16_tflops=CPU_PEAK_TFLOPS,
    bandwidth_gbs=20,
    supports_bf16=False,
)


@lru_cache(maxsize=1)
def _models() -> tuple[CatalogModel, ...]:
    data = json.loads(MODELS_FILE.read_text())
    return tuple(CatalogModel(**m) for m in data["models"])


@lru_cache(maxsize=1)
def default_key() -> str:
    return json.loads(MODELS_FILE.read_text())["default"]


def default_entry() -> CatalogModel:
    """The catalog entry of the embedded default model (models.json names it, and lists it)."""
    entry = find_model(default_key())
    assert entry is not None, "models.json's default is not one of its models"
    return entry


def list_models() -> list[CatalogModel]:
    return list(_models())


@lru_cache(maxsize=1)
def _names() -> dict[str, tuple[CatalogModel, str, str]]:
    """Every name a catalog checkpoint answers to (lower case) -> (entry, hub id, variant)."""
    names: dict[str, tuple[CatalogModel, str, str]] = {}
    for m in _models():
        variants = {m.variant: m.hub_id, **m.variants}
        for variant, hub_id in variants.items():
            for name in (hub_id, hub_id.split("/", 1)[-1], f"{m.key}-{variant}"):
                names.setdefault(name.lower(), (m, hub_id, variant))
        names[m.key.lower()] = (m, m.hub_id, m.variant)  # the bare key: the checkpoint the card describes
    return names


def match_model(spec: str) -> CatalogMatch | None:
    """The catalog entry and checkpoint a spec names (key, hub id, hub name, key-base/-instruct), or None."""
    found = _names().get((spec or "").strip().lower())
    if found is None:
        return None
    entry, hub_id, variant = found
    return CatalogMatch(entry=entry, hub_id=hub_id, variant=variant)


def find_model(spec: str) -> CatalogModel | None:
    """Catalog entry by any name one of its checkpoints answers to (case-insensitive), or None."""
    found = match_model(spec)
    return found.entry if found else None


def hub_id_of(spec: str) -> str:
    """The hub id a catalog name stands for (base or instruct as named); any other spec unchanged."""
    found = match_model(spec)
    return found.hub_id if found else spec


@lru_cache(maxsize=1)
def _gpus() -> tuple[Gpu, ...]:
    data = json.loads(GPUS_FILE.read_text())
    return tuple(Gpu(**g) for g in data["gpus"])


def list_gpus() -> list[Gpu]:
    return list(_gpus())


def _norm(name: str) -> str:
    return re.sub(r"[\s_\-]+", "", name.strip().lower())


def find_gpu(name: str) -> Gpu:
    """GPU by name or alias, ignoring case, spaces, '-' and '_'; 'cpu' is the CPU pseudo-device."""
    key = _norm(name or "")
    if key == "cpu":
        return CPU
    for g in _gpus():
        if key in {_norm(g.name), *(_norm(a) for a in g.aliases)}:
            return g
    raise UserError(
        "gpu",
        f"unknown GPU '{name}'; known: {one_of([g.name for g in _gpus()] + ['cpu'])} (or give --budget-gb instead)",
    )
