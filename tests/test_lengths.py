"""The estimate from the data's real token lengths: the expected longest row of the batches.

Batches are padded to their longest row, so once the data is checked the memory
estimate (and the job page) uses the expected longest of the rows the measured peak
spans (the first two steps on a CPU, the run on a GPU), with the worst case (every batch
padded to seq_len) kept beside it.
"""

from __future__ import annotations

import itertools
import json
import statistics

import pytest

from engine.estimate.combined import estimate, memory_for
from engine.estimate.lengths import expected_longest, padded_length, peak_rows
from engine.plan import TrainingPlan


def brute_force(lengths, batch, seq_len):
    """Mean of the longest row over every batch of distinct rows: what a shuffled epoch draws."""
    return statistics.mean(max(min(n, seq_len) for n in c) for c in itertools.combinations(lengths, batch))


@pytest.mark.parametrize("batch", [1, 2, 3, 5])
def test_expected_longest_matches_every_batch_drawn(batch):
    lengths = [12, 30, 30, 41, 7, 90, 55, 30]
    assert expected_longest(lengths, batch, 4096) == pytest.approx(brute_force(lengths, batch, 4096))
    # rows longer than seq_len are cut before they are padded to
    assert expected_longest(lengths, batch, 40) == pytest.approx(brute_force(lengths, batch, 40))


def test_expected_longest_edges():
    assert expected_longest([10, 20, 30], 1, 512) == pytest.approx(20)  # one row: the mean
    assert expected_longest([10, 20, 30], 3, 512) == pytest.approx(30)  # every row: the longest
    assert expected_longest([10, 20, 30], 8, 512) == pytest.approx(30)  # a batch cannot exceed the data
    assert padded_length(None, 4, 256) == 256  # no data: the worst case
    assert padded_length([600, 700], 2, 256) == 256
    assert padded_length([40] * 100 + [200], 4, 256) == round(expected_longest([40] * 100 + [200], 4, 256))
    with pytest.raises(ValueError):
        expected_longest([], 4, 256)


def _plan(**kw):
    return TrainingPlan.build(**{"model": "llama-3.1-8b", "gpu": "A100 80GB", "seq_len": 2048, "batch_size": 8, **kw})


def test_the_peak_spans_the_first_cpu_steps_or_the_whole_gpu_run():
    cpu = TrainingPlan.build(model="default", gpu="cpu", batch_size=4, grad_accum=2)
    assert peak_rows(cpu, on_gpu=False) == 4 * 2 * 2  # engine.train.peak tracks two optimizer steps
    assert peak_rows(cpu.updated(max_steps=1), on_gpu=False) == 8
    assert peak_rows(_plan(max_steps=3), on_gpu=True) == 8 * 3
    assert peak_rows(_plan(), on_gpu=True) >= 10**9  # epochs: every row


def test_memory_uses_the_expected_longest_row_and_keeps_the_worst_case():
    lengths = [100 + (i * 37) % 300 for i in range(500)]  # 100 .. 399 tokens under seq_len 2048
    plan = _plan(max_steps=1)  # one batch of 8 rows on the GPU
    worst = memory_for(plan)
    mem = memory_for(plan, lengths=lengths)
    length = padded_length(lengths, 8, plan.seq_len)
    assert 300 < length < 399 and (mem.expected.padded_length, mem.expected.rows) == (length, 8)
    # the expected figure is the estimate of batches padded to that length; the worst case is unchanged
    assert mem.expected.allocated_bytes == memory_for(plan.updated(seq_len=length)).allocated_bytes
    assert (mem.allocated_bytes, mem.device_bytes, mem.fits) == (worst.allocated_bytes, worst.device_bytes, worst.fits)
    assert mem.expected_allocated_bytes < mem.allocated_bytes
    assert "at worst" in mem.verdict and "with this data's lengths" in mem.verdict
    assert worst.expected is None and worst.expected_allocated_bytes == worst.allocated_bytes
    # a whole run on a GPU meets the data's longest row
    assert memory_for(_plan(), lengths=lengths).expected.padded_length == 399
    # rows all longer than seq_len: every batch is padded (cut) to seq_len, both figures agree
    long = memory_for(plan, lengths=[5000] * 10)
    assert long.expected.allocated_bytes == long.allocated_bytes and "at worst" not in long.verdict
    assert estimate(plan, lengths=lengths).to_json()["memory"]["expected"]["padded_length"] == length


def test_submitted_job_stores_the_data_based_peak_and_the_page_shows_both(tmp_path):
    from jobs import dispatcher, store
    from tests.tiny import make_tiny_model
    from ui.web import jobs_page

    rows = [
        {
            "messages": [
                {"role": "user", "content": "Say " + "yes " * (2 + i % 9)},
                {"role": "assistant", "content": "yes"},
            ]
        }
        for i in range(30)
    ]
    data = tmp_path / "short.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    model = make_tiny_model(tmp_path / "model")
    plan = TrainingPlan.build(
        model=str(model), dataset=str(data), gpu="cpu", batch_size=4, seq_len=512, eval_split=0, max_steps=2
    )
    job = dispatcher.submit(plan, start=False)
    est = store.job_estimate(job)["memory"]
    assert est["expected"]["padded_length"] < 60 and est["expected"]["rows"] == 8  # short rows; 2 CPU steps of 4
    assert job.estimated_peak_bytes == est["expected"]["allocated_bytes"] < est["allocated_bytes"]
    header = jobs_page.job_view(job.id)["header"]
    assert "worst case: padded to 512" in header
    from engine.units import human_bytes

    # the worst case as the review showed it (what the device holds), and the allocated peak the run measures
    assert human_bytes(est["device_bytes"]) in header and human_bytes(job.estimated_peak_bytes) in header
