"""Mixed-adapter batches: a row decoded in a batch with other adapters equals that request alone."""

import threading

import pytest

from engine.adapters import batch
from engine.adapters.batch import Request, decode_batch
from tests.tiny import make_tiny_model
from tests.tiny_adapters import make_tiny_adapter

TARGETS = ("q_proj", "v_proj", "o_proj", "up_proj", "down_proj")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("serving")
    base_dir = make_tiny_model(root / "base")
    return base_dir, {
        name: make_tiny_adapter(base_dir, root / name, seed=i + 1, targets=TARGETS)
        for i, name in enumerate(("alpha", "beta"))
    }


@pytest.fixture(scope="module")
def peft_model(tiny):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base_dir, adapters = tiny
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
        Request(ids(tok, "Translate to French: hello world. Bonjour"), adapter="beta", max_tokens=12, temperature=0),
    ]
    together = decode_batch(model, tok, requests)
    alone = [decode_batch(model, tok, [r])[0] for r in requests]
    assert [r.text for r in together] == [r.text for r in alone]
    assert [r.completion_tokens for r in together] == [r.completion_tokens for r in alone]
    for request, result in zip(requests, together):
        assert result.prompt_tokens == len(request.prompt_ids)
        assert result.completion_tokens <= request.max_tokens
    # The adapters really change the answer (else the comparison above proves nothing).
    same_prompt = [
        Request(ids(tok, "The quick brown fox"), adapter=a, max_tokens=12, temperature=0)
        for a in ("alpha", "beta", None)
    ]
    texts = [r.text for r in decode_batch(model, tok, same_prompt)]
    assert len(set(texts)) == 3, texts


