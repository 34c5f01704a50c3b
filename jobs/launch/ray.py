"""Jobs on a Ray cluster, through Ray Jobs (`JobSubmissionClient`); no scheduler of our own.

With `LORAPILOT_RAY_ADDRESS` set (the cluster's dashboard address, e.g. http://head:8265), the
dispatcher submits each claimed job as a Ray job whose entrypoint is the ordinary worker
(`python -m jobs.worker ID`), asking Ray for the plan's devices as entrypoint resources, so Ray
decides where it runs and when there is room. The ask is resolved against the cluster's nodes
(jobs.launch.ray_resources): a plan without a device asks for a GPU only where a node has one,
and a plan no node can run is refused before its job exists. The worker writes rows to the same database
(`DATABASE_URL`: PostgreSQL for a real cluster) and files to the shared `LORAPILOT_HOME`; the
Ray job id on the row is how status, logs and a forced stop go back through Ray.
API: https://docs.ray.io/en/latest/cluster/running-applications/job-submission/sdk.html
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

from engine import paths
from engine.errors import UserError
from engine.plan import TrainingPlan
from jobs import db, store
from jobs.launch import ray_resources
from jobs.launch.ray_resources import ENV, address

ROOT = Path(__file__).resolve().parent.parent.parent
# What a worker on a node must see: the same database, the same home, the same code.
SHARED_ENV = (
    "DATABASE_URL",
    "LORAPILOT_HOME",
    "LORAPILOT_CANCEL_GRACE_S",
    "LORAPILOT_MAX_CONCURRENT",
    "HF_HUB_OFFLINE",
    "HF_HOME",
)
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


def _client():
    return ray_resources.client()


def resources(plan: TrainingPlan, cluster: list[dict[str, float]] | None = None) -> dict:
    """Entrypoint resources for Ray: one GPU per training process when the plan is for a GPU.

    A plan without a device (gpu unset: this machine's, or the cluster's, best) asks for a GPU
    only where `cluster` (the alive nodes' totals) has one; on a CPU-only cluster it asks for CPUs
    and the worker trains on the CPU, as it would on a machine without a GPU.
    """
    device = (plan.gpu or "").strip().lower()
    on_cpu = device == "cpu" or (not device and cluster is not None and not any(n["GPU"] for n in cluster))
    processes = plan.num_processes if isinstance(plan.num_processes, int) else 1
    if on_cpu:
        return {"entrypoint_num_cpus": processes}
    return {"entrypoint_num_cpus": 1, "entrypoint_num_gpus": processes}


def check(plan: TrainingPlan) -> None:
    """Before a job exists: refuse a plan that no alive node of the cluster can ever run. A cluster
    that cannot be asked is not judged here; submitting reports it, on the job, as before."""
    try:
        cluster = ray_resources.nodes()
    except UserError:
        return
    ray_resources.refuse_unrunnable(ray_resources.asked(resources(plan, cluster)), cluster)


def _resolved(plan: TrainingPlan) -> dict:
    try:
        return resources(plan, ray_resources.nodes())
    except UserError:
        return resources(plan)  # the submit below names the unreachable cluster


def submit(job_id: int) -> str:
    """Submit the claimed job to the cluster and record the Ray job id on its row."""
    plan = store.job_plan(store.get_job(job_id))
    env = {key: os.environ[key] for key in SHARED_ENV if os.environ.get(key)}
    env["LORAPILOT_HOME"] = str(paths.home())
    env["DATABASE_URL"] = db.database_url()
    env[ENV] = address() or ""  # the worker's closing kick() submits the next queued job here too
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    entrypoint = _resolved(plan)
    asks = ray_resources.words(ray_resources.asked(entrypoint))
    ray_id = _client().submit_job(
        entrypoint=f"{shlex.quote(sys.executable)} -m jobs.worker {int(job_id)}",
        submission_id=f"lorapilot-{int(job_id)}-{os.urandom(3).hex()}",  # a resume is a new Ray job
        runtime_env={"env_vars": env},
        metadata={"lorapilot_job": str(job_id), ray_resources.ASKS_KEY: asks},  # read back while it waits
        **entrypoint,
    )
    store.update_job(job_id, ("running",), ray_job_id=ray_id)
    store.append_log(job_id, f"submitted to the Ray cluster at {address()} as {ray_id} (asks {asks})")
    return ray_id


def status(ray_id: str) -> str:
    """Ray's word for the job (PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED), or UNREACHABLE."""
    try:
        return str(_client().get_job_status(ray_id).value)
    except Exception:  # a cluster we cannot reach says nothing about the job: keep the row
        return "UNREACHABLE"


def stop(ray_id: str) -> None:
    """Ray sends the entrypoint SIGTERM, then SIGKILL: the worker's own graceful path."""
    _client().stop_job(ray_id)


def log_tail(ray_id: str, lines: int = 50) -> str:
    try:
        return "\n".join(_client().get_job_logs(ray_id).splitlines()[-lines:])
    except Exception as exc:  # logs are a courtesy; the row keeps the verdict
        return f"(Ray logs unavailable: {type(exc).__name__}: {exc})"
