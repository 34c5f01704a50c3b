"""failures.explain turns exceptions into one plain paragraph with the likely fix."""

import errno
import json

from engine.errors import UserError
from engine.plan import TrainingPlan
from engine.train import failures


def test_out_of_memory_names_the_step_and_knobs_in_order():
    plan = TrainingPlan.build(batch_size=8, grad_accum=1, seq_len=1024, grad_ckpt=False, method="lora")
    msg = failures.explain(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"), plan, step=12)
    assert "Ran out of GPU memory at step 12" in msg
    assert msg.index("gradient checkpointing") < msg.index("batch_size to 4") < msg.index("qlora")
    assert "grad_accum to 2" in msg and "seq_len to 512" in msg


def test_out_of_memory_skips_knobs_already_turned():
    plan = TrainingPlan.build(batch_size=1, grad_ckpt=True, method="qlora", seq_len=128)
    msg = failures.explain(MemoryError(), plan, step=None)
    assert "before the first training step" in msg
    assert "gradient checkpointing" not in msg and "halve batch_size" not in msg
    assert "GPU with more memory" in msg


def test_user_error_passes_through_even_when_wrapped():
    try:
        try:
            raise UserError("dataset", "data.jsonl row 3: field 'messages' is missing")
        except UserError as inner:
            raise RuntimeError("wrapper") from inner
    except RuntimeError as exc:
        assert failures.explain(exc, TrainingPlan()) == "dataset: data.jsonl row 3: field 'messages' is missing"


def test_disk_full():
    msg = failures.explain(OSError(errno.ENOSPC, "No space left on device"), TrainingPlan(), step=40)
    assert "disk is full at step 40" in msg and "resume" in msg


def test_model_not_found():
    exc = OSError("nobody/nothing is not a local folder and is not a valid model identifier listed on hf.co")
    msg = failures.explain(exc, TrainingPlan.build(model="nobody/nothing"))
    assert "'nobody/nothing' was not found" in msg


def test_bitsandbytes_missing_for_qlora():
    msg = failures.explain(ImportError("No module named 'bitsandbytes'"), TrainingPlan.build(method="qlora"))
    assert "bitsandbytes" in msg and "method lora" in msg


def test_dataset_decode_error_points_at_check_data():
    try:
        json.loads("{broken")
    except json.JSONDecodeError as exc:
        msg = failures.explain(exc, TrainingPlan.build(dataset="my.jsonl"), step=None)
    assert "my.jsonl" in msg and "check-data my.jsonl" in msg


def test_anything_else_is_short_and_points_at_the_log():
    msg = failures.explain(ZeroDivisionError("division by zero\nlong\ntraceback"), TrainingPlan(), step=3)
    assert msg == (
        "Training failed at step 3: ZeroDivisionError: division by zero. The full traceback is in the job log."
    )


def test_disk_full_says_the_checkpoints_are_kept():
    msg = failures.explain(OSError(errno.ENOSPC, "No space left on device"), TrainingPlan(), step=4)
    assert "Checkpoints already written are kept" in msg and "last complete checkpoint" in msg


def test_unwritable_place_names_the_path():
    exc = PermissionError(errno.EACCES, "Permission denied", "/data/jobs/3/checkpoints")
    msg = failures.explain(exc, TrainingPlan(), step=7)
    assert msg.startswith("Could not write /data/jobs/3/checkpoints at step 7") and "LORAPILOT_HOME" in msg
