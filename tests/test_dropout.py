"""The CPU LoRA dropout (engine.train.dropout) drops at the asked rate, keeps the expectation,
passes gradients through the kept elements only, and replaces PEFT's dropout modules in place."""

import pytest
import torch

from engine.train import dropout
from tests.tiny import make_tiny_model


def test_the_threshold_keeps_the_asked_fraction_and_scales_by_its_inverse():
    threshold, scale = dropout.keep_threshold(0.1)
    kept = (2**15 - threshold) / 2**16  # lanes run from -32768 to 32767
    assert kept == pytest.approx(0.9, abs=1 / 2**16)
    assert scale == pytest.approx(1 / kept)
    assert dropout.keep_threshold(0.0) == (-(2**15), 1.0)
    with pytest.raises(ValueError, match="dropout must be in"):
        dropout.keep_threshold(1.0)


@pytest.mark.parametrize("p", [0.05, 0.1, 0.5])
def test_the_mask_drops_at_rate_p_in_every_lane_and_keeps_the_mean(p):
    torch.manual_seed(0)
    x = torch.ones(64, 129, 65)  # an odd element count: the last draw is used in part
    y = dropout.lane_dropout(x, p)
    dropped = (y == 0).float()
    n = x.numel()
    tolerance = 5 * (p * (1 - p) / n) ** 0.5  # five standard deviations of a binomial rate
    assert dropped.mean().item() == pytest.approx(p, abs=tolerance)
    # each of a draw's four 16-bit lanes drops at the same rate (none is stuck)
    lanes = dropped.flatten()[: n - n % 4].view(-1, 4).mean(0)
    assert torch.allclose(lanes, torch.full((4,), p), atol=4 * tolerance)
    assert y.mean().item() == pytest.approx(1.0, abs=5 * tolerance / (1 - p))
    assert y.unique().tolist() == pytest.approx([0.0, dropout.keep_threshold(p)[1]])


def test_gradients_flow_through_the_kept_elements_only_and_a_seed_repeats_the_mask():
    torch.manual_seed(1)
    x = torch.randn(4, 8, 16, requires_grad=True)
    y = dropout.lane_dropout(x, 0.3)
    upstream = torch.randn_like(y)
    (y * upstream).sum().backward()
    kept = y != 0
    _, scale = dropout.keep_threshold(0.3)
    assert torch.equal(x.grad[~kept], torch.zeros_like(x.grad[~kept]))
    assert torch.allclose(x.grad[kept], upstream[kept] * scale)
    assert torch.allclose(y[kept], x.detach()[kept] * scale)
    torch.manual_seed(1)
    again = dropout.lane_dropout(torch.randn(4, 8, 16), 0.3)
    assert torch.equal(again != 0, kept)
    assert dropout.lane_dropout(x.detach().bfloat16(), 0.3).dtype == torch.bfloat16


def test_peft_dropout_modules_are_swapped_and_the_model_still_trains(tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(make_tiny_model(tmp_path / "base"), dtype=torch.float32)
    model = get_peft_model(
        base, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.2, target_modules="all-linear", init_lora_weights=False)
    )  # B not zero: dropout shows
    before = sum(type(m) is torch.nn.Dropout for m in model.modules())
    assert before > 0
    assert dropout.use_on_cpu(model) == before
    assert not any(type(m) is torch.nn.Dropout for m in model.modules())
    assert dropout.use_on_cpu(model) == 0  # idempotent

    ids = torch.randint(5, base.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    model.train()
    torch.manual_seed(0)
    first = model(input_ids=ids, labels=ids).loss
    torch.manual_seed(1)
    second = model(input_ids=ids, labels=ids).loss
    assert first.item() != second.item()  # the masks differ between draws: dropout is live
    first.backward()
    grads = [p.grad for n, p in model.named_parameters() if "lora_A" in n]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    model.eval()  # no dropout in evaluation: two forwards agree
    with torch.no_grad():
        assert model(input_ids=ids, labels=ids).loss.item() == model(input_ids=ids, labels=ids).loss.item()


def test_a_model_without_dropout_is_left_alone(tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(make_tiny_model(tmp_path / "base"), dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear"))
    assert dropout.use_on_cpu(model) == 0
