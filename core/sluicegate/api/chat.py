"""The OpenAI-compatible API: ``/v1/chat/completions`` (plain and SSE) and ``/v1/models``.

The request path: authenticate from cache, ask the model's provider for the answer (an OpenAI-compatible upstream
gets the client's bytes as they came; others are translated by their provider), answer, then build one
:class:`LogEvent` and hand it to the dispatcher (``submit`` never awaits a sink). Nothing here knows which
provider is behind a model.
"""

from __future__ import annotations

import random
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import msgspec
from litestar import Request, Response, get, post
from litestar.response import Stream

from sluicegate.api.common import decode_json, gateway_of, json_response
from sluicegate.cache import parse_controls, sse_chunks
from sluicegate.errors import ApiError
from sluicegate.events import LogEvent, LogMetadata
from sluicegate.providers.upstream import UpstreamError, mock_completion, mock_stream

if TYPE_CHECKING:
    from sluicegate.auth import AuthContext
    from sluicegate.cache import CachedAnswer, CacheLookup
    from sluicegate.gateway import Gateway
    from sluicegate.providers.models import Deployment

__all__ = ("chat_completions", "chat_completions_v1", "list_models", "list_models_v1")

_decoder = msgspec.json.Decoder()
_rng = random.Random()  # seeded from os.urandom once


_MODEL_PARAMS_SKIP = frozenset({"model", "messages", "stream", "stream_options", "user", "metadata", "tools",
                                "functions", "cache", "response_format"})


class _Call:
    """Facts of one request, gathered for its log event."""

    __slots__ = ("ctx", "deployment", "body", "raw", "request_id", "event_id", "start", "ip", "user_agent",
                 "traceparent")

    def __init__(self, ctx: AuthContext, deployment: Deployment | None, body: dict[str, Any], request: Request,
                 request_id: str) -> None:
        self.ctx = ctx
        self.deployment = deployment
        self.body = body
        self.raw: bytes | None = None
        self.request_id = request_id
        self.event_id = _random_id()
        self.start = time.time()
        self.ip = request.client.host if request.client else None
        self.user_agent = request.headers.get("user-agent")
        self.traceparent = request.headers.get("traceparent")

    def event(self, *, status: str, response: Any = None, usage: dict[str, Any] | None = None,
              error: ApiError | None = None, error_str: str | None = None, response_id: str | None = None,
              first_token_at: float | None = None, stream: bool = False) -> LogEvent:
        end = time.time()
        usage = usage or {}
        prompt = int(usage.get("prompt_tokens") or 0)
        completion = int(usage.get("completion_tokens") or 0)
        deployment = self.deployment
        key = self.ctx.key
        team = self.ctx.team
        error_information = None
        if error is not None:
            error_information = {"error_class": type(error).__name__, "status_code": error.status,
                                 "error_code": str(error.code), "error_type": error.type}
        return LogEvent(
            # One fresh id per request (LiteLLM's litellm_call_id), never the upstream's response id nor the
            # client's x-request-id: sinks deduplicate on it, so it must not repeat across requests.
            id=self.event_id,
            trace_id=self.request_id,
            call_type="completion" if not stream else "completion",
            stream=stream,
            status=status,  # type: ignore[arg-type]
            model=deployment.upstream_model if deployment else str(self.body.get("model", "")),
            model_id=deployment.model_name if deployment else None,
            model_group=deployment.model_name if deployment else str(self.body.get("model", "")),
            api_base=deployment.api_base if deployment else None,
            custom_llm_provider=deployment.custom_llm_provider if deployment else None,
            prompt_tokens=prompt, completion_tokens=completion,
            total_tokens=int(usage.get("total_tokens") or prompt + completion),
            response_cost=deployment.cost(usage, self.start) if deployment and status == "success" else 0.0,
            startTime=self.start, endTime=end, completionStartTime=first_token_at or (end if response else None),
            response_time=end - self.start,
            messages=self.body.get("messages"), response=response,
            error_str=error_str or (error.message if error else None), error_information=error_information,
            model_parameters={k: v for k, v in self.body.items() if k not in _MODEL_PARAMS_SKIP},
            metadata=LogMetadata(
                user_api_key_hash=self.ctx.token_id if key else None,
                user_api_key_alias=key.key_alias if key else None,
                user_api_key_team_id=key.team_id if key else None,
                user_api_key_team_alias=team.team_alias if team else None,
                requester_ip_address=self.ip, user_agent=self.user_agent, request_id=self.request_id,
                traceparent=self.traceparent),
        )


def _request_id(request: Request) -> str:
    given = request.headers.get("x-request-id")
    if given and len(given) <= 128 and given.isprintable():
        return given
    return _random_id()


