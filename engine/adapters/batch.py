"""Decode requests for different adapters together: one forward pass per token for the whole batch.

PEFT's mixed-adapter batches (`adapter_names=[...]` on the forward call, one name per row, the
base as "__base__") route each row through its own LoRA weights while the frozen base weights are
read once for all rows. We call the forward pass ourselves rather than `model.generate`, because
`generate` applies one generation config to the whole batch, and each request here keeps its own
max_tokens, stop strings, temperature, top_p and seed. Rows are left-padded; position ids follow
each row's own tokens, so a row's greedy output equals the same request decoded alone.

`stream` answers one prompt with several adapters side by side (the playground): every answer's
first token comes after one prefill, not after the answers before it.

`Scheduler` feeds it: requests queue up (bounded: `QueueFull` when full), and a single thread
takes everything waiting at each tick and decodes it as one batch, off the caller's event loop;
`HostRunner` runs those batches on the process's AdapterHost.
"""

from __future__ import annotations

import functools
import queue
import random
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field

from engine.adapters import gathered
from engine.adapters.host import check_settings, peft_name


@dataclass
class Request:
    prompt_ids: list[int]
    adapter: str | None = None  # None: the base model
    adapter_path: str | None = None  # where to load the adapter from on first use (HostRunner)
    max_tokens: int = 64
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    # Called from the decoding thread with each new piece of text (streaming); must not block.
    on_text: Callable[[str], None] | None = None
    # Called from the decoding thread with the whole answer so far after each token; True ends the row there
    # (a scorer that already knows its verdict). Must not block.
    until: Callable[[str], bool] | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)


@dataclass
class Result:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (eos or a stop string) or "length"; OpenAI's words


class QueueFull(Exception):
    """The scheduler already holds as many waiting requests as it accepts."""


class _Row:
    """One request's decoding state."""

    def __init__(self, request: Request, tokenizer, eos_ids: set[int]):
        import torch

        self.req = request
        self.tokenizer = tokenizer
        self.eos_ids = eos_ids
        self.ids: list[int] = []
        self.text = ""
        self.sent = 0  # characters already handed to on_text
        self.finish: str | None = None
        self.generator = torch.Generator().manual_seed(
            request.seed if request.seed is not None else random.randrange(2**63)
        )

    def pick(self, logits) -> int:
        """Next token from this row's logits (1-D, float32) under its own sampling settings."""
        import torch

        req = self.req
        if req.temperature <= 0:
            return int(torch.argmax(logits))
        probs = torch.softmax(logits / req.temperature, dim=-1)
        if req.top_p < 1.0:  # nucleus: the smallest set of tokens whose mass reaches top_p
            sorted_p, order = torch.sort(probs, descending=True)
            outside = torch.cumsum(sorted_p, dim=-1) - sorted_p >= req.top_p
            sorted_p[outside] = 0.0
            probs = torch.zeros_like(probs).scatter_(0, order, sorted_p)
        return int(torch.multinomial(probs, 1, generator=self.generator))

    def push(self, token: int) -> None:
        self.ids.append(token)
        if token in self.eos_ids:
            self.finish = "stop"
        else:
            self.text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
            cut = min((i for i in (self.text.find(s) for s in self.req.stop if s) if i >= 0), default=-1)
            if cut >= 0:  # OpenAI semantics: the stop string itself is not returned
                self.text, self.finish = self.text[:cut], "stop"
            elif len(self.ids) >= self.req.max_tokens:
                self.finish = "length"
        if self.finish is None and self.req.until is not None and self.req.until(self.text):
            self.finish = "stop"
        if self.req.cancelled.is_set():
            self.finish = self.finish or "cancelled"
        self._emit()

    def _emit(self) -> None:
        if self.req.on_text is None:
            return
        end = len(self.text)
        if self.finish is None:
            end -= _held_back(self.text, self.req.stop)
        if end > self.sent:
            piece, self.sent = self.text[self.sent : end], end
            try:
                self.req.on_text(piece)
            except Exception:  # a consumer that fails must not stop the other rows
                self.req.cancelled.set()

    def result(self) -> Result:
        return Result(
            self.text, len(self.req.prompt_ids), len(self.ids), "length" if self.finish == "length" else "stop"
        )


def _held_back(text: str, stops) -> int:
    """How many trailing characters to keep back while streaming: an unfinished multi-byte
    character (decoded as U+FFFD) or the start of a stop string must not be sent yet."""
    if text.endswith("\ufffd"):
        return len(text) - len(text.rstrip("\ufffd"))
    hold = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), hold, -1):
            if text.endswith(stop[:k]):
                hold = k
                break
    return hold


