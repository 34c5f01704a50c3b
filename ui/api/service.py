"""What the /v1 routes stand on: the served base, the names a request may use, and the batcher.

One `Service` per server process. It resolves a request's `model` (the base, a library adapter
by name or id, or an adapter loaded at runtime through /v1/load_lora_adapter), turns messages
into prompt tokens and checks them against the context, and hands requests to the mixed-adapter
scheduler. The base model loads on first use (the wizard starts without it) and stays loaded;
adapters load on first use into the host's LRU. Every method here may block: the routes call
them off the event loop.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

from engine.adapters import batch, folder, host
from engine.errors import UserError
from jobs import library
from jobs.workbench import same_base
from ui.api.schemas import ApiError

DEFAULT_MAX_TOKENS = 256  # when a request names none (OpenAI's chat API would run to the context's end)


@dataclass
class Target:
    """What a request's `model` named: the base (adapter None) or an adapter and its folder."""

    model: str
    adapter: str | None = None
    path: str | None = None


class Service:
    def __init__(
        self, base: str = "default", max_queue: int = 64, max_batch: int = 32, max_adapters: int | None = None
    ):
        self.base = base
        self.max_queue, self.max_batch, self.max_adapters = max_queue, max_batch, max_adapters
        self._runtime: dict[str, str] = {}  # lora_name -> folder, added through /v1/load_lora_adapter
        self._lock = threading.Lock()
        self._host = None
        self._scheduler: batch.Scheduler | None = None

    # --- the model, loaded once -----------------------------------------------------------------
    def host(self):
        with self._lock:
            if self._host is None:
                self._host = host.shared(self.base, self.max_adapters)
                self._scheduler = batch.Scheduler(
                    batch.HostRunner(self._host),
                    max_batch=self.max_batch,
                    max_queue=self.max_queue,
                    max_adapters=self._host.max_loaded,
                )
            return self._host

    def scheduler(self) -> batch.Scheduler:
        self.host()
        return self._scheduler

    def stop(self) -> None:
        if self._scheduler is not None:
            self._scheduler.stop()

    def context_length(self) -> int:
        config = self.host().model.config
        return int(getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", 2048))

    # --- names ------------------------------------------------------------------------------------
    def _library(self):
        return library.list_adapters()

    def models(self) -> list[dict]:
        """The /v1/models entries: the base, every library adapter, every runtime adapter."""
        entries = [{"id": self.base, "root": self.base, "parent": None}]
        entries += [{"id": a.name, "root": a.path, "parent": a.base_model} for a in self._library()]
        with self._lock:
            entries += [{"id": name, "root": path, "parent": self.base} for name, path in self._runtime.items()]
        return entries

    def names(self) -> list[str]:
        return [m["id"] for m in self.models()]

    def resolve(self, model: str) -> Target:
        """The base or adapter a request's `model` names; 404 listing the names, 400 for another base."""

        if model == self.base:
            return Target(model)
        with self._lock:
            if model in self._runtime:
                return Target(model, model, self._runtime[model])
        library = self._library()
        entry = next((a for a in library if a.name == model), None)
        if entry is None and model.isdigit():
            entry = next((a for a in library if a.id == int(model)), None)
        if entry is None:
            raise ApiError(404, f"model: no model named '{model}'; this server has {', '.join(self.names())}", "model")
        if not same_base(entry.base_model, self.base):
            raise ApiError(
                400,
                f"model: adapter '{entry.name}' was trained on {entry.base_model}, but this server "
                f"serves {self.base}; serve it from a server started with --model {entry.base_model}",
                "model",
            )
        return Target(entry.name, entry.name, entry.path)

    # --- runtime loading (vLLM's /v1/load_lora_adapter) -----------------------------------------------
    def load(self, name: str, path: str) -> float:
        if name == self.base or name in self.names():
            raise ApiError(
                400, f"lora_name: '{name}' is already served; unload it first or pick another name", "lora_name"
            )
        try:
            info = folder.inspect(Path(path).expanduser())
        except UserError as exc:
            raise ApiError(400, f"lora_path: {exc.message}", "lora_path") from None
        if not same_base(info.base_model, self.base):
            raise ApiError(
                400,
                f"lora_path: the adapter was trained on {info.base_model}, but this server serves {self.base}",
                "lora_path",
            )
        try:
            seconds = self.host().load(name, str(info.path))
        except UserError as exc:
            raise ApiError(400, f"lora_path: {exc.message}", "lora_path") from None
        with self._lock:
            self._runtime[name] = str(info.path)
        return seconds

    def unload(self, name: str) -> None:
        """Drop an adapter from memory; a runtime one also leaves /v1/models (a library one stays listed
        and loads again on its next use)."""
        with self._lock:
            runtime = self._runtime.pop(name, None)
        if runtime is None and name not in self.names():
            raise ApiError(
                404, f"lora_name: no adapter named '{name}'; this server has {', '.join(self.names())}", "lora_name"
            )
        if self._host is not None:
            self._host.unload(name)

    # --- prompts ------------------------------------------------------------------------------------------
    def prompt_ids(self, messages: list[dict] | None = None, text: str | None = None) -> list[int]:
        host = self.host()
        if messages is not None:
            try:
                prompt = host.prompt_text(messages)
            except Exception as exc:  # a template that refuses these roles is the request's problem
                raise ApiError(400, f"messages: the model's chat template refused them ({exc})", "messages") from None
            return host.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        return host.tokenizer(text)["input_ids"]

    def budget(self, prompt_tokens: int, wanted: int | None, prompt_field: str) -> int:
        """max_tokens for this request: what was asked, within the context; 400 with the limits if not."""
        context = self.context_length()
        room = context - prompt_tokens
        if room < 1:
            raise ApiError(
                400,
                f"{prompt_field}: the prompt has {prompt_tokens} tokens, but this model's context "
                f"is {context}; shorten it",
                prompt_field,
            )
        if wanted is not None and wanted > room:
            raise ApiError(
                400,
                f"max_tokens: this model's context is {context} tokens and the prompt has "
                f"{prompt_tokens}, so at most {room} can be generated; got {wanted}",
                "max_tokens",
            )
        return wanted if wanted is not None else min(DEFAULT_MAX_TOKENS, room)
