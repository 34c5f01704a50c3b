"""`estimate(plan)`: parameters, adapter size, memory and time for one TrainingPlan.

The first call for a model builds it on the meta device (cached in engine.introspect);
later calls only do arithmetic over the cached module list, so sweeps stay fast.

Memory comes in two figures once the data's token lengths are known (`lengths`): the
worst case, every batch padded to seq_len (the top-level figures, which `fits` judges,
so a verdict never rests on luck), and `expected`, the longest batch the measured peak
spans padded to its expected longest row (engine.estimate.lengths), the figure a run's
measured peak lands on.
"""

from __future__ import annotations

from dataclasses import replace

import psutil
from pydantic import BaseModel

from engine.data import demo
from engine.data.ref import DatasetRef
from engine.estimate import hardware, preference
from engine.estimate.lengths import padded_length, peak_rows
from engine.estimate.memory import CPU_RESERVED_FACTOR, CUDA_CONTEXT, RESERVED_FACTOR, Recipe
from engine.estimate.params import ParamCount, count
from engine.estimate.timing import Scoring, TimeEstimate, estimate_time, phase_seconds
from engine.evaluate.split import DEMO_GENERATE_BATCH, GENERATE_BATCH, MAX_NEW_TOKENS, holdout_size
from engine.model import catalog
from engine.model.catalog import Gpu
from engine.model.introspect import resolve
from engine.plan import resolve_dtype
from engine.units import GIB, human_bytes


class ExpectedMemory(BaseModel):
    """Memory with batches padded to the data's expected longest row instead of seq_len."""

    padded_length: int  # tokens: the expected longest of the rows the peak spans, cut at seq_len
    rows: int  # how many rows the peak spans (the first steps on a CPU, the run on a GPU)
    allocated_bytes: int
    device_bytes: int
    terms: dict[str, int]


class MemoryEstimate(BaseModel):
    allocated_bytes: int
    reserved_bytes: int
    device_bytes: int
    budget_bytes: int | None
    fits: bool | None
    terms: dict[str, int]
    assumptions: list[str]
    verdict: str
    expected: ExpectedMemory | None = None  # only when the data's token lengths were given

    @property
    def expected_allocated_bytes(self) -> int:
        """The peak a run should measure: from the data when known, else the worst case."""
        return self.expected.allocated_bytes if self.expected else self.allocated_bytes


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
            "model": self.model,
            "method": self.method,
            "dtype": self.dtype,
            "device": self.device,
            "trainable_params": self.trainable_params,
            "total_params": self.total_params,
            "trainable_percent": self.trainable_percent,
            "adapter_bytes": self.adapter_bytes,
            "by_module_type": self.by_module_type,
            "by_layer": self.by_layer,
            "memory": self.memory.model_dump(),
            "fits": self.memory.fits,
            "time": self.time.model_dump() if self.time else None,
            "headline": headline(self),
        }


def headline(est: Estimate | dict) -> dict:
    """The figures every screen shows for one estimate, by name, so the review, the launch summary, the
    job page, `show` and `estimate` agree: `memory_bytes` (with the data's lengths when known, else the
    worst case), `worst_case_bytes` (every batch padded to seq_len, which the fit is judged on), both as
    the device holds them; `seconds`, the whole job (every phase), and `phases`.
    Takes an Estimate or its stored JSON (a job's estimate_json)."""
    data = (
        est
        if isinstance(est, dict)
        else {"memory": est.memory.model_dump(), "time": est.time.model_dump() if est.time else None}
    )
    if "headline" in data:
        return data["headline"]
    mem, time = data["memory"], data.get("time") or {}
    expected = mem.get("expected")
    return {
        "memory_bytes": expected["device_bytes"] if expected else mem["device_bytes"],
        "worst_case_bytes": mem["device_bytes"],
        "fits": mem.get("fits"),
        "verdict": mem.get("verdict"),
        "seconds": time.get("total_seconds") or time.get("seconds"),
        "phases": time.get("phases") or {},
        "train_seconds": time.get("seconds"),
        "device": time.get("device"),
    }


def gpu_of(plan) -> Gpu | None:
    """The plan's device: its GPU, the CPU (gpu='cpu', or neither gpu nor budget), or None (budget only)."""
    if plan.gpu:
        return catalog.find_gpu(plan.gpu)
    return None if plan.budget_gb else catalog.CPU


def on_cpu(plan) -> bool:
    """The one answer to "does this plan train on the CPU?": gpu 'cpu', or neither a GPU nor a budget."""
    gpu = gpu_of(plan)
    return gpu is not None and gpu.is_cpu


