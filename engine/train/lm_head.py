"""The training loss's LM head on a CPU: one matmul and a log-softmax over the labelled positions.

TRL 1.16's SFTTrainer patches the model's forward with a fused, chunked LM head
(`trl.trainer.utils.add_fused_lm_head`; its `compute_loss` calls `model(..., fused_lm_head=True)`)
so the batch x seq x vocab logits never exist. On CUDA the tiles run in Triton over the labelled
positions only. On a CPU (`_use_triton` is false there) the same tiles are folded in generic torch
ops over *every* position (prompt and padding included), each tile 32768 vocabulary entries wide,
with an online log-sum-exp across tiles. Profiled on the embedded SmolLM2-135M (batch 8, ~450
positions, vocabulary 49152, 2 cores) that head was about 40% of a LoRA step.

Here the head scores only positions with a label, in row chunks: each chunk's logits are built
in full (no vocabulary tiling, so no online log-sum-exp), reduced to log-probabilities, entropy and
top-1, and dropped; the backward rebuilds them from the saved hidden rows. The result is TRL's
own `FusedCausalLMOutput`, so its `compute_loss`, metrics and token counts stay untouched.
`bench/bench_throughput.py` measures the step with it; `tests/test_lm_head.py` checks loss and
gradients against the model's own forward.
"""

from __future__ import annotations

import functools
import types

# positions per chunk: a 256 x 49152 fp32 block is 48 MiB (engine.estimate.memory.cpu_head counts it;
# torch is imported lazily so the estimator can read this without it)
ROW_CHUNK = 256


def _log_softmax(hidden, weight, bias, dtype):
    """fp32 log-softmax of one row block's logits, the matmul in `dtype` (the autocast dtype, if any)."""
    import torch
    import torch.nn.functional as F

    with torch.autocast(hidden.device.type, enabled=False):
        logits = F.linear(hidden.to(dtype), weight.to(dtype), None if bias is None else bias.to(dtype))
    return logits, torch.log_softmax(logits.float(), dim=-1)


@functools.cache
def _labelled_head():
    """The autograd function, made on first use (torch is imported then)."""
    import torch

    class LabelledHead(torch.autograd.Function):
        """(hidden rows n x d, head weight, bias, targets) -> log p(target), entropy, is-top1 per row."""

        @staticmethod
        def forward(ctx, hidden, weight, bias, targets):
            device = hidden.device.type
            ctx.dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype
            n = hidden.shape[0]
            log_p = hidden.new_empty(n, dtype=torch.float32)
            entropy = hidden.new_empty(n, dtype=torch.float32)
            top1 = torch.empty(n, dtype=torch.bool, device=hidden.device)
            for a in range(0, n, ROW_CHUNK):
                b = min(a + ROW_CHUNK, n)
                logits, logp = _log_softmax(hidden[a:b], weight, bias, ctx.dtype)
                log_p[a:b] = logp.gather(1, targets[a:b, None]).squeeze(1)
                entropy[a:b] = -(logp.exp() * logp).sum(-1)
                # the fp32 log-probabilities keep the bf16 logits' order and ties (they differ by at least
                # one bf16 step, far above fp32's rounding), and argmax over fp32 runs ~4x faster on a CPU
                top1[a:b] = logp.argmax(-1) == targets[a:b]
                del logits, logp  # before the next block is built: one block alive at a time
            ctx.save_for_backward(hidden, weight, bias, targets)
            ctx.mark_non_differentiable(entropy, top1)
            return log_p, entropy, top1

        @staticmethod
        def backward(ctx, grad_log_p, _grad_entropy, _grad_top1):
            hidden, weight, bias, targets = ctx.saved_tensors
            w = weight.to(ctx.dtype)
            grad_hidden = torch.empty_like(hidden)
            grad_weight = torch.zeros_like(weight, dtype=torch.float32) if ctx.needs_input_grad[1] else None
            grad_bias = torch.zeros_like(bias, dtype=torch.float32) if ctx.needs_input_grad[2] else None
            for a in range(0, hidden.shape[0], ROW_CHUNK):
                b = min(a + ROW_CHUNK, hidden.shape[0])
                logp = _log_softmax(hidden[a:b], weight, bias, ctx.dtype)[1]
                # d log p(t) / d logits = onehot(t) - softmax, scaled by the incoming gradient
                grad_logits = logp.exp_().mul_(-grad_log_p[a:b, None])
                grad_logits[torch.arange(b - a), targets[a:b]] += grad_log_p[a:b]
                grad_logits = grad_logits.to(ctx.dtype)
                grad_hidden[a:b] = grad_logits @ w
                if grad_weight is not None:
                    grad_weight += (grad_logits.t() @ hidden[a:b].to(ctx.dtype)).float()
                if grad_bias is not None:
                    grad_bias += grad_logits.float().sum(0)
                del logp, grad_logits
            return (
                grad_hidden,
                None if grad_weight is None else grad_weight.to(weight.dtype),
                None if grad_bias is None else grad_bias.to(bias.dtype),
                None,
            )

    return LabelledHead


def labelled_log_probs(hidden, weight, bias, targets):
    """(log p(target), entropy, is-top1) for each row of `hidden` (n x d), with no n x vocab block kept alive."""
    return _labelled_head().apply(hidden, weight, bias, targets)


def applies(text_config) -> bool:
    """Whether this head replaces TRL's for a model: heads TRL scales, soft-caps or adds a router
    loss to (trl/trainer/utils.py add_fused_lm_head reads the same attributes) stay with TRL."""
    scaled = ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier", "logits_scaling")
    return all(getattr(text_config, a, None) in (None, 1, 1.0) for a in scaled) and not getattr(
        text_config, "output_router_logits", False
    )


def use_on_cpu(model) -> bool:
    """Route the fused-head calls of this TRL-patched model (a PeftModel or a plain HF model) through
    `labelled_log_probs` on the CPU. False, and nothing changed, where it does not apply."""
    from trl.trainer.utils import FusedCausalLMOutput

    hf = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not applies(hf.config.get_text_config()) or hf.device.type != "cpu" or hf.get_output_embeddings() is None:
        return False
    trl_forward = hf.forward  # TRL's fused forward; it still serves every other kind of call

    @functools.wraps(trl_forward)
    def forward(self, *args, fused_lm_head=False, labels=None, shift_labels=None, num_items_in_batch=None, **kw):
        if not fused_lm_head or shift_labels is not None or self.device.type != "cpu":
            return trl_forward(
                *args,
                fused_lm_head=fused_lm_head,
                labels=labels,
                shift_labels=shift_labels,
                num_items_in_batch=num_items_in_batch,
                **kw,
            )
        kw["use_cache"] = False
        hidden = self.base_model(*args, **kw).last_hidden_state[:, :-1]
        labels = labels[:, 1:].to(hidden.device)
        mask = labels != -100
        head = self.get_output_embeddings()
        log_p, entropy, top1 = labelled_log_probs(hidden[mask], head.weight, head.bias, labels[mask])
        # masked_scatter keeps an all-masked batch connected to the graph (a differentiable zero), as TRL does
        log_probs = log_p.new_zeros(mask.shape).masked_scatter(mask, log_p)
        entropy = entropy.new_zeros(mask.shape).masked_scatter(mask, entropy)
        top1 = top1.new_zeros(mask.shape).masked_scatter(mask, top1)
        count = mask.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch
        return FusedCausalLMOutput(
            loss=-log_probs.sum() / count, log_probs=log_probs, entropy=entropy, is_top1=top1, label_mask=mask
        )

    hf.forward = types.MethodType(forward, hf)
    return True
