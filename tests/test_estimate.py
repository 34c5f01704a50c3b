"""estimate(plan): the full result and its stable JSON keys."""

import json

import pytest

from engine.errors import UserError
from engine.estimate.combined import estimate
from engine.plan import TrainingPlan


def test_seed_estimate_and_json_keys():
    e = estimate(
        TrainingPlan.build(
            model="meta-llama/Llama-2-7b-hf",
            r=8,
            targets="q_proj,v_proj",
            gpu="A100 80GB",
            dataset_rows=1000,
            epochs=1,
        )
    )
    assert e.trainable_params == 4_194_304 and e.total_params == 6_742_609_920
    j = json.loads(json.dumps(e.to_json()))
    for key in ("trainable_params", "total_params", "adapter_bytes", "fits", "time"):
        assert key in j
    assert {"allocated_bytes", "reserved_bytes", "device_bytes", "terms"} <= set(j["memory"])
    assert j["time"]["tokens_per_second"] > 0 and j["time"]["seconds"] > 0
    assert j["time"]["total_tokens"] == j["time"]["steps"] * 4 * 512


def test_time_scales_with_flops():
    p = TrainingPlan.build(model="llama-3.1-8b", gpu="H100", dataset_rows=1000)
    lora, full = estimate(p), estimate(p.updated(method="full"))
    assert full.time.flops_per_token > lora.time.flops_per_token
    assert estimate(p.updated(grad_ckpt=True)).time.seconds > lora.time.seconds
    assert estimate(p.updated(gpu="T4")).time.seconds > 5 * lora.time.seconds


def test_no_device_no_time():
    assert estimate(TrainingPlan.build(model="default", budget_gb=8)).time is None


@pytest.mark.parametrize(
    "kw,field", [({"model": "nope"}, "model"), ({"gpu": "GTX 480"}, "gpu"), ({"targets": "wq"}, "targets")]
)
def test_bad_input(kw, field):
    with pytest.raises(UserError) as e:
        estimate(TrainingPlan.build(**kw))
    assert e.value.field == field


def test_checked_data_sizes_the_time_by_real_batch_lengths():
    p = TrainingPlan.build(model="llama-3.1-8b", gpu="RTX 4090", seq_len=512, batch_size=4, max_steps=100)
    worst = estimate(p).time
    short = estimate(p, lengths=[60] * 200).time  # every row 60 tokens: batches padded to 60, not 512
    assert short.total_tokens == 100 * 4 * 60 and worst.total_tokens == 100 * 4 * 512
    assert short.seconds < worst.seconds * 60 / 512 * 1.05
    assert "padded to about 60" in " ".join(short.assumptions)
