"""The OpenAI-compatible API: ``/v1/chat/completions`` (plain and SSE) and ``/v1/models``.

Chat is one :class:`~sluicegate.api.pipeline.Endpoint` of the shared call pipeline (auth, restrictions, cache,
router, one :class:`LogEvent` handed to the dispatcher, which never awaits a sink): an OpenAI-compatible upstream
gets the client's bytes as they came; others are translated by their provider. Nothing here knows which provider
is behind a model.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import msgspec
from litestar import Request, Response, get, post

from sluicegate.api.common import gateway_of, json_response
from sluicegate.api.pipeline import Endpoint, MockSource, run_call
from sluicegate.api.pipeline import allowed_models as _allowed
from sluicegate.api.pipeline import error_response as _error_response
from sluicegate.api.pipeline import may_use as _may_use
from sluicegate.api.pipeline import request_id_of as _request_id
from sluicegate.cache import sse_chunks
from sluicegate.errors import ApiError
from sluicegate.providers.upstream import mock_completion, mock_stream

if TYPE_CHECKING:
    from sluicegate.api.pipeline import Assembler, Call
    from sluicegate.cache import CachedAnswer, CacheLookup
    from sluicegate.providers.models import Deployment

__all__ = ("Chat", "chat_completions", "chat_completions_v1", "list_models", "list_models_v1", "retrieve_model",
           "retrieve_model_v1")

_decoder = msgspec.json.Decoder()


class Chat(Endpoint):
    """``/v1/chat/completions``: the client's body goes to the model's provider as it came (an OpenAI-compatible
    upstream gets its bytes; others are translated by their provider); answers are cached, streamed or not."""

    name = "chat/completions"
    call_type = "acompletion"
    input_field = "messages"
    cacheable = True
    cache_streams = True
    incomplete = "upstream stream ended before [DONE]"

    def check(self, body: dict[str, Any]) -> None:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ApiError(400, "messages: required (a non-empty array of messages)", param="messages")

    def tokens(self, router: Any, body: dict[str, Any]) -> int:
        return router.estimate_tokens(body.get("messages"))

    async def answer(self, call: Call, deployment: Deployment) -> bytes:
        if deployment.mock_response is not None:
            return mock_completion(deployment, call.body)
        return await deployment.provider.complete_bytes(*call.upstream_body(deployment), call.request_id)

    async def open(self, call: Call, deployment: Deployment) -> Any:
        if deployment.mock_response is not None:
            return MockSource(mock_stream(deployment, call.body))
        return await deployment.provider.open_stream(*call.upstream_body(deployment), call.request_id)

    def media_type(self, body: dict[str, Any], headers: dict[str, str] | None = None) -> str:
        return "text/event-stream" if body.get("stream") else "application/json"

    def assembler(self, call: Call, headers: dict[str, str] | None) -> Assembler:
        return _StreamState()  # type: ignore[return-value]

    def replay(self, cached: CachedAnswer, body: dict[str, Any], stream: bool) -> tuple[bytes, str]:
        """A stored ``chat.completion`` as JSON, or as the SSE stream an upstream would have sent."""
        if not stream:
            return cached.content, "application/json"
        options = body.get("stream_options")
        frames = sse_chunks(cached.parsed, include_usage=isinstance(options, dict)
                            and bool(options.get("include_usage")))
        return b"".join(frames), "text/event-stream"

    async def store_stream(self, lookup: CacheLookup, state: Any, body: dict[str, Any]) -> None:
        if body.get("n") in (None, 1):  # the assembler keeps one choice
            await lookup.put_completion(state.response())


_CHAT = Chat()


class _StreamState:
    """Assembles a streamed completion from its SSE chunks, for the log event."""

    __slots__ = ("buffer", "content", "reasoning", "tool_calls", "usage", "finish_reason", "response_id", "model",
                 "role", "first_token_at", "done", "error")

    def __init__(self) -> None:
        self.buffer = b""
        self.content: list[str] = []
        self.reasoning: list[str] = []
        self.tool_calls: dict[int, dict[str, Any]] = {}
        self.usage: dict[str, Any] | None = None
        self.finish_reason: str | None = None
        self.response_id: str | None = None
        self.model: str | None = None
        self.role = "assistant"
        self.first_token_at: float | None = None
        self.done = False
        self.error: str | None = None

    def feed(self, data: bytes) -> None:
        if self.first_token_at is None:
            self.first_token_at = time.time()
        self.buffer += data
        *lines, self.buffer = self.buffer.split(b"\n")
        for line in lines:
            line = line.strip()
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if payload == b"[DONE]":
                self.done = True
                continue
            try:
                chunk = _decoder.decode(payload)
            except msgspec.DecodeError:
                continue
            if isinstance(chunk, dict):
                self._chunk(chunk)

    def _chunk(self, chunk: dict[str, Any]) -> None:
        error = chunk.get("error")
        if error is not None:  # an error frame mid-stream (what OpenAI's SDKs raise as APIError)
            self.error = str(error.get("message") if isinstance(error, dict) else error)
            return
        self.response_id = self.response_id or chunk.get("id")
        self.model = self.model or chunk.get("model")
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict):
                continue
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
            delta = choice.get("delta") or {}
            if not isinstance(delta, dict):
                continue
            if delta.get("role"):
                self.role = delta["role"]
            if isinstance(delta.get("content"), str):
                self.content.append(delta["content"])
            reasoning = delta.get("reasoning_content") or delta.get("reasoning")
            if isinstance(reasoning, str):
                self.reasoning.append(reasoning)
            for call in delta.get("tool_calls") or ():
                if not isinstance(call, dict):
                    continue
                slot = self.tool_calls.setdefault(int(call.get("index", 0)),
                                                  {"id": None, "type": "function",
                                                   "function": {"name": "", "arguments": ""}})
                slot["id"] = call.get("id") or slot["id"]
                function = call.get("function") or {}
                slot["function"]["name"] += function.get("name") or ""
                slot["function"]["arguments"] += function.get("arguments") or ""

    def result(self) -> tuple[dict[str, Any], dict[str, Any] | None]:
        return self.response(), self.usage

    def response(self) -> dict[str, Any]:
        message: dict[str, Any] = {"role": self.role, "content": "".join(self.content) or None}
        if self.reasoning:
            message["reasoning_content"] = "".join(self.reasoning)
        if self.tool_calls:
            message["tool_calls"] = [self.tool_calls[i] for i in sorted(self.tool_calls)]
        result: dict[str, Any] = {"id": self.response_id, "object": "chat.completion", "model": self.model,
                                  "choices": [{"index": 0, "message": message,
                                               "finish_reason": self.finish_reason}]}
        if self.usage:
            result["usage"] = self.usage
        return result


@post("/v1/chat/completions", status_code=200)
async def chat_completions_v1(request: Request) -> Response[Any]:
    return await run_call(request, _CHAT)


@post("/chat/completions", status_code=200)
async def chat_completions(request: Request) -> Response[Any]:
    return await run_call(request, _CHAT)


async def _models(request: Request) -> Response[bytes]:
    gateway = gateway_of(request)
    ctx = await gateway.authenticate(request)
    data = []
    for name in _allowed(gateway, ctx):
        group = gateway.router.resolve(name)
        owner = group.deployments[0].custom_llm_provider if group is not None else "sluicegate"
        data.append({"id": name, "object": "model", "created": 0, "owned_by": owner})
    return json_response({"object": "list", "data": data})


async def _model(request: Request, model: str) -> Response[bytes]:
    """One model, as OpenAI's ``models.retrieve`` answers it; a model this key may not use is not found."""
    gateway = gateway_of(request)
    request_id = _request_id(request)
    ctx = await gateway.authenticate(request)
    group = gateway.router.resolve(model)
    if group is None or not _may_use(ctx, model):
        return _error_response(ApiError(404, f"model {model!r} does not exist or this key may not use it",
                                        param="model", code="model_not_found"), request_id)
    return json_response({"id": model, "object": "model", "created": 0,
                          "owned_by": group.deployments[0].custom_llm_provider}, headers={"x-request-id": request_id})


@get("/v1/models/{model:path}")
async def retrieve_model_v1(request: Request, model: str) -> Response[bytes]:
    return await _model(request, model.lstrip("/"))


@get("/models/{model:path}")
async def retrieve_model(request: Request, model: str) -> Response[bytes]:
    return await _model(request, model.lstrip("/"))


@get("/v1/models")
async def list_models_v1(request: Request) -> Response[bytes]:
    return await _models(request)


@get("/models")
async def list_models(request: Request) -> Response[bytes]:
    return await _models(request)
