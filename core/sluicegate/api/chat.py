"""The OpenAI-compatible API: ``/v1/chat/completions`` (plain and SSE) and ``/v1/models``.

The request path: authenticate from cache, ask the model's provider for the answer (an OpenAI-compatible upstream
gets the client's bytes as they came; others are translated by their provider), answer, then build one
:class:`LogEvent` and hand it to the dispatcher (``submit`` never awaits a sink). Nothing here knows which
provider is behind a model.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import msgspec
from litestar import Request, Response, get, post
from litestar.response import Stream

from sluicegate.api.common import decode_json, gateway_of, json_response
from sluicegate.cache import parse_controls, sse_chunks
from sluicegate.errors import ApiError
from sluicegate.api.pipeline import Call as _Call
from sluicegate.api.pipeline import allowed_models as _allowed
from sluicegate.api.pipeline import error_response as _error_response
from sluicegate.api.pipeline import may_use as _may_use
from sluicegate.api.pipeline import request_id_of as _request_id
from sluicegate.api.pipeline import request_options as _request_options
from sluicegate.api.pipeline import take_attribution
from sluicegate.providers.upstream import UpstreamError, mock_completion, mock_stream
from sluicegate.router import RequestOptions, RouterFailure

if TYPE_CHECKING:
    from sluicegate.auth import AuthContext
    from sluicegate.cache import CachedAnswer, CacheLookup
    from sluicegate.gateway import Gateway
    from sluicegate.providers.models import Deployment
    from sluicegate.router import Group

__all__ = ("chat_completions", "chat_completions_v1", "list_models", "list_models_v1", "retrieve_model",
           "retrieve_model_v1")

_decoder = msgspec.json.Decoder()

async def _chat(request: Request) -> Response[Any]:
    gateway = gateway_of(request)
    request_id = _request_id(request)
    try:
        ctx = await gateway.authenticate(request)
        raw: bytes | None = await request.body()
        body = decode_json(raw)
        if not isinstance(body, dict):
            raise ApiError(400, "request body must be a JSON object", param="body")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise ApiError(400, "model: required (a string naming a configured model)", param="model")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ApiError(400, "messages: required (a non-empty array of messages)", param="messages")
        stream = body.get("stream", False)
        if not isinstance(stream, bool):
            raise ApiError(400, "stream: expected a boolean", param="stream")
        cache_controls = body.pop("cache", None)  # LiteLLM's per-request cache controls; never sent upstream
        if cache_controls is not None:
            parse_controls(cache_controls)
            raw = None  # the body changed: re-encode it for the upstream
        attribution, metadata = take_attribution(body, request)
        if metadata is not None:
            raw = None
    except ApiError as exc:
        return _error_response(exc, request_id)
    group = gateway.router.resolve(model)
    call = _Call(ctx, group.deployments[0] if group else None, body, request, request_id,
                 attribution=attribution, metadata=metadata)
    call.raw = raw
    try:
        if group is None:
            raise ApiError(400, f"model {model!r} is not configured; available: {', '.join(_allowed(gateway, ctx))}",
                           param="model", code="model_not_found")
        if not _may_use(ctx, model):
            raise ApiError(403, f"this key may not use model {model!r}", type="permission_error",
                           param="model", code="403")
        options = _request_options(gateway, ctx, body)
        if options is not None:
            call.raw = None  # the body changed: re-encode it for the upstream
        await gateway.spend.check(ctx, await gateway.spend.end_user(attribution.end_user))  # budgets
        call.ticket = await gateway.limits.check(ctx, model)  # rate limits: settled with the call's event
        await gateway.router.ready(group)
        # -- response cache (sluicegate.cache): look up before the upstream call; nothing at all when off
        lookup = None
        if gateway.cache.enabled_for(ctx):
            lookup = gateway.cache.lookup(ctx, group.deployments[0], body, cache_controls)
            cached = await lookup.get()
            if cached is not None:
                return _cache_hit(gateway, call, lookup, cached, stream)
        # -- end response cache
        if stream:
            return await _stream(gateway, call, group, options, lookup)

        async def attempt(deployment: Deployment) -> bytes:
            if deployment.mock_response is not None:
                return mock_completion(deployment, body)
            return await deployment.provider.complete_bytes(*call.upstream_body(deployment), request_id)

        try:
            outcome = await gateway.router.call(group, attempt, options=options,
                                                tokens=gateway.router.estimate_tokens(body.get("messages")))
        except RouterFailure as failure:
            call.deployment = failure.deployment or call.deployment
            call.attempts = failure.attempts
            raise failure.error from None
        call.deployment = outcome.deployment
        call.attempts = outcome.attempts
        content = outcome.result
    except ApiError as exc:
        gateway.record(call.event(status="failure", error=exc, stream=stream), ctx)
        return _error_response(exc, request_id)
    try:
        parsed = _decoder.decode(content)
    except msgspec.DecodeError:
        exc = UpstreamError(502, "upstream returned a body that is not JSON", type="upstream_error", code="502")
        gateway.record(call.event(status="failure", error=exc), ctx)
        return _error_response(exc, request_id)
    usage = parsed.get("usage") if isinstance(parsed, dict) else None
    usage = usage if isinstance(usage, dict) else None
    outcome.finish(int((usage or {}).get("total_tokens") or 0))
    event = call.event(status="success", response=parsed, usage=usage,
                       response_id=parsed.get("id") if isinstance(parsed, dict) else None)
    headers = {"x-request-id": request_id, **call.limit_headers()}
    if lookup is not None:  # -- response cache: store the answer, mark the event and the response
        lookup.mark(event, hit=False)
        headers.update(lookup.headers(hit=False))
        await lookup.put(content, parsed)
    gateway.record(event, ctx)
    return Response(content=content, media_type="application/json", headers=headers)


def _cache_hit(gateway: Gateway, call: _Call, lookup: CacheLookup, cached: CachedAnswer,
               stream: bool) -> Response[bytes]:
    """Answer from the response cache: logged like any request (free, ``cache_hit``), marked by a header."""
    parsed = cached.parsed
    usage = parsed.get("usage")
    event = call.event(status="success", response=parsed, usage=usage if isinstance(usage, dict) else None,
                       response_id=parsed.get("id"), stream=stream)
    lookup.mark(event, hit=True)
    gateway.record(event, call.ctx)
    headers = {"x-request-id": call.request_id, **lookup.headers(hit=True), **call.limit_headers()}
    if not stream:
        return Response(content=cached.content, media_type="application/json", headers=headers)
    options = call.body.get("stream_options")
    frames = sse_chunks(parsed, include_usage=isinstance(options, dict) and bool(options.get("include_usage")))
    return Response(content=b"".join(frames), media_type="text/event-stream",
                    headers={**headers, "cache-control": "no-cache"})


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


async def _stream(gateway: Gateway, call: _Call, group: Group, options: RequestOptions | None,
                  lookup: CacheLookup | None = None) -> Response[Any]:
    body = call.body

    async def attempt(deployment: Deployment) -> tuple[AsyncIterator[bytes], Any]:
        # only the opening is retried: once the upstream accepted, its bytes go to the client as they come
        if deployment.mock_response is not None:
            return mock_stream(deployment, body), None
        response = await deployment.provider.open_stream(*call.upstream_body(deployment), call.request_id)
        return response.aiter_raw(), response

    try:
        outcome = await gateway.router.call(group, attempt, options=options, stream=True,
                                            tokens=gateway.router.estimate_tokens(body.get("messages")))
    except RouterFailure as failure:
        call.deployment = failure.deployment or call.deployment
        call.attempts = failure.attempts
        raise failure.error from None
    call.deployment = outcome.deployment
    call.attempts = outcome.attempts
    source, upstream_response = outcome.result

    async def relay() -> AsyncIterator[bytes]:
        state = _StreamState()
        error: str | None = None
        try:
            async for data in source:
                state.feed(data)
                yield data
            if state.error is not None:
                error = state.error
            elif not state.done:
                error = "upstream stream ended before [DONE]"
        except Exception as exc:
            if isinstance(exc, BaseExceptionGroup):
                error = "client disconnected mid-stream"
                raise
            # The upstream broke after bytes reached the client: not retried (the client would get two answers
            # spliced); the stream ends with an OpenAI error frame, which the SDKs raise as an APIError.
            error = f"stream interrupted: {type(exc).__name__}"
            yield b"data: " + UpstreamError(502, f"upstream stream interrupted: {type(exc).__name__}",
                                            type="upstream_error", code="502").body() + b"\n\n"
        except BaseException:  # client gone (cancelled/closed)
            error = "client disconnected mid-stream"
            raise
        finally:
            if upstream_response is not None:
                await upstream_response.aclose()
            # a translating provider knows the usage even when the client did not ask for it
            usage = state.usage or getattr(upstream_response, "usage", None)
            outcome.finish(int((usage or {}).get("total_tokens") or 0) if isinstance(usage, dict) else 0)
            event = call.event(status="failure" if error else "success", response=state.response(),
                               usage=usage, error_str=error, response_id=state.response_id,
                               first_token_at=state.first_token_at, stream=True)
            if lookup is not None and error is None:  # -- response cache: store the assembled answer
                lookup.mark(event, hit=False)
                if body.get("n") in (None, 1):  # the assembler keeps one choice
                    await lookup.put_completion(state.response())
            gateway.record(event, call.ctx)

    headers = {"x-request-id": call.request_id, "cache-control": "no-cache", **call.limit_headers()}
    if lookup is not None:
        headers.update(lookup.headers(hit=False))
    return Stream(relay(), media_type="text/event-stream", headers=headers)


@post("/v1/chat/completions", status_code=200)
async def chat_completions_v1(request: Request) -> Response[Any]:
    return await _chat(request)


@post("/chat/completions", status_code=200)
async def chat_completions(request: Request) -> Response[Any]:
    return await _chat(request)


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
