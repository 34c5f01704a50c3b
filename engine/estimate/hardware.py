"""This CPU's matmul speed per precision, measured once and cached; the CPU precision and attention rules.

CPUs differ by two orders of magnitude in bf16: with AMX or AVX512-BF16 a bf16 matmul
runs several times faster than fp32, without them PyTorch emulates it and it runs ~100x
slower. So the precision `dtype: auto` picks on a CPU, and the throughput the estimator
assumes, come from this machine: its CPU flags, and a short matmul per precision timed
once (about a second) and kept in $LORAPILOT_HOME/hardware.json, keyed by CPU, core
count and torch version so a different machine or build measures again (delete the file to
measure again, e.g. after it was measured on a busy machine: the numbers are best-of, but a
saturated CPU still lowers them).

Tests write that file (`save`) with the numbers they need; nothing here assumes a CPU.
"""

from __future__ import annotations

import json
import os
import platform
import threading
import time
from importlib.metadata import version
from pathlib import Path

from filelock import FileLock
from pydantic import BaseModel

from engine import paths

BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo flags of a native bf16 matmul
BF16_MIN_GAIN = 1.2  # bf16 must beat fp32 by this factor to be worth its lower precision
# One projection of a small transformer (the embedded SmolLM2's MLP: 576 -> 1536) over 2048 tokens.
SHAPE = (2048, 576, 1536)
MEASURE_S = 0.25  # per precision, after one warm-up call
CACHE_FILE = "hardware.json"
# Share of a LoRA step that a faster bf16 matmul speeds up; the rest (fp32 adapters, casts, loss,
# optimizer, Python) keeps fp32 speed. Measured on the demo job (the embedded model, batch 4, rows of
# ~48 tokens) on an AVX512-BF16 CPU: matmul 2.32x faster in bf16 (0.401 vs 0.173 TFLOP/s), a step
# 1.60x (0.70 vs 1.12 s): 1 / (0.66 / 2.32 + 0.34) = 1.60. Issue 10's AMX figure (matmul 8x, step
# only 1.6x, a share of 0.43) predates engine/train/lm_head.py, when TRL's CPU head, about 40% of a
# step, ran in generic torch ops.
BF16_STEP_SHARE = 0.66


# Row lengths at which eager attention (matmuls and a softmax) is timed against SDPA in bf16, forward
# and backward: torch's CPU flash-attention backward is slow for short rows in bf16 (4 x 9 heads x 48
# tokens: 3.6 ms against 1.1 ms eager on an AVX512-BF16 CPU), while it wins in fp32. Not beyond 128:
# eager keeps heads x length probabilities per token, and there a whole step gained nothing (4 x 256
# tokens of the embedded model: 3.30 s eager, 3.24 s SDPA) though attention alone still did.
ATTENTION_LENGTHS = (64, 128)
CALIBRATION_VERSION = 2  # in the cache key: a file measured before eager_until existed is measured again


class Calibration(BaseModel):
    key: str  # cpu | threads | torch version
    cpu: str
    threads: int
    bf16_flags: list[str]
    fp32_tflops: float
    bf16_tflops: float
    eager_until: int = 0  # longest row (tokens) up to which eager attention beat SDPA in bf16; 0: never

    @property
    def bf16_native(self) -> bool:
        return bool(self.bf16_flags) and self.bf16_tflops >= BF16_MIN_GAIN * self.fp32_tflops

    def tflops(self, dtype: str) -> float:
        """The matmul rate measured in this precision."""
        return self.bf16_tflops if dtype in ("bf16", "fp16") else self.fp32_tflops

    def step_tflops(self, dtype: str) -> float:
        """The rate a training step sees: only BF16_STEP_SHARE of it runs at the bf16 rate (Amdahl)."""
        if dtype == "fp32":
            return self.fp32_tflops
        return 1 / (BF16_STEP_SHARE / self.tflops(dtype) + (1 - BF16_STEP_SHARE) / self.fp32_tflops)


_memo: dict[str, Calibration] = {}
_measuring = threading.Lock()


def cpu_name() -> str:
    for line in _cpuinfo().splitlines():
        if line.lower().startswith(("model name", "hardware", "cpu model")):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown CPU"


def cpu_flags() -> set[str]:
    for line in _cpuinfo().splitlines():
        if line.lower().startswith(("flags", "features")):
            return set(line.split(":", 1)[1].split())
    return set()


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:  # not Linux: no flags to read, so bf16 counts as not native
        return ""


def cache_key() -> str:
    """Which machine and build the numbers belong to (cheap: torch is not imported for it)."""

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{cpu_name()} | {cores} cores | torch {version('torch')} | calibration {CALIBRATION_VERSION}"


def cache_path() -> Path:
    return paths.home() / CACHE_FILE


def calibration() -> Calibration:
    """This machine's numbers: from memory, else the cache file, else measured now (and cached).

    Measured once per home, whoever asks first: the wizard's warm-up and its first estimate (two
    threads), or a CLI and a worker (two processes), could otherwise measure side by side, and two
    timings differ (`eager_until` most of all), so the same plan's numbers would change once the
    second measurement landed."""
    key = cache_key()
    if key in _memo:
        return _memo[key]
    path = cache_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with _measuring, FileLock(str(path) + ".lock"):
        cal = _memo.get(key) or _read(key)  # measured by another thread or process while this one waited
        if cal is None:
            cal = measure()
            save(cal)
        _memo[key] = cal
    return cal


