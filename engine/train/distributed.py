"""What a training process needs to know when it is one of several (data parallel).

`accelerate launch` starts one process per device and sets RANK / WORLD_SIZE; the Trainer
joins them into one process group. Only rank 0 reports and writes artifacts, and a decision
to stop must be taken by all ranks at the same step, or the others wait forever in the next
gradient all-reduce.
"""

from __future__ import annotations

import os


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    return rank() == 0


def agree(flag: bool) -> bool:
    """True on every rank when any rank says True (a cancel seen by one stops them all)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flag
    import torch

    vote = torch.tensor([1 if flag else 0], dtype=torch.int32)
    dist.all_reduce(vote, op=dist.ReduceOp.MAX)  # gloo and nccl both take a CPU tensor for MAX
    return bool(vote.item())


def leave() -> None:
    """Leave the process group before the interpreter exits. Left to the interpreter's teardown, the
    gloo group can abort its process ("terminate called without an active exception", SIGABRT) while
    another rank is still saving: the launcher takes that for a crashed rank and stops the job."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
