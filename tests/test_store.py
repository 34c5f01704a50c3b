"""The job store and the dispatcher's bookkeeping, without training anything."""

from __future__ import annotations

import multiprocessing as mp
import os
import subprocess
import sys
import zipfile

import pytest
from sqlalchemy import text

from engine.errors import UserError
from engine.plan import TrainingPlan
from engine.train.events import Metrics
from jobs import db, dispatcher, export, store
from tests.checkpoint_files import write_checkpoint


def _job(name="j", **values) -> store.Job:
    plan = TrainingPlan.build(dataset="data.jsonl", name=name)
    return store.insert_job(store.Job(name=name, plan_json=plan.model_dump_json(), **values))


def test_sqlite_in_wal_mode_under_home(lorapilot_home):
    _job()
    assert (lorapilot_home / "lorapilot.db").exists()
    with db.db_engine().connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA busy_timeout")).scalar() == 30000


def test_database_url_overrides(tmp_path, monkeypatch, lorapilot_home):
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'other.db'}")
    job = _job("elsewhere")
    assert (tmp_path / "other.db").exists()
    assert not (lorapilot_home / "lorapilot.db").exists()
    assert store.get_job(job.id).name == "elsewhere"


@pytest.mark.usefixtures("database")
def test_job_round_trip_folder_and_plan():
    job = _job("first")
    assert job.id == 1 and job.status == "queued"
    assert job.artifact_dir == str(store.job_dir(1))
    assert store.job_plan(store.get_job(1)).dataset == "data.jsonl"
    assert [j.id for j in store.list_jobs()] == [1]


@pytest.mark.usefixtures("database")
@pytest.mark.parametrize("bad", ["99", "abc"])
def test_unknown_job_is_a_user_error(bad):
    with pytest.raises(UserError) as err:
        store.get_job(bad)
    assert err.value.field == "job"


@pytest.mark.usefixtures("database")
def test_metrics_merge_per_step_and_trim_after_checkpoint():
    job = _job()
    for step in range(1, 8):
        store.record_metrics(job.id, Metrics(step=step, loss=1.0 / step).values())
    store.record_metrics(job.id, Metrics(step=5, eval_loss=0.5).values())
    rows = store.job_metrics(job.id)
    assert [m.step for m in rows] == list(range(1, 8))
    assert rows[4].loss == pytest.approx(0.2) and rows[4].eval_loss == 0.5
    assert store.delete_metrics_after(job.id, 5) == 2
    assert [m.step for m in store.job_metrics(job.id)] == [1, 2, 3, 4, 5]


def test_log_tail(lorapilot_home):
    job = _job()
    for i in range(100):
        store.append_log(job.id, f"line {i}")
    tail = store.log_tail(job.id, lines=3).splitlines()
    assert len(tail) == 3 and tail[-1].endswith("line 99")


@pytest.mark.usefixtures("database")
def test_claim_respects_slots_and_fifo():
    a, b, c = _job("a"), _job("b"), _job("c")
    assert store.claim_next(1) == a.id
    assert store.claim_next(1) is None  # one slot, taken
    assert store.claim_next(2) == b.id
    store.update_job(a.id, status="succeeded")
    assert store.claim_next(2) == c.id


def _claim_all(queue):
    out = []
    while (job_id := store.claim_next(1000)) is not None:
        out.append(job_id)
    queue.put(out)


@pytest.mark.usefixtures("database")
def test_concurrent_claims_never_start_a_job_twice():
    ids = [_job(f"j{i}").id for i in range(30)]
    ctx = mp.get_context("spawn")  # separate processes, separate connections, as in real dispatchers
    queue = ctx.Queue()
    procs = [ctx.Process(target=_claim_all, args=(queue,)) for _ in range(4)]
    for p in procs:
        p.start()
    claimed = [job_id for _ in procs for job_id in queue.get(timeout=60)]
    for p in procs:
        p.join(timeout=30)
    assert sorted(claimed) == ids  # every job claimed exactly once


def _claim_one_slot(queue, barrier):
    barrier.wait()  # all racers hit the database at the same moment
    queue.put([job_id for _ in range(20) if (job_id := store.claim_next(1)) is not None])


