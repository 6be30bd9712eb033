"""``POST /v1/messages`` (and ``/messages``): Anthropic's Messages API, for the Anthropic SDKs and Claude Code.

Every configured model answers here. A deployment whose upstream speaks the Messages API (Anthropic, Claude on
Vertex AI and Bedrock) gets the client's request natively, its answer and stream events relayed as they come; any
other is reached through its chat contract, translated both ways by
:mod:`sluicegate.providers.messages_adapter`. Auth (``x-api-key`` or ``Authorization: Bearer``), the key's and the
team's model restrictions, the router (retries, fallbacks, cooldowns) and the one log event per call
(``call_type`` ``anthropic_messages``) are the shared pipeline's: the route is the :class:`Messages` endpoint of
:func:`sluicegate.api.pipeline.run_call`, which adds only what differs (the Messages body, the two answer paths,
the stream events). Errors on this route are in Anthropic's shape (``{"type": "error", "error": {"type",
"message"}}``).

Attribution: Anthropic's ``metadata`` is its own field (only ``user_id``, the event's end user, which native
upstreams receive and translated ones get as ``user``); LiteLLM's request metadata (``tags``, ``session_id``,
``trace_name``...) goes in ``litellm_metadata`` on this route, as in LiteLLM, and never reaches the upstream.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import msgspec
from litestar import Request, Response, post
from litestar.exceptions import HTTPException

from sluicegate.api.common import gateway_of
from sluicegate.api.pipeline import (MODEL_PARAMS_SKIP, Assembler, Call, Endpoint, MockSource, allowed_models,
                                     may_use, parse_model_body, request_id_of, run_call)
from sluicegate.attribution import Attribution, request_attribution
from sluicegate.errors import ApiError
from sluicegate.providers.base import SSEDecoder
from sluicegate.providers.messages_adapter import (MessageAssembler, StreamTranslator, chat_request,
                                                   message_from_chat, openai_usage, sse_event)
from sluicegate.providers.upstream import UpstreamError, mock_completion, mock_stream

if TYPE_CHECKING:
    from sluicegate.providers.models import Deployment

__all__ = ("MESSAGES", "Messages", "check_body", "count_tokens", "count_tokens_v1", "error_body", "log_body",
           "log_messages", "messages", "messages_v1")

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


def log_messages(body: dict[str, Any]) -> list[Any]:
    """The event's ``messages``: the system prompt as the first message (so redaction covers it), base64 payloads
    as placeholders."""
    messages: list[Any] = []
    system = body.get("system")
    if system:
        messages.append({"role": "system", "content": _loggable(system)})
    messages += [{**m, "content": _loggable(m.get("content"))} for m in body["messages"]]
    return messages


def log_body(body: dict[str, Any]) -> dict[str, Any]:
    """What the log event shows of the request: :func:`log_messages`, LiteLLM's metadata left out."""
    logged = {k: v for k, v in body.items() if k not in _LOG_SKIP}
    logged["messages"] = log_messages(body)
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


class _State:
    """One Messages request's own facts: the client's ``anthropic-beta`` and, for a translated answer, the chat
    usage (OpenAI's names, as the chat upstream counted them)."""

    __slots__ = ("beta", "native", "usage")

    def __init__(self, beta: str | None) -> None:
        self.beta = beta
        self.native = True
        """Whether the stream being relayed is the upstream's own Anthropic events."""
        self.usage: dict[str, Any] | None = None


class _Translated:
    """A chat stream (an upstream's, or a ``mock_response`` model's) relayed as Anthropic's stream events,
    translated chunk by chunk as they arrive; its ``usage`` is the chat usage for the event."""

    __slots__ = ("_decoder", "_source", "_translator", "headers", "usage")

    def __init__(self, source: Any, model: str) -> None:
        self._source = source
        self._translator = StreamTranslator(model)
        self._decoder = SSEDecoder()
        self.headers = None
        self.usage: dict[str, Any] | None = None

    async def aiter_raw(self) -> AsyncIterator[bytes]:
        translator = self._translator
        done = False
        async for data in self._source.aiter_raw():
            frames = []
            for _, payload in self._decoder.feed(data):
                if payload.strip() == b"[DONE]":
                    done = True
                    continue
                try:
                    chunk = _decoder.decode(payload)
                except msgspec.DecodeError:
                    continue
                if not isinstance(chunk, dict):
                    continue
                if "error" in chunk:  # the provider's error frame mid-stream ends the answer with Anthropic's
                    failure = chunk["error"]
                    message = str(failure.get("message") if isinstance(failure, dict) else failure)
                    frames.append(sse_event({"type": "error", "error": {"type": "api_error", "message": message}}))
                    yield b"".join(frames)
                    return
                frames += [sse_event(event) for event in translator.feed(chunk)]
                if translator.usage is not None:
                    self.usage = translator.usage
            if frames:
                yield b"".join(frames)
        if not done:
            raise UpstreamError(502, "upstream stream ended before [DONE]", type="upstream_error", code="502")
        if self.usage is None:
            self.usage = getattr(self._source, "usage", None)
        yield b"".join(sse_event(event) for event in translator.end())

    async def aclose(self) -> None:
        await self._source.aclose()


