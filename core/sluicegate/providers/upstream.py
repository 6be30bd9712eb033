"""Calling OpenAI-compatible upstreams over one shared HTTP client, and answering ``mock_response`` offline."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import httpx
import msgspec

from sluicegate.errors import ApiError

if TYPE_CHECKING:
    from sluicegate.providers.models import Deployment

__all__ = ("UpstreamClient", "UpstreamError", "mock_completion", "mock_stream")

_json = msgspec.json.Encoder()


class UpstreamError(ApiError):
    """The upstream answered with an error status, or could not be reached in time."""


def make_client(kind: str = "aiohttp", max_connections: int = 1000) -> httpx.AsyncClient:
    """The shared upstream client. ``aiohttp`` uses the httpx-aiohttp transport (chosen by ``bench/``)."""
    limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
    if kind == "aiohttp":
        from httpx_aiohttp import AiohttpTransport

        return httpx.AsyncClient(transport=AiohttpTransport(), timeout=None, limits=limits)
    return httpx.AsyncClient(timeout=None, limits=limits, http2=False)


def _headers(deployment: Deployment, request_id: str, extra: dict[str, str] | None) -> dict[str, str]:
    headers = {"content-type": "application/json", "x-request-id": request_id}
    if deployment.api_key:
        headers["authorization"] = f"Bearer {deployment.api_key}"
    if extra:
        headers.update(extra)
    return headers


def _transport_error(exc: httpx.HTTPError, deployment: Deployment, started: float) -> UpstreamError:
    """504 when the model's timeout really ran out, else 502.

    The aiohttp transport reports a refused connection as ``ConnectTimeout``; elapsed time tells them apart.
    """
    elapsed = time.monotonic() - started
    if isinstance(exc, httpx.TimeoutException) and elapsed >= deployment.timeout * 0.9:
        return UpstreamError(504, f"upstream {deployment.provider} timed out after {deployment.timeout:g}s",
                             type="timeout", code="504")
    return UpstreamError(502, f"upstream {deployment.provider} unreachable: {type(exc).__name__}",
                         type="upstream_unreachable", code="502")


def _error_from(status: int, content: bytes, deployment: Deployment) -> UpstreamError:
    message = f"upstream {deployment.provider} returned HTTP {status}"
    etype, param, code = "upstream_error", None, str(status)
    try:
        body = msgspec.json.decode(content)
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict):
            message = str(error.get("message") or message)
            etype = str(error.get("type") or etype)
            param = error.get("param")
            code = error.get("code") if error.get("code") is not None else code
        elif isinstance(error, str):
            message = error
    except (msgspec.DecodeError, UnicodeDecodeError):
        pass
    return UpstreamError(status, message, type=etype, param=param, code=code)


class UpstreamClient:
    __slots__ = ("client",)

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    async def aclose(self) -> None:
        await self.client.aclose()

    async def complete(self, deployment: Deployment, body: dict[str, Any], request_id: str,
                       headers: dict[str, str] | None = None) -> bytes:
        """POST a non-streaming completion; returns the upstream's JSON bytes or raises UpstreamError."""
        started = time.monotonic()
        try:
            response = await self.client.post(
                deployment.completions_url, content=_json.encode(body),
                headers=_headers(deployment, request_id, headers),
                timeout=httpx.Timeout(deployment.timeout))
        except httpx.HTTPError as exc:
            raise _transport_error(exc, deployment, started) from None
        if response.status_code >= 400:
            raise _error_from(response.status_code, response.content, deployment)
        return response.content

    async def open_stream(self, deployment: Deployment, body: dict[str, Any], request_id: str,
                          headers: dict[str, str] | None = None) -> httpx.Response:
        """Start a streaming completion; the caller iterates ``aiter_raw()`` and must ``aclose()`` it."""
        request = self.client.build_request(
            "POST", deployment.completions_url, content=_json.encode(body),
            headers=_headers(deployment, request_id, headers), timeout=httpx.Timeout(deployment.timeout))
        started = time.monotonic()
        try:
            response = await self.client.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise _transport_error(exc, deployment, started) from None
        if response.status_code >= 400:
            content = await response.aread()
            await response.aclose()
            raise _error_from(response.status_code, content, deployment)
        return response


def _count_tokens(text: str) -> int:
    return max(1, len(text.split()))


def _prompt_tokens(messages: Any) -> int:
    total = 0
    for message in messages if isinstance(messages, list) else ():
        content = message.get("content") if isinstance(message, dict) else None
        total += _count_tokens(content) if isinstance(content, str) else 1
    return total


def mock_completion(deployment: Deployment, body: dict[str, Any]) -> bytes:
    content = str(deployment.mock_response)
    prompt = _prompt_tokens(body.get("messages"))
    completion = _count_tokens(content)
    return _json.encode({
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": int(time.time()),
        "model": deployment.upstream_model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
    })


async def mock_stream(deployment: Deployment, body: dict[str, Any]) -> AsyncIterator[bytes]:
    content = str(deployment.mock_response)
    ident = f"chatcmpl-{uuid.uuid4().hex[:24]}"
    created = int(time.time())
    words = content.split(" ")
    base = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": deployment.upstream_model}
    yield b"data: " + _json.encode({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                                           "finish_reason": None}]}) + b"\n\n"
    for index, word in enumerate(words):
        piece = word if index == 0 else " " + word
        yield b"data: " + _json.encode({**base, "choices": [{"index": 0, "delta": {"content": piece},
                                                               "finish_reason": None}]}) + b"\n\n"
    prompt = _prompt_tokens(body.get("messages"))
    completion = _count_tokens(content)
    final: dict[str, Any] = {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    if (body.get("stream_options") or {}).get("include_usage"):
        yield b"data: " + _json.encode(final) + b"\n\n"
        final = {**base, "choices": []}
    final["usage"] = {"prompt_tokens": prompt, "completion_tokens": completion,
                      "total_tokens": prompt + completion}
    yield b"data: " + _json.encode(final) + b"\n\n"
    yield b"data: [DONE]\n\n"
