"""Memory terms behave as the recipe implies."""

import pytest

from engine.estimate.combined import memory_for
from engine.plan import TrainingPlan
from engine.units import GIB

GB = GIB  # the estimator and the catalog count GB as GiB


def plan(**kw):
    return TrainingPlan.build(**{"model": "llama-2-7b", "gpu": "A100 80GB", **kw})


def test_levels_and_terms():
    m = memory_for(plan())
    assert m.allocated_bytes == sum(m.terms.values())
    assert m.reserved_bytes >= m.allocated_bytes and m.device_bytes > m.reserved_bytes
    assert list(m.terms)[:4] == ["base weights", "adapter weights", "gradients", "optimizer states"]


def test_qlora_base_is_about_a_quarter_and_double_quant_helps():
    lora, qlora = memory_for(plan()), memory_for(plan(method="qlora"))
    ratio = qlora.terms["base weights"] / lora.terms["base weights"]
    assert 0.25 < ratio < 0.32  # 4-bit linears, embeddings and head stay bf16


def test_full_fine_tune_needs_much_more_than_lora():
    full, lora = memory_for(plan(method="full", gpu="A100 40GB")), memory_for(plan(gpu="A100 40GB"))
    assert full.terms["optimizer states"] > 100 * lora.terms["optimizer states"]
    assert full.fits is False and lora.fits is True


def test_gradients_count_beside_the_activations_only_as_far_as_they_outgrow_them():
    """Gradients are set to None after each update and born in the backward as activations free;
    with accumulation they live on through the next forward. bench_memory's tiny full fine-tune
    measured 1.93 MiB: 1.028 of it with this, 1.126 when every gradient was added."""
    for method in ("full", "lora"):
        one = memory_for(plan(method=method, seq_len=256, batch_size=1, grad_accum=1))
        two = memory_for(plan(method=method, seq_len=256, batch_size=1, grad_accum=2))
        grads = two.terms["gradients"]
        assert grads > 0
        assert one.terms["gradients"] == max(0, grads - one.terms["activations"] - one.terms["transient buffers"])
    assert one.terms["gradients"] == 0  # LoRA's gradients are small next to any activations
    full = memory_for(plan(method="full", seq_len=256, batch_size=1, grad_accum=1))
    assert full.terms["gradients"] > 0  # 7B gradients outgrow a short sequence's activations


def test_grad_ckpt_and_batch_move_activations():
    base = memory_for(plan())
    assert memory_for(plan(grad_ckpt=True)).terms["activations"] < base.terms["activations"] / 5
    assert memory_for(plan(batch_size=8)).terms["activations"] == 2 * base.terms["activations"]


def test_eager_attention_costs_more_than_sdpa():
    assert memory_for(plan(attention="eager")).allocated_bytes > memory_for(plan()).allocated_bytes


def test_eight_bit_optimizer_smaller():
    assert (
        memory_for(plan(optimizer="adamw_8bit")).terms["optimizer states"]
        < memory_for(plan()).terms["optimizer states"] / 3
    )


def test_cpu_has_no_cuda_context_and_fp32():
    m = memory_for(TrainingPlan.build(model="default", gpu="cpu"))
    assert m.device_bytes == m.reserved_bytes == m.allocated_bytes
    assert m.terms["base weights"] == 134_515_008 * 4


def test_cpu_budget_is_this_machines_ram():
    import psutil

    m = memory_for(TrainingPlan.build(model="default", gpu="cpu"))
    assert m.budget_bytes == psutil.virtual_memory().total
    assert m.fits is (m.device_bytes <= m.budget_bytes)
    huge = memory_for(TrainingPlan.build(model="llama-3.3-70b", gpu="cpu", method="full"))
    assert huge.fits is False and "this machine's RAM" in huge.verdict
    # no device named: no budget to compare with
    assert memory_for(TrainingPlan.build(model="default")).fits is None


def test_budget_verdict():
    m = memory_for(TrainingPlan.build(model="llama-2-7b", budget_gb=8))
    assert m.fits is False and "does not fit" in m.verdict and m.budget_bytes == 8 * GB


