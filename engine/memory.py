"""Peak training memory, term by term, for our recipe (TRL SFTTrainer + PEFT).

The recipe: padded batches of batch_size x seq_len tokens, AdamW (torch or bitsandbytes),
LoRA adapters kept in fp32 (PEFT's default), base weights in the compute dtype or 4-bit
NF4 for QLoRA. The activation terms follow what PyTorch autograd actually saves for a
Llama-style decoder layer (RMSNorm inputs, rotary q/k/v for SDPA, MLP gate/up/act
products, LoRA dropout masks and A-outputs per adapted module), derived from the module
tree, not a constant. `bench/measure_peak.py` measures the same on CPU to check it.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.introspect import ModelInfo
from engine.params import ParamCount

GiB = 1024**3
CUDA_CONTEXT = int(0.5 * GiB)  # CUDA context + cuBLAS/cuDNN handles, outside the allocator
RESERVED_FACTOR = 1.10  # PyTorch caching allocator: reserved vs allocated at the peak
CPU_RESERVED_FACTOR = 1.0

# Module short names by their place in a block: the input they read decides which
# activations PyTorch saves (modules reading the same tensor share one saved copy).
_ATTN_OUT = {"o_proj", "dense", "out_proj", "wo", "c_proj"}
_MLP_OUT = {"down_proj", "w2", "fc2", "c_proj", "dense_4h_to_h", "wo"}
_ATTN_WORDS = ("attn", "attention")


@dataclass
class Recipe:
    method: str  # lora | qlora | full
    dtype: str  # fp32 | bf16 | fp16: compute and (non-quantized) storage dtype
    batch_size: int
    seq_len: int
    grad_ckpt: bool
    attention: str  # sdpa | eager
    optimizer: str
    dropout: float
    r: int
    on_gpu: bool
    double_quant: bool = True


def _bytes(dtype: str) -> int:
    return 4 if dtype == "fp32" else 2


def _slot(info: ModelInfo, m) -> tuple[str, int]:
    """Which saved tensor a module's input is (shared by modules reading the same tensor)."""
    attn = any(w in m.name for w in _ATTN_WORDS)
    if attn:
        return ("attn_out" if m.type in _ATTN_OUT else "attn_in"), m.in_features
    return ("mlp_out" if m.type in _MLP_OUT else "mlp_in"), m.in_features


def activation_bytes_per_token_layer(info: ModelInfo, rc: Recipe, adapted: list, layer: int = 0) -> dict[str, float]:
    """Bytes saved for backward per token in one decoder layer, by part."""
    cb = _bytes(rc.dtype)
    h, q = info.hidden, info.heads * info.head_dim
    kv = info.kv_heads * info.head_dim
    inter = info.intermediate
    parts: dict[str, float] = {}
    # RMSNorm (x2): its input as fp32 (the residual itself in fp32, a copy in half) and 1/rms;
    # the normalized x only when the norm weight trains (full fine-tuning)
    norm = h * 4 + 4 + (h * cb if rc.method == "full" else 0)
    # the first layer's input (frozen embeddings) needs no gradient, so its first norm and
    # the dropout noise of the modules reading it save nothing (unless checkpointing or full)
    first = layer == 0 and rc.method != "full" and not rc.grad_ckpt
    parts["norms"] = norm if first else 2 * norm
    # SDPA keeps rotary q, k, v (k/v repeated to all heads when a padding mask is given),
    # its output and the log-sum-exp; eager keeps the probabilities (heads x seq per token).
    k_saved = q if info.kv_heads != info.heads else kv
    parts["attention"] = (q + 2 * k_saved + q) * cb + info.heads * 4
    if rc.attention == "eager":
        parts["attention"] += info.heads * rc.seq_len * (4 + (cb if cb != 4 else 0))
    # MLP: gate output (activation input), activation output, up output (both for the product)
    experts_active = getattr(info.config, "num_experts_per_tok", 1) or 1
    parts["mlp"] = 3 * inter * cb * experts_active

    # Inputs of layers whose weights need gradients, and LoRA's per-module tensors
    layer_mods = [m for m in _by_layer(info).get(layer, []) if not m.pseudo]
    adapted_here = [m for m in adapted if m.layer == layer]
    saved_inputs: dict[str, int] = {}
    lora = 0.0
    if rc.method == "full":
        for m in layer_mods:
            slot, f_in = _slot(info, m)
            saved_inputs[slot] = f_in
    else:
        for m in adapted_here:
            slot, f_in = _slot(info, m)
            k = experts_active if m.pseudo and m.experts > 1 else 1
            if rc.dropout > 0 and not m.pseudo:
                # dropout: a mask (bool on CUDA, a float noise tensor on CPU) + its output, per module
                mask = 0 if first and slot == "attn_in" else (1 if rc.on_gpu else cb)
                lora += f_in * (mask + cb) * k
            else:
                saved_inputs[slot] = f_in
            lora += rc.r * cb * k * (2 if m.pseudo and m.experts > 1 and m.type in ("w1", "w3") else 1)
    parts["linear inputs"] = sum(saved_inputs.values()) * cb
    parts["lora"] = lora
    return parts


def _by_layer(info: ModelInfo) -> dict[int | None, list]:
    groups = info.extra.get("by_layer")
    if groups is None:
        groups = {}
        for m in info.linear_modules:
            groups.setdefault(m.layer, []).append(m)
        info.extra["by_layer"] = groups
    return groups


