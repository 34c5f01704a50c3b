"""One training process of a multi-process job: `python -m jobs.launch.rank JOB_ID [--resume]`.

`accelerate launch` starts one of these per device. Every rank trains; rank 0 alone writes
metrics and progress rows (through the same `JobCallbacks` a single-process job uses)
and leaves its outcome in `rank0.json` for the worker that launched it. A cancel read from
the database by rank 0, or a SIGTERM that reaches any rank, stops all of them at the same
step (engine.train.distributed.agree).
"""

from __future__ import annotations

import json
import signal
import sys
import traceback

from engine.train import distributed
from engine.train.run import train
from jobs import store
from jobs.callbacks import JobCallbacks, explain

OUTCOME = "rank0.json"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    job_id, resume = int(argv[0]), "--resume" in argv
    worker = JobCallbacks(job_id)
    signal.signal(signal.SIGTERM, worker.on_sigterm)
    signal.signal(signal.SIGINT, worker.on_sigterm)
    main_rank = distributed.is_main()
    print(f"rank {distributed.rank()} of world size {distributed.world_size()} starting", flush=True)
    if main_rank:
        store.append_log(
            job_id,
            f"training with {distributed.world_size()} processes (world size "
            f"{distributed.world_size()}); rank 0 reports",
        )
    plan = store.job_plan(store.get_job(job_id))

    outcome = store.job_dir(job_id) / OUTCOME
    try:
        result = train(
            plan,
            store.job_dir(job_id),
            report=worker.report if main_rank else _silent,
            should_stop=worker.should_stop if main_rank else lambda: worker.terminated,
            resume=resume,
        )
    except BaseException as exc:
        traceback.print_exc()
        if main_rank and not _peer_lost(exc):  # a lost peer is the launcher's to report: interrupted
            outcome.write_text(json.dumps({"error": explain(exc, plan, worker.step)}))
        return 1
    finally:
        distributed.leave()
    if main_rank:
        outcome.write_text(
            json.dumps(
                {
                    "steps": result.steps,
                    "stopped": result.stopped,
                    "peak_bytes": result.peak_bytes,
                    "base_score": result.base_score,
                    "adapter_score": result.adapter_score,
                }
            )
        )
    return 0


def _peer_lost(exc: BaseException) -> bool:
    """True when a collective failed because another rank went away (killed, out of memory): gloo
    reports it as a RuntimeError naming the closed connection, NCCL as a DistBackendError."""
    import torch.distributed as dist

    text = str(exc)
    return isinstance(exc, getattr(dist, "DistBackendError", ())) or (
        isinstance(exc, RuntimeError) and ("Connection closed by peer" in text or "Connection reset by peer" in text)
    )


def _silent(event) -> None:
    """Ranks other than 0 train the same steps; reporting them too would write every row twice."""


if __name__ == "__main__":
    sys.exit(main())
