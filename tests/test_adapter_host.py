"""AdapterHost: one base loaded once, adapters switched through PEFT, streamed generation.

Real tiny llama + real PEFT adapters; logits compared against PEFT loaded the ordinary way.
"""

from __future__ import annotations

import threading

import pytest

from engine.errors import UserError
from tests.tiny import make_tiny_model
from tests.tiny_adapters import make_tiny_adapter


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("host")
    base = make_tiny_model(root / "base")
    a = make_tiny_adapter(base, root / "a", seed=1)
    b = make_tiny_adapter(base, root / "b", seed=2, targets=("q_proj", "v_proj", "up_proj"))
    c = make_tiny_adapter(base, root / "c", seed=3)
    return base, {"a": a, "b": b, "c": c}


@pytest.fixture(scope="module")
def host(tiny):
    from engine.adapters.host import AdapterHost

    return AdapterHost(str(tiny[0]), max_loaded=2)


def _logits(model, tok, text="What is 2 + 2?"):
    import torch

    batch = tok([text], return_tensors="pt")
    with torch.no_grad():
        return model(**batch).logits


def _reference(base_dir, adapter_dir):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(base_dir))
    base = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    plain = _logits(base, tok)
    with_adapter = _logits(PeftModel.from_pretrained(base, str(adapter_dir)).eval(), tok) if adapter_dir else None
    return plain, with_adapter


def test_switching_gives_each_adapters_own_outputs_without_reloading_the_base(host, tiny):
    import torch

    base_dir, adapters = tiny
    base_weights = host._base  # the same object throughout: never reloaded
    plain, ref_a = _reference(base_dir, adapters["a"])
    _, ref_b = _reference(base_dir, adapters["b"])

    assert host.load("a", str(adapters["a"])) > 0
    assert host.load("a", str(adapters["a"])) == 0.0  # already loaded: no-op
    host.load("b.v2", str(adapters["b"]))  # a '.' is fine in a host name (PEFT's own names cannot hold one)
    for name, ref in (("a", ref_a), (None, plain), ("b.v2", ref_b), ("a", ref_a), (None, plain)):
        host.activate(name)
        with host.using(name) as model:
            got = _logits(model, host.tokenizer)
        assert torch.allclose(got, ref, atol=1e-5), name
    assert host.model.get_base_model() is base_weights
    assert not torch.allclose(ref_a, plain, atol=1e-4) and not torch.allclose(ref_a, ref_b, atol=1e-4)


def test_lru_evicts_the_least_recently_used_adapter(host, tiny):
    _, adapters = tiny
    host.load("a", str(adapters["a"]))
    host.load("b", str(adapters["b"]))
    host.activate("a")  # a is now the most recently used
    host.load("c", str(adapters["c"]))
    assert host.loaded() == ["a", "c"]
    assert "b" not in host.model.peft_config
    with pytest.raises(UserError, match="'b' is not loaded; loaded: a or c"):
        host.activate("b")
    host.unload("c")
    assert host.loaded() == ["a"]
    # the same name for another folder replaces the adapter
    import torch

    _, ref_c = _reference(tiny[0], adapters["c"])
    assert host.load("a", str(adapters["c"])) > 0
    with host.using("a") as model:
        assert torch.allclose(_logits(model, host.tokenizer), ref_c, atol=1e-5)
    host.load("a", str(adapters["a"]))


def test_merge_toggle_keeps_outputs_and_unmerge_restores_the_base(host, tiny):
    import torch

    base_dir, adapters = tiny
    plain, ref_a = _reference(base_dir, adapters["a"])
    host.load("a", str(adapters["a"]))
    host.activate("a")
    host.set_merged(True)
    assert host.merged
    with host.using("a") as model:
        assert torch.allclose(_logits(model, host.tokenizer), ref_a, atol=1e-4)
    host.set_merged(False)
    host.activate(None)
    with host.using(None) as model:
        assert torch.allclose(_logits(model, host.tokenizer), plain, atol=1e-5)
    # switching away from a merged adapter unmerges it first
    host.activate("a")
    host.set_merged(True)
    host.activate(None)
    assert not host.merged
    with host.using(None) as model:
        assert torch.allclose(_logits(model, host.tokenizer), plain, atol=1e-5)


def test_generate_streams_greedy_text_equal_to_a_plain_generate(host, tiny):

    host.load("a", str(adapters := tiny[1]["a"]))
    chunks = list(host.generate("Hello there", adapter="a", max_new_tokens=12))
    assert len(chunks) >= 1
    text = host.prompt_text("Hello there")
    tok = host.tokenizer
    with host.using("a") as model:
        ids = tok(text, return_tensors="pt", add_special_tokens=False)
        out = model.generate(
            **ids, max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id
        )
    expected = tok.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "".join(chunks) == expected
    assert adapters.exists()


def test_stop_string_cuts_the_answer_and_a_closed_stream_frees_the_host(host, tiny):
    host.load("a", str(tiny[1]["a"]))
    full = "".join(host.generate("Say something", adapter="a", max_new_tokens=16))
    assert len(full) > 3
    stop = full[2:4]
    cut = "".join(host.generate("Say something", adapter="a", max_new_tokens=16, stop=[stop]))
    assert cut == full[: full.find(stop)]

    stream = host.generate("Say something", adapter="a", max_new_tokens=64)
    next(stream)
    stream.close()  # abandoning a stream must release the lock
    done = threading.Event()
    threading.Thread(target=lambda: (host.activate(None), done.set()), daemon=True).start()
    assert done.wait(60)


def test_bad_inputs_are_one_clear_error(host, tiny, tmp_path):
    with pytest.raises(UserError, match="no adapter_config.json"):
        host.load("x", str(tmp_path))
    with pytest.raises(UserError, match="'nope' is not loaded"):
        host.generate("hi", adapter="nope")
    with pytest.raises(UserError, match="top_p"):
        host.generate("hi", top_p=0)
    other = make_tiny_model(tmp_path / "wide", seed=5)
    import json

    cfg = json.loads((other / "config.json").read_text())
    cfg["hidden_size"], cfg["intermediate_size"] = 32, 64
    (other / "config.json").write_text(json.dumps(cfg))
    from transformers import AutoConfig, AutoModelForCausalLM

    AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(other))).save_pretrained(str(other))
    foreign = make_tiny_adapter(other, tmp_path / "foreign")
    with pytest.raises(UserError, match="trained on another base"):
        host.load("foreign", str(foreign))
    assert "foreign" not in host.loaded()
    assert "foreign" not in host.model.peft_config

    from engine.adapters.host import AdapterHost

    fresh = AdapterHost(str(tiny[0]))  # a foreign adapter as the very first one leaves the base untouched
    with pytest.raises(UserError, match="trained on another base"):
        fresh.load("foreign", str(foreign))
    assert fresh.loaded() == [] and fresh.load("a", str(tiny[1]["a"])) > 0
