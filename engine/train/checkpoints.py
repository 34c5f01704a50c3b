"""Checkpoints that survive a kill: written atomically, checked before a resume.

A kill -9, an OOM kill or a power cut can land while the Trainer writes `checkpoint-N`.
Two rules keep that from costing the job:

- Saves are atomic. `atomic_trainer(SFTTrainer)` writes each checkpoint into
  `checkpoints/.partial/checkpoint-N`, fsyncs every file, then renames the folder into
  place, so a `checkpoint-N` folder only ever appears complete. Rotation (save_total_limit)
  runs after the rename, over finished checkpoints only.
- A resume starts from the newest checkpoint that is complete and readable: trainer state,
  weights (safetensors headers checked against the file size), optimizer, scheduler and
  RNG state. A torn one (from before atomic saves, or a disk that lied) is moved to
  `checkpoints/torn/` and reported, never deleted: it may be all a user has.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from engine.train import distributed

PREFIX = "checkpoint-"
STAGING = ".partial"  # no "checkpoint-" prefix: Trainer's rotation never sees it
TORN = "torn"

Log = Callable[[str], None]


def checkpoints_dir(out_dir: Path) -> Path:
    return Path(out_dir) / "checkpoints"


def step_of(path: Path) -> int:
    return int(Path(path).name.removeprefix(PREFIX))


def candidates(out_dir: Path) -> list[Path]:
    """checkpoint-N folders, newest first."""
    folder = checkpoints_dir(out_dir)
    found = [p for p in folder.glob(PREFIX + "*") if p.is_dir() and p.name.removeprefix(PREFIX).isdigit()]
    return sorted(found, key=step_of, reverse=True)


# --- is it whole? ------------------------------------------------------------------------
def problem(path: Path) -> str | None:
    """Why this checkpoint cannot be resumed from, or None when it is complete and readable."""
    path = Path(path)
    try:
        state = json.loads((path / "trainer_state.json").read_text(encoding="utf-8"))
        if not isinstance(state, dict) or "global_step" not in state:
            return "trainer_state.json has no global_step"
    except FileNotFoundError:
        return "trainer_state.json is missing"
    except (OSError, ValueError) as exc:
        return f"trainer_state.json is unreadable ({exc.__class__.__name__})"
    why = _weights_problem(path)
    if why:
        return why
    for name in ("optimizer.pt", "scheduler.pt"):
        why = _torch_file_problem(path / name)
        if why:
            return why
    rng = sorted(path.glob("rng_state*.pth"))
    if not rng:
        return "rng_state.pth is missing"
    for file in rng:
        why = _torch_file_problem(file)
        if why:
            return why
    return None


def _weights_problem(path: Path) -> str | None:
    index = next(
        (
            path / n
            for n in ("adapter_model.safetensors.index.json", "model.safetensors.index.json")
            if (path / n).is_file()
        ),
        None,
    )
    if index is not None:
        try:
            shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (OSError, ValueError, KeyError) as exc:
            return f"{index.name} is unreadable ({exc.__class__.__name__})"
        files = [path / s for s in shards]
    else:
        files = [path / n for n in ("adapter_model.safetensors", "model.safetensors") if (path / n).is_file()]
    if not files:
        for name in ("adapter_model.bin", "pytorch_model.bin"):  # older, pickle-based weights
            if (path / name).is_file():
                return _torch_file_problem(path / name)
        return "no model weights (adapter_model.safetensors or model.safetensors)"
    from safetensors import safe_open

    for file in files:
        try:
            # The header is checked against the file size: a file cut short fails here.
            with safe_open(str(file), framework="pt") as fh:
                fh.keys()
        except Exception as exc:  # SafetensorError, OSError: all mean "not usable"
            return f"{file.name} is unreadable ({str(exc).strip() or exc.__class__.__name__})"
    return None


def _torch_file_problem(file: Path) -> str | None:
    if not file.is_file():
        return f"{file.name} is missing"
    import torch

    try:
        # mmap: the zip directory and pickle are read, the tensors' bytes are not
        torch.load(str(file), map_location="cpu", mmap=True, weights_only=False)
    except Exception as exc:  # any failure to load means the file is torn
        return f"{file.name} is unreadable ({exc.__class__.__name__})"
    return None


# --- choosing where a resume starts ----------------------------------------------------
def resume_point(out_dir: Path, log: Log | None = None) -> Path | None:
    """The newest complete checkpoint; torn newer ones are moved to checkpoints/torn/ and logged.

    Call it only while no worker writes this job's checkpoints (at resume or worker start).
    """
    log = log or (lambda message: None)
    for path in candidates(out_dir):
        why = problem(path)
        if why is None:
            return path
        kept = set_aside(path)
        log(
            f"{path.name} is incomplete ({why}); not resuming from it, moved to {kept} (delete it yourself "
            "when you no longer need it)"
        )
    return None


def set_aside(path: Path) -> Path:
    """Move a torn checkpoint into checkpoints/torn/, never over an earlier one."""
    torn = Path(path).parent / TORN
    torn.mkdir(exist_ok=True)
    dest, n = torn / path.name, 1
    while dest.exists():
        n += 1
        dest = torn / f"{path.name}.{n}"
    os.replace(path, dest)
    return dest


def finished(path: Path) -> bool:
    """Does this checkpoint hold the run's last step (only the final save was missing)?"""
    state = json.loads((Path(path) / "trainer_state.json").read_text(encoding="utf-8"))
    return 0 < int(state.get("max_steps") or 0) <= int(state["global_step"])


