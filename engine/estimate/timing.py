"""Training time from FLOPs per token and a stated utilisation of the device's peak.

Per token, a forward pass through the matmul weights costs 2N FLOPs (N = weights that
take part in matmuls) and attention 2·L·s·d more. Backward costs twice the forward when
every weight trains (6N in all); with a frozen base only the input gradients flow back
(2N), so LoRA costs 4N plus 6 per adapter weight. Gradient checkpointing repeats the
forward (+2N). QLoRA dequantizes every weight before its matmul: a stated +15 %.
"""

from __future__ import annotations

import math

from pydantic import BaseModel

from engine.estimate import hardware
from engine.model.catalog import Gpu
from engine.model.introspect import ModelInfo

GPU_UTILISATION = 0.35  # share of dense peak a HF/TRL training loop typically reaches
CPU_UTILISATION = 0.5  # of this CPU's measured matmul rate (engine.estimate.hardware)
QLORA_OVERHEAD = 1.15


class TimeEstimate(BaseModel):
    device: str
    tokens_per_second: float
    seconds: float | None
    total_tokens: int | None
    steps: int | None
    flops_per_token: float
    utilisation: float
    assumptions: list[str]


def matmul_params(info: ModelInfo) -> int:
    """Weights that take part in a matmul for each token (the head always does; MoE: active experts)."""
    head = info.vocab * info.hidden
    experts: float = 0
    if info.expert_params:
        n_exp = getattr(info.config, "num_local_experts", None) or getattr(info.config, "num_experts", 1) or 1
        experts = info.expert_params * (getattr(info.config, "num_experts_per_tok", 1) or 1) / n_exp
    return int(info.linear_params + experts + head)


# Data-parallel processes each train a full copy on their share of a batch and average gradients
# every step; on one machine that all-reduce usually costs ~10% of a small model's step.
DATA_PARALLEL_SCALING = 0.9


def flops_per_token(info: ModelInfo, method: str, adapter_params: int, seq_len: int, grad_ckpt: bool) -> float:
    n = matmul_params(info)
    attn_fwd = 2 * info.layers * seq_len * info.heads * info.head_dim  # QK^T and PV, causal-halved x2
    flops: float
    if method == "full":
        flops = 6 * n + 3 * attn_fwd
    else:
        flops = 4 * n + 3 * attn_fwd + 6 * adapter_params
    if grad_ckpt:
        flops += 2 * n + attn_fwd
    if method == "qlora":
        flops *= QLORA_OVERHEAD
    return float(flops)


def train_tokens(plan, padded_to: int | None = None) -> tuple[int | None, int | None]:
    """(steps, total padded tokens) from max_steps or dataset_rows x epochs; (None, None) if unknown.
    Each micro-batch is `padded_to` tokens long (its expected longest row), else seq_len."""
    per_step = plan.effective_batch * (padded_to or plan.seq_len)
    if plan.max_steps:
        return plan.max_steps, plan.max_steps * per_step
    if plan.dataset_rows:
        train_rows = max(1, int(plan.dataset_rows * (1 - plan.eval_split)))
        steps = math.ceil(math.ceil(train_rows / plan.effective_batch) * plan.epochs)
        return steps, steps * per_step
    return None, None


def estimate_time(info: ModelInfo, plan, gpu: Gpu, dtype: str, adapter_params: int,
                  padded_to: int | None = None) -> TimeEstimate:
    """`padded_to`: the expected longest row of a batch, from the checked data (else seq_len)."""
    fpt = flops_per_token(info, plan.method, adapter_params, padded_to or plan.seq_len, plan.grad_ckpt)
    util = CPU_UTILISATION if gpu.is_cpu else GPU_UTILISATION
    if gpu.is_cpu:
        cal = hardware.calibration()
        tflops = cal.step_tflops(dtype)
        source = f"CPU ({cal.cpu}, {cal.threads} threads): {cal.tflops(dtype):.3g} TFLOP/s measured ({dtype} matmul)"
        if dtype != "fp32":
            source += (f", {tflops:.3g} for a whole step ({hardware.BF16_STEP_SHARE:.0%} of it in {dtype}, "
                       f"the rest at the fp32 rate {cal.fp32_tflops:.3g})")
    else:
        tflops = gpu.peak_tflops(dtype)
        source = f"{gpu.name}: {tflops:g} TFLOPs peak ({dtype})"
    tps = tflops * 1e12 * util / fpt
    steps, tokens = train_tokens(plan, padded_to)
    notes = [f"{source} at {util:.0%} utilisation",
             f"tokens counted padded to about {padded_to}, the expected longest row of a batch of the checked data"
             if padded_to else "tokens counted padded to seq_len (batch_size x seq_len per micro-batch)"]
    processes = plan.num_processes if isinstance(plan.num_processes, int) else 1
    if processes > 1:
        tps *= processes * DATA_PARALLEL_SCALING
        notes.append(f"{processes} processes, data parallel: throughput x{processes} at "
                     f"{DATA_PARALLEL_SCALING:.0%} scaling (gradients are averaged across processes every "
                     "step); memory figures are per device, each holds a full copy of the model")
    if plan.grad_ckpt:
        notes.append("gradient checkpointing repeats the forward pass")
    if plan.method == "qlora":
        notes.append(f"4-bit dequantization adds ~{QLORA_OVERHEAD - 1:.0%}")
    if tokens is None:
        notes.append("no dataset_rows or max_steps: total time unknown")
    return TimeEstimate(device=gpu.name, tokens_per_second=tps, seconds=tokens / tps if tokens else None,
                        total_tokens=tokens, steps=steps, flops_per_token=fpt, utilisation=util, assumptions=notes)
