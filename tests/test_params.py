"""Trainable-parameter counts equal PEFT's own on the same meta-device models."""

import json

import pytest

from engine.errors import UserError
from engine.estimate import params
from engine.model import catalog, introspect


def small_copy(tmp_path, key, layers=2):
    """A catalog config with fewer layers, as a local folder (widths stay real)."""
    cfg = catalog.find_model(key).config_dict()
    for k in ("num_hidden_layers", "n_layer"):
        if k in cfg:
            cfg[k] = layers
    cfg.pop("max_window_layers", None)
    folder = tmp_path / key
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(cfg))
    return str(folder)


def peft_counts(info, r, targets, bias="none", use_dora=False, modules_to_save=None):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(info.config)
    tl = "all-linear" if targets == "all-linear" else introspect.resolve_targets(info, targets)
    cfg = LoraConfig(
        r=r, target_modules=tl, bias=bias, use_dora=use_dora, modules_to_save=modules_to_save, lora_dropout=0.0
    )
    return get_peft_model(model, cfg).get_nb_trainable_parameters()


def test_seed_figures_llama2_7b():
    info = introspect.resolve("meta-llama/Llama-2-7b-hf")
    assert info.total_params == 6_738_415_616
    pc = params.count(info, 8, "q_proj,v_proj")
    assert (pc.trainable, pc.total) == (4_194_304, 6_742_609_920)
    assert round(pc.percent, 4) == 0.0622
    assert params.count(info, 16, "q_proj,k_proj,v_proj,o_proj").trainable == 16_777_216
    # 4096 x 4096 layer, r=8: A 8x4096 + B 4096x8
    assert pc.by_module_type["q_proj"] == 32 * 65_536
    assert pc.by_layer == [131_072] * 32
    # adapter on disk: fp32 weights + a small safetensors header (~16 MB)
    assert 16_777_216 <= pc.adapter_bytes < 16_777_216 + 100_000


CASES = [
    ("gpt2", 8, "all-linear", "none", False),  # Conv1D
    ("gpt2", 4, "attention", "all", False),  # c_proj exists in attn and mlp
    ("phi-3-mini", 8, "all-linear", "none", True),  # fused qkv / gate_up, DoRA
    ("qwen2.5-0.5b", 16, "attention", "lora_only", False),  # q/k/v biases
    ("qwen3-0.6b", 8, "all-linear", "all", False),
    ("gemma-2-2b", 8, "all-linear", "none", True),  # head_dim 256 != hidden/heads, tied
    ("gemma-3-1b", 4, "mlp", "none", False),
    ("mistral-7b", 8, "q_proj,v_proj", "none", False),
    ("mixtral-8x7b", 8, "all-linear", "none", False),  # MoE: router + fused experts
    ("mixtral-8x7b", 8, "mlp", "none", False),
    ("llama-3.2-1b", 8, "all-linear", "none", False),
    ("smollm2-135m", 8, "q_proj,k_proj,v_proj,o_proj", "none", True),
]


@pytest.mark.parametrize("key,r,targets,bias,dora", CASES)
def test_matches_peft(tmp_path, key, r, targets, bias, dora):
    info = introspect.resolve(small_copy(tmp_path, key))
    pc = params.count(info, r, targets, bias, dora)
    assert (pc.trainable, pc.total) == peft_counts(info, r, targets, bias, dora)
    assert sum(pc.by_layer) <= pc.trainable
    assert sum(pc.by_module_type.values()) == pc.trainable


def test_modules_to_save_matches_peft(tmp_path):
    info = introspect.resolve(small_copy(tmp_path, "llama-3.1-8b", layers=1))
    pc = params.count(info, 8, "q_proj,v_proj", modules_to_save=("lm_head",))
    assert (pc.trainable, pc.total) == peft_counts(info, 8, "q_proj,v_proj", modules_to_save=["lm_head"])


def test_bad_targets_list_valid_names():
    info = introspect.resolve("smollm2-135m")
    with pytest.raises(UserError) as e:
        params.count(info, 8, "q_proj,query")
    assert e.value.field == "targets" and "query" in e.value.message and "v_proj" in e.value.message


def test_fused_moe_pair_must_be_targeted_together():
    info = introspect.resolve("mixtral-8x7b")
    with pytest.raises(UserError) as e:
        params.count(info, 8, "w1")
    assert e.value.field == "targets"


def test_full_fine_tune_trains_everything():
    info = introspect.resolve("gpt2")
    pc = params.count(info, 8, "all-linear", method="full")
    assert pc.trainable == pc.total == 124_439_808