def compute_dtype(plan, gpu: Gpu | None) -> str:
    on_cpu = gpu is not None and gpu.is_cpu
    bf16_ok = hardware.calibration().bf16_native if on_cpu else (gpu is None or gpu.supports_bf16)
    return resolve_dtype(plan.dtype, on_cpu=on_cpu, bf16_ok=bf16_ok)


def _recipe(plan, dtype: str, on_gpu: bool, lengths=None) -> Recipe:
    longest = min(max(lengths), plan.seq_len) if lengths else None  # what the job decides `auto` from
    attention = hardware.attention_for(plan.attention, not on_gpu, dtype, longest)
    return Recipe(
        method=plan.method,
        dtype=dtype,
        batch_size=plan.batch_size,
        seq_len=plan.seq_len,
        grad_ckpt=plan.grad_ckpt,
        attention=attention,
        optimizer=plan.optimizer,
        dropout=plan.dropout,
        r=plan.r,
        on_gpu=on_gpu,
        modules_to_save=tuple(plan.modules_to_save),
        grad_accum=plan.grad_accum,
    )


def _params(info, plan, dtype: str) -> ParamCount:
    return count(
        info,
        plan.r,
        plan.targets,
        plan.bias,
        plan.use_dora,
        tuple(plan.modules_to_save),
        save_dtype=dtype,
        method=plan.method,
    )


def _device_bytes(allocated: int, on_gpu: bool) -> tuple[int, int]:
    reserved = int(allocated * (RESERVED_FACTOR if on_gpu else CPU_RESERVED_FACTOR))
    return reserved, reserved + (CUDA_CONTEXT if on_gpu else 0)


def _memory(
    info, plan, pc: ParamCount, gpu: Gpu | None, dtype: str, lengths=None, label_share: float = 1.0
) -> MemoryEstimate:
    on_gpu = gpu is None or not gpu.is_cpu
    recipe = _recipe(plan, dtype, on_gpu, lengths)
    memory_terms = preference.terms_for(plan.objective)  # dpo/orpo: pairs, the reference pass, their head
    terms, notes = memory_terms(info, pc, recipe)
    allocated = sum(terms.values())
    reserved, device = _device_bytes(allocated, on_gpu)
    expected = None
    if lengths:
        rows = min(peak_rows(plan, on_gpu), len(lengths))
        length = padded_length(lengths, rows, plan.seq_len)
        e_recipe = replace(recipe, seq_len=length, label_share=label_share)
        e_terms = memory_terms(info, pc, e_recipe)[0] if e_recipe != recipe else terms
        e_allocated = sum(e_terms.values())
        expected = ExpectedMemory(
            padded_length=length,
            rows=rows,
            allocated_bytes=e_allocated,
            device_bytes=_device_bytes(e_allocated, on_gpu)[1],
            terms=e_terms,
        )
        span = "the first steps, which the CPU peak tracks" if not on_gpu else "the run"
        labelled = (
            f" (the loss, and the LM head, on {label_share:.0%} of them: the answers)" if label_share < 1 else ""
        )
        notes.append(
            f"with the checked data: the longest batch is padded to about {length} tokens{labelled}, the "
            f"expected longest of the {rows} rows of {span} → {human_bytes(expected.device_bytes)}; the fit "
            f"is judged on the worst case, every batch padded to {plan.seq_len}"
        )
    if plan.budget_gb:
        budget = int(plan.budget_gb * GIB)
    elif gpu is not None and gpu.memory_gb:
        budget = int(gpu.memory_gb * GIB)
    elif gpu is not None and gpu.is_cpu and plan.gpu:
        budget = host_ram_bytes()  # training on the CPU means on this machine: its RAM is the limit
    else:
        budget = None
    if on_gpu:
        notes.append(
            f"reserved = allocated x {RESERVED_FACTOR} (allocator cache); device adds "
            f"{CUDA_CONTEXT / GIB:.1f} GiB CUDA context"
        )
    else:
        notes.append(
            "CPU: no CUDA context; the budget is budget_gb if given, else this machine's RAM "
            "(gpu=cpu), else none (no device named)"
        )
    fits = None if budget is None else device <= budget
    # with the data known, the worst case is named as such and the expected figure follows
    worst = " at worst" if expected and expected.padded_length < plan.seq_len else ""
    if budget is None:
        verdict = f"needs about {human_bytes(device)}{worst}; no budget given"
    elif fits:
        verdict = f"fits: about {human_bytes(device)} of {human_bytes(budget)} ({device / budget:.0%}){worst}"
    else:
        limit = "this machine's RAM" if not on_gpu and not plan.budget_gb else "budget"
        verdict = f"does not fit: needs about {human_bytes(device)}{worst}, {limit} {human_bytes(budget)}"
    if worst and expected is not None:
        verdict += f"; about {human_bytes(expected.device_bytes)} with this data's lengths"
    return MemoryEstimate(
        allocated_bytes=allocated,
        reserved_bytes=reserved,
        device_bytes=device,
        budget_bytes=budget,
        fits=fits,
        terms=terms,
        assumptions=notes,
        verdict=verdict,
        expected=expected,
    )


