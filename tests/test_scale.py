"""Scaling out: one job trained by two real processes (`accelerate launch`, gloo on the CPU).

Rank 0 alone writes rows and artifacts, the log shows world size 2, the adapter loads; a rank
killed with -9 makes the job `interrupted` and resume finishes it with the same processes.
"""

from __future__ import annotations

import os
import signal

import psutil
import pytest

from engine.plan import TrainingPlan
from engine.train import faults
from jobs import dispatcher, store
from tests.jobwait import finished, plan, tiny_files, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("no_worker_left_behind")]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_files(tmp_path_factory.mktemp("tiny"))


def _plan(tiny, **kw) -> TrainingPlan:
    return plan(tiny, **{**dict(batch_size=2, seq_len=32, save_steps=2, max_steps=6, num_processes=2), **kw})


def _ranks(job) -> list[psutil.Process]:
    """The training processes under the job's worker (accelerate's launcher starts them)."""
    try:
        children = psutil.Process(job.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    ranks = []
    for child in children:
        try:
            cmd = " ".join(child.cmdline())
            # accelerate's launcher names the rank module too (`-m jobs.launch.rank` in its own
            # arguments): counting it made "2 ranks" true only in passing moments, a flaky wait
            if child.status() != psutil.STATUS_ZOMBIE and "jobs.launch.rank" in cmd and "accelerate" not in cmd:
                ranks.append(child)
        except psutil.Error:  # ended while we looked
            pass
    return ranks


def test_effective_batch_counts_processes():
    plan = TrainingPlan.build(batch_size=4, grad_accum=2, num_processes=2)
    assert plan.effective_batch == 16
    with pytest.raises(Exception, match="num_processes"):
        TrainingPlan.build(num_processes=0)


def test_two_cpu_processes_train_one_job(tiny):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    job = dispatcher.submit(_plan(tiny))
    job = wait_for(job.id, finished)
    log = store.log_tail(job.id, 400)
    assert job.status == "succeeded", log
    assert "world size 2" in log
    steps = [m.step for m in store.job_metrics(job.id)]
    assert steps == sorted(set(steps)) and steps[-1] == 6  # one row per step: rank 0 alone reports
    adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny["model"]), job.artifact_dir)
    assert any("lora_A" in name for name, _ in adapter.named_parameters())


def test_a_killed_rank_interrupts_and_resume_finishes(tiny, monkeypatch):
    # Each step of the first run takes at least 0.5 s, so it cannot end before the kill however fast
    # the machine; the resumed run goes at full speed.
    monkeypatch.setenv(faults.DELAY, "0.5")
    job = dispatcher.submit(_plan(tiny, max_steps=40, save_steps=2))
    monkeypatch.delenv(faults.DELAY)  # the worker has its environment already
    # wait for a checkpoint to exist, so the resume has somewhere to continue from
    # read-only while the ranks write: last_checkpoint_step() would set an unfinished checkpoint aside
    ckpts = store.job_dir(job.id) / "checkpoints"
    job = wait_for(
        job.id,
        lambda j: (
            j.status != "running"
            or any((c / "trainer_state.json").is_file() for c in ckpts.glob("checkpoint-*"))
            and len(_ranks(j)) == 2
        ),
    )
    assert job.status == "running", store.log_tail(job.id, 80)
    victim = max(_ranks(job), key=lambda p: p.pid)
    os.kill(victim.pid, signal.SIGKILL)
    job = wait_for(job.id, finished)
    assert job.status == "interrupted", store.log_tail(job.id, 80)
    assert "resume" in job.error.lower()
    step = dispatcher.last_checkpoint_step(job.id)
    dispatcher.resume(job.id)
    job = wait_for(job.id, finished)
    assert job.status == "succeeded", store.log_tail(job.id, 80)
    assert f"resuming from checkpoint at step {step}" in store.log_tail(job.id, 400)
    steps = [m.step for m in store.job_metrics(job.id)]
    assert steps == sorted(set(steps)) and steps[-1] == 40
