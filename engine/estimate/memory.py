"""Peak training memory, term by term, for our recipe (TRL SFTTrainer + PEFT).

The recipe: padded batches of batch_size x seq_len tokens, AdamW (torch or bitsandbytes),
LoRA adapters kept in fp32 (PEFT's default), base weights in the compute dtype or 4-bit
NF4 for QLoRA. The activation terms follow what PyTorch autograd actually saves for a
Llama-style decoder layer (RMSNorm inputs, rotary q/k/v for SDPA, MLP gate/up/act
products, LoRA dropout masks and A-outputs per adapted module), derived from the module
tree, not a constant. `bench/measure_peak.py` measures the same on CPU to check it.

The LM head: TRL 1.16's SFTTrainer always installs a fused, chunked head
(trl/kernels/chunked_logprob.py), so the batch x seq x vocab logits never exist in
training (evaluation uses the same fused forward). `fused_head` models its buffers on a
GPU; on a CPU the job swaps in engine.train.lm_head (row chunks, labelled positions only),
which `cpu_head` models.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.estimate.params import ParamCount
from engine.model.introspect import ModelInfo
from engine.train import lm_head
from engine.units import GIB

CUDA_CONTEXT = int(0.5 * GIB)  # CUDA context + cuBLAS/cuDNN handles, outside the allocator
RESERVED_FACTOR = 1.10  # PyTorch caching allocator: reserved vs allocated at the peak
CPU_RESERVED_FACTOR = 1.0

# Module short names by their place in a block: the input they read decides which
# activations PyTorch saves (modules reading the same tensor share one saved copy).
_ATTN_OUT = {"o_proj", "dense", "out_proj", "wo", "c_proj"}
_MLP_OUT = {"down_proj", "w2", "fc2", "c_proj", "dense_4h_to_h", "wo"}
_ATTN_WORDS = ("attn", "attention")

# TRL's fused LM head: a [TOKEN_TILE, VOCAB_TILE] projection buffer in the compute dtype,
# allocated at full width even when the vocabulary is narrower (kernels/chunked_logprob.py
# TOKEN_CHUNK_SIZE; trainer/utils.py _CHUNKED_LOGPROB_CHUNK_SIZE)
TOKEN_TILE = 4096
VOCAB_TILE = 32768
# Without Triton (CPU) the tile is folded in torch ops, whose fp32 temporaries per tile
# element peak at 13 bytes in the forward (z, the is-top1 bool mask, z - max, exp, e * z)
# and 29 in the backward (y, z, log p, p, grad, is-target mask and its float, the
# product): derived from _forward_tile/_backward_tile and measured with engine/peak.py.
CPU_FOLD_FWD = 13
CPU_FOLD_BWD = 29


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
    on_gpu: bool  # CUDA: TRL folds the head's tiles in Triton kernels; CPU: in torch ops
    double_quant: bool = True
    label_share: float = 1.0  # positions with a label (the LM head scores only those); 1 = the upper bound
    modules_to_save: tuple[str, ...] = ()
    grad_accum: int = 1


@dataclass
class HeadBytes:
    saved: int  # from the head's forward to its backward
    forward: int  # transient inside the forward
    backward: int  # transient inside the backward


def fused_head(
    scored: int, vocab: int, hidden: int, dtype: str, on_gpu: bool, head_trains: bool = False, softcap: bool = False
) -> HeadBytes:
    """Bytes of TRL 1.16's fused LM head (ChunkedLogProbFunction) for `scored` positions.

    `scored` is every position but the last of each row on the CPU; on CUDA only positions
    with a label (prompt tokens drop out), so batch x (seq - 1) is the upper bound there.
    """
    cb = _bytes(dtype)
    rows = min(scored, TOKEN_TILE)
    cols = min(vocab, VOCAB_TILE)  # the widest tile
    buffer = rows * VOCAB_TILE * cb  # mm_buf, the same shape in forward and backward
    # saved: the (copied) hidden rows, int64 targets, fp32 log Z and entropy; the outputs
    # (log-probs, entropy, is-top1) and their masked copies live until backward too
    saved = scored * (hidden * cb + 8 + 8 + 2 * 9 + 1)
    stats = 7 * scored * 4  # fp32 online-logsumexp statistics per position
    grads = scored * hidden * 4 + (vocab * hidden * 4 if head_trains else 0)  # fp32 accumulators
    if cb != 4:
        grads += scored * hidden * cb + (vocab * hidden * cb if head_trains else 0)  # cast back on return
    if on_gpu:  # Triton keeps a tile's math in registers and rewrites the tile in place
        return HeadBytes(saved, buffer + stats, buffer + grads)
    fold_bwd = CPU_FOLD_BWD + (4 if softcap else 0)  # tanh(y / cap) stays alive for its derivative
    return HeadBytes(saved, buffer + stats + CPU_FOLD_FWD * rows * cols, buffer + grads + fold_bwd * rows * cols)


def cpu_head(scored: int, vocab: int, hidden: int, dtype: str, head_trains: bool = False) -> HeadBytes:
    """Bytes of engine.train.lm_head for `scored` labelled positions (at most batch x (seq - 1)).

    One ROW_CHUNK x vocab block at a time: forward, the logits in the compute dtype, their fp32
    log-softmax and the entropy's exp and product; backward, the same block rebuilt (the logits, an
    fp32 copy of half-precision ones and the log-softmax, which becomes the gradient in place).
    """

    cb = _bytes(dtype)
    block = min(scored, lm_head.ROW_CHUNK) * vocab  # read when called: a test sets smaller chunks
    # saved: the gathered hidden rows, int64 targets, fp32 log-probs and entropy and bool top-1,
    # each also scattered back to batch x seq, and the label mask
    saved = scored * (hidden * cb + 8 + 2 * 9 + 1)
    grads = scored * hidden * cb + (vocab * hidden * 4 if head_trains else 0)
    return HeadBytes(saved, (cb + 12) * block, (cb + 4 + (4 if cb != 4 else 0)) * block + grads)


def _bytes(dtype: str) -> int:
    return 4 if dtype == "fp32" else 2


def _flow_bytes(rc: Recipe) -> int:
    """Bytes per element of the residual stream and the MLP's elementwise flow.

    The compute dtype, except under QLoRA: PEFT's `prepare_model_for_kbit_training` upcasts the
    unquantized weights (embeddings, norms) to fp32, and bitsandbytes' 4-bit layers hand back
    their input's dtype, so the residual stream and the MLP between its matmuls run in fp32.
    """
    return 4 if rc.method == "qlora" else _bytes(rc.dtype)


def _slot(info: ModelInfo, m) -> tuple[str, int]:
    """Which saved tensor a module's input is (shared by modules reading the same tensor)."""
    attn = any(w in m.name for w in _ATTN_WORDS)
    if attn:
        return ("attn_out" if m.type in _ATTN_OUT else "attn_in"), m.in_features
    return ("mlp_out" if m.type in _MLP_OUT else "mlp_in"), m.in_features


