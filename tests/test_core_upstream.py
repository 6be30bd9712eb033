"""The upstream clients (``sluicegate.providers.upstream``) against real HTTP servers on loopback.

Every client kind must relay the same thing: the client's bytes as the body, the deployment's key, the request
id, and the upstream's answer byte for byte; errors map to the same gateway errors (502 unreachable, 504 timed
out, the upstream's status otherwise). The upstream is ``aiohttp.web`` (a real HTTP/1.1 server: keep-alive,
gzip, chunked), or a raw ``asyncio`` server where a test needs what a well-behaved server never does.
"""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from sluicegate.providers.models import Deployment
from sluicegate.providers.upstream import (
    MAX_UPSTREAM_ANSWER_BYTES,
    UPSTREAM_CLIENTS,
    UpstreamClient,
    UpstreamError,
    make_upstream,
)
from sluicegate.net.http import HttpClientError

ANSWER = json.dumps({"id": "chatcmpl-1", "object": "chat.completion", "choices": [
    {"index": 0, "message": {"role": "assistant", "content": "héllo"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}).encode()


SSE = (b'data: {"choices":[{"index":0,"delta":{"content":"one"}}]}\n\n',
       b'data: {"choices":[{"index":0,"delta":{"content":"two"}}]}\n\n', b"data: [DONE]\n\n")


class Upstream:
    """``/v1/chat/completions`` answering :data:`ANSWER` (or what ``mode`` asks for); records every request and
    the client port it came on."""

    def __init__(self) -> None:
        self.requests: list[dict[str, object]] = []
        self.peers: list[int] = []
        self.mode = "plain"
        self.release = asyncio.Event()
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.requests.append({"headers": {k.lower(): v for k, v in request.headers.items()}, "body": body})
        self.peers.append(request.transport.get_extra_info("peername")[1])  # type: ignore[union-attr]
        if self.mode == "gzip":
            return web.Response(body=gzip.compress(ANSWER), headers={"Content-Encoding": "gzip",
                                                                     "Content-Type": "application/json"})
        if self.mode == "chunked":
            response = web.StreamResponse(headers={"Content-Type": "application/json"})
            response.enable_chunked_encoding()
            await response.prepare(request)
            for start in range(0, len(ANSWER), 7):
                await response.write(ANSWER[start:start + 7])
            await response.write_eof()
            return response
        if self.mode == "error":
            return web.json_response({"error": {"message": "rate limited", "type": "rate_limit_error",
                                                "param": None, "code": "rate_limit"}}, status=429)
        if self.mode == "slow":
            await self.release.wait()
        if self.mode in ("sse", "sse-stall", "sse-gzip", "sse-big"):
            return await self.sse(request)
        return web.Response(body=ANSWER, content_type="application/json")

    async def sse(self, request: web.Request) -> web.StreamResponse:
        """Three events, the second only once the test sets ``release`` (so a client that buffered the whole
        answer would never see the first in time); ``sse-stall`` never sends the second."""
        headers = {"Content-Type": "text/event-stream"}
        if self.mode == "sse-gzip":
            headers["Content-Encoding"] = "gzip"
        response = web.StreamResponse(headers=headers)
        response.enable_chunked_encoding()
        await response.prepare(request)
        if self.mode == "sse-gzip":
            await response.write(gzip.compress(b"".join(SSE)))
        elif self.mode == "sse-big":
            for _ in range(64):
                await response.write(b"data: " + b"x" * 65536 + b"\n\n")
        else:
            await response.write(SSE[0])
            await self.release.wait()
            if self.mode == "sse-stall":
                await asyncio.Event().wait()  # never: the client's timeout must end it
            for event in SSE[1:]:
                await response.write(event)
        await response.write_eof()
        return response

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.chat)
        self._runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}/v1"

    async def stop(self) -> None:
        self.release.set()
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    server = Upstream()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture(params=[kind for kind in UPSTREAM_CLIENTS])
async def client(request: pytest.FixtureRequest) -> AsyncIterator[UpstreamClient]:
    made = make_upstream(request.param)
    yield made
    await made.aclose()


def deployment(url: str, *, timeout: float = 10.0, key: str | None = "sk-upstream-secret") -> Deployment:
    return Deployment(model_name="m", custom_llm_provider="openai", upstream_model="gpt-x", api_base=url, api_key=key,
                      timeout=timeout)


BODY = b'{"model":"gpt-x","messages":[{"role":"user","content":"hi \\u00e9"}],"temperature":0.5}'


async def test_every_client_relays_body_key_and_request_id_and_returns_the_answer_unchanged(
        upstream: Upstream, client: UpstreamClient) -> None:
    answer = await client.complete(deployment(upstream.url), BODY, "req-123")
    assert answer == ANSWER
    (seen,) = upstream.requests
    assert seen["body"] == BODY
    headers = seen["headers"]
    assert isinstance(headers, dict)
    assert headers["authorization"] == "Bearer sk-upstream-secret"
    assert headers["content-type"] == "application/json"
    assert headers["x-request-id"] == "req-123"
    assert headers["content-length"] == str(len(BODY))


async def test_every_client_maps_an_upstream_error_status_to_its_openai_error(upstream: Upstream,
                                                                              client: UpstreamClient) -> None:
    upstream.mode = "error"
    with pytest.raises(UpstreamError) as caught:
        await client.complete(deployment(upstream.url), BODY, "req-err")
    assert (caught.value.status, caught.value.type, caught.value.code) == (429, "rate_limit_error", "rate_limit")
    assert caught.value.message == "rate limited"


async def test_every_client_reports_a_refused_connection_as_502(client: UpstreamClient) -> None:
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    with pytest.raises(UpstreamError) as caught:
        await client.complete(deployment(f"http://127.0.0.1:{port}/v1"), BODY, "req-refused")
    assert caught.value.status == 502
    assert caught.value.type == "upstream_unreachable"
    assert "sk-upstream-secret" not in caught.value.message


async def test_every_client_times_out_with_504_within_the_model_timeout(upstream: Upstream,
                                                                       client: UpstreamClient) -> None:
    upstream.mode = "slow"
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(UpstreamError) as caught:
        await client.complete(deployment(upstream.url, timeout=0.3), BODY, "req-slow")
    assert caught.value.status == 504
    assert loop.time() - started < 5.0


async def test_builtin_client_inflates_gzip_and_reads_chunked_answers(upstream: Upstream) -> None:
    client = make_upstream("builtin")
    try:
        for mode in ("gzip", "chunked"):
            upstream.mode = mode
            assert await client.complete(deployment(upstream.url), BODY, f"req-{mode}") == ANSWER
    finally:
        await client.aclose()


async def test_builtin_client_reuses_one_keep_alive_connection_for_sequential_requests(upstream: Upstream) -> None:
    client = make_upstream("builtin")
    try:
        for index in range(5):
            assert await client.complete(deployment(upstream.url), BODY, f"req-{index}") == ANSWER
    finally:
        await client.aclose()
    assert len(upstream.peers) == 5
    assert len(set(upstream.peers)) == 1


async def test_builtin_client_is_the_default_and_names_itself(upstream: Upstream) -> None:
    client = make_upstream()
    try:
        await client.complete(deployment(upstream.url, key=None), BODY, "req-default")
    finally:
        await client.aclose()
    headers = upstream.requests[0]["headers"]
    assert isinstance(headers, dict)
    assert headers["user-agent"].startswith("sluicegate/")
    assert "authorization" not in headers  # a deployment without a key sends none


async def test_builtin_client_percent_encodes_a_non_ascii_request_id(upstream: Upstream) -> None:
    client = make_upstream("builtin")
    try:
        assert await client.complete(deployment(upstream.url), BODY, "id-日本") == ANSWER
    finally:
        await client.aclose()
    headers = upstream.requests[0]["headers"]
    assert isinstance(headers, dict)
    assert headers["x-request-id"] == "id-%E6%97%A5%E6%9C%AC"


async def test_builtin_client_refuses_an_answer_over_its_limit_as_502() -> None:
    """A raw server announcing a body one byte over the limit: refused as soon as the excess arrives."""
    size = MAX_UPSTREAM_ANSWER_BYTES + 1

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % size)
        chunk = b"x" * (1 << 20)
        try:
            for _ in range(size // len(chunk) + 1):
                writer.write(chunk)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = make_upstream("builtin")
    try:
        with pytest.raises(UpstreamError) as caught:
            await client.complete(deployment(f"http://127.0.0.1:{port}/v1"), BODY, "req-huge")
    finally:
        await client.aclose()
        server.close()
        await server.wait_closed()
    assert caught.value.status == 502
    assert caught.value.type == "upstream_unreachable"


STREAMING = [kind for kind in UPSTREAM_CLIENTS if kind in ("builtin", "aiohttp")]


@pytest.fixture(params=STREAMING)
async def streaming_client(request: pytest.FixtureRequest) -> AsyncIterator[UpstreamClient]:
    made = make_upstream(request.param)
    yield made
    await made.aclose()


async def _first_chunk(iterator: AsyncIterator[bytes]) -> bytes:
    return await asyncio.wait_for(iterator.__anext__(), 5)


async def test_streams_hand_over_each_event_as_it_arrives(upstream: Upstream,
                                                          streaming_client: UpstreamClient) -> None:
    upstream.mode = "sse"
    stream = await streaming_client.open_stream(deployment(upstream.url), BODY, "req-sse")
    try:
        chunks = stream.aiter_raw()
        first = await _first_chunk(chunks)  # before the upstream may send the rest
        assert first == SSE[0]
        upstream.release.set()
        rest = [data async for data in chunks]
    finally:
        await stream.aclose()
    assert first + b"".join(rest) == b"".join(SSE)
    assert upstream.requests[0]["body"] == BODY


async def test_a_stalled_stream_fails_within_the_model_timeout(upstream: Upstream,
                                                               streaming_client: UpstreamClient) -> None:
    upstream.mode = "sse-stall"
    upstream.release.set()
    loop = asyncio.get_running_loop()
    started = loop.time()
    stream = await streaming_client.open_stream(deployment(upstream.url, timeout=0.5), BODY, "req-stall")
    received = b""
    try:
        with pytest.raises((HttpClientError, aiohttp.ClientError, TimeoutError)):  # each client's own error
            async for data in stream.aiter_raw():
                received += data
    finally:
        await stream.aclose()
    assert received == SSE[0]
    assert loop.time() - started < 5.0


async def test_a_stream_refused_with_an_error_status_is_the_upstreams_error(upstream: Upstream,
                                                                            streaming_client: UpstreamClient) -> None:
    upstream.mode = "error"
    with pytest.raises(UpstreamError) as caught:
        await streaming_client.open_stream(deployment(upstream.url), BODY, "req-stream-err")
    assert (caught.value.status, caught.value.message) == (429, "rate limited")


async def test_builtin_streams_inflate_gzip_and_reuse_the_connection_once_finished(upstream: Upstream) -> None:
    client = make_upstream("builtin")
    try:
        for mode in ("sse-gzip", "sse-gzip", "sse"):
            upstream.mode = mode
            upstream.release.set()
            stream = await client.open_stream(deployment(upstream.url), BODY, f"req-{mode}")
            try:
                assert b"".join([data async for data in stream.aiter_raw()]) == b"".join(SSE)
            finally:
                await stream.aclose()
        upstream.mode = "plain"
        assert await client.complete(deployment(upstream.url), BODY, "req-after") == ANSWER  # not stuck paused
    finally:
        await client.aclose()
    assert len(set(upstream.peers)) == 1  # one keep-alive connection for the four


async def test_builtin_stream_closed_early_drops_its_connection_and_a_big_one_is_read_whole(
        upstream: Upstream) -> None:
    """4 MiB streamed: reading pauses while the consumer lags and resumes as it reads; a stream left
    unfinished closes its connection (the rest of the answer would otherwise arrive on the next request)."""
    client = make_upstream("builtin")
    try:
        upstream.mode = "sse-big"
        stream = await client.open_stream(deployment(upstream.url), BODY, "req-big")
        try:
            total = 0
            async for data in stream.aiter_raw():
                total += len(data)
                await asyncio.sleep(0)  # deliberate: a consumer that yields between chunks, as the relay does
        finally:
            await stream.aclose()
        assert total == 64 * (65536 + 8)
        upstream.mode = "sse"
        upstream.release.clear()
        stream = await client.open_stream(deployment(upstream.url), BODY, "req-early")
        assert await _first_chunk(stream.aiter_raw()) == SSE[0]
        await stream.aclose()  # before the rest
        upstream.release.set()
        upstream.mode = "plain"
        assert await client.complete(deployment(upstream.url), BODY, "req-next") == ANSWER
    finally:
        await client.aclose()
    assert len(set(upstream.peers)) == 2  # the early-closed stream's connection was not reused


def test_unknown_client_kind_is_refused_naming_the_choices() -> None:
    with pytest.raises(ValueError, match="builtin, aiohttp, httpx-aiohttp, httpx"):
        make_upstream("curl")