def decode_batch(
    model,
    tokenizer,
    requests: list[Request],
    pad_id: int | None = None,
    peft_name: Callable[[str], str] = str,
    mixed: bool | None = None,
) -> list[Result]:
    """Decode all `requests` together; one Result per request, in order.

    `model` is a PeftModel holding every adapter the requests name (or a plain model when all
    rows are base); `peft_name` maps a request's adapter to its name inside the PeftModel.
    mixed=False runs the model as it is set (one adapter active, or none) for every row: the
    caller has set it to the only adapter the rows name, and PEFT skips its per-call hooks.
    The caller keeps the model from changing meanwhile (the host's lock).
    """
    import torch

    if not requests:
        return []
    eos = model.generation_config.eos_token_id if getattr(model, "generation_config", None) else None
    eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    eos_ids |= {tokenizer.eos_token_id} - {None}
    pad = (
        pad_id
        if pad_id is not None
        else (tokenizer.pad_token_id if tokenizer.pad_token_id is not None else next(iter(eos_ids), 0))
    )
    rows = [_Row(r, tokenizer, eos_ids) for r in requests]
    if mixed is None:
        mixed = hasattr(model, "peft_config")  # a PeftModel: route each row through its adapter
    if mixed:
        gathered.install(model)  # two matmuls per layer instead of PEFT's loop over the batch's adapters
    names = [peft_name(r.adapter) if r.adapter else gathered.BASE for r in requests]

    # Prefill: left-pad the prompts so every row's last prompt token sits in the last column.
    width = max(len(r.prompt_ids) for r in requests)
    input_ids = torch.tensor([[pad] * (width - len(r.prompt_ids)) + list(r.prompt_ids) for r in requests])
    mask = torch.tensor([[0] * (width - len(r.prompt_ids)) + [1] * len(r.prompt_ids) for r in requests])
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    active = list(range(len(rows)))  # indices into rows of the rows still decoding
    cache = None
    with torch.inference_mode():
        while True:
            kwargs = {"adapter_names": [names[i] for i in active]} if mixed else {}
            out = model(
                input_ids=input_ids,
                attention_mask=mask,
                position_ids=positions,
                cache=cache,
                use_cache=True,
                logits_to_keep=1,
                **kwargs,
            )
            cache = out.cache
            logits = out.logits[:, -1, :].float()
            for slot, i in enumerate(active):
                rows[i].push(rows[i].pick(logits[slot]))
            keep = [slot for slot, i in enumerate(active) if rows[i].finish is None]
            if not keep:
                break
            if len(keep) < len(active):  # finished rows leave the batch (and the KV cache)
                index = torch.tensor(keep)
                cache.batch_select_indices(index)
                mask, positions = mask[index], positions[index]
                active = [active[slot] for slot in keep]
            input_ids = torch.tensor([[rows[i].ids[-1]] for i in active])
            mask = torch.cat([mask, torch.ones(len(active), 1, dtype=mask.dtype)], dim=1)
            positions = positions[:, -1:] + 1
    return [row.result() for row in rows]


@dataclass
class _Ticket:
    request: Request
    future: Future


class Scheduler:
    """A bounded queue and one decoding thread that batches whatever is waiting at each tick.

    run_batch(requests) runs on that thread and returns, per request, a Result or the exception
    that stopped it (see `HostRunner`). At most `max_adapters` distinct adapters go into one batch,
    so an LRU of that size never evicts one a batch still needs. mixed=False serves one adapter per
    batch instead: what serving without mixed-adapter batches would do (the benchmark's baseline).
    """

    def __init__(
        self,
        run_batch: Callable[[list[Request]], list],
        *,
        max_batch: int = 32,
        max_queue: int = 64,
        max_adapters: int = 8,
        mixed: bool = True,
    ):
        self.run_batch = run_batch
        self.max_batch, self.max_queue, self.max_adapters, self.mixed = max_batch, max_queue, max_adapters, mixed
        self._waiting: list[_Ticket] = []
        self._cond = threading.Condition()
        self._stopped = False
        self.batches: list[int] = []  # size of each batch decoded (for tests and the benchmark)
        self._thread = threading.Thread(target=self._loop, name="lora-batcher", daemon=True)
        self._thread.start()

    def submit(self, request: Request) -> Future:
        """Queue a request; its Future resolves to a Result (or raises the error that stopped it)."""
        with self._cond:
            if self._stopped:
                raise RuntimeError("the scheduler is stopped")
            if len(self._waiting) >= self.max_queue:
                raise QueueFull(f"{len(self._waiting)} requests are already waiting (the limit)")
            ticket = _Ticket(request, Future())
            self._waiting.append(ticket)
            self._cond.notify()
        return ticket.future

    def waiting(self) -> int:
        with self._cond:
            return len(self._waiting)

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
        self._thread.join(timeout=60)

    def _take(self) -> list[_Ticket]:
        """Oldest first, up to max_batch, with at most max_adapters distinct adapters (1 unless mixed)."""
        chosen: list[_Ticket] = []
        names: set[str | None] = set()
        limit = self.max_adapters if self.mixed else 1
        for ticket in self._waiting:
            name = ticket.request.adapter or gathered.BASE
            if name not in names and len(names) >= limit:
                continue
            names.add(name)
            chosen.append(ticket)
            if len(chosen) >= self.max_batch:
                break
        taken = {id(t) for t in chosen}
        self._waiting = [t for t in self._waiting if id(t) not in taken]
        return chosen

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._waiting and not self._stopped:
                    self._cond.wait()
                if self._stopped:
                    for ticket in self._waiting:
                        ticket.future.set_exception(RuntimeError("the server is shutting down"))
                    self._waiting = []
                    return
                tickets = self._take()
            tickets = [t for t in tickets if t.future.set_running_or_notify_cancel()]
            try:
                outcomes = self.run_batch([t.request for t in tickets])
            except Exception as exc:  # reported to each waiting caller; the thread keeps serving
                outcomes = [exc] * len(tickets)
            self.batches.append(len(tickets))
            for ticket, outcome in zip(tickets, outcomes):
                if isinstance(outcome, BaseException):
                    ticket.future.set_exception(outcome)
                else:
                    ticket.future.set_result(outcome)


