"""The CPU LM head (engine.train.lm_head) gives the loss, gradients and metrics the model's own forward gives.

TRL's fused head is replaced on the CPU only; these compare it with plain full logits on a
tiny model in fp32, across row chunks, with ignored (-100) positions, and with a head that trains.
"""

import pytest
import torch
from trl.trainer.utils import add_fused_lm_head

from engine.train import lm_head
from tests.tiny import make_tiny_model


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("lm-head") / "base")


def batch(vocab):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, vocab, (3, 17), generator=g)
    labels = ids.clone()
    labels[0, :6] = -100  # a prompt
    labels[1, 12:] = -100  # padding at the end
    mask = torch.ones_like(ids)
    mask[1, 12:] = 0
    return ids, mask, labels


def forward_both(folder, train_head: bool, chunk: int, monkeypatch):
    from transformers import AutoModelForCausalLM

    monkeypatch.setattr(lm_head, "ROW_CHUNK", chunk)
    ref = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    ours = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    for m in (ref, ours):
        m.requires_grad_(False)
        m.model.layers[0].mlp.down_proj.weight.requires_grad_(True)
        m.get_output_embeddings().weight.requires_grad_(train_head)
    add_fused_lm_head(ours, outputs=("log_probs", "entropy", "is_top1"))
    assert lm_head.use_on_cpu(ours)
    ids, mask, labels = batch(ref.config.vocab_size)
    expected = ref(input_ids=ids, attention_mask=mask, labels=labels)
    got = ours(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True)
    expected.loss.backward()
    got.loss.backward()
    return ref, ours, expected, got, labels


@pytest.mark.parametrize("chunk", [4, 256])
def test_loss_and_gradients_match_the_models_own_forward(folder, chunk, monkeypatch):
    ref, ours, expected, got, labels = forward_both(folder, train_head=False, chunk=chunk, monkeypatch=monkeypatch)
    assert got.loss.item() == pytest.approx(expected.loss.item(), rel=1e-5)
    g_ref = ref.model.layers[0].mlp.down_proj.weight.grad
    g_ours = ours.model.layers[0].mlp.down_proj.weight.grad
    assert torch.allclose(g_ours, g_ref, atol=1e-6, rtol=1e-4) and g_ref.abs().sum() > 0
    # metrics: entropy and top-1 of the labelled positions, zero elsewhere
    logits = expected.logits[:, :-1].float()
    target = labels[:, 1:]
    keep = target != -100
    assert torch.equal(got.label_mask, keep)
    logp = logits.log_softmax(-1)
    entropy = -(logp.exp() * logp).sum(-1)
    assert torch.allclose(got.entropy[keep], entropy[keep], atol=1e-5)
    assert (got.entropy[~keep] == 0).all() and (got.log_probs[~keep] == 0).all()
    assert torch.equal(got.is_top1[keep], logits.argmax(-1)[keep] == target[keep])


def test_a_training_head_gets_its_gradient(folder, monkeypatch):
    ref, ours, expected, got, _ = forward_both(folder, train_head=True, chunk=5, monkeypatch=monkeypatch)
    g_ref, g_ours = ref.get_output_embeddings().weight.grad, ours.get_output_embeddings().weight.grad
    assert g_ours is not None and torch.allclose(g_ours, g_ref, atol=1e-6, rtol=1e-4)


def test_other_calls_still_go_to_the_models_forward(folder):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))
    assert lm_head.use_on_cpu(model)
    ids, mask, _ = batch(model.config.vocab_size)
    out = model(input_ids=ids, attention_mask=mask)  # generation and evaluation: full logits as before
    assert out.logits.shape == (3, 17, model.config.vocab_size)


def test_top1_under_bf16_matches_the_bf16_logits_argmax_ties_included():
    """The head ranks by its fp32 log-probabilities (a faster argmax than bf16's); under bf16 autocast
    they must pick what the bf16 logits pick, including the first of tied maxima, which bf16's
    coarse steps make common."""
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(64, 16, generator=g)
    # few distinct weight rows: many vocabulary entries share the top logit exactly
    weight = torch.randn(5, 16, generator=g)[torch.randint(0, 5, (300,), generator=g)]
    logits, logp = lm_head._log_softmax(hidden, weight, None, torch.bfloat16)
    assert logits.dtype == torch.bfloat16 and logp.dtype == torch.float32
    top = logits.max(-1, keepdim=True).values
    assert ((logits == top).sum(-1) > 1).all()  # every row has a tie at its maximum
    assert torch.equal(logp.argmax(-1), logits.argmax(-1))
