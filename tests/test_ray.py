"""Jobs through a real Ray cluster: a local head started here (loopback only, CPU only).

The dispatcher submits the job with Ray Jobs, the worker on the 'cluster' writes to the same
database and home, the row records the Ray job id and the host it ran on; cancel stops it.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from engine.errors import UserError
from engine.plan import TrainingPlan
from jobs import dispatcher, store, views
from jobs.launch import ray
from tests.jobwait import finished, plan, tiny_files, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("no_worker_left_behind")]
RAY = str(Path(sys.executable).with_name("ray"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_head():
    temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's socket paths have a length limit
    gcs, dashboard = _free_port(), _free_port()
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    subprocess.run(
        [
            RAY,
            "start",
            "--head",
            "--node-ip-address=127.0.0.1",
            f"--port={gcs}",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dashboard}",
            "--include-dashboard=true",
            "--num-cpus=2",
            "--num-gpus=0",
            f"--temp-dir={temp}",
            "--disable-usage-stats",
        ],
        check=True,
        env=env,
        capture_output=True,
        timeout=240,
    )
    address = f"http://127.0.0.1:{dashboard}"
    from ray.job_submission import JobSubmissionClient

    deadline = time.monotonic() + 120
    while True:  # the dashboard's job API comes up a little after `ray start` returns
        try:
            JobSubmissionClient(address).list_jobs()
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)
    yield address
    subprocess.run([RAY, "stop", "--force"], env=env, capture_output=True, timeout=120)
    shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_files(tmp_path_factory.mktemp("tiny"))


def _plan(tiny, **kw) -> TrainingPlan:
    return plan(tiny, **{**dict(batch_size=2, seq_len=32, save_steps=2, max_steps=4), **kw})


def _ray_finished(ray_id: str, timeout: float = 120.0) -> str:
    deadline = time.monotonic() + timeout
    while (state := ray.status(ray_id)) not in ray.TERMINAL and time.monotonic() < deadline:
        time.sleep(0.5)
    return state


def test_resources_follow_the_plan():
    assert ray.resources(TrainingPlan.build(gpu="cpu")) == {"entrypoint_num_cpus": 1}
    assert ray.resources(TrainingPlan.build(gpu="A100 80GB", num_processes=4)) == {
        "entrypoint_num_cpus": 1,
        "entrypoint_num_gpus": 4,
    }


def test_unreachable_cluster_fails_the_job_with_a_plain_reason(tiny, monkeypatch):
    monkeypatch.setenv(ray.ENV, f"http://127.0.0.1:{_free_port()}")  # nothing listens there
    with pytest.raises(UserError, match="Ray cluster"):
        dispatcher.submit(_plan(tiny))
    job = store.list_jobs()[0]
    assert job.status == "failed" and "Ray cluster" in job.error and "resume" in job.error


def test_a_job_runs_through_ray_and_cancel_stops_it(tiny, ray_head, monkeypatch, lorapilot_home):
    monkeypatch.setenv(ray.ENV, ray_head)
    job = dispatcher.submit(_plan(tiny))
    assert job.ray_job_id and job.ray_job_id.startswith("lorapilot-")
    job = wait_for(job.id, finished)
    assert job.status == "succeeded", ray.log_tail(job.ray_job_id, 80)
    assert job.host == socket.gethostname()
    assert _ray_finished(job.ray_job_id) == "SUCCEEDED"  # the worker exits just after its last row
    assert (Path(job.artifact_dir) / "adapter_model.safetensors").exists()
    assert views.job_detail(job)["ray_job_id"] == job.ray_job_id

    long = dispatcher.submit(_plan(tiny, max_steps=100000))
    wait_for(long.id, lambda j: j.status != "running" or j.step >= 1)
    dispatcher.cancel(long.id, grace_s=60)
    long = wait_for(long.id, finished)
    assert long.status == "cancelled", store.log_tail(long.id, 80)
    assert _ray_finished(long.ray_job_id) in ray.TERMINAL


def test_an_automatic_device_asks_for_a_gpu_only_where_the_cluster_has_one():
    cpu_only, with_gpu = [{"CPU": 2.0, "GPU": 0.0}], [{"CPU": 2.0, "GPU": 0.0}, {"CPU": 8.0, "GPU": 1.0}]
    auto = TrainingPlan.build()
    assert auto.gpu is None
    assert ray.resources(auto, cpu_only) == {"entrypoint_num_cpus": 1}
    assert ray.resources(auto, with_gpu) == {"entrypoint_num_cpus": 1, "entrypoint_num_gpus": 1}
    assert ray.resources(TrainingPlan.build(gpu="A100 80GB"), cpu_only) == {
        "entrypoint_num_cpus": 1,
        "entrypoint_num_gpus": 1,
    }  # an explicit GPU stays a GPU: refused below


def test_a_plan_no_node_can_run_is_refused_before_a_job_exists(tiny, ray_head, monkeypatch):
    monkeypatch.setenv(ray.ENV, ray_head)
    with pytest.raises(
        UserError,
        match=r"^gpu: no node of the Ray cluster at http://127\.0\.0\.1:\d+ can run this "
        r"plan: it asks CPU 1, GPU 1; the largest node has CPU 2, GPU 0; set the "
        r"plan's device to cpu",
    ):
        dispatcher.submit(_plan(tiny, gpu="A100 80GB"))
    with pytest.raises(UserError, match="asks CPU 3, GPU 0"):
        dispatcher.submit(_plan(tiny, num_processes=3))
    assert store.list_jobs() == []


def _eventually(read, accept, timeout: float = 90.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while not accept(value := read()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}; last: {value!r}"
        time.sleep(0.5)
    return value


def test_a_job_ray_holds_pending_says_what_it_waits_for_and_runs_when_a_cpu_frees(tiny, ray_head, monkeypatch, capsys):
    from ray.job_submission import JobSubmissionClient

    from jobs import stall
    from ui.cli.main import run as cli

    monkeypatch.setenv(ray.ENV, ray_head)
    client = JobSubmissionClient(ray_head)
    blocker = client.submit_job(entrypoint="sleep 600", entrypoint_num_cpus=2)  # both CPUs taken
    try:
        _eventually(lambda: str(client.get_job_status(blocker).value), lambda s: s == "RUNNING", what="the blocker")
        job = dispatcher.submit(_plan(tiny, gpu=None))  # no device: the CPU-only cluster gets a CPU ask
        line = _eventually(
            lambda: stall.describe(store.get_job(job.id)) or "",
            lambda text: "free CPU 0" in text,
            what="the autoscaler's report of the busy CPUs",
        )
        assert line == "waiting for the cluster: asks CPU 1, GPU 0; free CPU 0, GPU 0"
        capsys.readouterr()
        assert cli(["show", str(job.id)]) == 0
        assert f"status     running ({line})" in capsys.readouterr().out
        assert cli(["jobs"]) == 0 and "running (waiting for the cluster)" in capsys.readouterr().out

        monkeypatch.setenv(stall.ENV, "1")  # stall detection covers the wait, and names it
        time.sleep(1.2)
        stalled = stall.describe(store.get_job(job.id))
        assert stalled.startswith("stalled since ") and "waiting for the cluster: asks CPU 1, GPU 0" in stalled
        monkeypatch.delenv(stall.ENV)
    finally:
        client.stop_job(blocker)
    job = wait_for(job.id, finished)
    assert job.status == "succeeded", ray.log_tail(job.ray_job_id, 80)
    assert stall.describe(job) is None
