"""The OpenAI-compatible routes under /v1: models, chat and text completions (plain or streamed
as server-sent events in OpenAI's chunk format), and vLLM's runtime adapter loading.

Every response that is not a success is OpenAI's error object with a status a client can act
on (400 bad request, 401 key, 404 model, 429 busy, 500 our fault) and never a traceback. The
work (tokenising, loading, decoding) runs off the event loop: blocking calls go to worker
threads and decoding to the batcher's thread, so the wizard on the same server stays responsive.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import uuid

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from fastapi.routing import APIRoute

from engine.adapters import batch
from engine.errors import UserError
from ui.api import schemas
from ui.api.schemas import ApiError
from ui.api.service import Service

log = logging.getLogger("lorapilot.api")
_END = object()  # marks the end of a streamed answer in its queue


class _Guarded(APIRoute):
    """Turns every failure of a /v1 handler into OpenAI's error object, without a traceback."""

    def get_route_handler(self):
        handler = super().get_route_handler()

        async def guarded(request: Request):
            try:
                return await handler(request)
            except ApiError as exc:
                return JSONResponse(exc.body(), status_code=exc.status)
            except UserError as exc:
                return JSONResponse(ApiError(400, str(exc), exc.field).body(), status_code=400)
            except Exception as exc:  # logged here; the client gets one line
                log.exception("the /v1 endpoint failed")
                return JSONResponse(
                    ApiError(500, f"internal error ({type(exc).__name__}); the server keeps serving").body(),
                    status_code=500,
                )

        return guarded


def build_router(service: Service, api_key: str | None = None) -> APIRouter:
    async def authorize(request: Request) -> None:
        if not api_key:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), api_key.encode()):
            raise ApiError(
                401,
                "a valid API key is required: send the header Authorization: Bearer <the server's LORAPILOT_API_KEY>",
            )

    router = APIRouter(prefix="/v1", route_class=_Guarded, dependencies=[Depends(authorize)])
    started = int(time.time())

    @router.get("/models")
    async def models():
        entries = await asyncio.to_thread(service.models)
        return {
            "object": "list",
            "data": [{"object": "model", "created": started, "owned_by": "lorapilot", **e} for e in entries],
        }

    @router.post("/chat/completions")
    async def chat(request: Request):
        body = schemas.parse(schemas.ChatRequest, await request.body())
        messages = [
            {"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in body.messages
        ]
        return await _complete(service, body, "chat", messages=messages)

    @router.post("/completions")
    async def completions(request: Request):
        body = schemas.parse(schemas.CompletionRequest, await request.body())
        return await _complete(service, body, "text", text=body.text())

    @router.post("/load_lora_adapter")
    async def load_lora_adapter(request: Request):
        body = schemas.parse(schemas.LoadLora, await request.body())
        await asyncio.to_thread(service.load, body.lora_name, body.lora_path)
        return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' added successfully.")

    @router.post("/unload_lora_adapter")
    async def unload_lora_adapter(request: Request):
        body = schemas.parse(schemas.UnloadLora, await request.body())
        await asyncio.to_thread(service.unload, body.lora_name)
        return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' removed successfully.")

    return router


async def _complete(service: Service, body, kind: str, messages=None, text=None):
    target = await asyncio.to_thread(service.resolve, body.model)
    ids = await asyncio.to_thread(service.prompt_ids, messages, text)
    max_tokens = await asyncio.to_thread(
        service.budget, len(ids), body.wanted_tokens(), "messages" if kind == "chat" else "prompt"
    )
    request = batch.Request(
        ids,
        adapter=target.adapter,
        adapter_path=target.path,
        max_tokens=max_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        seed=body.seed,
        stop=body.stops(),
    )
    answer = _Answer(kind, body.model)
    if not body.stream:
        result = await asyncio.wrap_future(_submit(service, request))
        return answer.whole(result)

    loop = asyncio.get_running_loop()
    pieces: asyncio.Queue = asyncio.Queue()

    def hand_over(item) -> None:  # runs on the decoding thread
        try:
            loop.call_soon_threadsafe(pieces.put_nowait, item)
        except RuntimeError:  # the event loop is gone: nobody is listening any more
            request.cancelled.set()

    request.on_text = hand_over
    future = _submit(service, request)
    future.add_done_callback(lambda _: hand_over(_END))
    usage = bool(body.stream_options and body.stream_options.include_usage)
    return StreamingResponse(answer.stream(pieces, future, request, usage), media_type="text/event-stream")


def _submit(service: Service, request: batch.Request):
    scheduler = service.scheduler()
    try:
        return scheduler.submit(request)
    except batch.QueueFull:
        raise ApiError(
            429, f"the server is busy ({scheduler.max_queue} requests are waiting); retry in a moment"
        ) from None


class _Answer:
    """OpenAI's response objects for one request: whole, or as a stream of chunks."""

    def __init__(self, kind: str, model: str):
        self.kind, self.model = kind, model
        self.id = ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex[:24]
        self.created = int(time.time())

    def _envelope(self, choices: list, chunk: bool = False) -> dict:
        obj = ("chat.completion.chunk" if chunk else "chat.completion") if self.kind == "chat" else "text_completion"
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model, "choices": choices}

    def _choice(self, text: str | None, finish: str | None, chunk: bool = False, role: bool = False) -> dict:
        if self.kind == "text":
            return {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
        if chunk:
            delta = ({"role": "assistant", "content": ""} if role else {}) | ({"content": text} if text else {})
            return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return {
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "logprobs": None,
            "finish_reason": finish,
        }

    @staticmethod
    def _usage(result: batch.Result) -> dict:
        return {
            "prompt_tokens": result.prompt_tokens,
            "completion_tokens": result.completion_tokens,
            "total_tokens": result.prompt_tokens + result.completion_tokens,
        }

    def whole(self, result: batch.Result) -> dict:
        return self._envelope([self._choice(result.text, result.finish_reason)]) | {"usage": self._usage(result)}

    async def stream(self, pieces: asyncio.Queue, future, request: batch.Request, usage: bool):
        def event(payload: dict) -> str:
            return f"data: {json.dumps(payload)}\n\n"

        try:
            if self.kind == "chat":
                yield event(self._envelope([self._choice(None, None, chunk=True, role=True)], chunk=True))
            while (piece := await pieces.get()) is not _END:
                yield event(self._envelope([self._choice(piece, None, chunk=True)], chunk=True))
            try:
                result = future.result()
            except UserError as exc:
                yield event(ApiError(400, str(exc), exc.field).body())
            except Exception as exc:  # the stream has begun: report in-band, as OpenAI does
                log.exception("a streamed generation failed")
                yield event(ApiError(500, f"internal error ({type(exc).__name__})").body())
            else:
                yield event(self._envelope([self._choice(None, result.finish_reason, chunk=True)], chunk=True))
                if usage:
                    yield event(self._envelope([], chunk=True) | {"usage": self._usage(result)})
            yield "data: [DONE]\n\n"
        finally:
            request.cancelled.set()  # a client that left stops its row at the next token