@pytest.mark.usefixtures("database")
def test_concurrent_claims_never_exceed_the_slots():
    for i in range(10):
        _job(f"j{i}")
    ctx = mp.get_context("spawn")
    queue, barrier = ctx.Queue(), ctx.Barrier(4)
    procs = [ctx.Process(target=_claim_one_slot, args=(queue, barrier)) for _ in range(4)]
    for p in procs:
        p.start()
    claimed = [job_id for _ in procs for job_id in queue.get(timeout=60)]
    for p in procs:
        p.join(timeout=30)
    assert len(claimed) == 1  # one slot: one job runs, however many dispatchers race
    assert [j.id for j in store.list_jobs(status="running")] == claimed


@pytest.mark.usefixtures("database")
def test_reconcile_marks_dead_or_foreign_pids_interrupted():
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    # A live process that *looks like* our worker for job 3 (the real worker is tested in
    # test_lifecycle.py; here only the pid-identity rule is under test).
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "jobs.worker", "3"])
    try:
        j1 = _job(status="running", pid=dead.pid, started_at=store.now())
        j2 = _job(status="running", pid=os.getpid(), started_at=store.now())  # a reused pid: alive, not ours
        j3 = _job(status="running", pid=alive.pid, started_at=store.now())
        j4 = _job(status="running", pid=None, started_at=store.now())  # just claimed, being spawned
        assert sorted(dispatcher.reconcile()) == [j1.id, j2.id]
        assert store.get_job(j1.id).status == "interrupted"
        assert "ended without reporting" in store.get_job(j1.id).error
        assert store.get_job(j3.id).status == "running"
        assert store.get_job(j4.id).status == "running"
    finally:
        alive.kill()
        alive.wait()


@pytest.mark.usefixtures("database")
def test_cancel_queued_and_resume_same_id(monkeypatch):
    monkeypatch.setenv("LORAPILOT_MAX_CONCURRENT", "0")  # keep everything queued: no worker here
    job = _job()
    assert dispatcher.cancel(job.id).status == "cancelled"
    with pytest.raises(UserError, match="only queued or running"):
        dispatcher.cancel(job.id)
    ckpts = store.job_dir(job.id) / "checkpoints"
    write_checkpoint(ckpts / "checkpoint-2", 2)
    write_checkpoint(ckpts / "checkpoint-5", 5)
    (ckpts / "checkpoint-8").mkdir()  # a torn one (a kill mid-save): no state, no weights
    for step in range(1, 9):
        store.record_metrics(job.id, {"step": step, "loss": 1.0})
    resumed = dispatcher.resume(job.id)
    assert (resumed.id, resumed.status, resumed.step) == (job.id, "queued", 5)
    assert [m.step for m in store.job_metrics(job.id)] == [1, 2, 3, 4, 5]
    assert (ckpts / "torn" / "checkpoint-8").is_dir() and not (ckpts / "checkpoint-8").exists()
    assert "checkpoint-8 is incomplete (trainer_state.json is missing)" in store.log_tail(job.id)
    with pytest.raises(UserError, match="can resume"):
        dispatcher.resume(job.id)


def test_export_zip_holds_only_the_jobs_files(tmp_path):
    job = _job()
    folder = store.job_dir(job.id)
    with pytest.raises(UserError, match="adapter"):
        export.export_zip(job.id)
    for name in ("adapter_model.safetensors", "adapter_config.json", "plan.yaml", "README.md", "metrics.csv"):
        (folder / name).write_text(name)
    secret = tmp_path / "secret.txt"
    secret.write_text("not yours")
    (folder / "loss.png").symlink_to(secret)  # a link out of the folder must not be followed
    path = export.export_zip(job.id)
    assert path.parent == folder
    with zipfile.ZipFile(path) as zf:
        names = set(zf.namelist())
        assert names == {"adapter_model.safetensors", "adapter_config.json", "plan.yaml", "README.md", "metrics.csv"}
        assert all("not yours" not in zf.read(n).decode() for n in names)


@pytest.mark.usefixtures("database")
def test_resumed_job_queues_behind_those_already_waiting(monkeypatch):
    monkeypatch.setenv("LORAPILOT_MAX_CONCURRENT", "0")
    a, b = _job("a"), _job("b")
    dispatcher.cancel(a.id)
    dispatcher.resume(a.id)  # back in the queue, but after b
    assert [store.claim_next(5), store.claim_next(5)] == [b.id, a.id]