def _per_layer(info: ModelInfo, rc: Recipe, adapted: list) -> list[float]:
    """Saved bytes per token for every layer; identical layers are computed once."""
    adapted_by_layer: dict = {}
    for m in adapted:
        adapted_by_layer.setdefault(m.layer, []).append(m)
    cache: dict = {}
    out = []
    for i in range(info.layers):
        shape = tuple((m.type, m.in_features, m.out_features) for m in _by_layer(info).get(i, []))
        key = (i == 0, shape, tuple((m.type, m.in_features, m.experts) for m in adapted_by_layer.get(i, [])))
        if key not in cache:
            cache[key] = sum(activation_bytes_per_token_layer(info, rc, adapted_by_layer.get(i, []), i).values())
        out.append(cache[key])
    return out


def _base_weights(info: ModelInfo, rc: Recipe) -> int:
    cb = _bytes(rc.dtype)
    if rc.method != "qlora":
        return info.total_params * cb
    # NF4: 4 bits per weight + one absmax per 64 weights (fp32, or 8-bit + fp32 per 256 blocks
    # with double quantization). Embeddings, the head and norms stay in the compute dtype.
    per = 0.5 + (1 / 64 + 4 / (64 * 256) if rc.double_quant else 4 / 64)
    quantized = info.linear_params + info.expert_params
    return int(quantized * per + (info.total_params - quantized) * cb)


def _optimizer_bytes_per_param(rc: Recipe, param_bytes: int) -> float:
    if rc.optimizer in ("adamw_8bit", "paged_adamw_8bit"):
        return 2 + 2 * 4 / 2048  # two 8-bit states + blockwise fp32 scales
    return 2 * param_bytes  # exp_avg and exp_avg_sq in the parameter dtype


def memory_terms(info: ModelInfo, pc: ParamCount, rc: Recipe) -> tuple[dict[str, int], list[str]]:
    cb = _bytes(rc.dtype)
    tokens = rc.batch_size * rc.seq_len
    terms: dict[str, int] = {}
    notes: list[str] = []
    terms["base weights"] = _base_weights(info, rc)
    if rc.method == "full":
        p_bytes = cb
        terms["adapter weights"] = 0
        trainable = info.total_params
        notes.append(f"full fine-tuning keeps weights, gradients and AdamW states in {rc.dtype} (no fp32 master copy)")
    else:
        p_bytes = 4  # PEFT keeps adapters in fp32
        trainable = pc.trainable
        terms["adapter weights"] = pc.lora_params * 4 + (pc.extra_trainable * cb if pc.extra_trainable else 0)
    terms["gradients"] = int(trainable * p_bytes)
    terms["optimizer states"] = int(trainable * _optimizer_bytes_per_param(rc, p_bytes))

    per_layer = _per_layer(info, rc, pc.adapted)
    final_norm = info.hidden * 4 + 4 + (info.hidden * cb if rc.method == "full" else 0)
    # the padding mask (batch x 1 x seq x seq, compute dtype) is saved by every SDPA call: one tensor
    mask = rc.seq_len * cb
    head_input = info.hidden * cb if rc.method == "full" or any(m.name == info.output_name for m in pc.adapted) else 0
    if rc.grad_ckpt:
        # only each layer's input survives the forward; backward recomputes one layer at a time
        acts = tokens * (info.layers * info.hidden * cb + final_norm + head_input + mask)
        notes.append("gradient checkpointing: one layer input per layer kept, one layer recomputed at a time")
    else:
        acts = tokens * (sum(per_layer) + final_norm + head_input + mask)
    terms["activations"] = int(acts)
    # the loss keeps log_softmax's fp32 output (and the int64 labels) until backward reaches it
    terms["logits + loss"] = int(tokens * (info.vocab * 4 + 8))
    # transient, the largest of: the loss backward (incoming and outgoing fp32 gradients of
    # log_softmax), the forward's logits (compute dtype + fp32 upcast) and, inside a layer's
    # backward, gradients of the widest MLP part; plus for QLoRA one dequantized weight
    loss_bwd = 2 * info.vocab * 4
    loss_fwd = info.vocab * (cb + 4) if cb != 4 else info.vocab * 4
    layer_bwd = (2 * info.intermediate + 2 * info.hidden) * cb
    # with checkpointing a layer's activations are rebuilt in backward, after the loss is done
    # (the loss's saved tensors are freed by then, so they are not on top of it)
    recompute = max(per_layer) - (info.vocab * 4 + 8) if rc.grad_ckpt else 0
    transient = tokens * max(loss_bwd, loss_fwd, layer_bwd + recompute)
    if rc.method == "qlora":
        widest = max((m.in_features * m.out_features for m in info.linear_modules
                      if m.name != info.output_name and not m.pseudo), default=0)
        transient += widest * cb
    terms["transient buffers"] = int(transient)
    notes.append(f"compute dtype {rc.dtype}; {rc.attention} attention; padded batches of "
                 f"{rc.batch_size} x {rc.seq_len} tokens")
    if rc.method == "qlora":
        notes.append("4-bit NF4 base" + (" with double quantization" if rc.double_quant else "")
                     + "; embeddings, head and norms unquantized")
    if rc.optimizer.startswith("paged"):
        notes.append("paged optimizer: states can spill to CPU RAM on spikes; counted on the device here")
    return terms, notes
