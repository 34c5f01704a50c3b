"""GGUF export: what llama.cpp reads is the model LoRA Pilot trained.

Tiny models of every covered family are written as GGUF and run by llama.cpp itself
(llama-cpp-python): its logits must match transformers' on the same token ids, which fails
on a wrong tensor name, a missing Q/K permutation or a wrong hyper-parameter. The adapter
GGUF is checked the same way against PEFT. The embedded base round-trips to the shipped
file exactly. One module-scoped fixture trains the demo skill on the embedded model, as a
user would, and the export's own check must find llama.cpp answering as PEFT does.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engine.errors import UserError
from tests.tiny import make_tiny_model
from tests.tiny_adapters import make_tiny_adapter

ROOT = Path(__file__).resolve().parent.parent
IDS = [5, 17, 42, 99, 7, 250, 3, 64]

try:
    import llama_cpp  # noqa: F401

    HAVE_LLAMA_CPP = True
except ImportError:  # the `test` extra installs it; without it the llama.cpp half cannot run
    HAVE_LLAMA_CPP = False
needs_llama_cpp = pytest.mark.skipif(
    not HAVE_LLAMA_CPP,
    reason="llama-cpp-python is not installed (pip install -c constraints.txt 'llama-cpp-python==0.3.36')",
)


@pytest.fixture(scope="module")
def tiny_bases(tmp_path_factory):
    """A tiny model folder per covered family, one tokenizer for all of them."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, MistralConfig, Qwen2Config, Qwen3Config

    root = tmp_path_factory.mktemp("gguf-bases")
    llama = make_tiny_model(root / "llama")
    tok = AutoTokenizer.from_pretrained(llama)
    common = dict(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        eos_token_id=tok.eos_token_id,
        bos_token_id=tok.bos_token_id,
        pad_token_id=tok.eos_token_id,
    )
    bases = {"llama": llama}
    for name, config in {
        "mistral": MistralConfig(**common, tie_word_embeddings=False),
        "qwen2": Qwen2Config(**common, tie_word_embeddings=True),
        "qwen3": Qwen3Config(**common, head_dim=32, tie_word_embeddings=False),
    }.items():
        torch.manual_seed(3)
        model = AutoModelForCausalLM.from_config(config)
        with torch.no_grad():  # biases and norms away from their init values, so a lost one shows
            for pname, p in model.named_parameters():
                if pname.endswith("bias") or "norm" in pname:
                    p.add_(torch.randn_like(p) * 0.1)
        model.save_pretrained(root / name)
        tok.save_pretrained(root / name)
        bases[name] = root / name
    return bases


def _hf_logits(model, ids):
    import torch

    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().numpy()


def _llama_cpp_logits(gguf_file, ids, lora=None):
    from llama_cpp import Llama

    llm = Llama(
        model_path=str(gguf_file),
        lora_path=str(lora) if lora else None,
        n_ctx=64,
        logits_all=True,
        n_threads=1,
        verbose=False,
    )
    try:
        llm.eval(ids)
        return np.array(llm.scores[: len(ids)])
    finally:
        llm.close()


# --- the writer ---------------------------------------------------------------------------------


@needs_llama_cpp
@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2", "qwen3"])
def test_llama_cpp_computes_what_transformers_computes_for_every_family(family, tiny_bases, tmp_path):
    import gguf
    from transformers import AutoModelForCausalLM

    from engine.gguf import writer

    out = writer.write_model(tiny_bases[family], tmp_path / f"{family}.gguf", "f32")
    reader = gguf.GGUFReader(str(out))
    assert reader.fields["general.architecture"].contents() == {"mistral": "llama"}.get(family, family)
    model = AutoModelForCausalLM.from_pretrained(tiny_bases[family]).eval()
    ours, theirs = _hf_logits(model, IDS), _llama_cpp_logits(out, IDS)
    assert np.abs(ours - theirs).max() < 1e-3 * max(1.0, np.abs(ours).max())
    assert (ours.argmax(-1) == theirs.argmax(-1)).all()

    q8 = writer.write_model(tiny_bases[family], tmp_path / f"{family}-q8.gguf", "q8_0")
    assert np.abs(_llama_cpp_logits(q8, IDS) - ours).max() < 0.05 * np.abs(ours).max()


