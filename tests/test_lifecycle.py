"""Job lifecycle with real worker processes training a tiny model (tests/tiny.py).

kill -9 mid-run → interrupted → resume → succeeded with every step recorded once;
a job outlives the process that submitted it and any dispatcher restart; graceful cancel
leaves a checkpoint and resumes; 20 concurrent submissions are all recorded and start FIFO.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from sqlalchemy import update

from engine.train import faults
from jobs import db, dispatcher, store
from jobs.tables import Job
from tests.jobwait import finished, plan, tiny_files, wait_for

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("no_worker_left_behind")]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny model and a small chat dataset, shared by the tests of this module."""
    return tiny_files(tmp_path_factory.mktemp("tiny"))


@pytest.mark.usefixtures("database")
def test_kill9_then_resume_loses_and_repeats_no_step(tiny, monkeypatch):
    # Each step of the first run takes at least 0.3 s, so 60 steps cannot end between the poll
    # that sees step 7 and the kill, however fast the machine; the resumed run goes at full speed.
    monkeypatch.setenv(faults.DELAY, "0.3")
    job = dispatcher.submit(plan(tiny, max_steps=60))
    monkeypatch.delenv(faults.DELAY)  # the worker has its environment already
    assert job.status == "running" and job.estimated_peak_bytes > 0
    ckpts = store.job_dir(job.id) / "checkpoints"
    running = wait_for(job.id, lambda j: j.status != "running" or (j.step >= 7 and (ckpts / "checkpoint-5").is_dir()))
    assert running.status == "running", store.log_tail(job.id)
    os.killpg(running.pid, signal.SIGKILL)  # no goodbye: the worker cannot write anything
    wait_for(job.id, lambda j: not dispatcher.worker_alive(j.pid, j.id))

    assert job.id in dispatcher.reconcile()
    dead = store.get_job(job.id)
    assert dead.status == "interrupted" and "ended without reporting" in dead.error
    kept = {m.step: m.id for m in store.job_metrics(job.id) if m.step <= 5}
    assert sorted(kept) == [1, 2, 3, 4, 5]

    resumed = dispatcher.resume(job.id)
    assert resumed.id == job.id and resumed.status == "running"
    done = wait_for(job.id, finished)
    assert done.status == "succeeded", done.error
    rows = store.job_metrics(job.id)
    assert [m.step for m in rows] == list(range(1, 61))  # none lost, none twice
    assert {m.step: m.id for m in rows if m.step <= 5} == kept  # rows up to the checkpoint were kept
    assert "resuming from checkpoint" in store.log_tail(job.id, 200)
    assert done.measured_peak_bytes and done.progress == 1.0
    assert (Path(done.artifact_dir) / "adapter_model.safetensors").is_file()


