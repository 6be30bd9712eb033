"""Calling OpenAI-compatible upstreams over one shared HTTP client, and answering ``mock_response`` offline."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import msgspec
import yarl

from sluicegate import __version__
from sluicegate.net.http import (
    HttpClient,
    HttpClientError,
    HttpTimeoutError,
    StreamedResponse,
    encode_headers,
)

from sluicegate.providers.base import UpstreamError, openai_error, request_id_header

if TYPE_CHECKING:
    import aiohttp
    import httpx

    from sluicegate.providers.models import Deployment

__all__ = ("UPSTREAM_CLIENTS", "UpstreamClient", "UpstreamError", "make_upstream", "mock_completion", "mock_stream")

_json = msgspec.json.Encoder()


def _base_headers(deployment: Deployment) -> dict[str, str]:
    headers = {"content-type": "application/json"}
    if deployment.api_key:
        headers["authorization"] = f"Bearer {deployment.api_key}"
    if deployment.extra_headers:
        headers.update(deployment.extra_headers)
    return headers


def _error_from(status: int, content: bytes, deployment: Deployment) -> UpstreamError:
    return openai_error(status, content, deployment.custom_llm_provider)


def _timed_out(deployment: Deployment) -> UpstreamError:
    return UpstreamError(504, f"upstream {deployment.custom_llm_provider} timed out after {deployment.timeout:g}s",
                         type="timeout", code="504")


def _unreachable(deployment: Deployment, exc: BaseException) -> UpstreamError:
    reason = f"{exc.kind} failed" if isinstance(exc, HttpClientError) else type(exc).__name__
    return UpstreamError(502, f"upstream {deployment.custom_llm_provider} unreachable: {reason}",
                         type="upstream_unreachable", code="502")


class UpstreamClient:
    """The interface the chat route uses; one shared instance per process."""

    async def complete(self, deployment: Deployment, body: bytes, request_id: str) -> bytes:
        """POST a non-streaming completion; the upstream's JSON bytes, or raise :class:`UpstreamError`."""
        raise NotImplementedError

    async def open_stream(self, deployment: Deployment, body: bytes, request_id: str) -> Any:
        """Start a streaming completion: an object with ``aiter_raw()`` and ``aclose()``."""
        raise NotImplementedError

    async def aclose(self) -> None:
        raise NotImplementedError


class _AiohttpStream:
    __slots__ = ("_response",)

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response

    def aiter_raw(self) -> AsyncIterator[bytes]:
        return self._response.content.iter_any()

    async def aclose(self) -> None:
        self._response.release()


class AiohttpUpstream(UpstreamClient):
    """aiohttp's client straight (no per-request header rebuild): the fastest third-party client measured in
    ``bench/``, and the default until the builtin client replaced it."""

    __slots__ = ("_prepared", "session")

    def __init__(self, max_connections: int = 1000) -> None:
        import aiohttp  # this client and the httpx ones are bench comparisons: not imported by a gateway (~0.1 s)

        connector = aiohttp.TCPConnector(limit=max_connections, limit_per_host=0, ttl_dns_cache=300)
        self.session = aiohttp.ClientSession(connector=connector, auto_decompress=True, trust_env=False,
                                             skip_auto_headers=("User-Agent",))
        self._prepared: dict[str, tuple[yarl.URL, dict[str, str], aiohttp.ClientTimeout]] = {}

    def _prepare(self, deployment: Deployment) -> tuple[yarl.URL, dict[str, str], aiohttp.ClientTimeout]:
        # per deployment (its URL, key, timeout), never per model name: a group's deployments differ in all three
        prepared = self._prepared.get(deployment.model_id)
        if prepared is None:
            import aiohttp

            prepared = (yarl.URL(deployment.completions_url), _base_headers(deployment),
                        aiohttp.ClientTimeout(total=deployment.timeout))
            self._prepared[deployment.model_id] = prepared
        return prepared

    async def complete(self, deployment: Deployment, body: bytes, request_id: str) -> bytes:
        import aiohttp

        url, headers, timeout = self._prepare(deployment)
        try:
            async with self.session.post(url, data=body, headers={**headers, "x-request-id": request_id},
                                         timeout=timeout) as response:
                content = await response.read()
                status = response.status
        except TimeoutError:
            raise _timed_out(deployment) from None
        except aiohttp.ClientError as exc:
            raise _unreachable(deployment, exc) from None
        if status >= 400:
            raise _error_from(status, content, deployment)
        return content

    async def open_stream(self, deployment: Deployment, body: bytes, request_id: str) -> _AiohttpStream:
        import aiohttp

        url, headers, timeout = self._prepare(deployment)
        try:
            response = await self.session.post(url, data=body, headers={**headers, "x-request-id": request_id},
                                               timeout=timeout)
        except TimeoutError:
            raise _timed_out(deployment) from None
        except aiohttp.ClientError as exc:
            raise _unreachable(deployment, exc) from None
        if response.status >= 400:
            content = await response.read()
            response.release()
            raise _error_from(response.status, content, deployment)
        return _AiohttpStream(response)

    async def aclose(self) -> None:
        await self.session.close()


MAX_UPSTREAM_ANSWER_BYTES = 64 * 1024 * 1024
"""A non-streaming completion larger than this fails as unreachable (502) instead of filling memory."""


