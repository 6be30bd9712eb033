"""``POST /v1/messages`` (and ``/messages``): Anthropic's Messages API, for the Anthropic SDKs and Claude Code.

Every configured model answers here. A deployment whose upstream speaks the Messages API (Anthropic, Claude on
Vertex AI and Bedrock) gets the client's request natively, its answer and stream events relayed as they come; any
other is reached through its chat contract, translated both ways by
:mod:`sluicegate.providers.messages_adapter`. Auth (``x-api-key`` or ``Authorization: Bearer``), the key's and the
team's model restrictions, the router (retries, fallbacks, cooldowns) and the one log event per call
(``call_type`` ``anthropic_messages``) are the shared pipeline's pieces (:mod:`sluicegate.api.pipeline`); errors
on this route are in Anthropic's shape (``{"type": "error", "error": {"type", "message"}}``).

Attribution: Anthropic's ``metadata`` is its own field (only ``user_id``, the event's end user, which native
upstreams receive and translated ones get as ``user``); LiteLLM's request metadata (``tags``, ``session_id``,
``trace_name``...) goes in ``litellm_metadata`` on this route, as in LiteLLM, and never reaches the upstream.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import msgspec
from litestar import Request, Response, post
from litestar.exceptions import HTTPException
from litestar.response import Stream

from sluicegate.api.common import gateway_of
from sluicegate.api.pipeline import (Call, allowed_models, may_use, parse_model_body, request_id_of,
                                     request_options)
from sluicegate.attribution import request_attribution
from sluicegate.errors import ApiError
from sluicegate.providers.base import SSEDecoder
from sluicegate.providers.messages_adapter import (MessageAssembler, StreamTranslator, chat_request,
                                                   message_from_chat, openai_usage, sse_event)
from sluicegate.providers.upstream import UpstreamError, mock_completion, mock_stream
from sluicegate.router import RouterFailure

if TYPE_CHECKING:
    from sluicegate.gateway import Gateway
    from sluicegate.providers.models import Deployment
    from sluicegate.router import Group, RequestOptions

__all__ = ("check_body", "count_tokens", "count_tokens_v1", "error_body", "messages", "messages_v1")

_json = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder()

ERROR_TYPES = frozenset({"invalid_request_error", "authentication_error", "billing_error", "permission_error",
                         "not_found_error", "request_too_large", "rate_limit_error", "api_error", "timeout_error",
                         "overloaded_error"})
_STATUS_TYPES = {400: "invalid_request_error", 401: "authentication_error", 402: "billing_error",
                 403: "permission_error", 404: "not_found_error", 413: "request_too_large", 422:
                 "invalid_request_error", 429: "rate_limit_error", 504: "timeout_error", 529: "overloaded_error"}
_ROLES = ("user", "assistant")
_LOG_SKIP = frozenset({"system", "litellm_metadata"})
"""Not model parameters in the log event: the system prompt is logged as the first message (so redaction covers
it) and LiteLLM's metadata is the event's attribution."""


def error_type(exc: ApiError) -> str:
    """Anthropic's error type for ``exc``: its own when it is one of Anthropic's, else by HTTP status."""
    if exc.type in ERROR_TYPES:
        return exc.type
    if exc.type == "timeout":
        return "timeout_error"
    return _STATUS_TYPES.get(exc.status, "api_error" if exc.status >= 500 else "invalid_request_error")


def error_body(exc: ApiError) -> dict[str, Any]:
    """``exc`` in Anthropic's error shape (the field a 4xx names stays in the message)."""
    return {"type": "error", "error": {"type": error_type(exc), "message": exc.message}}


def _error_response(exc: ApiError, request_id: str) -> Response[bytes]:
    headers = {"x-request-id": request_id, "request-id": request_id}
    if exc.headers:
        headers.update(exc.headers)
    return Response(content=_json.encode({**error_body(exc), "request_id": request_id}), status_code=exc.status,
                    media_type="application/json", headers=headers)


def _blocks(content: Any, where: str) -> None:
    if isinstance(content, str):
        return
    if not isinstance(content, list):
        raise ApiError(400, f"{where}.content: expected a string or an array of content blocks", param="messages")
    for n, block in enumerate(content):
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            raise ApiError(400, f"{where}.content.{n}: expected an object with a string 'type'", param="messages")