def test_job_outlives_its_submitter_and_dispatcher_restarts(tiny, lorapilot_home):
    env = {**os.environ, "LORAPILOT_HOME": str(lorapilot_home)}
    cli = [sys.executable, str(ROOT / "app.py")]
    out = subprocess.run(
        cli + ["train", *plan(tiny, max_steps=8).to_cli_args()], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    job_id = int(out.stdout.split()[1])  # "job N running: ..."
    # The submitting process has exited; a new "UI" process sees the job and its worker.
    shown = json.loads(
        subprocess.run(
            cli + ["show", str(job_id), "--json"], env=env, capture_output=True, text=True, timeout=60
        ).stdout
    )
    assert shown["status"] == "running" and shown["pid"]
    assert dispatcher.reconcile() == []  # a restarted dispatcher leaves a live worker alone
    assert dispatcher.kick() == []  # and does not start the job a second time
    done = wait_for(job_id, finished)
    assert done.status == "succeeded", done.error
    listed = json.loads(
        subprocess.run(cli + ["jobs", "--json"], env=env, capture_output=True, text=True, timeout=60).stdout
    )
    assert [(j["id"], j["status"]) for j in listed] == [(job_id, "succeeded")]
    assert [m.step for m in store.job_metrics(job_id)] == list(range(1, 9))


def test_cancel_is_graceful_with_a_checkpoint_then_resumes(tiny, monkeypatch):
    # Each step of the first run takes at least 0.5 s, so 40 steps cannot end before the cancel
    # lands, however fast the machine; the resumed run goes at full speed.
    monkeypatch.setenv(faults.DELAY, "0.5")
    job = dispatcher.submit(plan(tiny, max_steps=40, save_steps=1000))
    monkeypatch.delenv(faults.DELAY)
    wait_for(job.id, lambda j: j.step >= 2 or finished(j))
    cancelled = dispatcher.cancel(job.id, wait=True, grace_s=60)
    assert cancelled.status == "cancelled", cancelled.error
    stopped_at = cancelled.step
    assert 2 <= stopped_at < 40
    assert (store.job_dir(job.id) / "checkpoints" / f"checkpoint-{stopped_at}").is_dir()
    dispatcher.resume(job.id)
    done = wait_for(job.id, finished)
    assert done.status == "succeeded", done.error
    assert [m.step for m in store.job_metrics(job.id)] == list(range(1, 41))


@pytest.mark.usefixtures("database")
def test_twenty_concurrent_submissions_all_recorded_and_start_fifo(tiny, monkeypatch):
    monkeypatch.setenv("LORAPILOT_MAX_CONCURRENT", "0")  # hold the queue while submitting
    base = plan(tiny)
    errors = []

    def submit(i):
        try:
            dispatcher.submit(base.updated(name=f"job-{i}"))
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    jobs = sorted(store.list_jobs(), key=lambda j: j.id)
    assert [j.id for j in jobs] == list(range(1, 21)) and {j.status for j in jobs} == {"queued"}

    # Keep the test fast: each job is flagged to stop before it loads torch, so a real worker
    # process starts, records itself and exits in about a second. Its start is what we test.
    with db.session() as s:
        s.exec(update(Job).values(cancel_requested=True))
        s.commit()
    monkeypatch.setenv("LORAPILOT_MAX_CONCURRENT", "1")
    kickers = [threading.Thread(target=dispatcher.kick) for _ in range(5)]  # racing dispatchers
    for t in kickers:
        t.start()
    for t in kickers:
        t.join()
    for job in jobs:
        wait_for(job.id, finished)
    jobs = sorted(store.list_jobs(), key=lambda j: j.id)
    assert {j.status for j in jobs} == {"cancelled"}
    starts = [j.started_at for j in jobs]
    assert starts == sorted(starts)  # FIFO: started in submission order
    for job in jobs:  # each started exactly once
        assert store.log_tail(job.id, 100).count("worker pid") == 1


def test_a_failing_run_gets_a_plain_reason_and_the_traceback_goes_to_the_log(tiny, tmp_path):
    # Data that passed the check at submission and is gone when the worker starts: the row is
    # inserted directly, as submit() would have after a successful check.
    doomed = plan(tiny, dataset=str(tmp_path / "deleted-after-submit.jsonl"))
    job = store.insert_job(store.Job(name="doomed", plan_json=doomed.model_dump_json()))
    dispatcher.kick()
    done = wait_for(job.id, finished)
    assert done.status == "failed"
    assert "deleted-after-submit.jsonl" in done.error and "Traceback" not in done.error
    assert "Traceback" in store.log_tail(job.id, 200)


def test_a_standby_worker_takes_the_job_or_goes_away(tiny, tmp_path):
    """dispatcher.standby(): a worker that imports its libraries while the plan is validated.
    A valid plan's job runs in it (its log gets the output); a refused plan leaves no row and the
    standby exits on its own, with no process left behind."""
    from engine.errors import UserError

    before = len(store.list_jobs())
    refused = dispatcher.standby()
    with pytest.raises(UserError, match="dataset"):
        dispatcher.submit(plan(tiny, dataset=str(tmp_path / "missing.jsonl")), standby=refused)
    assert len(store.list_jobs()) == before
    assert refused.wait(timeout=120) == 0  # end of input: no job came

    standby = dispatcher.standby()
    job = dispatcher.submit(plan(tiny, max_steps=2), standby=standby)
    done = wait_for(job.id, finished)
    assert done.status == "succeeded", store.log_tail(job.id, 40)
    assert standby.wait(timeout=120) == 0
    assert f"worker pid {standby.pid} started" in store.log_tail(job.id, 200)
    assert "training on cpu" in store.log_tail(job.id, 200)