@pytest.fixture(scope="module")
def embedded():
    """The embedded default's HF folder, converted once for the module (in the session's home)."""
    from engine.model import default_model

    return default_model.default_model_dir()


def _share_embedded(embedded: Path) -> None:
    """Let this test's home (and the CLI it starts) find the converted embedded model instead of converting it."""
    from engine import paths
    from engine.model import default_model

    target = paths.subdir("models") / default_model.FOLDER_NAME
    if not target.exists():
        target.symlink_to(embedded, target_is_directory=True)


def test_the_embedded_base_round_trips_to_the_shipped_gguf(embedded, tmp_path):
    import gguf

    from engine.gguf import writer
    from engine.model import default_model

    shipped = gguf.GGUFReader(str(default_model.embedded_gguf()))
    ours = gguf.GGUFReader(str(writer.write_model(embedded, tmp_path / "base.gguf", "f32")))
    mine = {t.name: t for t in ours.tensors}
    assert sorted(mine) == sorted(t.name for t in shipped.tensors)
    for t in shipped.tensors:  # the HF folder holds the shipped file's dequantized weights: f32 is exact
        expected = gguf.quants.dequantize(t.data, t.tensor_type)
        got = gguf.quants.dequantize(mine[t.name].data, mine[t.name].tensor_type)
        assert np.array_equal(expected, got), t.name
    for key in (
        "tokenizer.ggml.model",
        "tokenizer.ggml.pre",
        "tokenizer.ggml.tokens",
        "tokenizer.ggml.token_type",
        "tokenizer.ggml.merges",
        "tokenizer.ggml.bos_token_id",
        "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.padding_token_id",
        "tokenizer.ggml.add_bos_token",
        "tokenizer.chat_template",
    ):
        assert ours.fields[key].contents() == shipped.fields[key].contents(), key


def test_an_unknown_quant_or_architecture_is_refused_and_nothing_is_left(tiny_bases, tmp_path):
    from engine.gguf import writer

    with pytest.raises(UserError, match="unknown quantization 'q3'.*f16.*q8_0"):
        writer.write_model(tiny_bases["llama"], tmp_path / "x.gguf", "q3")
    gpt2 = make_tiny_model(tmp_path / "gpt2", arch="gpt2")
    with pytest.raises(UserError, match="does not cover the 'gpt2' architecture; it covers Llama.*Qwen3"):
        writer.write_model(gpt2, tmp_path / "x.gguf", "f16")
    assert list(tmp_path.glob("*.gguf*")) == []


# --- the adapter ------------------------------------------------------------------------------


@needs_llama_cpp
@pytest.mark.parametrize("family,rslora", [("llama", False), ("qwen2", True)])
def test_the_adapter_gguf_applies_in_llama_cpp_as_peft_applies_it(family, rslora, tiny_bases, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from engine.gguf import lora, writer

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_bases[family])
    config = LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "down_proj"],
        init_lora_weights=False,
        use_rslora=rslora,
        task_type="CAUSAL_LM",
    )
    peft = get_peft_model(base, config).eval()
    peft.save_pretrained(tmp_path / "adapter")
    adapter = lora.write_adapter(tmp_path / "adapter", tiny_bases[family], tmp_path / "adapter.gguf")
    base_file = writer.write_model(tiny_bases[family], tmp_path / "base.gguf", "f32")
    ours, theirs = _hf_logits(peft, IDS), _llama_cpp_logits(base_file, IDS, lora=adapter)
    with peft.disable_adapter():
        without = _hf_logits(peft, IDS)
    assert np.abs(ours - without).max() > 0.05  # the adapter changes the answer...
    assert np.abs(ours - theirs).max() < 1e-3 * max(1.0, np.abs(ours).max())  # ...in llama.cpp the same way


def test_what_the_adapter_format_cannot_carry_is_refused(tiny_bases, tmp_path):
    from engine.gguf import lora

    adapter = make_tiny_adapter(tiny_bases["llama"], tmp_path / "a")
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
    with pytest.raises(UserError, match="DoRA.*merged GGUF"):
        lora.write_adapter(adapter, tiny_bases["llama"], tmp_path / "a.gguf")
    assert not list(tmp_path.glob("*.gguf*"))


# --- the Modelfile --------------------------------------------------------------------------