def _random_id() -> str:
    """128 random bits as 32 hex digits. Ids, not secrets: the PRNG avoids a getrandom syscall per request
    (os.urandom showed as 5 % of the loop in bench/)."""
    return f"{_rng.getrandbits(128):032x}"


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
    except ApiError as exc:
        return _error_response(exc, request_id)
    deployment = gateway.models.get(model)
    call = _Call(ctx, deployment, body, request, request_id)
    call.raw = raw
    try:
        if deployment is None:
            raise ApiError(400, f"model {model!r} is not configured; available: {', '.join(_allowed(gateway, ctx))}",
                           param="model", code="model_not_found")
        if ctx.key is not None and ctx.key.models and model not in ctx.key.models:
            raise ApiError(403, f"this key may not use model {model!r}", type="permission_error",
                           param="model", code="403")
        # -- response cache (sluicegate.cache): look up before the upstream call; nothing at all when off
        lookup = None
        if gateway.cache.enabled_for(ctx):
            lookup = gateway.cache.lookup(ctx, deployment, body, cache_controls)
            cached = await lookup.get()
            if cached is not None:
                return _cache_hit(gateway, call, lookup, cached, stream)
        # -- end response cache
        if stream:
            return await _stream(gateway, call, deployment, lookup)
        if deployment.mock_response is not None:
            content = mock_completion(deployment, body)
        else:
            content = await deployment.provider.complete_bytes(body, call.raw, request_id)
    except ApiError as exc:
        gateway.dispatcher.submit(call.event(status="failure", error=exc, stream=stream), ctx.callbacks)
        return _error_response(exc, request_id)
    try:
        parsed = _decoder.decode(content)
    except msgspec.DecodeError:
        exc = UpstreamError(502, "upstream returned a body that is not JSON", type="upstream_error", code="502")
        gateway.dispatcher.submit(call.event(status="failure", error=exc), ctx.callbacks)
        return _error_response(exc, request_id)
    usage = parsed.get("usage") if isinstance(parsed, dict) else None
    event = call.event(status="success", response=parsed, usage=usage if isinstance(usage, dict) else None,
                       response_id=parsed.get("id") if isinstance(parsed, dict) else None)
    headers = {"x-request-id": request_id}
    if lookup is not None:  # -- response cache: store the answer, mark the event and the response
        lookup.mark(event, hit=False)
        headers.update(lookup.headers(hit=False))
        await lookup.put(content, parsed)
    gateway.dispatcher.submit(event, ctx.callbacks)
    return Response(content=content, media_type="application/json", headers=headers)


def _cache_hit(gateway: Gateway, call: _Call, lookup: CacheLookup, cached: CachedAnswer,
               stream: bool) -> Response[bytes]:
    """Answer from the response cache: logged like any request (free, ``cache_hit``), marked by a header."""
    parsed = cached.parsed
    usage = parsed.get("usage")
    event = call.event(status="success", response=parsed, usage=usage if isinstance(usage, dict) else None,
                       response_id=parsed.get("id"), stream=stream)
    lookup.mark(event, hit=True)
    gateway.dispatcher.submit(event, call.ctx.callbacks)
    headers = {"x-request-id": call.request_id, **lookup.headers(hit=True)}
    if not stream:
        return Response(content=cached.content, media_type="application/json", headers=headers)
    options = call.body.get("stream_options")
    frames = sse_chunks(parsed, include_usage=isinstance(options, dict) and bool(options.get("include_usage")))
    return Response(content=b"".join(frames), media_type="text/event-stream",
                    headers={**headers, "cache-control": "no-cache"})


def _allowed(gateway: Gateway, ctx: AuthContext) -> list[str]:
    names = gateway.models.names()
    if ctx.key is not None and ctx.key.models:
        names = [n for n in names if n in ctx.key.models]
    return names


def _error_response(exc: ApiError, request_id: str) -> Response[bytes]:
    return Response(content=exc.body(), status_code=exc.status, media_type="application/json",
                    headers={"x-request-id": request_id})


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


async def _stream(gateway: Gateway, call: _Call, deployment: Deployment,
                  lookup: CacheLookup | None = None) -> Response[Any]:
    body = call.body
    if deployment.mock_response is not None:
        source: AsyncIterator[bytes] = mock_stream(deployment, body)
        upstream_response = None
    else:
        upstream_response = await deployment.provider.open_stream(body, call.raw, call.request_id)
        source = upstream_response.aiter_raw()

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
        except BaseException as exc:  # client gone (cancelled/closed) or upstream broke mid-stream
            error = ("client disconnected mid-stream" if isinstance(exc, GeneratorExit | BaseExceptionGroup)
                     or type(exc).__name__ == "CancelledError" else f"stream interrupted: {type(exc).__name__}")
            raise
        finally:
            if upstream_response is not None:
                await upstream_response.aclose()
            # a translating provider knows the usage even when the client did not ask for it
            usage = state.usage or getattr(upstream_response, "usage", None)
            event = call.event(status="failure" if error else "success", response=state.response(),
                               usage=usage, error_str=error, response_id=state.response_id,
                               first_token_at=state.first_token_at, stream=True)
            if lookup is not None and error is None:  # -- response cache: store the assembled answer
                lookup.mark(event, hit=False)
                if body.get("n") in (None, 1):  # the assembler keeps one choice
                    await lookup.put_completion(state.response())
            gateway.dispatcher.submit(event, call.ctx.callbacks)

    headers = {"x-request-id": call.request_id, "cache-control": "no-cache"}
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
    return json_response({"object": "list", "data": [
        {"id": name, "object": "model", "created": 0,
         "owned_by": gateway.models.get(name).custom_llm_provider}  # type: ignore[union-attr]
        for name in _allowed(gateway, ctx)]})


@get("/v1/models")
async def list_models_v1(request: Request) -> Response[bytes]:
    return await _models(request)


@get("/models")
async def list_models(request: Request) -> Response[bytes]:
    return await _models(request)