def _read(key: str) -> Calibration | None:
    try:
        cal = Calibration.model_validate_json(cache_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return cal if cal.key == key else None


def save(cal: Calibration) -> None:
    """Write the cache (atomically); tests use it to inject a machine's numbers."""
    path = cache_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(cal.model_dump(), indent=1), encoding="utf-8")
    os.replace(tmp, path)
    _memo.clear()


def measure() -> Calibration:
    import torch

    flags = sorted(set(BF16_FLAGS) & cpu_flags())
    # Without the flags bf16 is emulated (~100x slower): an 8x smaller matmul tells as much, in a second less.
    rows = SHAPE[0] if flags else SHAPE[0] // 8
    cal = Calibration(
        key=cache_key(),
        cpu=cpu_name(),
        threads=torch.get_num_threads(),
        bf16_flags=flags,
        fp32_tflops=_matmul_tflops(torch.float32),
        bf16_tflops=_matmul_tflops(torch.bfloat16, rows),
    )
    if cal.bf16_native:  # fp32 runs flash attention's own kernel well: eager is only timed where bf16 is used
        cal.eager_until = _eager_until()
    return cal


def _matmul_tflops(dtype, rows: int | None = None) -> float:
    """Best-of rate of SHAPE's matmul; a shared machine's load only makes single calls slower."""
    import torch

    m, k, n = SHAPE
    m = rows or m
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(m, k, generator=gen).to(dtype), torch.randn(k, n, generator=gen).to(dtype)
    with torch.no_grad():
        start = time.perf_counter()
        a @ b  # warm-up (and the whole measurement where the precision is emulated and slow)
        best = time.perf_counter() - start
        end = start + MEASURE_S
        while time.perf_counter() < end:
            t = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - t)
    return 2 * m * k * n / best / 1e12


def _eager_until() -> int:
    """The longest of ATTENTION_LENGTHS up to which eager attention is faster than SDPA in bf16 (0: none)."""
    until = 0
    for length in ATTENTION_LENGTHS:
        if _attention_seconds("eager", length) >= _attention_seconds("sdpa", length):
            break
        until = length
    return until


def _attention_seconds(kernel: str, length: int, repeats: int = 3) -> float:
    """Best-of time of one causal attention, forward and backward, of 4 rows x 9 heads x 64 (the embedded
    model's heads), as transformers' eager and SDPA paths compute it."""
    import torch
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(4, 9, length, 64, generator=gen).bfloat16().requires_grad_() for _ in range(3))
    causal = torch.full((length, length), float("-inf")).triu(1).bfloat16()

    def once():
        if kernel == "sdpa":
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            weights = torch.softmax(q @ k.transpose(-1, -2) * 64**-0.5 + causal, dim=-1, dtype=torch.float32)
            out = weights.to(q.dtype) @ v
        out.sum().backward()

    once()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        once()
        best = min(best, time.perf_counter() - start)
    return best


# --- the precision rule -----------------------------------------------------------------------
def cpu_precision() -> tuple[str, str]:
    """(dtype, reason) that `dtype: auto` means on this CPU."""
    cal = calibration()
    speeds = f"bf16 {cal.bf16_tflops:.3g} vs fp32 {cal.fp32_tflops:.3g} TFLOP/s measured on {cal.threads} threads"
    if cal.bf16_native:
        return "bf16", (
            f"CPU {cal.cpu} has a native bf16 matmul ({', '.join(cal.bf16_flags)}; {speeds}): "
            "bf16 autocast, adapters kept in fp32"
        )
    if not cal.bf16_flags:
        return "fp32", f"CPU {cal.cpu} has no native bf16 matmul (no {' or '.join(BF16_FLAGS)}; {speeds}): fp32"
    return "fp32", f"CPU {cal.cpu} reports {', '.join(cal.bf16_flags)} but bf16 is not faster here ({speeds}): fp32"


def bf16_cost_note() -> str | None:
    """What asking for bf16 costs on a CPU where it is not native; None where it is."""
    cal = calibration()
    if cal.bf16_native:
        return None
    slower = cal.fp32_tflops / max(cal.bf16_tflops, 1e-9)
    cost = (
        f"training takes about {slower:.1f}x as long as with dtype auto (fp32)"
        if slower >= 1
        else "it gains too little over fp32 to be worth the lower precision"
    )
    return (
        f"bf16 on this CPU ({cal.cpu}) is not native: its matmul runs at {cal.bf16_tflops:.3g} TFLOP/s against "
        f"{cal.fp32_tflops:.3g} in fp32, so {cost}"
    )


# --- the attention rule -----------------------------------------------------------------------
def attention_for(requested: str, on_cpu: bool, dtype: str, longest: int | None) -> str:
    """The kernel `attention: auto` means: eager on a CPU training in bf16 when the data's longest row is
    no longer than this CPU's measured `eager_until`, else SDPA; an asked-for kernel stays."""
    if requested != "auto":
        return requested
    if not on_cpu or dtype == "fp32" or longest is None:
        return "sdpa"
    return "eager" if longest <= calibration().eager_until else "sdpa"


def attention_to_load(requested: str) -> str:
    """What a model is loaded with before the data is known (`auto` may switch to eager after)."""
    return "sdpa" if requested == "auto" else requested
