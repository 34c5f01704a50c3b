"""The resident worker (jobs.resident) with real processes: a tiny model's jobs run in children it
forks; a SIGKILL of one job ends that child only and the job resumes; a graceful cancel and a
refused plan behave as they do without it; it exits when idle, and without it jobs start as before.
"""

from __future__ import annotations

import os
import signal
import time

import psutil
import pytest

from engine.errors import UserError
from engine.train import faults
from jobs import dispatcher, store
from jobs.launch import resident
from tests.jobwait import finished, plan, tiny_files, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("no_worker_left_behind")]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_files(tmp_path_factory.mktemp("tiny"))


def _wait_until(condition, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"no {what} within {seconds:.0f} s")


def _start(monkeypatch, idle_s: str):
    monkeypatch.setenv("LORAPILOT_RESIDENT", "1")
    monkeypatch.setenv("LORAPILOT_RESIDENT_IDLE_S", idle_s)
    proc = resident.start()
    assert proc is not None
    _wait_until(lambda: resident.ask({"op": "ping"}, 2.0), 240, "answer from the resident (its imports)")
    return proc


@pytest.fixture
def server(monkeypatch, lorapilot_home):
    """A resident for this test's home. Each step of its jobs takes at least 0.3 s (faults.DELAY, in the
    resident's environment, which its children inherit), so a kill or a cancel lands mid-run however
    fast the machine is."""
    monkeypatch.setenv(faults.DELAY, "0.3")
    proc = _start(monkeypatch, "600")
    yield proc
    resident.stop()
    try:
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        _end_residents_of(lorapilot_home)


def _end_residents_of(home) -> None:
    """A job's worker that ends after the resident was stopped starts a new one as it goes (jobs.worker,
    as it should for a user); this test's home must not keep one idling through the rest of the suite."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = []
        for process in psutil.process_iter(["cmdline"]):
            try:
                if "jobs.resident" in (process.info["cmdline"] or []) and process.environ().get(
                    "LORAPILOT_HOME"
                ) == str(home):
                    found.append(process)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        for process in found:
            process.kill()
        if not found and not any(
            dispatcher.worker_alive(job.pid, job.id) for job in store.list_jobs() if job.pid is not None
        ):
            return
        time.sleep(0.5)


def test_jobs_run_in_its_children_and_a_killed_job_ends_alone_then_resumes(tiny, server):
    job = dispatcher.submit_in_resident(plan(tiny, max_steps=40, save_steps=5))
    assert job is not None and job.status == "running"
    ckpts = store.job_dir(job.id) / "checkpoints"
    running = wait_for(job.id, lambda j: finished(j) or (j.step >= 7 and (ckpts / "checkpoint-5").is_dir()))
    assert running.status == "running", store.log_tail(job.id)
    assert psutil.Process(running.pid).ppid() == server.pid  # forked by the resident, not spawned
    assert dispatcher.worker_alive(running.pid, job.id)

    os.killpg(running.pid, signal.SIGKILL)  # the child's own process group: the resident is not in it
    wait_for(job.id, lambda j: not dispatcher.worker_alive(j.pid, j.id))
    assert server.poll() is None and resident.ask({"op": "ping"}, 2.0) == {"ok": True}
    assert job.id in dispatcher.reconcile()
    assert store.get_job(job.id).status == "interrupted"

    resumed = dispatcher.resume(job.id)
    assert psutil.Process(resumed.pid).ppid() == server.pid
    done = wait_for(job.id, finished)
    assert done.status == "succeeded", done.error
    assert [m.step for m in store.job_metrics(job.id)] == list(range(1, 41))  # none lost, none twice
    assert "resuming from checkpoint" in store.log_tail(job.id, 200)


def test_a_graceful_cancel_of_its_child_leaves_a_checkpoint(tiny, server):
    job = dispatcher.submit_in_resident(plan(tiny, max_steps=40, save_steps=1000))
    wait_for(job.id, lambda j: j.step >= 2 or finished(j))
    cancelled = dispatcher.cancel(job.id, wait=True, grace_s=60)
    assert cancelled.status == "cancelled", cancelled.error
    assert (store.job_dir(job.id) / "checkpoints" / f"checkpoint-{cancelled.step}").is_dir()
    assert server.poll() is None


def test_a_plan_it_refuses_is_the_same_one_line_and_leaves_no_row(tiny, server, tmp_path):
    missing = plan(tiny, dataset=str(tmp_path / "missing.jsonl"))
    with pytest.raises(UserError) as local:
        dispatcher.validate(missing)
    with pytest.raises(UserError) as there:
        dispatcher.submit_in_resident(missing)
    assert (there.value.field, there.value.message) == (local.value.field, local.value.message)
    too_big = plan(tiny, model="llama-3.1-8b", method="full", gpu="T4")  # 8B, full fine-tune, 16 GB
    with pytest.raises(dispatcher.DoesNotFit, match="not queued: does not fit"):
        dispatcher.submit_in_resident(too_big)
    assert store.list_jobs() == []


def test_it_exits_when_idle_and_jobs_start_the_ordinary_way_without_it(tiny, monkeypatch):
    server = _start(monkeypatch, "3")
    assert server.wait(timeout=60) == 0  # 3 s with no request and no child
    assert resident.ask({"op": "ping"}, 2.0) is None
    assert dispatcher.submit_in_resident(plan(tiny, max_steps=2)) is None  # the CLI then submits itself
    monkeypatch.setenv("LORAPILOT_RESIDENT", "0")  # and no new resident at the job's end, in this test
    job = dispatcher.submit(plan(tiny, max_steps=2))
    assert psutil.Process(job.pid).ppid() == os.getpid()  # spawned here, as before
    assert wait_for(job.id, finished).status == "succeeded"


def test_its_address_depends_on_the_home_and_the_environment(lorapilot_home, monkeypatch, tmp_path):
    here = resident.address()
    monkeypatch.setenv("DATABASE_URL", "sqlite:///" + str(tmp_path / "other.db"))
    assert resident.address() != here  # another database: another resident
    monkeypatch.delenv("DATABASE_URL")
    monkeypatch.setenv("PYTHONPATH", "/somewhere")  # the resident's own children get the project on their path
    monkeypatch.setenv("LORAPILOT_MAX_UPLOAD_MB", "5")  # the wizard's own setting: the wizard's resident is the CLI's
    assert resident.address() == here
