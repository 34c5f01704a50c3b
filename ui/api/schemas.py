"""The OpenAI request bodies the endpoint accepts, and its one error type.

Bodies are validated strictly from the raw JSON (a string where a number belongs is refused,
not coerced), and the first problem becomes a 400 that names the field, in OpenAI's error
shape: {"error": {"message", "type", "param", "code"}}. Unknown fields are ignored, as the
OpenAI API and vLLM do, so clients that send extra options still work.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    429: "rate_limit_error",
    500: "server_error",
}


class ApiError(Exception):
    """A request the endpoint refuses: an HTTP status, one sentence, and the field at fault."""

    def __init__(self, status: int, message: str, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param = status, message, param

    def body(self) -> dict:
        return {
            "error": {
                "message": self.message,
                "type": ERROR_TYPES.get(self.status, "invalid_request_error"),
                "param": self.param,
                "code": self.status,
            }
        }


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class Message(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class StreamOptions(_Strict):
    include_usage: bool = False


class _Sampling(_Strict):
    model: str = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)  # the chat API's newer name
    temperature: float = Field(default=1.0, ge=0, le=2)  # 0: greedy
    top_p: float = Field(default=1.0, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(default=1, ge=1, le=1)  # one answer per request

    def stops(self) -> tuple[str, ...]:
        stops = [self.stop] if isinstance(self.stop, str) else (self.stop or [])
        if len(stops) > 4:
            raise ApiError(400, "stop: at most 4 stop strings (as in the OpenAI API)", "stop")
        return tuple(s for s in stops if s)

    def wanted_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class ChatRequest(_Sampling):
    messages: list[Message] = Field(min_length=1)


class CompletionRequest(_Sampling):
    prompt: str | list[str]

    def text(self) -> str:
        if isinstance(self.prompt, list):
            if len(self.prompt) != 1:
                raise ApiError(400, "prompt: give one prompt per request (a string or a list of one)", "prompt")
            return self.prompt[0]
        return self.prompt


class LoadLora(_Strict):
    lora_name: str = Field(min_length=1, max_length=64)
    lora_path: str = Field(min_length=1)


class UnloadLora(_Strict):
    lora_name: str = Field(min_length=1)


def parse(model: type[BaseModel], raw: bytes):
    """The request body as `model`, or ApiError(400) naming the first field at fault."""
    try:
        return model.model_validate_json(raw or b"")
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        if first["type"] in ("json_invalid", "json_type"):
            raise ApiError(400, f"the request body is not a JSON object ({first['msg']})") from None
        field = ".".join(
            str(part)
            for part in first["loc"]
            if not (isinstance(part, str) and part in ("str", "list[str]", "list[TextPart]"))
        )
        field = field or "body"
        raise ApiError(400, f"{field}: {first['msg']}", field) from None