def check_body(body: dict[str, Any]) -> None:
    """The Messages request's shape, as far as the gateway relies on it (a 400 naming the field otherwise); the
    upstream checks the rest."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages: required (a non-empty array of messages)", param="messages")
    for n, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in _ROLES or "content" not in message:
            raise ApiError(400, f"messages.{n}: expected {{role: user|assistant, content}}", param="messages")
        _blocks(message["content"], f"messages.{n}")
    max_tokens = body.get("max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise ApiError(400, "max_tokens: required (a positive integer)", param="max_tokens")
    if not isinstance(body.get("stream", False), bool):
        raise ApiError(400, "stream: expected a boolean", param="stream")
    system = body.get("system")
    if system is not None and not isinstance(system, str):
        _blocks(system, "system")
    tools = body.get("tools")
    if tools is not None and (not isinstance(tools, list) or not all(
            isinstance(t, dict) and isinstance(t.get("name"), str) for t in tools)):
        raise ApiError(400, "tools: expected an array of tools, each with a 'name'", param="tools")
    choice = body.get("tool_choice")
    if choice is not None and (not isinstance(choice, dict) or choice.get("type") not in ("auto", "any", "tool",
                                                                                          "none")):
        raise ApiError(400, "tool_choice: expected {type: auto|any|tool|none}", param="tool_choice")
    metadata = body.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise ApiError(400, "metadata: expected an object ({user_id})", param="metadata")


def _placeholder(block: dict[str, Any]) -> dict[str, Any]:
    """A base64 image or document block with its bytes replaced by their type and size (never in an event)."""
    source = block.get("source")
    if not isinstance(source, dict) or source.get("type") != "base64" or not isinstance(source.get("data"), str):
        return block
    data = source["data"]
    size = len(data) * 3 // 4 - data.count("=", max(len(data) - 2, 0))
    return {**block, "source": {**source, "data": f"[{source.get('media_type') or 'binary'}: {size} bytes]"}}


def _loggable(content: Any) -> Any:
    if not isinstance(content, list):
        return content
    result = []
    for block in content:
        if isinstance(block, dict):
            if block.get("type") in ("image", "document"):
                block = _placeholder(block)
            elif block.get("type") == "tool_result" and isinstance(block.get("content"), list):
                block = {**block, "content": _loggable(block["content"])}
        result.append(block)
    return result


def log_body(body: dict[str, Any]) -> dict[str, Any]:
    """What the log event shows of the request: the system prompt as the first message, base64 payloads as
    placeholders, LiteLLM's metadata left out."""
    messages: list[Any] = []
    system = body.get("system")
    if system:
        messages.append({"role": "system", "content": _loggable(system)})
    messages += [{**m, "content": _loggable(m.get("content"))} for m in body["messages"]]
    logged = {k: v for k, v in body.items() if k not in _LOG_SKIP}
    logged["messages"] = messages
    return logged


def _attribution(body: dict[str, Any], request: Request) -> Any:
    """LiteLLM's ``litellm_metadata`` (taken out of the body) and Anthropic's ``metadata.user_id`` (the end user).
    Anthropic's ``metadata`` keeps ``user_id`` only: LiteLLM's keys sent there are attribution too, never sent on."""
    litellm_metadata = body.pop("litellm_metadata", None)
    metadata = body.get("metadata")
    user_id = metadata.get("user_id") if isinstance(metadata, dict) else None
    if isinstance(metadata, dict) and set(metadata) - {"user_id"}:
        if litellm_metadata is None:
            litellm_metadata = {k: v for k, v in metadata.items() if k != "user_id"}
        if user_id is None:
            body.pop("metadata")
        else:
            body["metadata"] = {"user_id": user_id}
    return request_attribution(litellm_metadata, user_id, request.headers)


def _beta(request: Request) -> str | None:
    """The client's ``anthropic-beta`` features, for native upstreams. (``anthropic-version`` is not forwarded:
    each provider speaks the version it was written for, and the SDKs send whichever is theirs.)"""
    beta = request.headers.get("anthropic-beta")
    if beta is not None and (len(beta) > 1024 or not beta.isprintable() or not beta.isascii()):
        raise ApiError(400, "anthropic-beta: expected a comma-separated list of feature names",
                       param="anthropic-beta")
    return beta


