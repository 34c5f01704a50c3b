"""The offline model and GPU catalogs, and model resolution."""

import json

import pytest

from engine.errors import UserError
from engine.model import catalog, introspect

REQUIRED = [
    "llama-3.2-1b",
    "llama-3.2-3b",
    "llama-3.1-8b",
    "llama-3.3-70b",
    "llama-2-7b",
    "llama-2-13b",
    "mistral-7b",
    "mixtral-8x7b",
    "qwen2.5-0.5b",
    "qwen2.5-1.5b",
    "qwen2.5-7b",
    "qwen2.5-14b",
    "qwen2.5-32b",
    "qwen2.5-72b",
    "qwen3-8b",
    "gemma-2-2b",
    "gemma-2-9b",
    "gemma-3-1b",
    "phi-3-mini",
    "phi-4",
    "smollm2-135m",
    "smollm2-360m",
    "smollm2-1.7b",
    "gpt2",
]


def test_catalog_covers_required_models():
    keys = {m.key for m in catalog.list_models()}
    assert set(REQUIRED) <= keys


@pytest.mark.parametrize("key", ["llama-3.3-70b", "qwen2.5-72b", "gemma-2-9b", "phi-4", "mixtral-8x7b", "gpt2"])
def test_params_b_matches_meta_build(key):
    entry = catalog.find_model(key)
    assert introspect.resolve(key).total_params / 1e9 == pytest.approx(entry.params_b, abs=0.001)


def test_default_is_smollm2_135m():
    info = introspect.resolve("default")
    assert info.source == "default"
    assert (info.hidden, info.layers, info.heads, info.kv_heads, info.vocab) == (576, 30, 9, 3, 49152)
    assert info.tied_embeddings and info.total_params == 134_515_008
    assert {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"} <= set(info.target_names)


def test_hub_id_of_catalog_entry_and_gemma_head_dim():
    info = introspect.resolve("google/gemma-2-2b-it")
    assert info.source == "catalog" and info.head_dim == 256 and info.hidden // info.heads != 256


def test_local_folder_with_config_only(tmp_path):
    cfg = catalog.find_model("qwen2.5-0.5b").config_dict()
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    info = introspect.resolve(str(tmp_path))
    assert info.source == "local" and info.total_params == 494_032_768


def test_unknown_model_is_a_user_error():
    with pytest.raises(UserError) as e:
        introspect.resolve("no-such-model")
    assert e.value.field == "model" and "llama-3.1-8b" in e.value.message and ".gguf" in e.value.message


def test_hub_id_offline_is_a_user_error():
    # HF_HUB_OFFLINE=1 (conftest): the hub cannot be reached, as on this machine
    with pytest.raises(UserError) as e:
        introspect.resolve("someone/some-model-that-is-not-cached")
    assert e.value.field == "model"


def test_unreadable_config(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(UserError) as e:
        introspect.resolve(str(tmp_path))
    assert "config.json" in e.value.message


def test_gguf_missing_file(tmp_path):
    with pytest.raises(UserError):
        introspect.resolve(str(tmp_path / "model.gguf"))


def test_find_gpu_is_forgiving_and_lists_known():
    assert catalog.find_gpu("rtx-4090").name == "RTX 4090"
    assert catalog.find_gpu("a100 80gb").memory_gb == 80
    assert catalog.find_gpu("CPU").is_cpu
    names = {g.name for g in catalog.list_gpus()}
    assert {"T4", "L4", "A10G", "RTX 3090", "RTX 4090", "A100 40GB", "A100 80GB", "H100", "H200"} <= names
    with pytest.raises(UserError) as e:
        catalog.find_gpu("GTX 480")
    assert e.value.field == "gpu" and "H100" in e.value.message


def test_gguf_file_resolves_from_its_own_metadata():
    """The embedded default's .gguf file: the architecture comes from the file, not the catalog."""
    from engine.model.default_model import embedded_gguf

    info = introspect.resolve(str(embedded_gguf()))
    assert info.source == "gguf"
    assert (info.hidden, info.layers, info.heads, info.kv_heads, info.vocab) == (576, 30, 9, 3, 49152)
    assert info.tied_embeddings and info.total_params == 134_515_008


@pytest.mark.parametrize(
    "spec, hub_id, variant",
    [
        ("meta-llama/Llama-3.2-3B", "meta-llama/Llama-3.2-3B", "base"),
        ("meta-llama/Llama-3.2-3B-Instruct", "meta-llama/Llama-3.2-3B-Instruct", "instruct"),
        ("Llama-3.2-3B-Instruct", "meta-llama/Llama-3.2-3B-Instruct", "instruct"),
        ("Qwen3-8B-Base", "Qwen/Qwen3-8B-Base", "base"),
        ("llama-3.2-3b-instruct", "meta-llama/Llama-3.2-3B-Instruct", "instruct"),
        ("llama-3.2-3b-base", "meta-llama/Llama-3.2-3B", "base"),
        ("Qwen/Qwen2.5-7B", "Qwen/Qwen2.5-7B", "base"),
        ("google/gemma-2-2b", "google/gemma-2-2b", "base"),
        ("mistralai/Mistral-7B-Instruct-v0.1", "mistralai/Mistral-7B-Instruct-v0.1", "instruct"),
        ("meta-llama/Llama-2-7b-chat-hf", "meta-llama/Llama-2-7b-chat-hf", "instruct"),
        ("HuggingFaceTB/SmolLM2-135M", "HuggingFaceTB/SmolLM2-135M", "base"),
    ],
)
def test_base_and_instruct_ids_both_resolve_offline(spec, hub_id, variant):
    # HF_HUB_OFFLINE=1 (conftest): these resolve from the catalog's configs alone
    found = catalog.match_model(spec)
    assert (found.hub_id, found.variant) == (hub_id, variant)
    info = introspect.resolve(spec)
    assert info.source == "catalog" and info.extra["hub_id"] == hub_id and info.extra["variant"] == variant
    assert info.extra["card"].startswith(found.entry.variant + " variant (" + found.entry.hub_id)
    # the same architecture, so the same figures as the checkpoint the card describes
    assert info.total_params == introspect.resolve(found.entry.hub_id).total_params


def test_the_key_names_the_checkpoint_the_card_describes_and_training_uses_the_named_one():
    from engine.train.run import model_source

    entry = catalog.find_model("llama-3.2-3b")
    assert entry.variant == "instruct" and entry.hub_id == "meta-llama/Llama-3.2-3B-Instruct"
    assert entry.variants == {"base": "meta-llama/Llama-3.2-3B", "instruct": "meta-llama/Llama-3.2-3B-Instruct"}
    assert "also answers to the base meta-llama/Llama-3.2-3B" in entry.describes()
    assert model_source("llama-3.2-3b") == "meta-llama/Llama-3.2-3B-Instruct"
    assert model_source("meta-llama/Llama-3.2-3B") == "meta-llama/Llama-3.2-3B"  # never swapped for its sibling
    assert catalog.hub_id_of("someone/else") == "someone/else"


def test_every_catalog_entry_lists_the_checkpoint_it_describes():
    for m in catalog.list_models():
        assert m.variant in ("base", "instruct")
        assert m.variants.get(m.variant) == m.hub_id, m.key
        for hub_id in m.variants.values():
            assert catalog.find_model(hub_id) is m