def load_finished(trainer, path: Path) -> None:
    """Put a finished checkpoint's weights and state into `trainer` without training.

    Trainer.train() from a checkpoint at max_steps would run one step past the end
    before it notices, so a job whose final save failed is completed this way instead.
    """
    from transformers import TrainerState

    trainer._load_from_checkpoint(str(path))
    trainer.state = TrainerState.load_from_json(str(Path(path) / "trainer_state.json"))


# --- atomic saves ----------------------------------------------------------------------
def _fsync_tree(root: Path) -> None:
    for folder, _dirs, files in os.walk(root):
        for name in files:
            with open(os.path.join(folder, name), "rb") as fh:
                os.fsync(fh.fileno())
        _fsync_dir(Path(folder))


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some platforms cannot open a directory; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def publish(staged: Path, final: Path) -> None:
    """Make a fully written staged folder appear at `final` in one rename."""
    _fsync_tree(staged)
    if final.exists():  # the same step saved twice (e.g. a cancel on a save step): newest wins
        old = final.with_name(final.name + ".replaced")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(staged, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(staged, final)
    _fsync_dir(final.parent)


def atomic_trainer(trainer_cls, before_publish: Callable[[Path], None] | None = None):
    """A subclass of `trainer_cls` (a transformers Trainer) whose checkpoints appear atomically.

    `before_publish(staged_folder)` runs after the Trainer wrote a checkpoint and before it
    is published (the fault-injection hook of engine.train.faults uses it).
    """
    from transformers.trainer_utils import rotate_checkpoints

    class AtomicCheckpoints(trainer_cls):
        def _save_checkpoint(self, model, trial):
            if distributed.world_size() > 1:
                # Every rank writes into the checkpoint (rng_state_<rank>.pth) while rank 0 writes the
                # rest, so one rank cannot publish the folder alone; resume_point() still skips a torn one.
                return super()._save_checkpoint(model, trial)
            run_dir = Path(self._get_output_dir(trial=trial))
            staging = run_dir / STAGING
            name = f"{PREFIX}{self.state.global_step}"
            shutil.rmtree(staging, ignore_errors=True)  # what a killed save left half-written
            staging.mkdir(parents=True)
            # Transformers writes to _get_output_dir()/checkpoint-N and rotates there; pointing it
            # at the staging folder (holding only this checkpoint) keeps both away from run_dir.
            self._get_output_dir = lambda trial=None: str(staging)
            try:
                super()._save_checkpoint(model, trial)
            finally:
                del self._get_output_dir
            best = self.state.best_model_checkpoint
            if best and Path(best).parent == staging:  # recorded while it sat in staging: name its final place
                self.state.best_model_checkpoint = str(run_dir / Path(best).name)
                self.state.save_to_json(str(staging / name / "trainer_state.json"))
            if before_publish is not None:
                before_publish(staging / name)
            publish(staging / name, run_dir / name)
            shutil.rmtree(staging, ignore_errors=True)
            if self.args.should_save:
                rotate_checkpoints(
                    output_dir=str(run_dir),
                    save_total_limit=self.args.save_total_limit,
                    best_model_checkpoint=self.state.best_model_checkpoint,
                    use_mtime=False,
                )

    AtomicCheckpoints.__name__ = AtomicCheckpoints.__qualname__ = f"Atomic{trainer_cls.__name__}"
    return AtomicCheckpoints
