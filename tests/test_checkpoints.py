"""Nothing lost when a save goes wrong: real worker processes training a tiny model.

A resume starts from the newest checkpoint that is complete and readable and sets torn
ones aside (never deleting them); a checkpoint only appears once fully written; a full
disk fails the job with the reason and the fix, keeps the last complete checkpoint, and
the job resumes once there is space again. Disk-full is injected (engine.train.faults):
a real full disk cannot be made safely on a shared test machine.
"""

from __future__ import annotations

import pytest

from engine.train import checkpoints, faults
from jobs import dispatcher, store
from tests.checkpoint_files import write_checkpoint
from tests.jobwait import finished, plan, tiny_files, wait_for

pytestmark = pytest.mark.usefixtures("no_worker_left_behind")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_files(tmp_path_factory.mktemp("tiny-ckpt"))


def _names(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("checkpoint-"))


def _steps(job_id):
    return [m.step for m in store.job_metrics(job_id)]


def _cut_short(file):
    with open(file, "r+b") as fh:
        fh.truncate(file.stat().st_size // 2)


@pytest.mark.slow
def test_resume_skips_torn_checkpoints_sets_them_aside_and_redoes_their_steps(tiny):
    job = dispatcher.submit(plan(tiny, max_steps=6, save_steps=2))
    assert wait_for(job.id, finished).status == "succeeded"
    ckpts = store.job_dir(job.id) / "checkpoints"
    assert _names(ckpts) == ["checkpoint-4", "checkpoint-6"]  # save_total_limit=2

    # Two ways a kill or a lying disk tears the newest checkpoint: its state file never written,
    # its weights cut short. Each time the job is marked as a kill would have left it.
    tears = [
        ("trainer_state.json is missing", lambda c: (c / "trainer_state.json").unlink()),
        ("adapter_model.safetensors is unreadable", lambda c: _cut_short(c / "adapter_model.safetensors")),
    ]
    for why, tear in tears:
        tear(ckpts / "checkpoint-6")
        store.update_job(job.id, status="interrupted", error="killed")
        resumed = dispatcher.resume(job.id, start=False)
        assert resumed.step == 4 and _steps(job.id) == [1, 2, 3, 4]  # rows after the checkpoint dropped
        assert f"checkpoint-6 is incomplete ({why}" in store.log_tail(job.id)
        assert not (ckpts / "checkpoint-6").exists()
        dispatcher.kick()
        done = wait_for(job.id, finished)
        assert done.status == "succeeded", done.error
        assert _steps(job.id) == [1, 2, 3, 4, 5, 6]  # the torn checkpoint's steps trained again, once
        assert "resuming from checkpoint at step 4" in store.log_tail(job.id, 400)
        assert checkpoints.problem(ckpts / "checkpoint-6") is None
    # Set aside, never deleted: both torn copies are still there for the user.
    assert sorted(p.name for p in (ckpts / "torn").iterdir()) == ["checkpoint-6", "checkpoint-6.2"]
    assert not (ckpts / "torn" / "checkpoint-6" / "trainer_state.json").exists()


@pytest.mark.slow
def test_disk_full_mid_checkpoint_fails_plainly_keeps_the_last_one_and_resumes(tiny, monkeypatch):
    monkeypatch.setenv(faults.DISK_FULL, "checkpoint-4")  # the worker inherits it; later ones do not
    job = dispatcher.submit(plan(tiny, max_steps=6, save_steps=2))
    monkeypatch.delenv(faults.DISK_FULL)
    failed = wait_for(job.id, finished)
    assert failed.status == "failed"
    assert failed.error.startswith("The disk is full at step 4") and "resume" in failed.error
    assert "Traceback" not in failed.error and "Traceback" in store.log_tail(job.id, 200)
    ckpts = store.job_dir(job.id) / "checkpoints"
    # The half-written checkpoint-4 stayed in the staging folder: it never became a checkpoint.
    assert _names(ckpts) == ["checkpoint-2"] and checkpoints.problem(ckpts / "checkpoint-2") is None

    resumed = dispatcher.resume(job.id)  # space is back
    assert resumed.step == 2
    done = wait_for(job.id, finished)
    assert done.status == "succeeded", done.error
    assert _steps(job.id) == [1, 2, 3, 4, 5, 6]
    assert _names(ckpts) == ["checkpoint-4", "checkpoint-6"] and not (ckpts / checkpoints.STAGING).exists()


@pytest.mark.slow
def test_disk_full_in_the_final_save_resumes_to_the_adapter(tiny, monkeypatch):
    monkeypatch.setenv(faults.DISK_FULL, "final")
    job = dispatcher.submit(plan(tiny, max_steps=4, save_steps=2))
    monkeypatch.delenv(faults.DISK_FULL)
    failed = wait_for(job.id, finished)
    assert failed.status == "failed" and failed.error.startswith("The disk is full at step 4"), failed.error
    folder = store.job_dir(job.id)
    assert checkpoints.problem(folder / "checkpoints" / "checkpoint-4") is None  # the last complete one

    assert dispatcher.resume(job.id).step == 4
    done = wait_for(job.id, finished)
    assert done.status == "succeeded", done.error
    assert _steps(job.id) == [1, 2, 3, 4]
    from safetensors import safe_open

    with safe_open(str(folder / "adapter_model.safetensors"), framework="pt") as fh:
        assert any("lora_A" in k for k in fh.keys())  # noqa: SIM118 - safe_open is no mapping


# --- which checkpoint is complete: fast, on files in the Trainer's formats --------------
@pytest.mark.parametrize(
    "damage, why",
    [
        (lambda c: (c / "optimizer.pt").unlink(), "optimizer.pt is missing"),
        (lambda c: _cut_short(c / "optimizer.pt"), "optimizer.pt is unreadable"),
        (lambda c: _cut_short(c / "scheduler.pt"), "scheduler.pt is unreadable"),
        (lambda c: (c / "rng_state.pth").unlink(), "rng_state.pth is missing"),
        (lambda c: (c / "adapter_model.safetensors").unlink(), "no model weights"),
        (lambda c: _cut_short(c / "adapter_model.safetensors"), "adapter_model.safetensors is unreadable"),
        (lambda c: (c / "trainer_state.json").write_text('{"global_st'), "trainer_state.json is unreadable"),
    ],
)
def test_each_part_of_a_checkpoint_is_checked(tmp_path, damage, why):
    out = tmp_path / "job"
    write_checkpoint(out / "checkpoints" / "checkpoint-3", 3)
    newest = write_checkpoint(out / "checkpoints" / "checkpoint-9", 9)
    assert checkpoints.problem(newest) is None
    damage(newest)
    assert checkpoints.problem(newest).startswith(why)
    said = []
    assert checkpoints.resume_point(out, log=said.append) == out / "checkpoints" / "checkpoint-3"
    assert len(said) == 1 and said[0].startswith(f"checkpoint-9 is incomplete ({why}")
    assert (out / "checkpoints" / "torn" / "checkpoint-9").is_dir()


def test_no_complete_checkpoint_means_a_fresh_start(tmp_path):
    (tmp_path / "checkpoints" / "checkpoint-5").mkdir(parents=True)
    assert checkpoints.resume_point(tmp_path) is None
    assert (tmp_path / "checkpoints" / "torn" / "checkpoint-5").is_dir()
    assert checkpoints.resume_point(tmp_path / "nothing-here") is None