def test_fused_lm_head_replaces_full_logits():
    from engine.estimate.memory import TOKEN_TILE, VOCAB_TILE, fused_head

    cpu, gpu = memory_for(plan(gpu="cpu", seq_len=128)), memory_for(plan(seq_len=128))
    assert "logits + loss" not in cpu.terms and "fused LM head" in gpu.terms
    # the tile buffer is VOCAB_TILE wide even for a narrower vocabulary, and at most TOKEN_TILE rows
    small = fused_head(252, 400, 64, "fp32", on_gpu=False)
    assert small.backward > 252 * VOCAB_TILE * 4 > 252 * 400 * 29
    huge = fused_head(100_000, 32_000, 4096, "bf16", on_gpu=True)
    assert huge.backward - 100_000 * 4096 * 6 == TOKEN_TILE * VOCAB_TILE * 2  # buffer + fp32 grad + cast back
    # Triton folds tiles in place; the CPU fallback's fp32 temporaries cost more
    assert (
        fused_head(4000, 128_256, 4096, "bf16", on_gpu=True).backward
        < fused_head(4000, 128_256, 4096, "bf16", on_gpu=False).backward
    )


def test_fused_lm_head_matches_trl_kernel_on_cpu():
    """The CPU model against TRL's real kernel, measured with engine.peak (no GPU needed)."""
    import torch
    from trl.trainer.utils import _CHUNKED_LOGPROB_CHUNK_SIZE, _ChunkedLogProbFunction

    from engine.estimate.memory import VOCAB_TILE, fused_head
    from engine.train.peak import LiveTensorPeak

    assert _CHUNKED_LOGPROB_CHUNK_SIZE == VOCAB_TILE
    n, vocab, hidden = 96, 700, 32
    x = torch.randn(n, hidden, requires_grad=True)
    weight, targets = torch.randn(vocab, hidden), torch.randint(0, vocab, (n,))
    meter = LiveTensorPeak()
    with meter:
        before = meter.live
        out = _ChunkedLogProbFunction.apply(
            x, weight, None, targets, 1.0, VOCAB_TILE, None, 1.0, ("log_probs", "entropy", "is_top1")
        )
        forward = meter.peak - before
        meter.peak = meter.live
        mid = meter.live
        out[0].sum().backward()
        backward = meter.peak - mid
    model = fused_head(n, vocab, hidden, "fp32", on_gpu=False)
    assert 0.95 < model.forward / forward < 1.05
    assert 0.95 < model.backward / backward < 1.05


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_cpu_lm_head_matches_its_measured_peak(dtype, monkeypatch):
    """engine.estimate.memory.cpu_head against engine.train.lm_head, measured with engine.peak."""
    import torch

    from engine.estimate.memory import cpu_head
    from engine.train import lm_head
    from engine.train.peak import LiveTensorPeak

    monkeypatch.setattr(lm_head, "ROW_CHUNK", 64)  # several chunks
    n, vocab, hidden = 150, 3000, 32
    torch_dtype = torch.float32 if dtype == "fp32" else torch.bfloat16
    x = torch.randn(n, hidden, dtype=torch_dtype, requires_grad=True)
    weight, targets = torch.randn(vocab, hidden, dtype=torch_dtype), torch.randint(0, vocab, (n,))
    meter = LiveTensorPeak()
    with meter:
        before = meter.live
        log_p, _, _ = lm_head.labelled_log_probs(x, weight, None, targets)
        forward = meter.peak - before
        meter.peak = meter.live
        mid = meter.live
        log_p.sum().backward()
        backward = meter.peak - mid
    model = cpu_head(n, vocab, hidden, dtype)
    block = 64 * vocab  # the model's per-element bytes dominate; the small per-row terms are in `saved`
    assert 0.9 < model.forward / forward < 1.1, (model.forward / block, forward / block)
    assert 0.9 < model.backward / backward < 1.1, (model.backward / block, backward / block)


def test_only_labelled_positions_reach_the_cpu_head():
    worst = memory_for(plan(gpu="cpu", seq_len=128))
    lengths = [128] * 64
    answers_only = memory_for(plan(gpu="cpu", seq_len=128), lengths=lengths, label_share=0.25)
    every = memory_for(plan(gpu="cpu", seq_len=128), lengths=lengths)
    assert every.expected.terms == worst.terms  # full-length rows, every position labelled
    assert answers_only.expected.terms["LM head"] < every.expected.terms["LM head"]
    assert answers_only.expected.allocated_bytes < every.expected.allocated_bytes
    assert "on 25% of them: the answers" in " ".join(answers_only.assumptions)