def activation_bytes_per_token_layer(info: ModelInfo, rc: Recipe, adapted: list, layer: int = 0) -> dict[str, float]:
    """Bytes saved for backward per token in one decoder layer, by part."""
    cb, fb = _bytes(rc.dtype), _flow_bytes(rc)
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
    parts["mlp"] = 3 * inter * fb * experts_active

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
                # dropout: a bool mask (torch's CUDA kernel; engine.train.dropout on the CPU)
                # + its output, per module
                mask = 0 if first and slot == "attn_in" else 1
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
    """Peak device memory, term by term, with the notes that say how each was counted."""
    terms: dict[str, int] = {}
    notes: list[str] = []
    _weights_and_states(info, pc, rc, terms, notes)
    per_layer = _per_layer(info, rc, pc.adapted)
    terms["activations"] = _activations(info, rc, per_layer, notes)
    head = _lm_head(info, pc, rc, terms, notes)
    terms["transient buffers"] = _transient(info, rc, per_layer, head)
    _gradients_born_in_backward(rc, terms, notes)
    _recipe_notes(rc, notes)
    return terms, notes


def _weights_and_states(info: ModelInfo, pc: ParamCount, rc: Recipe, terms: dict[str, int], notes: list[str]) -> None:
    """Base and adapter weights, gradients and optimizer states of what trains."""
    cb = _bytes(rc.dtype)
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


def _activations(info: ModelInfo, rc: Recipe, per_layer: list[float], notes: list[str]) -> int:
    """What the forward saves for the backward: every layer's tensors, or with checkpointing each layer's input."""
    cb, fb = _bytes(rc.dtype), _flow_bytes(rc)
    tokens = rc.batch_size * rc.seq_len
    final_norm = info.hidden * 4 + 4 + (info.hidden * cb if rc.method == "full" else 0)
    # the padding mask (batch x 1 x seq x seq, compute dtype) is saved by every SDPA call: one tensor
    mask = rc.seq_len * cb
    if rc.grad_ckpt:
        # only each layer's input survives the forward; backward recomputes one layer at a time
        notes.append("gradient checkpointing: one layer input per layer kept, one layer recomputed at a time")
        return int(tokens * (info.layers * info.hidden * fb + final_norm + mask))
    return int(tokens * (sum(per_layer) + final_norm + mask))


