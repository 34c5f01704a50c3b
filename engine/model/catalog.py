"""The offline catalogs: base models (configs only, in assets/) and GPUs.

Both are plain JSON read once and kept; nothing here imports torch or transformers,
so the app can list models and GPUs at start-up without paying for heavy imports.
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

    def config_dict(self) -> dict:
        return json.loads((CONFIG_DIR / self.config).read_text())


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


CPU = Gpu(name="cpu", memory_gb=None, bf16_tflops=CPU_PEAK_TFLOPS, fp16_tflops=CPU_PEAK_TFLOPS,
          bandwidth_gbs=20, supports_bf16=False)


@lru_cache(maxsize=1)
def _models() -> tuple[CatalogModel, ...]:
    data = json.loads(MODELS_FILE.read_text())
    return tuple(CatalogModel(**m) for m in data["models"])


@lru_cache(maxsize=1)
def default_key() -> str:
    return json.loads(MODELS_FILE.read_text())["default"]


def list_models() -> list[CatalogModel]:
    return list(_models())


def find_model(spec: str) -> CatalogModel | None:
    """Catalog entry by short key or hub id (case-insensitive), or None."""
    s = spec.strip().lower()
    for m in _models():
        if s in (m.key.lower(), m.hub_id.lower()):
            return m
    return None


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
    raise UserError("gpu", f"unknown GPU '{name}'; known: {one_of([g.name for g in _gpus()] + ['cpu'])} "
                    "(or give --budget-gb instead)")
