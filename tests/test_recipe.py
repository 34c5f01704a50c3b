"""The vLLM recipe: the command text, the rank rounding and each of vLLM's refusals (no GPU needed)."""

import shlex

import pytest

from app import main
from engine.adapters import recipe
from engine.errors import UserError
from tests.tiny import make_tiny_model


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("recipe") / "base")


def adapter(base, out, resize_vocab=None, **lora):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base)
    if resize_vocab:
        model.resize_token_embeddings(resize_vocab)
    settings = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"], "task_type": "CAUSAL_LM"} | lora
    get_peft_model(model, LoraConfig(**settings)).save_pretrained(out)
    return out


def test_command_rounds_the_rank_and_lists_every_adapter(base, tmp_path):
    a = adapter(base, tmp_path / "support", r=4)
    b = adapter(
        base,
        tmp_path / "sql",
        r=20,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    )
    result = recipe.build([("support", a), ("sql", b)])
    assert result.issues == []
    assert result.max_rank == 20 and result.max_lora_rank == 32
    assert result.command() == (
        f"vllm serve {shlex.quote(str(base))} --enable-lora --lora-modules "
        f"support={a} sql={b} --max-lora-rank 32 --max-loras 2"
    )
    assert "rounded up" in result.text()


@pytest.mark.parametrize("rank,expected", [(1, 1), (2, 8), (8, 8), (9, 16), (100, 128), (300, 320), (512, 512)])
def test_rank_rounding_follows_vllms_accepted_values(rank, expected):
    assert recipe.round_rank(rank) == expected


def test_dora_modules_to_save_and_resized_vocab_are_flagged_and_left_out(base, tmp_path):
    ok = adapter(base, tmp_path / "ok")
    dora = adapter(base, tmp_path / "dora", use_dora=True, r=64)
    head = adapter(base, tmp_path / "head", modules_to_save=["lm_head"])
    vocab = adapter(base, tmp_path / "vocab", resize_vocab=512, target_modules=["q_proj", "embed_tokens"])
    result = recipe.build([("ok", ok), ("dora", dora), ("head", head), ("vocab", vocab)])
    blocked = {i.adapter: i for i in result.issues if i.blocking}
    assert set(blocked) == {"dora", "head", "vocab"}
    assert "DoRA" in blocked["dora"].reason and "merge" in blocked["dora"].fix
    assert "lm_head" in blocked["head"].reason and "modules_to_save" in blocked["head"].reason
    assert "512 tokens" in blocked["vocab"].reason
    command = result.command()
    assert f"ok={ok}" in command and "dora=" not in command and "head=" not in command
    assert command.endswith("--max-lora-rank 8 --max-loras 1")  # the left-out DoRA's rank 64 does not count


def test_targets_the_architecture_does_not_take_are_flagged(base, tmp_path):
    # vLLM's Phi-3 fuses q/k/v into qkv_proj, so an adapter on q_proj cannot load there.
    path = adapter(base, tmp_path / "phi")
    issues = recipe.check_adapter("phi", path, recipe.read_config(path), {"architectures": ["Phi3ForCausalLM"]})
    assert [i.blocking for i in issues] == [True]
    assert "q_proj" in issues[0].reason and "qkv_proj" in issues[0].reason
    unknown = recipe.check_adapter("x", path, recipe.read_config(path), {"architectures": ["NewModelForCausalLM"]})
    assert [i.blocking for i in unknown] == [False]


def test_adapters_of_different_bases_need_separate_recipes(base, tmp_path):
    other = make_tiny_model(tmp_path / "other-base", seed=1)
    with pytest.raises(UserError, match="different ones"):
        recipe.build([("a", adapter(base, tmp_path / "a")), ("b", adapter(other, tmp_path / "b"))])


def test_cli_prints_the_recipe_and_fails_on_blocked_adapters(base, tmp_path, capsys):
    ok = adapter(base, tmp_path / "support")
    assert main(["serve-recipe", str(ok)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(
        f"vllm serve {shlex.quote(str(base))} --enable-lora --lora-modules support={ok} "
        "--max-lora-rank 8 --max-loras 1\n"
    )
    dora = adapter(base, tmp_path / "dora", use_dora=True)
    assert main(["serve-recipe", str(ok), str(dora)]) == 2
    assert "cannot serve: dora: it uses DoRA" in capsys.readouterr().out
    assert main(["serve-recipe", str(tmp_path / "nothing-here")]) == 2
    assert "error: adapter:" in capsys.readouterr().err
    assert main(["serve-recipe", str(ok), "--engine", "tgi"]) == 2
    assert "error: engine:" in capsys.readouterr().err


def test_library_tab_writes_the_recipe_for_library_adapters(base, tmp_path):
    from jobs import library
    from ui.web import library_page

    library.import_adapter(adapter(base, tmp_path / "src-support"), name="support")
    library.import_adapter(adapter(base, tmp_path / "src-dora", use_dora=True), name="dora-skill")
    page = library_page.serve_recipe(["support"])
    assert "vLLM can serve every adapter" in page
    assert f"--lora-modules support={library.find('support').path} --max-lora-rank 8" in page
    page = library_page.serve_recipe(["support", "dora-skill"])
    assert "Left out of the command: dora-skill" in page and "it uses DoRA" in page
    assert "dora-skill=" not in page
    assert "Pick one or more" in library_page.serve_recipe([])
    assert "no adapter named or numbered &#x27;missing&#x27;" in library_page.serve_recipe(["missing"])
