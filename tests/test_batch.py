"""Mixed-adapter batches: a row decoded in a batch with other adapters equals that request alone."""

import threading
import time

import pytest

from engine.adapters.batch import QueueFull, Request, Scheduler, decode_batch
from tests.adapters_fixture import make_base_and_adapters


@pytest.fixture(scope="module")
def peft_model(tmp_path_factory):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base_dir, adapters = make_base_and_adapters(tmp_path_factory.mktemp("serving"))
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, adapters["alpha"], adapter_name="alpha")
    model.load_adapter(adapters["beta"], adapter_name="beta")
    model.eval()
    return model, tokenizer


def ids(tokenizer, text):
    return tokenizer(text)["input_ids"]


def test_each_row_of_a_mixed_batch_equals_the_request_alone(peft_model):
    model, tok = peft_model
    requests = [
        Request(ids(tok, "The quick brown fox"), adapter="alpha", max_tokens=12, temperature=0),
        Request(ids(tok, "What is 2 + 2?"), adapter="beta", max_tokens=7, temperature=0),
        Request(ids(tok, "hello"), adapter=None, max_tokens=10, temperature=0),
        Request(ids(tok, "Translate to French: hello world. Bonjour"), adapter="beta", max_tokens=12,
                temperature=0),
    ]
    together = decode_batch(model, tok, requests)
    alone = [decode_batch(model, tok, [r])[0] for r in requests]
    assert [r.text for r in together] == [r.text for r in alone]
    assert [r.completion_tokens for r in together] == [r.completion_tokens for r in alone]
    for request, result in zip(requests, together):
        assert result.prompt_tokens == len(request.prompt_ids)
        assert result.completion_tokens <= request.max_tokens
    # The adapters really change the answer (else the comparison above proves nothing).
    same_prompt = [Request(ids(tok, "The quick brown fox"), adapter=a, max_tokens=12, temperature=0)
                   for a in ("alpha", "beta", None)]
    texts = [r.text for r in decode_batch(model, tok, same_prompt)]
    assert len(set(texts)) == 3, texts


def test_seeded_sampling_is_the_same_in_a_batch_and_alone(peft_model):
    model, tok = peft_model
    requests = [Request(ids(tok, "Paris is"), adapter=a, max_tokens=10, temperature=0.9, top_p=0.8, seed=7)
                for a in ("alpha", "beta")]
    together = decode_batch(model, tok, requests)
    alone = [decode_batch(model, tok, [r])[0] for r in requests]
    assert [r.text for r in together] == [r.text for r in alone]
    again = decode_batch(model, tok, requests)
    assert [r.text for r in again] == [r.text for r in together]


def test_stop_strings_lengths_and_streaming(peft_model):
    model, tok = peft_model
    prompt = ids(tok, "The quick brown fox")
    full = decode_batch(model, tok, [Request(prompt, adapter="alpha", max_tokens=12, temperature=0)])[0]
    assert full.finish_reason == "length" and full.completion_tokens == 12
    stop = full.text[3:5]  # a stop string that certainly occurs, after the first three characters
    pieces = []
    stopped, capped = decode_batch(model, tok, [
        Request(prompt, adapter="alpha", max_tokens=12, temperature=0, stop=(stop,), on_text=pieces.append),
        Request(prompt, adapter="alpha", max_tokens=3, temperature=0),
    ])
    assert stopped.text == full.text[:full.text.find(stop)]
    assert stopped.finish_reason == "stop"
    assert "".join(pieces) == stopped.text  # streamed pieces add up to the answer, the stop held back
    assert capped.completion_tokens == 3 and capped.finish_reason == "length"


def test_scheduler_batches_what_waits_and_refuses_when_full(peft_model):
    model, tok = peft_model
    sched = Scheduler(lambda: model, lambda: tok, max_queue=3)
    try:
        with sched.lock:  # the decoding thread blocks on the lock with its first batch in hand
            first = sched.submit(Request(ids(tok, "hello"), adapter="alpha", max_tokens=4, temperature=0))
            deadline = time.monotonic() + 30
            while not first.running():
                assert time.monotonic() < deadline
                time.sleep(0.01)
            waiting = [sched.submit(Request(ids(tok, "hello there"), adapter=a, max_tokens=5, temperature=0))
                       for a in ("alpha", "beta", None)]
            with pytest.raises(QueueFull):
                sched.submit(Request(ids(tok, "one too many")))
        results = [f.result(timeout=60) for f in [first, *waiting]]
        assert sched.batches == [1, 3]  # the three that waited were decoded together, three adapters in one
        alone = decode_batch(model, tok, [Request(ids(tok, "hello there"), adapter="beta", max_tokens=5,
                                                  temperature=0)])[0]
        assert results[2].text == alone.text
    finally:
        sched.stop()


def test_one_adapter_per_batch_when_not_mixed(peft_model):
    model, tok = peft_model
    sched = Scheduler(lambda: model, lambda: tok, mixed=False)
    try:
        with sched.lock:
            futures = [sched.submit(Request(ids(tok, "hi"), adapter=a, max_tokens=2, temperature=0))
                       for a in ("alpha", "beta", "alpha", None)]
        [f.result(timeout=60) for f in futures]
        assert sum(sched.batches) == 4 and max(sched.batches) <= 2
    finally:
        sched.stop()


def test_an_adapter_that_fails_to_load_fails_only_its_requests(peft_model):
    model, tok = peft_model

    def prepare(name):
        if name == "missing":
            raise FileNotFoundError("no adapter called missing")

    sched = Scheduler(lambda: model, lambda: tok, prepare=prepare)
    try:
        with sched.lock:
            bad = sched.submit(Request(ids(tok, "hi"), adapter="missing", max_tokens=2))
            good = sched.submit(Request(ids(tok, "hi"), adapter="alpha", max_tokens=2))
        assert good.result(timeout=60).completion_tokens >= 1
        with pytest.raises(FileNotFoundError):
            bad.result(timeout=60)
    finally:
        sched.stop()


def test_requests_from_many_threads_all_complete(peft_model):
    model, tok = peft_model
    sched = Scheduler(lambda: model, lambda: tok)
    results = {}
    try:
        def ask(i):
            results[i] = sched.submit(Request(ids(tok, f"number {i}"), adapter=("alpha", "beta", None)[i % 3],
                                              max_tokens=4, temperature=0)).result(timeout=120)
        threads = [threading.Thread(target=ask, args=(i,)) for i in range(9)]
        [t.start() for t in threads]
        [t.join(timeout=120) for t in threads]
        assert len(results) == 9
    finally:
        sched.stop()


def test_left_padding_keeps_absolute_positions(tmp_path):
    # GPT-2 adds learned absolute position embeddings (RoPE models shift-invariant would not notice):
    # a left-padded row must still count its positions from its own first token.
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tests.tiny import make_tiny_model

    folder = make_tiny_model(tmp_path / "gpt2", arch="gpt2")
    model, tok = AutoModelForCausalLM.from_pretrained(folder).eval(), AutoTokenizer.from_pretrained(folder)
    requests = [Request(ids(tok, text), max_tokens=8, temperature=0)
                for text in ("hi", "The quick brown fox jumps over the lazy dog.")]
    together = decode_batch(model, tok, requests)
    alone = [decode_batch(model, tok, [r])[0] for r in requests]
    assert [r.text for r in together] == [r.text for r in alone]