def _lm_head(info: ModelInfo, pc: ParamCount, rc: Recipe, terms: dict[str, int], notes: list[str]):
    """The LM head's saved tensors, as the job computes it (TRL's fused head, or the CPU's chunked one)."""
    head_trains = (
        rc.method == "full"
        or info.output_name in rc.modules_to_save
        or any(m.name == info.output_name for m in pc.adapted)
    )
    softcap = getattr(info.config, "final_logit_softcapping", None) is not None
    scored = max(1, round(rc.batch_size * max(rc.seq_len - 1, 1) * rc.label_share))

    text_config = info.config.get_text_config() if hasattr(info.config, "get_text_config") else info.config
    if rc.on_gpu or not lm_head.applies(text_config):  # where the job keeps TRL's fused head
        head = fused_head(scored, info.vocab, info.hidden, rc.dtype, rc.on_gpu, head_trains, softcap)
        terms["fused LM head"] = head.saved
        notes.append(
            f"LM head: TRL's fused chunked head, no full logits; one {min(scored, TOKEN_TILE)} x "
            f"{VOCAB_TILE} {rc.dtype} tile buffer, folded "
            + (
                "in Triton; only labelled positions are scored, all counted here"
                if rc.on_gpu
                else "in torch with fp32 temporaries per tile element"
            )
        )
    else:
        head = cpu_head(scored, info.vocab, info.hidden, rc.dtype, head_trains)
        terms["LM head"] = head.saved
        chunk = lm_head.ROW_CHUNK
        notes.append(
            f"LM head: only labelled positions are scored, {chunk} at a time (a {chunk} x "
            f"{info.vocab} block), no full logits; "
            + ("every position counted" if rc.label_share >= 1 else f"{rc.label_share:.0%} of positions")
        )
    return head


def _transient(info: ModelInfo, rc: Recipe, per_layer: list[float], head) -> int:
    """The largest of: the head's forward or backward (its backward comes first, with every activation
    still saved) and, inside a layer's backward, gradients of the widest MLP part; plus for QLoRA one
    dequantized weight."""
    fb = _flow_bytes(rc)
    tokens = rc.batch_size * rc.seq_len
    layer_bwd: float = tokens * (2 * info.intermediate + 2 * info.hidden) * fb
    if rc.grad_ckpt:
        # a layer's activations are rebuilt in backward, after the head is done with its tensors
        layer_bwd += tokens * max(per_layer) - head.saved
    transient = max(head.forward, head.backward, layer_bwd)
    if rc.method == "qlora":
        widest = max(
            (
                m.in_features * m.out_features
                for m in info.linear_modules
                if m.name != info.output_name and not m.pseudo
            ),
            default=0,
        )
        transient += widest * _bytes(rc.dtype)
    return int(transient)


def _gradients_born_in_backward(rc: Recipe, terms: dict[str, int], notes: list[str]) -> None:
    if rc.grad_accum == 1:
        # The trainer drops the gradients after each update (set to None), so they are born in the
        # backward as the activations they replace are freed: only what outgrows those coexists.
        # With accumulation the last micro-batch's gradients stay alive through the next forward.
        terms["gradients"] = max(0, terms["gradients"] - terms["activations"] - terms["transient buffers"])
        notes.append(
            "gradients appear in the backward as activations are freed (no accumulation): "
            "only their excess over the activations is counted"
        )


def _recipe_notes(rc: Recipe, notes: list[str]) -> None:
    notes.append(
        f"compute dtype {rc.dtype}; {rc.attention} attention; batches of {rc.batch_size} x "
        f"{rc.seq_len} tokens: an upper bound, as each batch is padded only to its longest row"
    )
    if rc.method == "qlora":
        notes.append(
            "4-bit NF4 base"
            + (" with double quantization" if rc.double_quant else "")
            + "; embeddings, head and norms unquantized, in fp32 after PEFT's k-bit preparation, "
            "so the residual stream and the MLP's activations are fp32"
        )
    if rc.optimizer.startswith("paged"):
        notes.append("paged optimizer: states can spill to CPU RAM on spikes; counted on the device here")
