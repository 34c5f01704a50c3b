"""The CPU precision rule and the estimator's CPU speed come from this machine's measured
numbers; here those numbers are injected (tests/conftest.py), so no test depends on the CPU
it runs on. One test runs the real (shrunken) calibration to check it measures and caches.
"""

from __future__ import annotations

import pytest

from engine.estimate import combined, hardware
from engine.plan import TrainingPlan
from tests.conftest import cpu_without_bf16

AMX = {"cpu": "Intel Xeon (AMX)", "bf16_flags": ["amx_bf16", "avx512_bf16"], "fp32_tflops": 0.34, "bf16_tflops": 2.7}
AVX2 = {"cpu": "AMD EPYC (AVX2)", "bf16_flags": [], "fp32_tflops": 0.128, "bf16_tflops": 0.001}
FLAGS_BUT_SLOW = {"cpu": "Odd CPU", "bf16_flags": ["avx512_bf16"], "fp32_tflops": 0.1, "bf16_tflops": 0.11}


def _plan(**kw) -> TrainingPlan:
    return TrainingPlan.build(
        **{"model": "smollm2-135m", "gpu": "cpu", "seq_len": 96, "batch_size": 4, "max_steps": 30, **kw}
    )


def test_auto_is_bf16_where_the_cpu_runs_it_natively_and_says_why():
    cpu_without_bf16(**AMX)
    est = combined.estimate(_plan())
    assert est.dtype == "bf16"
    note = est.time.assumptions[0]
    assert note.startswith("precision auto:") and "native bf16" in note and "amx_bf16" in note
    assert "adapters kept in fp32" in note


@pytest.mark.parametrize("numbers, why", [(AVX2, "no native bf16"), (FLAGS_BUT_SLOW, "not faster here")])
def test_auto_is_fp32_without_a_fast_bf16_matmul(numbers, why):
    cpu_without_bf16(**numbers)
    est = combined.estimate(_plan())
    assert est.dtype == "fp32"
    assert why in est.time.assumptions[0]


def test_asking_bf16_on_a_cpu_without_it_states_the_cost():
    cpu_without_bf16(**AVX2)
    est = combined.estimate(_plan(dtype="bf16"))
    assert est.dtype == "bf16"
    assert "not native" in est.time.assumptions[0] and "128.0x as long" in est.time.assumptions[0]
    cpu_without_bf16(**AMX)
    assert "native on this CPU" in combined.estimate(_plan(dtype="bf16")).time.assumptions[0]


def test_cpu_time_follows_the_measured_matmul_rate():
    cpu_without_bf16(**{**AVX2, "fp32_tflops": 0.1})
    slow = combined.estimate(_plan()).time
    cpu_without_bf16(**{**AVX2, "fp32_tflops": 0.2})
    fast = combined.estimate(_plan()).time
    assert fast.seconds == pytest.approx(slow.seconds / 2)
    assert "0.2 TFLOP/s measured (fp32 matmul)" in fast.assumptions[1]
    # bf16 speeds up only part of a step: measured on an AVX512-BF16 CPU, a 2.32x faster matmul
    # made the demo's step 1.60x faster (engine.estimate.hardware.BF16_STEP_SHARE)
    cpu_without_bf16(**{**AMX, "fp32_tflops": 0.173, "bf16_tflops": 0.401})
    fp32 = combined.estimate(_plan(dtype="fp32")).time.seconds
    assert fp32 / combined.estimate(_plan()).time.seconds == pytest.approx(1.6, rel=0.02)


def test_trainer_applies_the_same_rule():
    import torch

    from engine.train.run import torch_dtype

    cpu_without_bf16(**AMX)
    assert torch_dtype(_plan(), "cpu") == torch.bfloat16
    cpu_without_bf16(**AVX2)
    assert torch_dtype(_plan(), "cpu") == torch.float32


def test_recommendation_for_the_cpu_states_the_measured_choice():
    from engine.advice import recommend

    cpu_without_bf16(**AMX)
    rec = recommend.recommend("smollm2-135m", "simple", gpu="cpu", dataset_rows=300)
    assert rec.plan.dtype == "bf16" and rec.estimate.dtype == "bf16"
    assert "Measured on this machine" in rec.reasons["dtype"].text and "native bf16" in rec.reasons["dtype"].text


def test_calibration_measures_once_and_is_cached_per_machine(monkeypatch, lorapilot_home):
    hardware.cache_path().unlink()  # no injected numbers: measure this machine (shrunken, so it is quick)
    monkeypatch.setattr(hardware, "SHAPE", (64, 64, 64))
    monkeypatch.setattr(hardware, "MEASURE_S", 0.02)
    monkeypatch.setattr(hardware, "ATTENTION_LENGTHS", (16, 32))
    cal = hardware.calibration()
    assert cal.fp32_tflops > 0 and cal.bf16_tflops > 0 and cal.key == hardware.cache_key()
    assert set(cal.bf16_flags) <= set(hardware.BF16_FLAGS)
    assert hardware.Calibration.model_validate_json(hardware.cache_path().read_text()) == cal

    def no_second_measurement():
        raise AssertionError("measured again")

    monkeypatch.setattr(hardware, "measure", no_second_measurement)
    hardware._memo.clear()
    assert hardware.calibration() == cal  # from the file
    # numbers from another machine (or torch build) are not used
    hardware.save(cal.model_copy(update={"key": "another CPU | 64 cores | torch 0"}))
    monkeypatch.setattr(hardware, "measure", lambda: cal.model_copy(update={"fp32_tflops": 9.0}))
    assert hardware.calibration().fp32_tflops == 9.0