def _go_render(template: str, system: str, prompt: str) -> str:
    """The Go text/template subset the Modelfile uses (if/else/end on .System; .System, .Prompt, .Response).

    No Go toolchain is on the test machine; this renders exactly that subset and fails on anything else."""

    def value(name):
        return {"System": system, "Prompt": prompt, "Response": ""}[name]

    out, pos, stack = [], 0, [True]
    for m in re.finditer(r"\{\{\s*(.*?)\s*\}\}", template):
        if all(stack):
            out.append(template[pos : m.start()])
        pos, action = m.end(), m.group(1)
        if action.startswith("if ."):
            stack.append(bool(value(action[4:])))
        elif action == "else":
            stack[-1] = not stack[-1]
        elif action == "end":
            stack.pop()
        elif action.startswith(".") and all(stack):
            out.append(value(action[1:]))
        elif not action.startswith("."):
            raise AssertionError(f"unexpected Go template action {action!r}")
    out.append(template[pos:] if all(stack) else "")
    text = "".join(out)
    return text[: text.index("\x00")] if "\x00" in text else text


LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    " + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)


@pytest.mark.parametrize("template", ["chatml", "llama3", "smollm2"])
def test_the_modelfile_template_renders_the_prompt_the_chat_template_renders(template, tiny_bases, embedded):
    from transformers import AutoTokenizer

    from engine.gguf import modelfile

    if template == "smollm2":
        tok = AutoTokenizer.from_pretrained(embedded)
    else:
        tok = AutoTokenizer.from_pretrained(tiny_bases["llama"])
    if template == "llama3":
        tok.add_special_tokens(
            {
                "bos_token": "<|begin_of_text|>",
                "additional_special_tokens": ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
            }
        )
        tok.chat_template = LLAMA3_TEMPLATE
    pieces = modelfile.chat_pieces(tok)
    text = modelfile.render(pieces, "./model.gguf", system="Answer in one line.")
    body = re.search(r'TEMPLATE """(.*?)"""', text, re.S).group(1)
    for system in ("Answer in one line.", ""):
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": "Printer on floor 2 is jammed"}
        ]
        expected = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        rendered = _go_render(
            body.replace("{{ .Response }}", "{{ .Response }}\x00"), system, "Printer on floor 2 is jammed"
        )
        assert rendered == expected
    stop = {"chatml": "<|im_end|>", "smollm2": "<|im_end|>", "llama3": "<|eot_id|>"}[template]
    assert f'PARAMETER stop "{stop}"' in text
    assert 'SYSTEM """Answer in one line."""' in text and text.startswith("FROM ./model.gguf")


# --- the export of a job, checked by llama.cpp ----------------------------------------------


def cli(*args, timeout=1800):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, str(ROOT / "app.py"), *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _job(folder: Path | None, plan, status="succeeded"):
    from jobs import store

    job = store.insert_job(store.Job(name=plan.name or "job", plan_json=plan.model_dump_json(), status=status))
    if folder is not None:
        shutil.copytree(folder, job.artifact_dir, dirs_exist_ok=True)
    return job


def test_bad_export_requests_are_one_error_line(tiny_bases, tmp_path):
    from engine.plan import TrainingPlan

    plan = TrainingPlan.build(name="t", model=str(tiny_bases["llama"]), dataset="demo:ticket", r=4, alpha=8)
    running = _job(make_tiny_adapter(tiny_bases["llama"], tmp_path / "a"), plan, status="running")
    gpt2 = make_tiny_model(tmp_path / "gpt2", arch="gpt2")
    other = _job(make_tiny_adapter(gpt2, tmp_path / "b", targets=("c_attn",)), plan.updated(model=str(gpt2)))
    for args, words in [
        ((running.id, "--as", "gguf"), "is running; only a succeeded job"),
        ((running.id, "--as", "gguf", "--quant", "q3"), "unknown quantization 'q3'"),
        ((other.id, "--as", "gguf"), "does not cover the 'gpt2' architecture"),
    ]:
        out = cli("export", *args)
        assert out.returncode == 2, out.stderr
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], out.stderr
    for job in (running, other):
        assert not (Path(job.artifact_dir) / "gguf").exists()


@pytest.fixture(scope="module")
def demo_adapter(tmp_path_factory, embedded):
    """The demo skill trained on the embedded model, as `demo` does (one training for the module)."""
    from engine.data import demo
    from engine.train.run import train

    plan = demo.default_plan()
    out = tmp_path_factory.mktemp("demo-job")
    train(plan, out)
    return plan, out