def _cpu_precision_note(plan, dtype: str) -> str:
    """Why this precision on this CPU, and what a bf16 request costs where bf16 is not native."""
    if plan.dtype == "auto":
        return "precision auto: " + hardware.cpu_precision()[1]
    if dtype == "bf16":
        return hardware.bf16_cost_note() or "precision bf16 (asked): native on this CPU"
    return f"precision {dtype} (asked)"


def scoring_of(plan, padded_to: int | None = None) -> Scoring | None:
    """The held-out scoring the job will run (engine.evaluate.heldout): the demo skill's own test split and
    answer length, else `holdout_size` of the rows with answers guessed at half of MAX_NEW_TOKENS."""
    ref = DatasetRef.parse(plan.dataset) if plan.dataset else None
    skill = demo.SKILLS.get(ref.skill) if ref is not None and ref.is_demo else None
    if skill is not None:
        rows = demo.TEST_ROWS if plan.eval_split > 0 else 0
    elif plan.dataset_rows:
        rows = holdout_size(plan.dataset_rows, plan.eval_split)
    else:
        return None
    answer = skill.max_new_tokens if skill else min(MAX_NEW_TOKENS // 2, plan.seq_len)
    return Scoring(
        eval_rows=rows,
        generated_rows=min(rows, plan.eval_generations),
        answer_tokens=answer,
        batch=DEMO_GENERATE_BATCH if skill else GENERATE_BATCH,
        row_tokens=padded_to or plan.seq_len,
    )


def host_ram_bytes() -> int:
    """This machine's physical RAM: the CPU's counterpart of a GPU's memory."""

    return int(psutil.virtual_memory().total)


def memory_for(plan, lengths=None, label_share: float = 1.0) -> MemoryEstimate:
    """Memory only: what sweeps and charts call many times. `lengths`: the data's token lengths;
    `label_share`: the share of them the loss is on (engine.data.dataset.DataReport.label_share)."""
    info = resolve(plan.model)
    gpu = gpu_of(plan)
    dtype = compute_dtype(plan, gpu)
    return _memory(info, plan, _params(info, plan, dtype), gpu, dtype, lengths, label_share)


def estimate(plan, lengths=None, label_share: float = 1.0) -> Estimate:
    """The whole estimate; `lengths` (the checked data's token lengths) adds the expected memory and
    sizes the time by batches padded to their expected longest row rather than to seq_len."""
    info = resolve(plan.model)
    gpu = gpu_of(plan)
    dtype = compute_dtype(plan, gpu)
    pc = _params(info, plan, dtype)
    mem = _memory(info, plan, pc, gpu, dtype, lengths, label_share)
    padded_to = padded_length(lengths, plan.batch_size, plan.seq_len) if lengths else None
    time = estimate_time(info, plan, gpu, dtype, pc.lora_params, padded_to) if gpu is not None else None
    time = preference.scale_time(time, plan)  # dpo/orpo: two sequences per pair (+ DPO's reference pass)
    if time is not None and gpu is not None and gpu.is_cpu:
        time.assumptions.insert(0, _cpu_precision_note(plan, dtype))
    if time is not None and time.seconds is not None:
        time.phases = phase_seconds(info, plan, gpu, time, scoring_of(plan, padded_to), pc.adapter_bytes)
        time.total_seconds = round(sum(time.phases.values()), 1)
        time.assumptions.append(
            "the whole job: "
            + ", ".join(f"{k} {v:g} s" for k, v in time.phases.items())
            + " (training includes its held-out evaluations every save_steps)"
        )
    return Estimate(
        model=plan.model,
        method=plan.method,
        dtype=dtype,
        device=gpu.name if gpu else None,
        trainable_params=pc.trainable,
        total_params=pc.total,
        trainable_percent=round(pc.percent, 4),
        adapter_bytes=pc.adapter_bytes,
        by_module_type=pc.by_module_type,
        by_layer=pc.by_layer,
        memory=mem,
        time=time,
    )
