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
    # every phase of the job (PHASES order; `seconds` above is the training steps alone), and their sum:
    # what the user waits for, the ETA every screen shows
    phases: dict[str, float] = {}
    total_seconds: float | None = None


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


def estimate_time(
    info: ModelInfo, plan, gpu: Gpu, dtype: str, adapter_params: int, padded_to: int | None = None
) -> TimeEstimate:
    """`padded_to`: the expected longest row of a batch, from the checked data (else seq_len)."""
    fpt = flops_per_token(info, plan.method, adapter_params, padded_to or plan.seq_len, plan.grad_ckpt)
    util = CPU_UTILISATION if gpu.is_cpu else GPU_UTILISATION
    if gpu.is_cpu:
        cal = hardware.calibration()
        tflops = cal.step_tflops(dtype)
        source = f"CPU ({cal.cpu}, {cal.threads} threads): {cal.tflops(dtype):.3g} TFLOP/s measured ({dtype} matmul)"
        if dtype != "fp32":
            source += (
                f", {tflops:.3g} for a whole step ({hardware.BF16_STEP_SHARE:.0%} of it in {dtype}, "
                f"the rest at the fp32 rate {cal.fp32_tflops:.3g})"
            )
    else:
        tflops = gpu.peak_tflops(dtype)
        source = f"{gpu.name}: {tflops:g} TFLOPs peak ({dtype})"
    tps = tflops * 1e12 * util / fpt
    steps, tokens = train_tokens(plan, padded_to)
    notes = [
        f"{source} at {util:.0%} utilisation",
        f"tokens counted padded to about {padded_to}, the expected longest row of a batch of the checked data"
        if padded_to
        else "tokens counted padded to seq_len (batch_size x seq_len per micro-batch)",
    ]
    processes = plan.num_processes if isinstance(plan.num_processes, int) else 1
    if processes > 1:
        tps *= processes * DATA_PARALLEL_SCALING
        notes.append(
            f"{processes} processes, data parallel: throughput x{processes} at "
            f"{DATA_PARALLEL_SCALING:.0%} scaling (gradients are averaged across processes every "
            "step); memory figures are per device, each holds a full copy of the model"
        )
    if plan.grad_ckpt:
        notes.append("gradient checkpointing repeats the forward pass")
    if plan.method == "qlora":
        notes.append(f"4-bit dequantization adds ~{QLORA_OVERHEAD - 1:.0%}")
    if tokens is None:
        notes.append("no dataset_rows or max_steps: total time unknown")
    return TimeEstimate(
        device=gpu.name,
        tokens_per_second=tps,
        seconds=tokens / tps if tokens else None,
        total_tokens=tokens,
        steps=steps,
        flops_per_token=fpt,
        utilisation=util,
        assumptions=notes,
    )


# --- the phases around training -------------------------------------------------------------
# A job is more than its training steps: engine.train.run reports these phases (events.Phase), and
# the ETA counts each of them. Training includes its held-out evaluations (every save_steps).
PHASES = ("loading model", "preparing data", "scoring base", "training", "scoring adapter", "saving")
# Measured on the demo (engine/data/demo.py, two idle AVX512-BF16 cores): `demo --wait` took 38.6-41.5 s,
# 30 steps at ~0.6 s (18 s) of it training; the job log's phase lines put loading at ~2 s (the worker had
# imported its libraries while the plan was checked, dispatcher.standby) and preparing the data at ~2 s,
# which leaves ~6 s each for scoring base and adapter (24 rows, 16 new tokens) and ~3 s for saving.
LOAD_SECONDS = 2.0
LOAD_BYTES_PER_SECOND = 400e6  # reading and placing the base's weights (a stated disk rate)
PREPARE_SECONDS = 2.0
PREPARE_ROWS_PER_SECOND = 500  # tokenizing and labelling beyond the demo's 240 rows
SAVE_SECONDS = 3.0  # adapter, card, metrics.csv, loss.png, plan
EVAL_CHECKPOINT_SECONDS = 1.5  # an evaluation during training saves a checkpoint too (demo.default_plan)
DECODE_STEP_SECONDS_PER_LAYER = 0.01  # CPU greedy decoding: a step's fixed cost per layer (the ~6 s above)
GPU_DECODE_STEP_SECONDS_PER_LAYER = 0.3e-3  # a GPU: kernel launches per layer per decoded token (stated)
ADAPTER_FORWARD = 1.33  # a LoRA forward against the base's on a CPU (heldout.py: its own casts and matmuls)