@needs_llama_cpp
@pytest.mark.slow
def test_the_demo_exports_and_llama_cpp_answers_as_the_adapter(demo_adapter, embedded):
    plan, folder = demo_adapter
    _share_embedded(embedded)
    job = _job(folder, plan)
    out = cli("export", job.id, "--as", "gguf")
    assert out.returncode == 0, out.stderr
    files = [Path(line) for line in out.stdout.split()]
    names = sorted(p.name for p in files)
    assert names == [
        "Modelfile",
        "Modelfile.adapter",
        f"lorapilot-job{job.id}-adapter.gguf",
        f"lorapilot-job{job.id}-f16.gguf",
    ]
    assert all(p.is_file() for p in files)
    record = json.loads(cli("show", job.id, "--json").stdout)["exports"]["gguf"]
    assert {"files", "quant", "agreement", "exact_match", "seconds"} <= set(record)
    checks = {c["kind"]: c for c in record["checks"]}
    assert checks["adapter"]["agreement"] >= 90 and checks["merged f16"]["agreement"] >= 90, checks
    assert record["quant"] == "f16" and record["agreement"] == checks["merged f16"]["agreement"]
    modelfile = (Path(job.artifact_dir) / "gguf" / "Modelfile").read_text()
    assert f"FROM ./lorapilot-job{job.id}-f16.gguf" in modelfile and 'PARAMETER stop "<|im_end|>"' in modelfile
    assert 'SYSTEM """File the request as a ticket."""' in modelfile
    from ui.web import run_elsewhere

    panel = run_elsewhere.how_to_run_html(job.id)
    assert "GGUF export:" in panel and f"{checks['adapter']['agreement']}% of" in panel
    card = (Path(job.artifact_dir) / "README.md").read_text()
    assert "## Run it with Ollama / llama.cpp" in card and f"ollama create {job.name}" in card

    out = cli("export", job.id, "--as", "gguf", "--quant", "q8_0")
    assert out.returncode == 0, out.stderr
    q8 = json.loads(cli("show", job.id, "--json").stdout)["exports"]["gguf"]
    assert q8["quant"] == "q8_0" and q8["agreement"] >= checks["merged f16"]["agreement"] - 10
    assert abs(q8["exact_match"] - q8["job_exact_match"]) <= 10
    print("gguf export of the demo:", json.dumps({"f16": record, "q8_0": q8}, indent=1))


def test_the_job_page_says_how_to_run_a_finished_job(tiny_bases, tmp_path):
    from engine.plan import TrainingPlan
    from ui.web import run_elsewhere

    plan = TrainingPlan.build(name="my-skill", model=str(tiny_bases["llama"]), dataset="demo:ticket", r=4, alpha=8)
    done = _job(make_tiny_adapter(tiny_bases["llama"], tmp_path / "a"), plan)
    panel = run_elsewhere.how_to_run_html(done.id)
    for words in (
        "Playground",
        "/v1",
        "my-skill as the model",
        f"export {done.id} --as gguf",
        "ollama create my-skill -f Modelfile",
        "serve-recipe my-skill",
    ):
        assert words in panel
    running = _job(None, plan, status="running")
    assert "Once the job has succeeded" in run_elsewhere.how_to_run_html(running.id)
    wizard = run_elsewhere.after_training_html()
    assert all(w in wizard for w in ("Playground", "/v1", "Ollama", "vLLM"))


@needs_llama_cpp
def test_a_full_fine_tune_exports_its_model_with_a_record(tiny_bases):
    from engine.plan import TrainingPlan
    from jobs import gguf_export

    plan = TrainingPlan.build(
        name="full-run", model=str(tiny_bases["qwen2"]), method="full", dataset="demo:json", eval_generations=4
    )
    job = _job(tiny_bases["qwen2"], plan)
    record = gguf_export.export(job.id, "q8_0")
    names = sorted(Path(f).name for f in record["files"])
    assert names == ["Modelfile", f"lorapilot-job{job.id}-q8_0.gguf"]  # no base GGUF, so no adapter file
    assert [c["kind"] for c in record["checks"]] == ["merged q8_0"] and record["checks"][0]["rows"] == 4
    assert 0 <= record["agreement"] <= 100 and record["seconds"] > 0
    assert gguf_export.exports(job)["gguf"] == record