class _Assembler(Assembler):
    """The Anthropic events relayed to the client, assembled into the message the event logs."""

    __slots__ = ("_decoder", "_message", "_native")

    def __init__(self, native: bool) -> None:
        super().__init__()
        self.done = False
        self._native = native
        self._decoder = SSEDecoder()
        self._message = MessageAssembler()

    def feed(self, data: bytes) -> None:
        super().feed(data)
        message = self._message
        for _, payload in self._decoder.feed(data):
            message.feed(payload)
        self.error = message.error
        self.done = message.stopped

    def result(self) -> tuple[Any, dict[str, Any] | None]:
        # a translated stream's usage is the chat upstream's (the source's ``usage``), in OpenAI's names already
        return self._message.result(), openai_usage(self._message.usage) if self._native else None


class Messages(Endpoint):
    """``/v1/messages`` on the call pipeline: native to upstreams that speak the Messages API, translated through
    the chat contract to any other, with Anthropic's error shape and stream events either way."""

    name = "messages"
    call_type = "anthropic_messages"
    input_field = "messages"
    incomplete = "upstream stream ended before message_stop"
    params_skip = MODEL_PARAMS_SKIP | _LOG_SKIP

    def state(self, request: Request) -> _State:
        return _State(_beta(request))

    async def read(self, request: Request) -> tuple[dict[str, Any], bytes | None, Any]:
        try:
            raw = await request.body()
        except HTTPException as exc:  # too large, too slow: still an Anthropic-shaped answer on this route
            raise ApiError(exc.status_code, str(exc.detail or "request body refused"), param="body") from None
        body, _ = parse_model_body(raw or b"")
        return body, None, None

    def check(self, body: dict[str, Any]) -> None:
        check_body(body)

    def attribution(self, body: dict[str, Any], request: Request) -> tuple[Attribution, dict[str, Any] | None]:
        return _attribution(body, request), None

    def logged_input(self, body: dict[str, Any]) -> Any:
        return log_messages(body)

    def error_response(self, exc: ApiError, request_id: str) -> Response[bytes]:
        return _error_response(exc, request_id)

    def headers(self, request_id: str) -> dict[str, str]:
        return {"x-request-id": request_id, "request-id": request_id}

    def tokens(self, router: Any, body: dict[str, Any]) -> int:
        return router.estimate_tokens(body["messages"])

    def media_type(self, body: dict[str, Any], headers: dict[str, str] | None = None) -> str:
        return "text/event-stream" if body.get("stream") else "application/json"

    async def answer(self, call: Call, deployment: Deployment) -> bytes:
        provider = deployment.provider
        call.state.usage = call.answer = None  # this attempt's, not an earlier one's
        if deployment.mock_response is None and provider.speaks_messages():
            return await provider.messages_bytes(call.body, call.request_id, call.state.beta)
        chat = chat_request(call.body, provider.supported_params)
        if deployment.mock_response is not None:
            content = mock_completion(deployment, chat)
        else:
            content = await provider.complete_bytes(chat, None, call.request_id)
        try:
            parsed = _decoder.decode(content)
        except msgspec.DecodeError:
            raise UpstreamError(502, "upstream returned a body that is not JSON", type="upstream_error",
                                code="502") from None
        if not isinstance(parsed, dict):
            raise UpstreamError(502, "upstream returned JSON that is not an object", type="upstream_error",
                                code="502")
        usage = parsed.get("usage")
        call.state.usage = usage if isinstance(usage, dict) else {}  # {}: translated, whatever the upstream said
        call.answer = message = message_from_chat(parsed, str(call.body["model"]))
        return _json.encode(message)

    def logged(self, call: Call, parsed: Any) -> tuple[Any, dict[str, Any] | None]:
        if not isinstance(parsed, dict):
            raise UpstreamError(502, "upstream returned JSON that is not an object", type="upstream_error",
                                code="502")
        translated = call.state.usage  # set by :meth:`answer` for the attempt that answered
        if translated is not None:
            return parsed, translated or None
        return parsed, openai_usage(parsed.get("usage"))

    async def open(self, call: Call, deployment: Deployment) -> Any:
        # only the opening is retried: once the upstream accepted, its events go to the client as they come
        provider = deployment.provider
        call.state.native = deployment.mock_response is None and provider.speaks_messages()
        if call.state.native:
            return await provider.open_messages_stream(call.body, call.request_id, call.state.beta)
        chat = chat_request(call.body, provider.supported_params)
        if deployment.mock_response is not None:
            return _Translated(MockSource(mock_stream(deployment, chat)), str(call.body["model"]))
        return _Translated(await provider.open_stream(chat, None, call.request_id), str(call.body["model"]))

    def assembler(self, call: Call, headers: dict[str, str] | None) -> Assembler:
        return _Assembler(native=call.state.native)

    def error_frame(self, error: ApiError) -> bytes:
        return sse_event({"type": "error", "error": {"type": error_type(error), "message": error.message}})


MESSAGES = Messages()


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


@post("/v1/messages", status_code=200)
async def messages_v1(request: Request) -> Response[Any]:
    return await run_call(request, MESSAGES)


@post("/messages", status_code=200)
async def messages(request: Request) -> Response[Any]:
    return await run_call(request, MESSAGES)


@post("/v1/messages/count_tokens", status_code=200)
async def count_tokens_v1(request: Request) -> Response[Any]:
    return await _count_tokens(request)


@post("/messages/count_tokens", status_code=200)
async def count_tokens(request: Request) -> Response[Any]:
    return await _count_tokens(request)