async def _messages(request: Request) -> Response[Any]:
    gateway = gateway_of(request)
    rid = request_id_of(request)
    try:
        ctx = await gateway.authenticate(request)
        beta = _beta(request)
        try:
            raw = await request.body()
        except HTTPException as exc:  # too large, too slow: still an Anthropic-shaped answer on this route
            raise ApiError(exc.status_code, str(exc.detail or "request body refused"), param="body") from None
        body, model = parse_model_body(raw or b"")
        check_body(body)
        attribution = _attribution(body, request)
    except ApiError as exc:
        return _error_response(exc, rid)
    group = gateway.router.resolve(model)
    call = Call(ctx, group.deployments[0] if group else None, log_body(body), request, rid,
                call_type="anthropic_messages", attribution=attribution)
    stream = bool(body.get("stream"))
    try:
        if group is None:
            raise ApiError(400, f"model {model!r} is not configured; available: "
                                f"{', '.join(allowed_models(gateway, ctx))}", param="model", code="model_not_found")
        if not may_use(ctx, model):
            raise ApiError(403, f"this key may not use model {model!r}", type="permission_error", param="model",
                           code="403")
        options = request_options(gateway, ctx, body)
        if options is not None:  # the router's fields are neither sent upstream nor model parameters
            call.body.pop("num_retries", None)
            call.body.pop("fallbacks", None)
        await gateway.router.ready(group)
        await gateway.spend.check(ctx, await gateway.spend.end_user(attribution.end_user))  # budgets
        call.ticket = await gateway.limits.check(ctx, model)  # rate limits: settled with the call's event
        if stream:
            return await _stream(gateway, call, group, body, beta, options)

        async def attempt(deployment: Deployment) -> tuple[bytes, bool]:
            provider = deployment.provider
            if deployment.mock_response is None and provider.speaks_messages():
                return await provider.messages_bytes(body, rid, beta), True
            chat = chat_request(body, provider.supported_params)
            if deployment.mock_response is not None:
                return mock_completion(deployment, chat), False
            return await provider.complete_bytes(chat, None, rid), False

        try:
            outcome = await gateway.router.call(group, attempt, options=options,
                                                tokens=gateway.router.estimate_tokens(body["messages"]))
        except RouterFailure as failure:
            call.deployment = failure.deployment or call.deployment
            call.attempts = failure.attempts
            raise failure.error from None
        call.deployment = outcome.deployment
        call.attempts = outcome.attempts
        content, native = outcome.result
        try:
            parsed = _decoder.decode(content)
        except msgspec.DecodeError:
            raise UpstreamError(502, "upstream returned a body that is not JSON", type="upstream_error",
                                code="502") from None
        if not isinstance(parsed, dict):
            raise UpstreamError(502, "upstream returned JSON that is not an object", type="upstream_error",
                                code="502")
    except ApiError as exc:
        gateway.record(call.event(status="failure", error=exc, stream=stream), ctx)
        return _error_response(exc, rid)
    if native:
        message, usage = parsed, openai_usage(parsed.get("usage"))
    else:
        usage = parsed.get("usage") if isinstance(parsed.get("usage"), dict) else None
        message = message_from_chat(parsed, model)
        content = _json.encode(message)
    outcome.finish(int((usage or {}).get("total_tokens") or 0))
    gateway.record(call.event(status="success", response=message, usage=usage), ctx)
    return Response(content=content, media_type="application/json",
                    headers={"x-request-id": rid, "request-id": rid, **call.limit_headers()})