class BuiltinUpstream(UpstreamClient):
    """Completions over the gateway's own HTTP/1.1 client (:mod:`sluicegate.net.http`), streamed or not. The
    default: per request it costs a fraction of aiohttp's CPU (``bench/``: aiohttp's client was about a quarter
    of the gateway's CPU under load).

    Like the aiohttp session it replaces: no proxies from the environment, no cookies, no redirects, TLS verified
    against the system store, up to ``max_connections`` connections, gzip/deflate answers inflated, the model's
    ``timeout`` for the whole answer (a stream's included). A reused keep-alive connection that the upstream had
    closed before any byte of the answer is retried once on a new one (the keep-alive race).
    """

    __slots__ = ("_heads", "client")

    def __init__(self, max_connections: int = 1000) -> None:
        self.client = HttpClient(user_agent=f"sluicegate/{__version__}", max_per_origin=max_connections,
                                 max_connections=max_connections, max_response_bytes=MAX_UPSTREAM_ANSWER_BYTES)
        self._heads: dict[str, tuple[str, bytes]] = {}

    def _headers(self, deployment: Deployment, request_id: str) -> tuple[str, bytes]:
        # per deployment (its URL and key), never per model name: a group's deployments differ in both
        head = self._heads.get(deployment.model_id)
        if head is None:
            head = (deployment.completions_url, encode_headers(_base_headers(deployment)))
            self._heads[deployment.model_id] = head
        return head[0], head[1] + request_id_header(request_id)  # with the client's traceparent, if any

    async def complete(self, deployment: Deployment, body: bytes, request_id: str) -> bytes:
        url, headers = self._headers(deployment, request_id)
        try:
            response = await self.client.post(url, body, headers=headers, timeout=deployment.timeout)
        except HttpTimeoutError:
            raise _timed_out(deployment) from None
        except HttpClientError as exc:
            raise _unreachable(deployment, exc) from None
        if response.status >= 400:
            raise _error_from(response.status, response.body, deployment)
        return response.body

    async def open_stream(self, deployment: Deployment, body: bytes, request_id: str) -> StreamedResponse:
        url, headers = self._headers(deployment, request_id)
        try:
            response = await self.client.stream("POST", url, body=body, headers=headers, timeout=deployment.timeout)
        except HttpTimeoutError:
            raise _timed_out(deployment) from None
        except HttpClientError as exc:
            raise _unreachable(deployment, exc) from None
        if response.status >= 400:
            try:
                content = await response.read()
            except HttpClientError:
                content = b""
            finally:
                await response.aclose()
            raise _error_from(response.status, content, deployment)
        return response

    async def aclose(self) -> None:
        await self.client.aclose()


class HttpxUpstream(UpstreamClient):
    """Plain httpx, or httpx over the aiohttp transport: kept for ``bench/`` comparisons."""

    __slots__ = ("client",)

    def __init__(self, *, aiohttp_transport: bool, max_connections: int = 1000) -> None:
        import httpx

        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        transport = None
        if aiohttp_transport:
            from httpx_aiohttp import AiohttpTransport

            transport = AiohttpTransport()
        self.client = httpx.AsyncClient(transport=transport, timeout=None, limits=limits)

    def _error(self, exc: httpx.HTTPError, deployment: Deployment, started: float) -> UpstreamError:
        # The aiohttp transport reports a refused connection as ConnectTimeout; elapsed time tells them apart.
        import httpx

        if isinstance(exc, httpx.TimeoutException) and time.monotonic() - started >= deployment.timeout * 0.9:
            return _timed_out(deployment)
        return _unreachable(deployment, exc)

    async def complete(self, deployment: Deployment, body: bytes, request_id: str) -> bytes:
        import httpx

        started = time.monotonic()
        try:
            response = await self.client.post(
                deployment.completions_url, content=body,
                headers={**_base_headers(deployment), "x-request-id": request_id},
                timeout=httpx.Timeout(deployment.timeout))
        except httpx.HTTPError as exc:
            raise self._error(exc, deployment, started) from None
        if response.status_code >= 400:
            raise _error_from(response.status_code, response.content, deployment)
        return response.content

    async def open_stream(self, deployment: Deployment, body: bytes, request_id: str) -> httpx.Response:
        import httpx

        request = self.client.build_request(
            "POST", deployment.completions_url, content=body,
            headers={**_base_headers(deployment), "x-request-id": request_id},
            timeout=httpx.Timeout(deployment.timeout))
        started = time.monotonic()
        try:
            response = await self.client.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise self._error(exc, deployment, started) from None
        if response.status_code >= 400:
            content = await response.aread()
            await response.aclose()
            raise _error_from(response.status_code, content, deployment)
        return response

    async def aclose(self) -> None:
        await self.client.aclose()


UPSTREAM_CLIENTS = ("builtin", "aiohttp", "httpx-aiohttp", "httpx")
"""The upstream clients ``SLUICEGATE_HTTP_CLIENT`` may name; the first is the default."""


def make_upstream(kind: str = "builtin") -> UpstreamClient:
    """``builtin`` (default), ``aiohttp``, ``httpx-aiohttp`` or ``httpx``: see ``bench/README.md`` for the numbers."""
    if kind == "builtin":
        return BuiltinUpstream()
    if kind == "aiohttp":
        return AiohttpUpstream()
    if kind in ("httpx-aiohttp", "httpx_aiohttp"):
        return HttpxUpstream(aiohttp_transport=True)
    if kind == "httpx":
        return HttpxUpstream(aiohttp_transport=False)
    raise ValueError(f"unknown upstream client {kind!r}: use one of {', '.join(UPSTREAM_CLIENTS)}")


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
