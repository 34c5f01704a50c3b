"""One base model, many LoRA adapters: load once, switch in milliseconds.

`AdapterHost` keeps a single base model per process and attaches adapters to it with
PEFT's `load_adapter` / `set_adapter` / `delete_adapter`, holding at most `max_loaded`
of them (least recently used goes first). Switching never reloads the base: an already
loaded adapter is a pointer change, one from disk costs reading its few megabytes and PEFT
attaching it (PEFT itself is imported with the base). The process keeps one host per base
(`shared`): the playground, Compose and its retention scoring all use it, so the base and the
tokenizer are read once (`BASE_LOADS` counts the reads, per base).

Thread safety: one lock guards every change of state *and* a whole generation, so a
request never sees its adapter switched under it mid-answer. The lock is a plain Lock
(not an RLock) because a streaming generation is consumed by a generator whose
`next()` may run on different worker threads (Gradio, Starlette); a plain Lock may be
released by any thread.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from engine.adapters.folder import check_fits_model
from engine.errors import UserError, first_line, one_of
from engine.plan import TrainingPlan
from engine.train.run import load_base

DEFAULT_MAX_NEW_TOKENS = 128
BASE_LOADS: Counter[str] = Counter()  # base spec -> times its weights were read for inference


def peft_name(name: str) -> str:
    """PEFT keeps adapters in torch ModuleDicts, whose keys cannot hold '.': escape what could clash."""
    return re.sub(r"[^A-Za-z0-9_-]", lambda m: f"_x{ord(m.group()):x}_", name)


def load_base_for_inference(spec: str):
    """(model, tokenizer) of a base spec, in its compute precision, in eval mode, on the GPU if any.

    The same resolution as training (engine.train.run.load_base): 'default', a folder, a
    .gguf file, a catalog name or a hub id. A QLoRA adapter is served on the base in its
    compute precision, not 4-bit: the same weights its merged form will have.
    """
    import torch

    plan = TrainingPlan.build(model=spec, method="lora")
    model, tokenizer = load_base(plan, for_training=False)
    BASE_LOADS[spec] += 1
    if torch.cuda.is_available():
        model.to("cuda")
    model.eval()
    model.config.use_cache = True
    return model, tokenizer


def check_settings(max_new_tokens: int, temperature: float, top_p: float) -> None:
    if max_new_tokens < 1:
        raise UserError("max_new_tokens", f"got {max_new_tokens}; give 1 or more")
    if temperature < 0:
        raise UserError("temperature", f"got {temperature}; give 0 (greedy) or more")
    if not 0 < top_p <= 1:
        raise UserError("top_p", f"got {top_p}; give a number above 0 and at most 1")


class AdapterHost:
    def __init__(self, base_model: str, max_loaded: int = 8):
        if max_loaded < 1:
            raise UserError("max_loaded", f"got {max_loaded}; keep at least 1 adapter loaded")
        self.base_model = base_model
        self.max_loaded = max_loaded
        self._lock = threading.Lock()
        self._base, self._tokenizer = load_base_for_inference(base_model)
        # PEFT's first import costs ~1.5 s on a CPU (bitsandbytes sets up torch.compile): pay it with the
        # base, where a user waits anyway, not on the first adapter's load from disk
        import peft  # noqa: F401

        self._peft: Any = None  # the PeftModel, made by the first load
        self._paths: OrderedDict[str, str] = OrderedDict()  # name -> folder, oldest use first
        self._active: str | None = None
        self._merged = False
        self.disk_loads = 0  # adapters read from disk so far (a name already loaded costs none)
        self._enabled = False  # adapter layers on; PEFT's toggle walks every module, so skip needless ones

    # --- properties -------------------------------------------------------------------
    @property
    def model(self):
        """The PeftModel once an adapter was loaded, else the plain base model."""
        return self._peft if self._peft is not None else self._base

    @property
    def tokenizer(self):
        return self._tokenizer

    @property
    def active(self) -> str | None:
        return self._active

    @property
    def merged(self) -> bool:
        return self._merged

    def loaded(self) -> list[str]:
        """Names of the loaded adapters, least recently used first."""
        with self._lock:
            return list(self._paths)

    def path_of(self, name: str) -> str:
        """The folder the loaded adapter `name` came from."""
        with self._lock:
            if name not in self._paths:
                raise UserError("adapter", f"'{name}' is not loaded; loaded: {one_of(self._paths) or 'none'}")
            return self._paths[name]

    # --- loading -------------------------------------------------------------------------
    def load(self, name: str, path: str) -> float:
        """Attach the adapter folder `path` as `name`; seconds taken (0 if it was loaded)."""
        with self._lock:
            return self._load(name, path)

    def _load(self, name: str, path: str) -> float:
        if name in self._paths:
            if self._paths[name] == str(path):
                self._paths.move_to_end(name)
                return 0.0
            self._unload(name)  # the name now stands for another folder (renamed, replaced)
        folder = Path(path)
        if not (folder / "adapter_config.json").is_file():
            raise UserError("adapter", f"{path} has no adapter_config.json; give a PEFT adapter folder")

        start = time.perf_counter()
        check_fits_model(folder, self._base, self.base_model)  # before PEFT changes the base in place
        while len(self._paths) >= self.max_loaded:
            self._evict()
        # Not PEFT's low_cpu_mem_usage: in PEFT 0.21 it makes the new weights in the base's dtype before they take
        # the file's, so an fp32 adapter on a bf16 base is rounded to bf16 (and its answers change); for a
        # demo-sized adapter it saved nothing measurable either (bench/bench_adapters.py).
        try:
            if self._peft is None:
                from peft import PeftModel

                self._peft = PeftModel.from_pretrained(
                    self._base, str(folder), adapter_name=peft_name(name), is_trainable=False
                )
                self._peft.eval()
            else:
                self._peft.load_adapter(str(folder), adapter_name=peft_name(name), is_trainable=False)
        except (RuntimeError, ValueError, KeyError) as exc:
            self._forget(name)
            raise UserError(
                "adapter",
                f"{path} does not fit the base {self.base_model} "
                f"({first_line(exc)}); it was trained on another base model",
            ) from None
        self._keep_who_answers()
        self._paths[name] = str(folder)
        self.disk_loads += 1
        return time.perf_counter() - start

    def _keep_who_answers(self) -> None:
        """After PEFT attached an adapter: the one that answered before still does (or the base alone)."""
        if self._active is not None:
            self._peft.set_adapter(peft_name(self._active))
        else:
            self._disable()  # a newly attached adapter is not active until asked for

    def create(self, name: str, folder, make: Callable[[Any, str], None], keep: Iterable[str] = ()) -> float:
        """Attach as `name` an adapter that `make(peft_model, peft_name)` adds to the PeftModel in place from
        loaded ones (a weighted combination) and saves into `folder`, which later loads of `name` read.
        The adapters named in `keep` (what `make` reads) are not evicted to make room. Seconds taken."""
        kept = set(keep)
        with self._lock:
            missing = [n for n in kept if n not in self._paths]
            if missing or self._peft is None:
                raise UserError("adapter", f"load {', '.join(missing or sorted(kept))} before combining")
            start = time.perf_counter()
            if self._merged:
                self._unmerge()  # a combination is made from the adapters' own weights, not merged ones
            if name in self._paths:
                self._unload(name)
            while len(self._paths) >= self.max_loaded:
                if not self._evict(kept):
                    raise UserError(
                        "adapters",
                        f"{len(kept)} sources and their combination do not fit the {self.max_loaded} adapters "
                        "that stay loaded (LORAPILOT_MAX_ADAPTERS)",
                    )
            try:
                make(self._peft, peft_name(name))
            except BaseException:
                self._forget(name)
                self._keep_who_answers()
                raise
            self._keep_who_answers()
            self._paths[name] = str(folder)
            return time.perf_counter() - start

    def unload(self, name: str) -> None:
        with self._lock:
            if name not in self._paths:
                return
            self._unload(name)

    def _unload(self, name: str) -> None:
        if self._merged and self._active == name:
            self._unmerge()
        self._forget(name)
        self._paths.pop(name, None)
        if self._active == name:
            self._active = None
            self._disable()

    def _forget(self, name: str) -> None:
        if self._peft is not None and peft_name(name) in self._peft.peft_config:
            self._peft.delete_adapter(peft_name(name))

    def _evict(self, keep: frozenset[str] | set[str] = frozenset()) -> bool:
        """Unload the least recently used adapter not in `keep` (the active one last); False if none may go."""
        free = [n for n in self._paths if n not in keep]
        if not free:
            return False
        self._unload(next((n for n in free if n != self._active), free[0]))
        return True

    # --- switching ---------------------------------------------------------------------------
    def activate(self, name: str | None) -> float:
        """Make `name` answer (None: the base alone); seconds the switch took."""
        with self._lock:
            return self._activate(name)

    def _activate(self, name: str | None) -> float:
        start = time.perf_counter()
        if name is not None and name not in self._paths:
            raise UserError("adapter", f"'{name}' is not loaded; loaded: {one_of(self._paths) or 'none'}")
        if name == self._active:
            self._paths.move_to_end(name) if name else None
            return time.perf_counter() - start
        if self._merged:
            self._unmerge()
        if name is None:
            self._disable()
        else:
            if not self._enabled:
                self._peft.base_model.enable_adapter_layers()
                self._enabled = True
            self._peft.set_adapter(peft_name(name))
            self._paths.move_to_end(name)
        self._active = name
        return time.perf_counter() - start

    def _disable(self) -> None:
        if self._peft is not None:
            self._peft.base_model.disable_adapter_layers()
            self._enabled = False

    # --- merge toggle -------------------------------------------------------------------------
    def set_merged(self, merged: bool) -> float:
        """Fold the active adapter into the base weights (faster answers) or take it out again."""
        with self._lock:
            start = time.perf_counter()
            if merged and not self._merged:
                if self._active is None:
                    raise UserError("adapter", "pick an adapter to merge; the base alone has nothing to merge")
                self._peft.merge_adapter([peft_name(self._active)])
                self._merged = True
            elif not merged and self._merged:
                self._unmerge()
            return time.perf_counter() - start

    def _unmerge(self) -> None:
        self._peft.unmerge_adapter()
        self._merged = False

    @contextmanager
    def using(self, adapter: str | None):
        """Hold the host with `adapter` active (for scoring, logits, anything multi-step)."""
        with self._lock:
            self._activate(adapter)
            yield self.model

    # --- generation --------------------------------------------------------------------------------
    def prompt_text(self, prompt) -> str:
        """The text the model sees: chat template applied, generation prompt added."""
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        if not messages or not all(isinstance(m, dict) and "role" in m and "content" in m for m in messages):
            raise UserError("prompt", "give text, or a list of {'role': ..., 'content': ...} messages")
        return self._tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def generate(
        self,
        prompt,
        adapter: str | None = None,
        max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
        temperature: float = 0.0,
        top_p: float = 1.0,
        stop: list[str] | str | None = None,
        seed: int | None = None,
    ) -> Iterator[str]:
        """Stream the answer of `adapter` (None: the base) to `prompt` as text chunks.

        Greedy when temperature is 0; ends at EOS, `max_new_tokens` or the first `stop`
        string (which is not included). The host stays locked until the iterator ends or
        is closed; closing it early stops the generation at the next token.
        """
        check_settings(max_new_tokens, temperature, top_p)
        stops = [stop] if isinstance(stop, str) else [s for s in (stop or []) if s]
        text = self.prompt_text(prompt)
        if adapter is not None and adapter not in self._paths:
            raise UserError("adapter", f"'{adapter}' is not loaded; loaded: {one_of(self._paths) or 'none'}")
        return self._stream(text, adapter, max_new_tokens, temperature, top_p, stops, seed)

    def _stream(self, text, adapter, max_new_tokens, temperature, top_p, stops, seed) -> Iterator[str]:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        halt = threading.Event()

        class _Halt(StoppingCriteria):
            def __call__(self, input_ids, scores, **kw):
                return halt.is_set()

        with self._lock:
            self._activate(adapter)
            tok = self._tokenizer
            model = self.model
            inputs = tok(text, return_tensors="pt", add_special_tokens=False).to(model.device)
            streamer = TextIteratorStreamer(tok, skip_prompt=True, skip_special_tokens=True, timeout=600)
            kwargs = dict(
                **inputs,
                max_new_tokens=max_new_tokens,
                streamer=streamer,
                stopping_criteria=StoppingCriteriaList([_Halt()]),
                eos_token_id=tok.eos_token_id,
                pad_token_id=tok.pad_token_id,
            )
            if temperature > 0:
                kwargs.update(do_sample=True, temperature=temperature, top_p=top_p)
            else:
                kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
            if seed is not None:
                torch.manual_seed(seed)
            failure: list[BaseException] = []

            def run():
                try:
                    with torch.inference_mode():
                        model.generate(**kwargs)
                except BaseException as exc:  # re-raised in the consumer
                    failure.append(exc)
                    streamer.end()

            worker = threading.Thread(target=run, name="adapter-generate", daemon=True)
            worker.start()
            try:
                held = ""  # text that might be the start of a stop string
                for chunk in streamer:
                    held += chunk
                    cut = min((held.find(s) for s in stops if s in held), default=-1)
                    if cut >= 0:
                        if held[:cut]:
                            yield held[:cut]
                        return
                    keep = max((len(s) - 1 for s in stops), default=0)
                    ready, held = (held[: len(held) - keep], held[len(held) - keep :]) if keep else (held, "")
                    if ready:
                        yield ready
                if held:
                    yield held
                if failure:
                    raise failure[0]
            finally:
                halt.set()
                worker.join()


# --- the process's host ------------------------------------------------------------------------
_shared: AdapterHost | None = None
_shared_lock = threading.Lock()


def shared(base_model: str, max_loaded: int | None = None) -> AdapterHost:
    """The process's one host; asking for another base replaces it (one base in memory at a time)."""
    global _shared

    with _shared_lock:
        if _shared is None or _shared.base_model != base_model:
            _shared = None  # let the old base go before the new one loads
            size = max_loaded or int(os.environ.get("LORAPILOT_MAX_ADAPTERS", "8"))
            _shared = AdapterHost(base_model, max_loaded=size)
        return _shared
