"""Memory and time of a preference run (dpo, orpo), composed from the SFT terms of engine.estimate.memory.

What differs from SFT, as TRL 1.16 runs it:

- Every pair is two sequences, prompt + chosen and prompt + rejected, in one batch padded to
  the longer: the policy's forward and backward see 2 x batch_size rows. So the SFT terms are
  taken for a doubled batch (activations, LM head, transients).
- DPO's reference is the base with the adapter switched off (TRL's `use_adapter(model, None)`
  in `DPOTrainer._compute_loss`, because the job passes no `ref_model`): no second copy of the
  weights. It costs one more forward pass of the 2 x batch rows without gradients, after the
  policy's forward: its layers free their tensors as it goes, so its peak (one layer's tensors
  and the head's forward) sits under the backward's, and what it keeps is its log-probs. The
  `reference pass` term counts that, and any excess of its transient over the backward's.
- DPO scores answers with TRL's fused LM head on every device: on a CPU the job keeps TRL's head
  (engine.train.lm_head's replacement omits the mean logits DPO logs), so the fused-head term
  (folded in torch ops) replaces the CPU head's.
- ORPO (trl.experimental.orpo) runs the model's plain head: the full logits of all 2 x batch rows
  in the compute dtype, a contiguous copy of the chosen half and its log-softmax for the NLL term,
  kept until the backward (`full logits` term); the backward's logits gradient is the transient.
  It has no reference model and no reference pass.

Time: the policy's forward + backward on twice the rows, plus DPO's reference forward (a third of
a forward + backward step: backward costs about two forwards).
"""

from __future__ import annotations

from dataclasses import replace

from engine.estimate import memory
from engine.estimate.memory import Recipe
from engine.estimate.params import ParamCount
from engine.model.introspect import ModelInfo

REFERENCE_SHARE = 1 / 3  # a no-grad forward against a forward + backward step (backward ~ 2 forwards)
REFERENCE_NOTE = (
    "DPO's reference model is the base with the adapter switched off (TRL does this when no ref_model "
    "is given to a PEFT model): no second copy of the weights, one more forward pass without gradients"
)


def terms_for(objective: str):
    """The memory-terms function for a plan's objective, with engine.estimate.memory.memory_terms' signature."""
    if objective == "sft":
        return memory.memory_terms
    return lambda info, pc, rc: memory_terms(info, pc, rc, objective)


def memory_terms(info: ModelInfo, pc: ParamCount, rc: Recipe, objective: str) -> tuple[dict[str, int], list[str]]:
    pair = replace(rc, batch_size=2 * rc.batch_size)  # chosen and rejected rows in one batch
    terms, notes = memory.memory_terms(info, pc, pair)
    cb = memory._bytes(rc.dtype)
    rows = pair.batch_size * max(pair.seq_len - 1, 1)
    # positions TRL's fused head scores: on CUDA the labelled ones (the answers), on a CPU every one
    scored = max(1, round(rows * rc.label_share)) if rc.on_gpu else rows
    head_trains = any(m.name == info.output_name for m in pc.adapted) or info.output_name in rc.modules_to_save
    notes.insert(
        0,
        f"{objective}: each pair is two sequences (prompt + chosen, prompt + rejected) in one batch: "
        f"{pair.batch_size} rows of {rc.seq_len} tokens per micro-batch",
    )
    transient = terms.pop("transient buffers")
    if objective == "orpo":
        terms.pop("LM head", None), terms.pop("fused LM head", None)
        positions = pair.batch_size * pair.seq_len
        # all logits, the chosen half's contiguous copy and its log-softmax (saved for the NLL's backward)
        terms["full logits"] = int(positions * info.vocab * cb * 2)
        transient = max(transient, int(positions * info.vocab * cb * 1.5))  # the logits' gradient and its halves
        notes.append(
            f"ORPO (trl.experimental.orpo): the model's own LM head, full {pair.batch_size} x {pair.seq_len} "
            f"x {info.vocab} logits in {rc.dtype}; no reference model"
        )
    else:
        if "LM head" in terms:  # a CPU: the job keeps TRL's fused head for DPO
            terms.pop("LM head")
            head = memory.fused_head(scored, info.vocab, info.hidden, rc.dtype, False, head_trains)
            terms["fused LM head"] = head.saved
            transient = max(transient, head.forward, head.backward)
            notes.append("DPO on a CPU keeps TRL's fused LM head (folded in torch ops)")
        else:
            head = memory.fused_head(scored, info.vocab, info.hidden, rc.dtype, rc.on_gpu, head_trains)
        # the reference pass: one layer's tensors at a time (residual, q/k/v/o, the MLP's gate, up and product)
        fb = memory._flow_bytes(rc)
        tokens = pair.batch_size * pair.seq_len
        layer = tokens * (
            2 * info.hidden * fb
            + (2 * info.heads + 2 * info.kv_heads) * info.head_dim * cb
            + 3 * info.intermediate * fb
        )
        kept = rows * 4 * 4  # its log-probs, entropy, mean logits (fp32) and top-1, per position
        terms["reference pass"] = int(kept + max(0, max(layer, head.forward) - transient))
        notes.append(REFERENCE_NOTE)
    terms["transient buffers"] = int(transient)
    return terms, notes


def time_factor(objective: str) -> float:
    """Step time against an SFT step on the same batch of rows: twice the rows, plus DPO's reference forward."""
    if objective == "sft":
        return 1.0
    return 2.0 * (1 + (REFERENCE_SHARE if objective == "dpo" else 0.0))


def scale_time(time, plan):
    """The SFT time estimate (engine.estimate.timing.TimeEstimate) made a preference run's."""
    factor = time_factor(plan.objective)
    if time is None or factor == 1.0:
        return time
    # tokens count both sequences of a pair; the time is `factor` SFT steps' worth
    time.tokens_per_second = time.tokens_per_second * 2 / factor
    if time.seconds is not None:
        time.seconds = time.seconds * factor
    if time.total_tokens is not None:
        time.total_tokens = time.total_tokens * 2
    why = (
        "two sequences per pair and the reference's forward pass (adapter off)"
        if plan.objective == "dpo"
        else "two sequences per pair"
    )
    time.assumptions.append(f"{plan.objective}: {factor:.2g}x an SFT step on the same pairs ({why})")
    return time
