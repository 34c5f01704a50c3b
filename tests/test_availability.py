"""Step 1 says where a model's weights are, and a plan whose weights cannot be had is refused.

Real folders and a real Hugging Face cache layout (blobs, snapshots, refs, as huggingface_hub
writes it) under a temporary HF_HOME; the hub itself cannot exist here, so "reachable" is a
listening loopback socket named by HF_ENDPOINT, and "unreachable" a closed loopback port.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from engine.errors import UserError
from engine.model import availability
from engine.model.availability import Where
from tests.tiny import make_tiny_model
from ui.web import steps

ROOT = Path(__file__).resolve().parent.parent
HUB_ID = "lorapilot-test/tiny-cached"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("avail") / "tiny")


def fake_hub_cache(hf_home: Path, hub_id: str, model: Path, skip: tuple[str, ...] = ()) -> Path:
    """Lay `model`'s files out as huggingface_hub caches a download: content-addressed blobs,
    a snapshot of symlinks per commit, and refs/main naming the commit."""
    repo = hf_home / "hub" / ("models--" + hub_id.replace("/", "--"))
    commit = hashlib.sha1(hub_id.encode()).hexdigest()
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    for f in sorted(model.iterdir()):
        if f.name in skip:
            continue
        data = f.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snapshot / f.name).symlink_to(os.path.relpath(blob, snapshot))
    return repo


@pytest.fixture
def hf_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "hf-home"
    home.mkdir()
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    return home


def test_a_local_folder_with_weights_is_here_and_one_without_cannot_train(tiny, tmp_path):
    assert availability.weights(str(tiny)).where is Where.LOCAL
    bare = tmp_path / "config-only"
    bare.mkdir()
    (bare / "config.json").write_text((tiny / "config.json").read_text())
    found = availability.weights(str(bare))
    assert found.where is Where.MISSING and "no weight file" in found.message
    # a sharded checkpoint counts only with every shard of its index
    (bare / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}})
    )
    (bare / "model-00001-of-00002.safetensors").write_bytes(b"x")
    assert availability.weights(str(bare)).where is Where.MISSING
    (bare / "model-00002-of-00002.safetensors").write_bytes(b"x")
    assert availability.weights(str(bare)).where is Where.LOCAL


def test_the_embedded_default_needs_no_download():
    assert availability.weights("default").where is Where.EMBEDDED


def test_a_model_in_the_hub_cache_is_found_without_network(tiny, hf_home):
    fake_hub_cache(hf_home, HUB_ID, tiny)
    found = availability.weights(HUB_ID)
    assert found.where is Where.HUB_CACHE and str(hf_home / "hub") in found.message
    # the verdict matches what transformers does with the same cache, offline, in its own process
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    load = (
        "from transformers import AutoTokenizer, AutoModelForCausalLM; "
        f"AutoTokenizer.from_pretrained('{HUB_ID}'); AutoModelForCausalLM.from_pretrained('{HUB_ID}')"
    )
    p = subprocess.run([sys.executable, "-c", load], env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]


def test_a_cache_without_the_weights_is_not_enough(tiny, hf_home, monkeypatch):
    fake_hub_cache(hf_home, HUB_ID, tiny, skip=("model.safetensors",))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    found = availability.weights(HUB_ID)
    assert found.where is Where.MISSING and "HF_HUB_OFFLINE is set" in found.message


def test_not_here_says_whether_this_machine_can_download(hf_home, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with socket.socket() as listening:  # a stand-in for the hub: something accepts connections
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{listening.getsockname()[1]}")
        found = availability.weights("qwen2.5-0.5b")
        assert found.where is Where.DOWNLOAD and found.can_train
        assert "Qwen/Qwen2.5-0.5B-Instruct" in found.message and "about 1.0 GB" in found.message
    with socket.socket() as closed:  # the port is free again once closed: nothing listens there
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    found = availability.weights("qwen2.5-0.5b")
    assert not found.can_train and "cannot reach the Hugging Face hub" in found.message
    with pytest.raises(UserError, match="^model: Qwen/Qwen2.5-0.5B-Instruct is not on this machine"):
        availability.require("qwen2.5-0.5b")


def test_step_one_says_where_the_weights_are_before_the_facts(hf_home):
    page, ok = steps.model_facts("qwen2.5-0.5b")
    assert ok  # estimates still work from the catalog's config
    assert page.startswith('<div class="lp-notice lp-warn">Weights: Qwen/Qwen2.5-0.5B-Instruct is not on this machine')
    assert "HF_HUB_OFFLINE is set" in page and page.index("Weights:") < page.index("Found qwen2.5-0.5b")
    assert steps.model_facts("default")[0].startswith('<div class="lp-notice lp-ok">Weights: the embedded default')
    # step 2's data check meets the same cause (the tokenizer is not here either): the same words, not OSError
    summary = steps.check_data_view("demo", "ticket", None, "qwen2.5-0.5b")["summary"]
    assert "Qwen/Qwen2.5-0.5B-Instruct is not on this machine" in summary and "tokenizer" not in summary


def test_train_refuses_a_plan_whose_weights_cannot_be_had_before_a_job_exists(hf_home):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    p = subprocess.run(
        [
            sys.executable,
            str(ROOT / "app.py"),
            "train",
            "--model",
            "qwen2.5-0.5b",
            "--dataset",
            "demo:ticket",
            "--gpu",
            "cpu",
            "--max-steps",
            "1",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: model: Qwen/Qwen2.5-0.5B-Instruct is not on this machine")
    assert "tokenizer" not in p.stderr
    jobs = subprocess.run(
        [sys.executable, str(ROOT / "app.py"), "jobs", "--json"], env=env, capture_output=True, text=True, timeout=120
    )
    assert json.loads(jobs.stdout) == []
