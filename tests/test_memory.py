"""Memory terms behave as the recipe implies."""

from engine.estimate import memory_for
from engine.plan import TrainingPlan

GB = 1024**3


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


def test_grad_ckpt_and_batch_move_activations():
    base = memory_for(plan())
    assert memory_for(plan(grad_ckpt=True)).terms["activations"] < base.terms["activations"] / 5
    assert memory_for(plan(batch_size=8)).terms["activations"] == 2 * base.terms["activations"]


def test_eager_attention_costs_more_than_sdpa():
    assert memory_for(plan(attention="eager")).allocated_bytes > memory_for(plan()).allocated_bytes


def test_eight_bit_optimizer_smaller():
    assert memory_for(plan(optimizer="adamw_8bit")).terms["optimizer states"] < \
        memory_for(plan()).terms["optimizer states"] / 3


def test_cpu_has_no_cuda_context_and_fp32():
    m = memory_for(TrainingPlan.build(model="default", gpu="cpu"))
    assert m.device_bytes == m.reserved_bytes == m.allocated_bytes
    assert m.fits is None
    assert m.terms["base weights"] == 134_515_008 * 4


def test_budget_verdict():
    m = memory_for(TrainingPlan.build(model="llama-2-7b", budget_gb=8))
    assert m.fits is False and "does not fit" in m.verdict and m.budget_bytes == 8 * GB
