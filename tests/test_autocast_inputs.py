"""Under the trainer's bf16 autocast, skipping PEFT's fp32 cast of each adapter's input
(engine.train.run.adapter_inputs_left_to_autocast) changes no bit of the loss or the gradients,
and nothing is skipped where the job runs in fp32 or has no adapters."""

from contextlib import nullcontext

import torch

from engine.train import dropout
from engine.train.run import adapter_inputs_left_to_autocast
from tests.tiny import make_tiny_model


def _loss_and_grads(model, ids, skip: bool):
    model.zero_grad()
    torch.manual_seed(3)  # the same dropout masks on both sides
    with adapter_inputs_left_to_autocast(model, "bf16", {"r": 4}) if skip else nullcontext():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return loss.detach(), grads


def test_the_skipped_casts_change_no_bit_of_loss_or_gradients(tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(make_tiny_model(tmp_path / "base"), dtype=torch.bfloat16)
    model = get_peft_model(
        base, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.1, target_modules="all-linear", init_lora_weights=False)
    )  # B not zero and dropout live: both paths show in the result
    dropout.use_on_cpu(model)
    model.train()
    assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)
    ids = torch.randint(5, base.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))

    loss, grads = _loss_and_grads(model, ids, skip=False)
    fast_loss, fast_grads = _loss_and_grads(model, ids, skip=True)
    assert torch.equal(loss, fast_loss)
    assert grads.keys() == fast_grads.keys() and len(grads) > 0
    assert all(torch.equal(grads[n], fast_grads[n]) for n in grads)

    layer = next(m for m in model.modules() if hasattr(m, "cast_input_dtype_enabled"))
    assert layer.cast_input_dtype_enabled  # back on after the trainer: the playground runs without autocast
    with adapter_inputs_left_to_autocast(model, "bf16", {"r": 4}):
        assert not layer.cast_input_dtype_enabled
    for precision, lora in (("fp32", {"r": 4}), ("bf16", None)):
        with adapter_inputs_left_to_autocast(model, precision, lora):
            assert layer.cast_input_dtype_enabled
