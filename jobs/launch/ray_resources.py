"""What a Ray cluster has, what a job asks of it, and why a submitted job is still waiting.

Ray holds a job whose entrypoint resources no node has in PENDING for as long as it takes:
a plan without a device, sent to a CPU-only cluster as "one GPU", used to wait there shown as
"running (pid None, starting)". So the ask is resolved against the alive nodes before
submitting (an automatic device becomes CPU where no node has a GPU), a plan no node can ever
run is refused before a job exists, and a job Ray holds pending is described by what it asks
and what is free now, the figures `ray status` shows.

Sources, all through the dashboard address (LORAPILOT_RAY_ADDRESS) the jobs are submitted to:
the nodes' totals from Ray's state API (`ray.util.state.list_nodes`), the cluster's free
resources from the autoscaler's report (`/api/cluster_status`, what `ray status` prints), and
the job's status and the ask recorded in its metadata from the Job Submission API. This module
imports nothing from jobs/, so jobs.stall can ask it without a cycle.
"""

from __future__ import annotations

import json
import os
import urllib.request
from dataclasses import dataclass

from engine.errors import UserError

ENV = "LORAPILOT_RAY_ADDRESS"
KINDS = ("CPU", "GPU")  # the resources a LoRA Pilot job asks for
ASKS_KEY = "lorapilot_asks"  # the Ray job metadata key holding what it asked, e.g. "CPU 1, GPU 1"
TIMEOUT_S = 10


def address() -> str | None:
    return os.environ.get(ENV) or None


def client():
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address())
    except Exception as exc:
        raise UserError(
            ENV,
            f"cannot reach the Ray cluster at {address()} ({type(exc).__name__}: {exc}); "
            "start it (`ray start --head`) or unset the variable to run jobs locally",
        ) from None


def words(resources: dict[str, float]) -> str:
    """{'CPU': 1, 'GPU': 0} -> 'CPU 1, GPU 0'."""
    return ", ".join(f"{kind} {resources.get(kind, 0):g}" for kind in KINDS)


def asked(entrypoint: dict) -> dict[str, float]:
    """Ray's entrypoint keywords as resources: {'entrypoint_num_cpus': 1} -> {'CPU': 1, 'GPU': 0}."""
    return {"CPU": entrypoint.get("entrypoint_num_cpus", 0), "GPU": entrypoint.get("entrypoint_num_gpus", 0)}


def nodes() -> list[dict[str, float]]:
    """CPU and GPU totals of each alive node."""
    from ray.util.state import list_nodes

    try:
        alive = list_nodes(
            address=address(), filters=[("state", "=", "ALIVE")], timeout=TIMEOUT_S, raise_on_missing_output=False
        )
    except Exception as exc:
        raise UserError(
            ENV,
            f"cannot list the nodes of the Ray cluster at {address()} ({type(exc).__name__}); "
            "start it (`ray start --head`) or unset the variable to run jobs locally",
        ) from None
    return [{kind: float(n.resources_total.get(kind, 0)) for kind in KINDS} for n in alive]


def free() -> dict[str, float] | None:
    """CPU and GPU free across the cluster now, from the autoscaler's report; None when it has none yet."""
    try:
        with urllib.request.urlopen(address().rstrip("/") + "/api/cluster_status", timeout=TIMEOUT_S) as reply:
            usage = json.load(reply)["data"]["clusterStatus"]["loadMetricsReport"]["usage"]
    except Exception:
        return None
    return {kind: max(0.0, usage[kind][1] - usage[kind][0]) if kind in usage else 0.0 for kind in KINDS}


def refuse_unrunnable(ask: dict[str, float], cluster: list[dict[str, float]]) -> None:
    """A UserError when no alive node has what `ask` needs: Ray would hold the job pending forever."""
    if any(all(node.get(kind, 0) >= ask.get(kind, 0) for kind in KINDS) for node in cluster):
        return
    largest = words(max(cluster, key=lambda n: (n["GPU"], n["CPU"]))) if cluster else "no alive node"
    hint = (
        "; set the plan's device to cpu (--gpu cpu) or add a GPU node"
        if ask.get("GPU")
        else "; fewer processes, or a larger node"
    )
    raise UserError(
        "gpu",
        f"no node of the Ray cluster at {address()} can run this plan: it asks {words(ask)}; "
        f"the largest node has {largest}{hint}",
    )


@dataclass(frozen=True)
class Pending:
    """A job Ray holds before starting it: what it asked, and what the cluster has free now."""

    asks: str
    free: dict[str, float] | None

    def line(self) -> str:
        free_now = words(self.free) if self.free is not None else "not reported yet"
        return f"waiting for the cluster: asks {self.asks}; free {free_now}"


def pending(ray_id: str) -> Pending | None:
    """The job's wait when Ray says PENDING, else None (running, finished, or the cluster silent)."""
    try:
        info = client().get_job_info(ray_id)
    except Exception:
        return None
    if str(info.status.value) != "PENDING":
        return None
    return Pending(asks=(info.metadata or {}).get(ASKS_KEY, "resources"), free=free())
