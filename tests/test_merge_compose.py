"""Merge (a plain HF folder equal to base + adapter), QLoRA merge, compose and retention, on tiny models."""

from __future__ import annotations

import json

import pytest

from engine.errors import UserError
from tests.tiny import make_tiny_model
from tests.tiny_adapters import make_tiny_adapter

PROMPT = "What is the capital of France?"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("mc")
    base = make_tiny_model(root / "base")
    return base, {
        "a": make_tiny_adapter(base, root / "a", seed=1),
        "b": make_tiny_adapter(base, root / "b", seed=2, targets=("q_proj", "v_proj", "up_proj")),
        "r8": make_tiny_adapter(base, root / "r8", seed=3, r=8),
    }


def _logits(model, tok, text=PROMPT):
    import torch

    with torch.no_grad():
        return model(**tok([text], return_tensors="pt")).logits


def _with_adapter(base_dir, adapter_dir):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(base_dir))
    base = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    return _logits(PeftModel.from_pretrained(base, str(adapter_dir)).eval(), tok), tok


def test_merged_folder_loads_plainly_and_equals_base_plus_adapter(tiny, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from engine.adapters import merge

    base, adapters = tiny
    out = merge.merge(adapters["a"], str(base), tmp_path / "merged", adapter_name="skill-a")
    expected, _ = _with_adapter(base, adapters["a"])
    model = AutoModelForCausalLM.from_pretrained(str(out))
    tok = AutoTokenizer.from_pretrained(str(out))
    assert not any("lora" in n for n, _ in model.named_parameters())
    assert (out / "model.safetensors").is_file() and tok.chat_template
    assert (_logits(model, tok) - expected).abs().max().item() < 1e-4
    card = (out / "README.md").read_text()
    assert "skill-a" in card and str(base) in card and "dequantized" not in card

    zipped = merge.zip_folder(out)
    import zipfile

    assert "merged/model.safetensors" in zipfile.ZipFile(zipped).namelist()
    with pytest.raises(UserError, match="not empty"):
        merge.merge(adapters["a"], str(base), out)
    with pytest.raises(UserError, match="does not exist"):
        merge.merge(tmp_path / "nowhere", str(base), tmp_path / "m2")

    # the merged folder is a valid base for a new plan
    from engine.plan import TrainingPlan
    from engine.train.run import model_source

    assert model_source(TrainingPlan.build(model=str(out)).model) == str(out)


def test_qlora_adapter_merges_into_the_dequantized_base(tiny, tmp_path):
    pytest.importorskip("bitsandbytes")
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from engine.adapters import merge
    from engine.plan import TrainingPlan
    from engine.train.run import load_base

    base, adapters = tiny
    out = merge.merge(adapters["a"], str(base), tmp_path / "q", adapter_name="q", method="qlora")
    card = (out / "README.md").read_text()
    assert "Why the base was dequantized" in card and "4-bit" in card
    model = AutoModelForCausalLM.from_pretrained(str(out))
    assert model.config.to_dict().get("quantization_config") is None
    assert all(p.dtype == torch.float32 for p in model.parameters())

    # what the adapter saw in training: the 4-bit base dequantized, plus the adapter
    four_bit, tok = load_base(TrainingPlan.build(model=str(base), method="qlora", gpu="cpu"), for_training=False)
    reference = PeftModel.from_pretrained(four_bit.dequantize(dtype=torch.float32), str(adapters["a"])).eval()
    tok = AutoTokenizer.from_pretrained(str(out))
    assert (_logits(model, tok) - _logits(reference, tok)).abs().max().item() < 1e-4
    full_precision, _ = _with_adapter(base, adapters["a"])
    assert (_logits(model, tok) - full_precision).abs().max().item() > 1e-4  # it really used the 4-bit weights


def test_compose_checks_and_cat_is_exact(tiny, tmp_path):
    import torch

    from engine.adapters import compose
    from engine.adapters.host import AdapterHost

    base, adapters = tiny
    with pytest.raises(UserError, match="linear needs adapters of one rank, these have ranks 4, 8; cat or svd"):
        compose.check([4, 8], [0.5, 0.5], "linear", None)
    with pytest.raises(UserError, match="accepted: linear, cat, svd, ties or dare_ties"):
        compose.check([4, 4], [0.5, 0.5], "average", None)
    with pytest.raises(UserError, match="one per adapter"):
        compose.check([4, 4], [1.0], "linear", None)
    with pytest.raises(UserError, match="density: got 1.5"):
        compose.check([4, 4], [1, 1], "ties", 1.5)
    with pytest.raises(UserError, match="applies to ties or dare_ties only"):
        compose.check([4, 4], [1, 1], "cat", 0.5)
    assert compose.check([4, 4], [1, 1], "ties", None) == compose.DEFAULT_DENSITY

    # cat stacks the adapters: weights 1, 0 reproduce adapter a exactly, with rank 4 + 8
    host = AdapterHost(str(base))
    sources = [("a", str(adapters["a"])), ("r8", str(adapters["r8"]))]
    out = compose.compose(host, sources, [1.0, 0.0], "cat", tmp_path / "cat", "cat")
    assert json.loads((out / "adapter_config.json").read_text())["r"] == 12
    expected, tok = _with_adapter(base, adapters["a"])
    assert host.loaded() == ["a", "r8", "cat"] and host.path_of("cat") == str(out)  # made on the host, kept there
    with host.using("cat") as model:
        assert torch.allclose(_logits(model, tok), expected, atol=1e-5)
    fresh = AdapterHost(str(base))
    fresh.load("cat", str(out))  # the saved folder is the same adapter
    with fresh.using("cat") as model:
        assert torch.allclose(_logits(model, tok), expected, atol=1e-5)
    for combination in ("linear", "svd", "ties", "dare_ties"):
        made = compose.compose(
            host,
            [("a", str(adapters["a"])), ("b", str(adapters["b"]))],
            [0.5, 0.5],
            combination,
            tmp_path / combination,
            combination,
        )
        assert (made / "adapter_model.safetensors").is_file()
    with pytest.raises(UserError, match="exists"):
        compose.compose(
            host,
            [("a", str(adapters["a"])), ("b", str(adapters["b"]))],
            [0.5, 0.5],
            "linear",
            tmp_path / "linear",
            "linear-again",
        )


def test_library_compose_lineage_foreign_base_and_retention(tiny, tmp_path, lorapilot_home):
    from jobs import library, workbench

    base, adapters = tiny
    a = library.import_adapter(adapters["a"], name="ticket-skill", skill="ticket")
    b = library.import_adapter(adapters["b"], name="date.skill", skill="isodate")  # a '.' survives PEFT
    library.import_adapter(adapters["r8"], name="wide")
    with pytest.raises(UserError, match="unknown demo skill 'poetry'"):
        library.import_adapter(adapters["r8"], name="w2", skill="poetry")

    with pytest.raises(UserError, match="cat or svd accept different ranks"):
        workbench.compose(["ticket-skill", "wide"], [0.5, 0.5], "ties", name="mix")
    other = make_tiny_model(tmp_path / "other", seed=7)
    library.import_adapter(make_tiny_adapter(other, tmp_path / "o"), name="foreign")
    with pytest.raises(UserError, match="only adapters of one base compose"):
        workbench.compose(["ticket-skill", "foreign"], [0.5, 0.5], "linear", name="mix")
    assert sorted(p.name for p in (lorapilot_home / "adapters").iterdir()) == [
        "date.skill",
        "foreign",
        "ticket-skill",
        "wide",
    ]  # nothing half-made

    mix = workbench.compose(["ticket-skill", "date.skill"], [0.5, 0.5], "linear", name="mix")
    assert mix.lineage == {
        "sources": [
            {"id": a.id, "name": "ticket-skill", "skill": "ticket"},
            {"id": b.id, "name": "date.skill", "skill": "isodate"},
        ],
        "weights": [0.5, 0.5],
        "combination": "linear",
        "density": None,
    }
    assert mix.base_model == a.base_model and mix.method == "composed"

    rows = workbench.retention("mix")
    assert [(r["skill"], r["source"]) for r in rows] == [("ticket", "ticket-skill"), ("isodate", "date.skill")]
    for r in rows:
        assert all(0 <= r[k] <= 100 for k in ("base", "alone", "composed"))
    with pytest.raises(UserError, match="not a composition"):
        workbench.retention("wide")

    answer = workbench.generate("mix", "The printer is broken", base=True, max_new_tokens=5)
    assert set(answer) >= {"adapter", "base", "switch_seconds"}


def test_a_merged_fp32_base_stays_fp32_even_where_training_would_use_bf16(tiny, tmp_path, monkeypatch):
    """The merge keeps the base checkpoint's precision: on a CPU with native bf16 (where `auto` trains
    in bf16) an fp32 base used to be merged and saved in bf16, off from base + adapter by ~2e-3."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from engine.adapters import merge
    from engine.estimate import hardware

    cal = hardware.calibration()
    # this machine's CPU may lack bf16: the calibration says it has it, as on a CPU that does
    native = cal.model_copy(update={"bf16_flags": ["avx512_bf16"], "bf16_tflops": 4 * cal.fp32_tflops})
    monkeypatch.setattr(hardware, "calibration", lambda: native)
    assert hardware.calibration().bf16_native
    base, adapters = tiny
    assert json.loads((base / "config.json").read_text()).get("dtype", "float32") == "float32"
    out = merge.merge(adapters["a"], str(base), tmp_path / "merged")
    model = AutoModelForCausalLM.from_pretrained(str(out), dtype="auto")
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    expected, tok = _with_adapter(base, adapters["a"])
    assert (_logits(model, AutoTokenizer.from_pretrained(str(out))) - expected).abs().max().item() < 1e-5
    assert "float32" in (out / "README.md").read_text()


def test_a_composition_answers_on_the_host_as_it_will_after_a_reload(tiny, tmp_path, monkeypatch):
    """On a bf16 base PEFT makes a combination's weights in bf16, while a load from disk upcasts an adapter to
    fp32: the composition kept on the host is upcast the same way, so its answers do not change at a reload."""
    import torch

    from engine.adapters import compose
    from engine.adapters.host import AdapterHost, peft_name
    from engine.estimate import hardware

    cal = hardware.calibration()
    native = cal.model_copy(update={"bf16_flags": ["avx512_bf16"], "bf16_tflops": 4 * cal.fp32_tflops})
    monkeypatch.setattr(hardware, "calibration", lambda: native)
    base, adapters = tiny
    host = AdapterHost(str(base))
    assert host.model.dtype == torch.bfloat16
    sources = [("a", str(adapters["a"])), ("b", str(adapters["b"]))]
    out = compose.compose(host, sources, [0.7, 0.6], "svd", tmp_path / "mix", "mix")
    fresh = AdapterHost(str(base))
    fresh.load("mix", str(out))
    layer = host.model.base_model.model.model.layers[0].self_attn.q_proj
    assert layer.lora_A[peft_name("mix")].weight.dtype == torch.float32
    tok = host.tokenizer
    with host.using("mix") as kept:
        made_here = _logits(kept, tok)
    with fresh.using("mix") as loaded:
        assert torch.equal(made_here, _logits(loaded, tok))