class HostRunner:
    """Runs a batch on an AdapterHost: loads each adapter the batch names (from its request's
    adapter_path, on first use; the host's LRU evicts; a request without one names an adapter the
    caller loaded), then decodes the batch under the host's lock.

    PEFT ignores `adapter_names` while adapter layers are disabled and refuses it while an
    adapter is merged, so the batch unmerges and runs inside `host.using(<one of its adapters>)`,
    which enables them; the host stays in that consistent state afterwards.
    """

    def __init__(self, host):
        self.host = host

    def __call__(self, requests: list[Request]) -> list:
        failed: dict[str, Exception] = {}
        for name, path in {r.adapter: r.adapter_path for r in requests if r.adapter}.items():
            if path is None:  # loaded by the caller; if evicted since, the check under the lock says so
                continue
            try:
                self.host.load(name, path)
            except Exception as exc:  # becomes those requests' error; the others go on
                failed[name] = exc
        live = [r for r in requests if r.adapter not in failed]
        names = sorted({r.adapter for r in live if r.adapter})
        results: dict[int, object] = {}
        if live:
            self.host.set_merged(False)  # a merged adapter (the workbench's toggle) refuses adapter_names
            mixed = len({r.adapter for r in live}) > 1  # else the one adapter (or the base) is set for all rows
            with self.host.using(names[0] if names else None) as model:
                if self.host.merged:
                    raise RuntimeError("an adapter was merged meanwhile; send the request again")
                present = set(getattr(model, "peft_config", {}))
                gone = [n for n in names if peft_name(n) not in present]  # evicted by another user since loading
                for name in gone:
                    failed[name] = RuntimeError(f"adapter '{name}' was unloaded meanwhile; send the request again")
                live = [r for r in live if r.adapter not in failed]
                decoded = decode_batch(model, self.host.tokenizer, live, peft_name=peft_name, mixed=mixed)
                for request, result in zip(live, decoded):
                    results[id(request)] = result
        return [failed[r.adapter] if r.adapter in failed else results[id(r)] for r in requests]


def stream(
    host,
    prompt,
    adapters: list[str | None],
    max_tokens: int = 64,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int | None = None,
) -> Iterator[list[tuple[int, str]]]:
    """Answer `prompt` (text or chat messages) with each of `adapters` (loaded on `host`; None: the base) in
    one mixed batch. Yields what arrived since the last yield, as [(index into adapters, text), ...], so a
    slow consumer gets fewer, larger pieces; greedy rows equal each adapter's answer alone. Closing the
    iterator stops the batch at its next token."""

    check_settings(max_tokens, temperature, top_p)
    ids = host.tokenizer(host.prompt_text(prompt), add_special_tokens=False)["input_ids"]
    heard: queue.SimpleQueue = queue.SimpleQueue()
    requests = [
        Request(
            ids,
            adapter=name,
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            seed=seed,
            on_text=functools.partial(lambda i, text: heard.put((i, text)), i),
        )
        for i, name in enumerate(adapters)
    ]
    outcome: dict = {}

    def work():
        try:
            outcome["results"] = HostRunner(host)(requests)
        except BaseException as exc:  # re-raised to the consumer
            outcome["error"] = exc
        finally:
            heard.put(None)

    worker = threading.Thread(target=work, name="adapter-stream", daemon=True)
    worker.start()
    try:
        done = False
        while not done:
            pieces = [heard.get()]
            while not heard.empty():
                pieces.append(heard.get())
            done = pieces[-1] is None
            if pieces := [p for p in pieces if p is not None]:
                yield pieces
    finally:
        for request in requests:
            request.cancelled.set()  # a consumer that left early stops the batch at its next token
        worker.join()
    if "error" in outcome:
        raise outcome["error"]
    for result in outcome["results"]:
        if isinstance(result, Exception):  # the adapter was unloaded meanwhile, or its load failed
            raise result
