"""`estimate(plan)`: parameters, adapter size, memory and time for one TrainingPlan.

The first call for a model builds it on the meta device (cached in engine.introspect);
later calls only do arithmetic over the cached module list, so sweeps stay fast.
"""

from __future__ import annotations

from pydantic import BaseModel

from engine.estimate import hardware
from engine.model import catalog
from engine.model.catalog import Gpu
from engine.model.introspect import resolve
from engine.estimate.memory import CPU_RESERVED_FACTOR, CUDA_CONTEXT, GiB, RESERVED_FACTOR, Recipe, memory_terms
from engine.estimate.params import ParamCount, count
from engine.plan import resolve_dtype
from engine.estimate.timing import TimeEstimate, estimate_time
from engine.units import human_bytes


class MemoryEstimate(BaseModel):
    allocated_bytes: int
    reserved_bytes: int
    device_bytes: int
    budget_bytes: int | None
    fits: bool | None
    terms: dict[str, int]
    assumptions: list[str]
    verdict: str


class Estimate(BaseModel):
    model: str
    method: str
    dtype: str
    device: str | None
    trainable_params: int
    total_params: int
    trainable_percent: float
    adapter_bytes: int
    by_module_type: dict[str, int]
    by_layer: list[int]
    memory: MemoryEstimate
    time: TimeEstimate | None

    @property
    def fits(self) -> bool | None:
        return self.memory.fits

    def to_json(self) -> dict:
        """The stable keys scripts rely on (see issue 2, section 5)."""
        return {
            "model": self.model, "method": self.method, "dtype": self.dtype, "device": self.device,
            "trainable_params": self.trainable_params, "total_params": self.total_params,
            "trainable_percent": self.trainable_percent, "adapter_bytes": self.adapter_bytes,
            "by_module_type": self.by_module_type, "by_layer": self.by_layer,
            "memory": self.memory.model_dump(), "fits": self.memory.fits,
            "time": self.time.model_dump() if self.time else None,
        }


def device_of(plan) -> Gpu | None:
    """The plan's device: its GPU, the CPU (gpu='cpu', or neither gpu nor budget), or None (budget only)."""
    if plan.gpu:
        return catalog.find_gpu(plan.gpu)
    return None if plan.budget_gb else catalog.CPU


def compute_dtype(plan, gpu: Gpu | None) -> str:
    on_cpu = gpu is not None and gpu.is_cpu
    bf16_ok = hardware.calibration().bf16_native if on_cpu else (gpu is None or gpu.supports_bf16)
    return resolve_dtype(plan.dtype, on_cpu=on_cpu, bf16_ok=bf16_ok)


def _recipe(plan, dtype: str, on_gpu: bool) -> Recipe:
    return Recipe(method=plan.method, dtype=dtype, batch_size=plan.batch_size, seq_len=plan.seq_len,
                  grad_ckpt=plan.grad_ckpt, attention=plan.attention, optimizer=plan.optimizer,
                  dropout=plan.dropout, r=plan.r, on_gpu=on_gpu,
                  modules_to_save=tuple(plan.modules_to_save))


def _params(info, plan, dtype: str) -> ParamCount:
    return count(info, plan.r, plan.targets, plan.bias, plan.use_dora, tuple(plan.modules_to_save),
                 save_dtype=dtype, method=plan.method)


def _memory(info, plan, pc: ParamCount, gpu: Gpu | None, dtype: str) -> MemoryEstimate:
    on_gpu = gpu is None or not gpu.is_cpu
    terms, notes = memory_terms(info, pc, _recipe(plan, dtype, on_gpu))
    allocated = sum(terms.values())
    reserved = int(allocated * (RESERVED_FACTOR if on_gpu else CPU_RESERVED_FACTOR))
    device = reserved + (CUDA_CONTEXT if on_gpu else 0)
    if plan.budget_gb:
        budget = int(plan.budget_gb * GiB)
    elif gpu is not None and gpu.memory_gb:
        budget = int(gpu.memory_gb * GiB)
    else:
        budget = None
    if on_gpu:
        notes.append(f"reserved = allocated x {RESERVED_FACTOR} (allocator cache); device adds "
                     f"{CUDA_CONTEXT / GiB:.1f} GiB CUDA context")
    else:
        notes.append("CPU: no CUDA context; host RAM is the budget only when budget_gb is given")
    fits = None if budget is None else device <= budget
    if fits is None:
        verdict = f"needs about {human_bytes(device)}; no budget given"
    elif fits:
        verdict = f"fits: about {human_bytes(device)} of {human_bytes(budget)} ({device / budget:.0%})"
    else:
        verdict = f"does not fit: needs about {human_bytes(device)}, budget {human_bytes(budget)}"
    return MemoryEstimate(allocated_bytes=allocated, reserved_bytes=reserved, device_bytes=device,
                          budget_bytes=budget, fits=fits, terms=terms, assumptions=notes, verdict=verdict)


def _cpu_precision_note(plan, dtype: str) -> str:
    """Why this precision on this CPU, and what a bf16 request costs where bf16 is not native."""
    if plan.dtype == "auto":
        return "precision auto: " + hardware.cpu_precision()[1]
    if dtype == "bf16":
        return hardware.bf16_cost_note() or "precision bf16 (asked): native on this CPU"
    return f"precision {dtype} (asked)"


def memory_for(plan) -> MemoryEstimate:
    """Memory only: what sweeps and charts call many times."""
    info = resolve(plan.model)
    gpu = device_of(plan)
    dtype = compute_dtype(plan, gpu)
    return _memory(info, plan, _params(info, plan, dtype), gpu, dtype)


def estimate(plan) -> Estimate:
    info = resolve(plan.model)
    gpu = device_of(plan)
    dtype = compute_dtype(plan, gpu)
    pc = _params(info, plan, dtype)
    mem = _memory(info, plan, pc, gpu, dtype)
    time = estimate_time(info, plan, gpu, dtype, pc.lora_params) if gpu is not None else None
    if time is not None and gpu.is_cpu:
        time.assumptions.insert(0, _cpu_precision_note(plan, dtype))
    return Estimate(model=plan.model, method=plan.method, dtype=dtype, device=gpu.name if gpu else None,
                    trainable_params=pc.trainable, total_params=pc.total, trainable_percent=round(pc.percent, 4),
                    adapter_bytes=pc.adapter_bytes, by_module_type=pc.by_module_type, by_layer=pc.by_layer,
                    memory=mem, time=time)