async def _stream(gateway: Gateway, call: Call, group: Group, body: dict[str, Any], beta: str | None,
                  options: RequestOptions | None) -> Response[Any]:
    rid = call.request_id

    async def attempt(deployment: Deployment) -> tuple[Any, bool]:
        # only the opening is retried: once the upstream accepted, its events go to the client as they come
        provider = deployment.provider
        if deployment.mock_response is None and provider.speaks_messages():
            return await provider.open_messages_stream(body, rid, beta), True
        chat = chat_request(body, provider.supported_params)
        if deployment.mock_response is not None:
            return _MockStream(mock_stream(deployment, chat)), False
        return await provider.open_stream(chat, None, rid), False

    try:
        outcome = await gateway.router.call(group, attempt, options=options, stream=True,
                                            tokens=gateway.router.estimate_tokens(body["messages"]))
    except RouterFailure as failure:
        call.deployment = failure.deployment or call.deployment
        call.attempts = failure.attempts
        raise failure.error from None
    call.deployment = outcome.deployment
    call.attempts = outcome.attempts
    upstream, native = outcome.result
    model = str(body["model"])

    async def relay() -> AsyncIterator[bytes]:
        assembler = MessageAssembler()
        decoder = SSEDecoder()
        translator = None if native else StreamTranslator(model)
        chat_usage: dict[str, Any] | None = None
        first_at: float | None = None
        error: str | None = None
        done = False
        try:
            async for data in upstream.aiter_raw():
                if first_at is None:
                    first_at = time.time()
                if native:
                    yield data  # Anthropic's own events, relayed as they arrive
                    for _, payload in decoder.feed(data):
                        assembler.feed(payload)
                    continue
                assert translator is not None
                frames = []
                for _, payload in decoder.feed(data):
                    if payload.strip() == b"[DONE]":
                        done = True
                        continue
                    try:
                        chunk = _decoder.decode(payload)
                    except msgspec.DecodeError:
                        continue
                    if not isinstance(chunk, dict):
                        continue
                    if "error" in chunk:  # the provider's error frame mid-stream
                        failure = chunk["error"]
                        message = str(failure.get("message") if isinstance(failure, dict) else failure)
                        events = [{"type": "error", "error": {"type": "api_error", "message": message}}]
                    else:
                        events = translator.feed(chunk)
                    for event in events:
                        assembler.feed_event(event)
                        frames.append(sse_event(event))
                    if translator.usage is not None:
                        chat_usage = translator.usage
                if frames:
                    yield b"".join(frames)
                if assembler.error is not None:
                    break
            if translator is not None and assembler.error is None:
                if not done:
                    raise UpstreamError(502, "upstream stream ended before [DONE]", type="upstream_error",
                                        code="502")
                ending = translator.end()
                for event in ending:
                    assembler.feed_event(event)
                yield b"".join(sse_event(e) for e in ending)
            if assembler.error is not None:
                error = assembler.error
            elif native and not assembler.stopped:
                error = "upstream stream ended before message_stop"
        except Exception as exc:
            if isinstance(exc, BaseExceptionGroup):
                error = "client disconnected mid-stream"
                raise
            # The upstream broke after events reached the client: not retried; the stream ends with Anthropic's
            # error event, which the SDKs raise as an APIError.
            reason = exc.message if isinstance(exc, ApiError) else f"stream interrupted: {type(exc).__name__}"
            error = reason
            kind = error_type(exc) if isinstance(exc, ApiError) else "api_error"
            yield sse_event({"type": "error", "error": {"type": kind, "message": f"upstream {reason}"}})
        except BaseException:  # client gone (cancelled/closed)
            error = "client disconnected mid-stream"
            raise
        finally:
            await upstream.aclose()
            usage = openai_usage(assembler.usage) if native else (chat_usage or getattr(upstream, "usage", None))
            usage = usage if isinstance(usage, dict) else None
            outcome.finish(int((usage or {}).get("total_tokens") or 0))
            event = call.event(status="failure" if error else "success", response=assembler.result(), usage=usage,
                               error_str=error, first_token_at=first_at, stream=True)
            gateway.record(event, call.ctx)

    return Stream(relay(), media_type="text/event-stream",
                  headers={"x-request-id": rid, "request-id": rid, "cache-control": "no-cache"})


async def _count_tokens(request: Request) -> Response[Any]:
    """``/v1/messages/count_tokens``: asked of the model's upstream where it has the endpoint (Anthropic), a 400
    naming the provider elsewhere. Counting is free: no router retries, no log event."""
    gateway = gateway_of(request)
    rid = request_id_of(request)
    try:
        ctx = await gateway.authenticate(request)
        beta = _beta(request)
        body, model = parse_model_body(await request.body() or b"")
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ApiError(400, "messages: required (a non-empty array of messages)", param="messages")
        body.pop("litellm_metadata", None)
        group = gateway.router.resolve(model)
        if group is None:
            raise ApiError(400, f"model {model!r} is not configured; available: "
                                f"{', '.join(allowed_models(gateway, ctx))}", param="model", code="model_not_found")
        if not may_use(ctx, model):
            raise ApiError(403, f"this key may not use model {model!r}", type="permission_error", param="model",
                           code="403")
        await gateway.router.ready(group)
        deployment = group.deployments[0]
        content = await deployment.provider.count_tokens_bytes(body, rid, beta)
    except ApiError as exc:
        return _error_response(exc, rid)
    return Response(content=content, media_type="application/json", headers={"x-request-id": rid, "request-id": rid})


class _MockStream:
    """A ``mock_response`` model's chat stream with the ``aiter_raw``/``aclose`` of an upstream answer."""

    __slots__ = ("_chunks",)

    def __init__(self, chunks: AsyncIterator[bytes]) -> None:
        self._chunks = chunks

    def aiter_raw(self) -> AsyncIterator[bytes]:
        return self._chunks

    async def aclose(self) -> None:
        await self._chunks.aclose()  # type: ignore[attr-defined]


@post("/v1/messages", status_code=200)
async def messages_v1(request: Request) -> Response[Any]:
    return await _messages(request)


@post("/messages", status_code=200)
async def messages(request: Request) -> Response[Any]:
    return await _messages(request)


@post("/v1/messages/count_tokens", status_code=200)
async def count_tokens_v1(request: Request) -> Response[Any]:
    return await _count_tokens(request)


@post("/messages/count_tokens", status_code=200)
async def count_tokens(request: Request) -> Response[Any]:
    return await _count_tokens(request)
