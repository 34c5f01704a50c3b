"""The adapter library: job adapters registered on success, imports checked, rename, delete."""

from __future__ import annotations

import json
import zipfile

import pytest

from engine.errors import UserError
from tests.tiny import make_tiny_model
from tests.tiny_adapters import make_tiny_adapter


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("lib")
    base = make_tiny_model(root / "base")
    return base, make_tiny_adapter(base, root / "skill-a", seed=1), root


def _library_files(home):
    folder = home / "adapters"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_import_list_rename_delete(tiny, lorapilot_home):
    from jobs import library

    base, adapter, _ = tiny
    entry = library.import_adapter(adapter, name="alpha")
    assert entry.base_model == str(base.resolve()) and entry.r == 4 and entry.targets == "q_proj,v_proj"
    assert entry.bytes > 1000 and entry.method == "lora"
    copied = lorapilot_home / "adapters" / "alpha"
    assert (copied / "adapter_model.safetensors").is_file() and entry.path == str(copied)
    assert adapter.exists()  # the source is copied, never moved

    second = library.import_adapter(adapter)  # default name: the folder's, made unique
    assert second.name == "skill-a"
    assert [a.name for a in library.list_adapters()] == ["alpha", "skill-a"]
    assert library.list_adapters(base_model="elsewhere") == []
    assert library.find(str(entry.id)).name == "alpha"
    with pytest.raises(UserError, match="no adapter named or numbered 'zeta'; known: alpha, skill-a"):
        library.find("zeta")

    assert library.rename("alpha", "beta").name == "beta"
    with pytest.raises(UserError, match="'skill-a' exists"):
        library.rename("beta", "skill-a")
    with pytest.raises(UserError, match="not a usable adapter name"):
        library.rename("beta", "has space")
    with pytest.raises(UserError, match="'beta' exists"):
        library.import_adapter(adapter, name="beta")

    library.delete("beta")
    assert not copied.exists() and [a.name for a in library.list_adapters()] == ["skill-a"]
    summary = library.summary(library.find("skill-a"))
    for key in ("id", "name", "base_model", "path", "r", "targets", "bytes", "job_id"):
        assert key in summary


def test_zip_import_and_bad_inputs_leave_nothing_behind(tiny, tmp_path, lorapilot_home):
    from jobs import library

    _base, adapter, _root = tiny
    good = tmp_path / "good.zip"
    with zipfile.ZipFile(good, "w") as zf:
        for f in adapter.iterdir():
            zf.write(f, arcname=f"skill/{f.name}")
    assert library.import_adapter(good).name == "good"

    not_adapter = tmp_path / "photos.zip"
    with zipfile.ZipFile(not_adapter, "w") as zf:
        zf.writestr("cat.txt", "meow")
    (tmp_path / "broken.zip").write_bytes(b"PK not really")
    (tmp_path / "empty").mkdir()
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "adapter_config.json").write_text(json.dumps(cfg | {"base_model_name_or_path": "/gone/model"}))
    (foreign / "adapter_model.safetensors").write_bytes((adapter / "adapter_model.safetensors").read_bytes())
    wider = make_tiny_model(tmp_path / "wider")
    conf = json.loads((wider / "config.json").read_text())
    conf["hidden_size"], conf["intermediate_size"] = 32, 64
    (wider / "config.json").write_text(json.dumps(conf))
    slip = tmp_path / "slip.zip"
    with zipfile.ZipFile(slip, "w") as zf:
        zf.writestr("../evil.txt", "x")

    cases = [
        (tmp_path / "missing", "does not exist"),
        (tmp_path / "empty", "has no adapter_config.json"),
        (not_adapter, "holds no adapter_config.json"),
        (tmp_path / "broken.zip", "not a readable zip"),
        (slip, "outside the archive"),
        (foreign, "base model '/gone/model' is not a local model folder"),
    ]
    before = _library_files(lorapilot_home)
    for path, message in cases:
        with pytest.raises(UserError, match=message):
            library.import_adapter(path)
    with pytest.raises(UserError, match="trained on another base model"):
        library.import_adapter(adapter, base=str(wider))  # right file, wrong base: shapes differ
    assert _library_files(lorapilot_home) == before == ["good"]
    assert [a.name for a in library.list_adapters()] == ["good"]
    assert not (tmp_path / "evil.txt").exists()


def test_a_succeeded_job_becomes_an_entry_once(tiny, lorapilot_home):
    import shutil

    from engine.plan import TrainingPlan
    from jobs import library, store

    base, adapter, _ = tiny
    plan = TrainingPlan.build(name="demo-ticket", model=str(base), dataset="demo:ticket", r=4, alpha=8)
    job = store.insert_job(
        store.Job(
            name="demo-ticket",
            plan_json=plan.model_dump_json(),
            status="succeeded",
            base_score=0.0,
            adapter_score=75.0,
        )
    )
    shutil.copytree(adapter, job.artifact_dir, dirs_exist_ok=True)
    entry = library.register_job_adapter(job)
    assert (entry.name, entry.job_id, entry.skill, entry.path) == ("demo-ticket", job.id, "ticket", job.artifact_dir)
    assert entry.scores == {"base": 0.0, "adapter": 75.0}
    assert library.register_job_adapter(job).id == entry.id  # once

    # deleting a job's entry keeps the job's files; a queued/running job's entry cannot be deleted
    running = store.insert_job(store.Job(name="later", plan_json=plan.model_dump_json(), status="succeeded"))
    shutil.copytree(adapter, running.artifact_dir, dirs_exist_ok=True)
    library.register_finished(running.id)
    store.update_job(running.id, status="running")
    with pytest.raises(UserError, match="which is running"):
        library.delete("later")
    library.delete("demo-ticket")
    assert (store.job_dir(job.id) / "adapter_model.safetensors").is_file()
    assert [a.name for a in library.list_adapters()] == ["later"]