def test_stacked_lora_matches_peft_mixed_batch(tiny, tmp_path):
    """engine.adapters.gathered replaces PEFT's per-adapter loop; the logits must not move.
    Adapters of different ranks and targets (a layer some adapters lack) and base rows, mixed."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from engine.adapters import gathered

    base_dir, adapters = tiny
    gamma = make_tiny_adapter(base_dir, tmp_path / "gamma", r=8, seed=7, targets=("q_proj", "down_proj"))

    def load():
        base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
        model = PeftModel.from_pretrained(base, adapters["alpha"], adapter_name="alpha")
        model.load_adapter(adapters["beta"], adapter_name="beta")
        model.load_adapter(str(gamma), adapter_name="gamma")
        return model.eval()

    torch.manual_seed(0)
    input_ids = torch.randint(3, 100, (6, 9))
    names = ["alpha", "__base__", "gamma", "beta", "alpha", "gamma"]
    peft_own, ours = load(), load()
    assert gathered.install(ours) > 0
    with torch.inference_mode():
        expected = peft_own(input_ids=input_ids, adapter_names=names).logits
        got = ours(input_ids=input_ids, adapter_names=names).logits
        fewer = ours(input_ids=input_ids[:3], adapter_names=names[:3]).logits  # rows left: mask rebuilt
        only_base = ours(input_ids=input_ids[:2], adapter_names=["__base__"] * 2).logits
        with ours.disable_adapter():
            plain = ours(input_ids=input_ids[:2]).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fewer, expected[:3], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(only_base, plain, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(expected[0], expected[1], atol=1e-3)  # the adapters change the rows


def test_seeded_sampling_is_the_same_in_a_batch_and_alone(peft_model):
    model, tok = peft_model
    requests = [
        Request(ids(tok, "Paris is"), adapter=a, max_tokens=10, temperature=0.9, top_p=0.8, seed=7)
        for a in ("alpha", "beta")
    ]
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
    stopped, capped = decode_batch(
        model,
        tok,
        [
            Request(prompt, adapter="alpha", max_tokens=12, temperature=0, stop=(stop,), on_text=pieces.append),
            Request(prompt, adapter="alpha", max_tokens=3, temperature=0),
        ],
    )
    assert stopped.text == full.text[: full.text.find(stop)]
    assert stopped.finish_reason == "stop"
    assert "".join(pieces) == stopped.text  # streamed pieces add up to the answer, the stop held back
    assert capped.completion_tokens == 3 and capped.finish_reason == "length"


class Gated:
    """run_batch that decodes with the model, but holds its first batch until the test opens the gate."""

    def __init__(self, model, tok):
        self.model, self.tok = model, tok
        self.gate, self.holding = threading.Event(), threading.Event()

    def __call__(self, requests):
        self.holding.set()
        assert self.gate.wait(60)
        return decode_batch(self.model, self.tok, requests)


def test_scheduler_batches_what_waits_and_refuses_when_full(peft_model):
    model, tok = peft_model
    runner = Gated(model, tok)
    sched = batch.Scheduler(runner, max_queue=3)
    try:
        first = sched.submit(Request(ids(tok, "hello"), adapter="alpha", max_tokens=4, temperature=0))
        assert runner.holding.wait(60)  # the decoding thread holds its first batch
        waiting = [
            sched.submit(Request(ids(tok, "hello there"), adapter=a, max_tokens=5, temperature=0))
            for a in ("alpha", "beta", None)
        ]
        with pytest.raises(batch.QueueFull):
            sched.submit(Request(ids(tok, "one too many")))
        runner.gate.set()
        results = [f.result(timeout=60) for f in [first, *waiting]]
        assert sched.batches == [1, 3]  # the three that waited were decoded together, three adapters in one
        alone = decode_batch(
            model, tok, [Request(ids(tok, "hello there"), adapter="beta", max_tokens=5, temperature=0)]
        )[0]
        assert results[2].text == alone.text
    finally:
        sched.stop()


def test_one_adapter_per_batch_when_not_mixed(peft_model):
    model, tok = peft_model
    runner = Gated(model, tok)
    sched = batch.Scheduler(runner, mixed=False)
    try:
        futures = [sched.submit(Request(ids(tok, "hi"), adapter="alpha", max_tokens=2, temperature=0))]
        assert runner.holding.wait(60)
        futures += [
            sched.submit(Request(ids(tok, "hi"), adapter=a, max_tokens=2, temperature=0))
            for a in ("beta", "alpha", None, "beta")
        ]
        runner.gate.set()
        [f.result(timeout=60) for f in futures]
        assert sched.batches == [1, 2, 1, 1]  # alpha; then beta+beta, alpha, base: one adapter per batch
    finally:
        sched.stop()


def test_host_runner_loads_on_first_use_and_fails_only_the_bad_adapters_requests(tiny, tmp_path):
    from engine.adapters.host import AdapterHost

    base_dir, adapters = tiny
    host = AdapterHost(str(base_dir), max_loaded=2)
    tok = host.tokenizer
    sched = batch.Scheduler(batch.HostRunner(host), max_adapters=host.max_loaded)
    try:
        prompt = ids(tok, "What is 2 + 2?")
        futures = [
            sched.submit(
                Request(prompt, adapter="alpha", adapter_path=str(adapters["alpha"]), max_tokens=6, temperature=0)
            ),
            sched.submit(Request(prompt, adapter="ghost", adapter_path=str(tmp_path / "missing"), max_tokens=6)),
            sched.submit(Request(prompt, adapter=None, max_tokens=6, temperature=0)),
        ]
        good = futures[0].result(timeout=120)
        with pytest.raises(Exception, match="adapter_config.json"):
            futures[1].result(timeout=120)
        base = futures[2].result(timeout=120)
        assert host.loaded() == ["alpha"]
        with host.using("alpha") as model:
            expected = decode_batch(
                model,
                tok,
                [
                    Request(prompt, adapter="alpha", max_tokens=6, temperature=0),
                    Request(prompt, max_tokens=6, temperature=0),
                ],
            )
        assert [good.text, base.text] == [r.text for r in expected]
        assert good.text != base.text
        # the workbench's merge toggle must not break a later mixed batch
        host.activate("alpha")
        host.set_merged(True)
        again = [
            sched.submit(Request(prompt, adapter=a, adapter_path=str(adapters["alpha"]), max_tokens=6, temperature=0))
            for a in ("alpha", None)
        ]
        assert [f.result(timeout=120).text for f in again] == [good.text, base.text]
    finally:
        sched.stop()


def test_requests_from_many_threads_all_complete(peft_model):
    model, tok = peft_model
    sched = batch.Scheduler(lambda requests: decode_batch(model, tok, requests))
    results = {}
    try:

        def ask(i):
            results[i] = sched.submit(
                Request(ids(tok, f"number {i}"), adapter=("alpha", "beta", None)[i % 3], max_tokens=4, temperature=0)
            ).result(timeout=120)

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
    requests = [
        Request(ids(tok, text), max_tokens=8, temperature=0)
        for text in ("hi", "The quick brown fox jumps over the lazy dog.")
    ]
    together = decode_batch(model, tok, requests)
    alone = [decode_batch(model, tok, [r])[0] for r in requests]
    assert [r.text for r in together] == [r.text for r in alone]


def test_the_lm_head_gets_a_contiguous_input_when_generation_keeps_one_position(tiny):
    """engine.model.head_input: torch copies the whole head per row for a strided 3-D input to a
    frozen weight (seconds on the embedded model); every model load_base makes hands it a
    contiguous one. Checked on what the head receives, not on time (machines differ)."""
    import torch

    from engine.plan import TrainingPlan
    from engine.train.run import load_base

    base_dir, _ = tiny
    model, tok = load_base(TrainingPlan.build(model=str(base_dir), method="lora"), for_training=False)
    seen = []
    model.get_output_embeddings().register_forward_pre_hook(lambda m, args: seen.append(args[0].is_contiguous()))
    input_ids = torch.randint(3, 100, (3, 7), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        kept = model(input_ids=input_ids, logits_to_keep=1).logits
        full = model(input_ids=input_ids).logits
    assert seen == [True, True]
    torch.testing.assert_close(kept[:, -1], full[:, -1])