class Scoring(BaseModel):
    """What the held-out scoring will run: rows for the loss, rows and tokens for greedy answers."""

    eval_rows: int
    generated_rows: int
    answer_tokens: int  # new tokens per greedy answer (the demo skill's, else a stated guess)
    batch: int  # rows generated together (heldout.py)
    row_tokens: int  # tokens per held-out row (padded)


def phase_seconds(
    info: ModelInfo, plan, gpu: Gpu, time_est: TimeEstimate, scoring: Scoring | None, adapter_bytes: int
) -> dict[str, float]:
    """Seconds per phase (PHASES order); training is the steps plus the held-out evaluations inside it."""
    rate = time_est.tokens_per_second * time_est.flops_per_token  # FLOP/s the device reaches
    forward = (
        2 * matmul_params(info)
        + 2 * info.layers * (scoring.row_tokens if scoring else plan.seq_len) * info.heads * info.head_dim
    )
    weights = (info.total_params or 0) * (0.55 if plan.method == "qlora" else 2)
    out = {
        "loading model": LOAD_SECONDS + weights / LOAD_BYTES_PER_SECOND,
        "preparing data": PREPARE_SECONDS + (plan.dataset_rows or 0) / PREPARE_ROWS_PER_SECOND,
    }
    base = adapter = evals = 0.0
    if scoring is not None and scoring.eval_rows:
        loss = scoring.eval_rows * scoring.row_tokens * forward / rate
        per_layer = DECODE_STEP_SECONDS_PER_LAYER if gpu.is_cpu else GPU_DECODE_STEP_SECONDS_PER_LAYER
        batches = math.ceil(scoring.generated_rows / scoring.batch) if scoring.generated_rows else 0
        generate = (
            batches * scoring.answer_tokens * info.layers * per_layer
            + scoring.generated_rows * (scoring.row_tokens + scoring.answer_tokens) * forward / rate
        )
        base = min(loss + generate, plan.eval_seconds)  # heldout.py stops the base pass at eval_seconds
        adapter = base * ADAPTER_FORWARD
        evals = (time_est.steps or 0) // max(1, plan.save_steps) * (loss * ADAPTER_FORWARD + EVAL_CHECKPOINT_SECONDS)
    out.update(
        {
            "scoring base": base,
            "training": (time_est.seconds or 0.0) + evals,
            "scoring adapter": adapter,
            "saving": SAVE_SECONDS + adapter_bytes / LOAD_BYTES_PER_SECOND,
        }
    )
    return {k: round(out[k], 1) for k in PHASES}


def remaining(
    phases: dict[str, float],
    phase: str | None,
    elapsed: float | None,
    train_eta: float | None,
    base_seconds: float | None = None,
) -> dict[str, float]:
    """Seconds left per phase for a running job: the current phase's estimate less its elapsed time (or the
    trainer's own ETA while training), and every later phase in full. Measured facts replace estimates:
    the adapter is scored on the rows the base pass got through, so its time follows the base's."""
    left = dict(phases)
    if base_seconds is not None:
        left["scoring adapter"] = round(base_seconds * ADAPTER_FORWARD, 1)
    if phase not in PHASES:
        return left
    now = PHASES.index(phase)
    for name in PHASES[:now]:
        left[name] = 0.0
    if phase == "training" and train_eta is not None:
        left["training"] = float(train_eta)
    else:
        left[phase] = round(max(0.0, left[phase] - (elapsed or 0.0)), 1)
    return left