def test_callers_at_once_share_one_measurement(monkeypatch, lorapilot_home):
    """The wizard's first estimate runs several handlers at once: each measuring on its own gave the
    same plan different numbers (eager_until differs between timings) once a later measurement landed."""
    import threading
    import time

    hardware.cache_path().unlink()
    hardware._memo.clear()
    timings = iter(range(100, 200))

    def measure():  # a slow measurement whose result differs every time, as real timings do
        time.sleep(0.3)
        return hardware.Calibration(
            key=hardware.cache_key(), cpu="x", threads=2, bf16_flags=[], fp32_tflops=0.1, bf16_tflops=0.001,
            eager_until=next(timings),
        )  # fmt: skip

    monkeypatch.setattr(hardware, "measure", measure)
    seen: list[int] = []
    callers = [threading.Thread(target=lambda: seen.append(hardware.calibration().eager_until)) for _ in range(4)]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join()
    assert seen == [100] * 4  # one measurement, one truth
    hardware._memo.clear()
    assert hardware.calibration().eager_until == 100  # and the file holds the same


# --- the attention rule: `auto` is eager only on a CPU in bf16 with rows this CPU measured it faster for ----
SHORT_ROWS = [30 + i % 40 for i in range(60)]  # 30..69 tokens


def _attention_in(est) -> str:
    return next(a for a in est.memory.assumptions if " attention;" in a).split(" attention;")[0].split("; ")[-1]


def test_auto_attention_is_eager_only_for_rows_this_cpu_measured_it_faster_for():
    cpu_without_bf16(**AMX, eager_until=128)
    assert _attention_in(combined.estimate(_plan(), lengths=SHORT_ROWS)) == "eager"
    # rows longer than the measured limit, no data checked yet, or an asked-for kernel: sdpa / as asked
    assert _attention_in(combined.estimate(_plan(seq_len=512), lengths=SHORT_ROWS + [300])) == "sdpa"
    assert _attention_in(combined.estimate(_plan())) == "sdpa"
    assert _attention_in(combined.estimate(_plan(attention="sdpa"), lengths=SHORT_ROWS)) == "sdpa"
    # a row longer than seq_len is cut to it before it is trained on
    assert _attention_in(combined.estimate(_plan(seq_len=96), lengths=SHORT_ROWS + [300])) == "eager"
    # in fp32 (asked, or a CPU without native bf16) and on a GPU: sdpa
    assert _attention_in(combined.estimate(_plan(dtype="fp32"), lengths=SHORT_ROWS)) == "sdpa"
    assert _attention_in(combined.estimate(_plan(gpu="a100-80gb"), lengths=SHORT_ROWS)) == "sdpa"
    cpu_without_bf16(**AVX2, eager_until=128)
    assert _attention_in(combined.estimate(_plan(), lengths=SHORT_ROWS)) == "sdpa"
    cpu_without_bf16(**AMX)  # measured never faster
    assert _attention_in(combined.estimate(_plan(), lengths=SHORT_ROWS)) == "sdpa"


def test_eager_until_is_the_longest_length_before_sdpa_first_wins(monkeypatch):
    def timings(eager_wins_at):
        return lambda kernel, length: (1.0 if length in eager_wins_at else 3.0) if kernel == "eager" else 2.0

    monkeypatch.setattr(hardware, "_attention_seconds", timings({64, 128}))
    assert hardware._eager_until() == 128
    monkeypatch.setattr(hardware, "_attention_seconds", timings({64, 256}))
    assert hardware._eager_until() == 64  # past the first loss, a later win does not count
    monkeypatch.setattr(hardware, "_attention_seconds", timings(set()))
    assert hardware._eager_until() == 0


def test_both_attention_kernels_time_a_real_forward_and_backward():
    assert hardware._attention_seconds("eager", 16, repeats=1) > 0
    assert hardware._attention_seconds("sdpa", 16, repeats=1) > 0


def test_the_job_switches_to_eager_with_the_same_rule(tmp_path):
    """engine.train.run applies `auto` once the rows are tokenized: on a tiny model, with the CPU's numbers
    injected (the switch is what is tested, not this machine's speed)."""
    from transformers import AutoModelForCausalLM

    from engine.train import run
    from tests.tiny import make_tiny_model

    folder = make_tiny_model(tmp_path / "tiny")
    from datasets import Dataset

    rows = Dataset.from_list([{"input_ids": list(range(n))} for n in (12, 40, 70)])
    notes = []

    def choose(plan):
        model = AutoModelForCausalLM.from_pretrained(
            folder, attn_implementation=hardware.attention_to_load(plan.attention)
        )
        run._choose_attention(plan, model, "cpu", (rows, None), notes.append)
        return model.config._attn_implementation

    cpu_without_bf16(**AMX, eager_until=128)
    assert choose(_plan(model=str(folder))) == "eager"
    assert "at most 70 tokens" in notes[-1].message
    assert choose(_plan(model=str(folder), seq_len=64)) == "eager"  # rows are cut to seq_len
    assert choose(_plan(model=str(folder), dtype="fp32")) == "sdpa"
    assert choose(_plan(model=str(folder), attention="sdpa")) == "sdpa"
    cpu_without_bf16(**AMX, eager_until=64)
    count = len(notes)
    assert choose(_plan(model=str(folder))) == "sdpa" and len(notes) == count
