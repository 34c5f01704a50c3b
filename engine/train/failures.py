"""Why a run failed, in plain words, with the knob most likely to fix it.

The worker stores `explain(...)` on the job for people to read; the traceback goes
to the job log only. Each rule recognises one family of failures from the exception
(and the exceptions it was raised from) and answers "what happened" + "what to try".
"""

from __future__ import annotations

import errno

from engine.advice import fitting
from engine.errors import UserError


def _chain(exc: BaseException | None):
    """The exception and every exception it was raised from or while handling."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _text(exc: BaseException) -> str:
    return f"{exc.__class__.__name__}: {exc}".lower()


def _first_line(exc: BaseException, limit: int = 200) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{exc.__class__.__name__}: {text[:limit]}" if text else exc.__class__.__name__


def _at(step) -> str:
    return f"at step {step}" if step else "before the first training step (while loading or preparing)"


# --- recognisers -----------------------------------------------------------------------
def _is_oom(exc) -> bool:
    if isinstance(exc, MemoryError) or exc.__class__.__name__ == "OutOfMemoryError":
        return True
    text = _text(exc)
    return "out of memory" in text or "can't allocate memory" in text or "cannot allocate memory" in text


def _is_disk_full(exc) -> bool:
    return (isinstance(exc, OSError) and exc.errno == errno.ENOSPC) or "no space left on device" in _text(exc)


def _unwritable(exc) -> str | None:
    """The path a write was refused at (permissions, read-only mount), or None."""
    if isinstance(exc, OSError) and exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return exc.filename or "a folder under $LORAPILOT_HOME"
    return None


def _is_model_missing(exc) -> bool:
    names = {"RepositoryNotFoundError", "GatedRepoError", "RevisionNotFoundError", "LocalEntryNotFoundError"}
    if exc.__class__.__name__ in names:
        return True
    text = _text(exc)
    return isinstance(exc, OSError) and (
        "is not a local folder and is not a valid model identifier" in text
        or "does not appear to have a file named" in text
        or "can't load the configuration" in text
    )


def _is_bnb(exc, plan) -> bool:
    text = _text(exc)
    uses_bnb = plan is not None and (plan.method == "qlora" or "8bit" in plan.optimizer)
    return ("bitsandbytes" in text or "bnb" in text.split()) or (
        uses_bnb and ("cuda setup" in text or "no gpu" in text or "libcudart" in text)
    )


def _is_data(exc) -> bool:
    module = type(exc).__module__ or ""
    if module.startswith(("datasets", "pyarrow")):
        return True
    names = {"JSONDecodeError", "UnicodeDecodeError", "ArrowInvalid", "DatasetGenerationError"}
    return exc.__class__.__name__ in names


# --- advice ------------------------------------------------------------------------------
def memory_knobs(plan, on_gpu: bool = True) -> list[str]:
    """What to turn: the memory ladder's rungs (engine.advice.fitting) that apply, in its order."""
    if plan is None:
        return ["use a smaller batch_size, a shorter seq_len, or turn on grad_ckpt"]
    steps = fitting.first_steps(plan, fitting.Where.of(plan, on_cpu=not on_gpu))
    return [f"{s.what} (set {s.knobs}): {s.why}" for s in steps] + [
        "or use a GPU with more memory, or a smaller base model"
    ]


def explain(exc: BaseException, plan=None, step: int | None = None) -> str:
    """One short paragraph for the job's error field."""
    chain = list(_chain(exc))
    for e in chain:
        if isinstance(e, UserError):
            return f"{e.field}: {e.message}"
    if any(_is_oom(e) for e in chain):
        on_gpu = any("cuda" in _text(e) for e in chain)
        knobs = memory_knobs(plan, on_gpu)
        where = "GPU memory" if on_gpu else "memory"
        return (
            f"Ran out of {where} {_at(step)}. Try, in this order: " + "; ".join(knobs) + ". "
            "The estimate page shows what each change saves."
        )
    if any(_is_disk_full(e) for e in chain):
        return (
            f"The disk is full {_at(step)} (writing checkpoints or the model files). Checkpoints already "
            "written are kept. Free some space (old job folders under $LORAPILOT_HOME/jobs, the model cache) "
            "or raise save_steps so fewer checkpoints are written, then resume the job: it continues from "
            "its last complete checkpoint."
        )
    unwritable = next((w for w in map(_unwritable, chain) if w), None)
    if unwritable:
        return (
            f"Could not write {unwritable} {_at(step)}: permission denied or a read-only disk. Make it writable "
            "(or set LORAPILOT_HOME to a folder you can write to), then resume the job."
        )
    model = getattr(plan, "model", "the model")
    if any(_is_model_missing(e) for e in chain):
        return (
            f"The base model '{model}' was not found: not a local folder with config.json, not a .gguf file, "
            "and not reachable on the Hugging Face hub. Check the name (and HF_TOKEN for gated models), or "
            "use 'default'."
        )
    if any(_is_bnb(e, plan) for e in chain):
        what = "QLoRA's 4-bit base" if getattr(plan, "method", None) == "qlora" else "the 8-bit optimizer"
        return (
            f"{what} needs bitsandbytes working on this device, and it failed ({_first_line(chain[-1])}). "
            "Install it (`pip install -U bitsandbytes`), check the CUDA driver, or use method lora "
            "with optimizer adamw_torch."
        )
    if any(_is_data(e) for e in chain):
        source = getattr(plan, "dataset", None) or "the dataset"
        return (
            f"The dataset {source} could not be used {_at(step)}: {_first_line(chain[0])}. "
            f"Run `python app.py check-data {source}` to see the file, row and field at fault."
        )
    return f"Training failed {_at(step)}: {_first_line(chain[0])}. The full traceback is in the job log."
