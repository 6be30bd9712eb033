"""The sinks' HTTP/1.1 client (``sluicegate.net.http``) against real servers on loopback.

Two kinds of server: ``aiohttp.web`` (a real HTTP server: keep-alive, chunked answers, TLS) and a scripted raw
``asyncio`` server for what a well-behaved server never does on purpose (answers cut short, closes while idle,
malformed bytes, interim ``100 Continue``), so each failure path is provoked for real, not simulated.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import gzip
import ipaddress
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from sluicegate.net.http import (
    _INFLATE_PIECE,
    _STREAM_HIGH_WATER,
    MAX_RESPONSE_BYTES,
    HttpClient,
    HttpClientError,
    HttpTimeoutError,
    encode_headers,
)


async def _until(condition: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    """Wait for ``condition`` (set by a server on this same loop) with a deadline; fail naming ``what``."""
    try:
        async with asyncio.timeout(timeout):
            while not condition():
                await asyncio.sleep(0.005)  # deliberate: the poll interval of a deadline-bounded wait
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout}s waiting for {what}") from None


@pytest.fixture
async def client() -> AsyncIterator[HttpClient]:
    http = HttpClient(user_agent="sluicegate-test/1")
    yield http
    await http.aclose()


BOMB_SIZE = 32 * 1024 * 1024
BOMB = gzip.compress(b"data: " + b"0" * (BOMB_SIZE - 8) + b"\n\n", compresslevel=9)


class WebServer:
    """An aiohttp.web app on a loopback port; records requests and the client ports they came from."""

    def __init__(self) -> None:
        self.requests: list[dict[str, object]] = []
        self.peers: set[int] = set()
        self.app = web.Application()
        self.app.router.add_post("/echo", self.echo)
        self.app.router.add_get("/chunked", self.chunked)
        self.app.router.add_get("/gzip", self.gzipped)
        self.app.router.add_get("/bomb", self.bomb)
        self.app.router.add_post("/held", self.held)
        self.release = asyncio.Event()
        self.holding = 0
        self.max_holding = 0
        self.url = ""

    async def echo(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.peers.add(request.transport.get_extra_info("peername")[1])  # type: ignore[union-attr]
        self.requests.append({"path": request.path_qs, "headers": dict(request.headers), "body": body,
                              "version": request.version})
        return web.Response(body=body[::-1], status=201, headers={"X-Answer": "yes"})

    async def chunked(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for part in (b"one,", b"two,", b"three"):
            await response.write(part)
        await response.write_eof()
        return response

    async def bomb(self, request: web.Request) -> web.StreamResponse:
        """A streamed gzip answer whose one ~32 KiB chunk inflates to 32 MiB."""
        response = web.StreamResponse(headers={"Content-Encoding": "gzip", "Content-Type": "text/event-stream"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        await response.write(BOMB)
        await response.write_eof()
        return response

    async def gzipped(self, request: web.Request) -> web.Response:
        return web.Response(body=gzip.compress(b"inflated " * 100), headers={"Content-Encoding": "gzip"})

    async def held(self, request: web.Request) -> web.Response:
        self.peers.add(request.transport.get_extra_info("peername")[1])  # type: ignore[union-attr]
        self.holding += 1
        self.max_holding = max(self.max_holding, self.holding)
        await self.release.wait()
        self.holding -= 1
        return web.Response(text="released")


async def _serve(server: WebServer, ssl_context: ssl.SSLContext | None = None) -> web.AppRunner:
    runner = web.AppRunner(server.app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    server.url = f"{'https' if ssl_context else 'http'}://127.0.0.1:{port}"
    return runner


@pytest.fixture
async def web_server() -> AsyncIterator[WebServer]:
    server = WebServer()
    runner = await _serve(server)
    yield server
    server.release.set()
    await runner.cleanup()


Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


class RawServer:
    """Runs ``script(reader, writer, connection_number)`` for each connection; counts connections."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.connections = 0
        self.server: asyncio.Server | None = None
        self.url = ""

    async def __aenter__(self) -> RawServer:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.script(reader, writer, self.connections)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head, await reader.readexactly(length)


def answering(reply: bytes, *, keep_open: bool = True) -> Script:
    """A script that reads a request and writes ``reply`` (raw bytes); then it either waits for the next bytes
    from the client and hangs up unanswered (``keep_open``), or closes at once."""
    async def script(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, number: int) -> None:
        await read_request(reader)
        writer.write(reply)
        await writer.drain()
        if keep_open:
            await reader.read(1)

    return script


# --- the ordinary path --------------------------------------------------------------------------------


async def test_post_sends_head_and_body_and_returns_the_answer(client: HttpClient, web_server: WebServer) -> None:
    headers = encode_headers({"Content-Type": "application/x-protobuf", "Authorization": "Basic abc"})
    answer = await client.post(web_server.url + "/echo?x=1", b"hello", headers=headers, timeout=5)
    assert answer.status == 201
    assert answer.body == b"olleh"
    assert answer.headers["x-answer"] == "yes"  # names in lower case
    seen = web_server.requests[0]
    assert seen["path"] == "/echo?x=1" and seen["body"] == b"hello"
    sent = seen["headers"]
    assert isinstance(sent, dict)
    assert sent["Authorization"] == "Basic abc" and sent["Content-Type"] == "application/x-protobuf"
    assert sent["User-Agent"] == "sluicegate-test/1"
    assert sent["Host"] == web_server.url.removeprefix("http://")
    assert sent["Content-Length"] == "5"


async def test_keep_alive_reuses_one_connection(client: HttpClient, web_server: WebServer) -> None:
    for index in range(5):
        answer = await client.post(web_server.url + "/echo", b"%d" % index, timeout=5)
        assert answer.status == 201
    assert len(web_server.peers) == 1
    assert client.open_connections == 1


async def test_large_body_arrives_whole(client: HttpClient, web_server: WebServer) -> None:
    body = bytes(range(256)) * 4096  # 1 MiB: head and body written separately
    answer = await client.post(web_server.url + "/echo", body, timeout=10)
    assert answer.status == 201 and answer.body == body[::-1]


async def test_chunked_answer_is_reassembled(client: HttpClient, web_server: WebServer) -> None:
    answer = await client.request("GET", web_server.url + "/chunked", timeout=5)
    assert answer.status == 200
    assert answer.body == b"one,two,three"
    assert "chunked" in answer.headers["transfer-encoding"]


async def test_gzip_answer_is_inflated(client: HttpClient, web_server: WebServer) -> None:
    answer = await client.request("GET", web_server.url + "/gzip", timeout=5)
    assert answer.body == b"inflated " * 100


async def test_error_statuses_are_answers_not_exceptions(client: HttpClient, web_server: WebServer) -> None:
    answer = await client.post(web_server.url + "/nowhere", b"", timeout=5)
    assert answer.status == 404  # the sink decides what a status means


# --- limits --------------------------------------------------------------------------------------------


async def test_connections_per_origin_are_capped(web_server: WebServer) -> None:
    http = HttpClient(user_agent="t", max_per_origin=2)
    try:
        tasks = [asyncio.create_task(http.post(web_server.url + "/held", b"", timeout=10)) for _ in range(6)]
        await _until(lambda: web_server.holding >= 2, "two requests held by the server")
        assert http.open_connections == 2
        web_server.release.set()
        answers = await asyncio.gather(*tasks)
        assert [a.body for a in answers] == [b"released"] * 6
        assert web_server.max_holding == 2
        assert len(web_server.peers) == 2
    finally:
        await http.aclose()


async def test_total_limit_closes_an_idle_connection_of_another_origin() -> None:
    first, second = WebServer(), WebServer()
    runners = [await _serve(first), await _serve(second)]
    http = HttpClient(user_agent="t", max_per_origin=1, max_connections=1)
    try:
        assert (await http.post(first.url + "/echo", b"a", timeout=5)).status == 201
        assert (await http.post(second.url + "/echo", b"b", timeout=5)).status == 201
        assert http.open_connections == 1
        assert (await http.post(first.url + "/echo", b"c", timeout=5)).status == 201
        assert len(first.peers) == 2  # its first connection was closed to make room for the second origin
    finally:
        await http.aclose()
        for runner in runners:
            await runner.cleanup()


async def test_expired_idle_connection_is_not_reused(web_server: WebServer) -> None:
    http = HttpClient(user_agent="t", keepalive_expiry=0.0)
    try:
        for _ in range(3):
            assert (await http.post(web_server.url + "/echo", b"x", timeout=5)).status == 201
        assert len(web_server.peers) == 3
    finally:
        await http.aclose()


# --- failures ------------------------------------------------------------------------------------------


async def test_refused_connection_is_a_connect_error(client: HttpClient) -> None:
    async with RawServer(lambda r, w, n: asyncio.sleep(0)) as server:  # deliberate: a server that does nothing
        url = server.url
    with pytest.raises(HttpClientError) as info:
        await client.post(url + "/x", b"", timeout=5)
    assert info.value.kind == "connect" and info.value.retryable
    assert "cannot connect to http://127.0.0.1" in str(info.value)
    assert client.open_connections == 0


async def test_timeout_raises_and_drops_the_connection(client: HttpClient) -> None:
    never = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, number: int) -> None:
        await read_request(reader)
        await never.wait()

    async with RawServer(silent) as server:
        with pytest.raises(HttpTimeoutError) as info:
            await client.post(server.url + "/x", b"body", timeout=0.2)
        assert isinstance(info.value, TimeoutError) and info.value.kind == "timeout"
        assert "within 0.2s" in str(info.value)
        assert client.open_connections == 0
        never.set()


async def test_idle_connection_closed_by_the_server_is_retried_once_on_a_new_one(client: HttpClient) -> None:
    # the next request arrives on the idle connection: it is closed unanswered
    async with RawServer(answering(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")) as server:
        assert (await client.post(server.url + "/x", b"1", timeout=5)).body == b"ok"
        assert (await client.post(server.url + "/x", b"2", timeout=5)).body == b"ok"
        assert server.connections == 2


async def test_after_a_stale_connection_the_retry_skips_the_other_idle_ones() -> None:
    async def answer_then_close_on_next(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                                        number: int) -> None:
        await read_request(reader)
        if number <= 2:
            first_two.append(number)
            await both_in.wait()  # hold both answers so the two requests need two connections
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        await reader.read(1)  # a later request on this connection: close it unanswered

    first_two: list[int] = []
    both_in = asyncio.Event()
    http = HttpClient(user_agent="t")
    try:
        async with RawServer(answer_then_close_on_next) as server:
            pending = [asyncio.create_task(http.post(server.url + "/x", b"", timeout=5)) for _ in range(2)]
            await _until(lambda: len(first_two) >= 2, "both requests at the server")
            both_in.set()
            assert [a.body for a in await asyncio.gather(*pending)] == [b"ok", b"ok"]
            assert http.open_connections == 2  # both idle, both stale from the server's side
            assert (await http.post(server.url + "/x", b"", timeout=5)).body == b"ok"
            assert server.connections == 3  # one stale try, then a new connection, not the other stale one
    finally:
        await http.aclose()


async def test_fresh_connection_closed_without_answer_is_an_error_not_a_loop(client: HttpClient) -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, number: int) -> None:
        await read_request(reader)

    async with RawServer(hang_up) as server:
        with pytest.raises(HttpClientError) as info:
            await client.post(server.url + "/x", b"1", timeout=5)
        assert info.value.kind == "closed" and "before answering" in str(info.value)
        assert server.connections == 1


async def test_answer_cut_short_is_an_error(client: HttpClient) -> None:
    truncated = answering(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part", keep_open=False)
    async with RawServer(truncated) as server:
        with pytest.raises(HttpClientError) as info:
            await client.post(server.url + "/x", b"1", timeout=5)
        assert info.value.kind == "closed" and "middle of its answer" in str(info.value)


async def test_answer_ended_by_close_is_complete(client: HttpClient) -> None:
    close_delimited = answering(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nall of it",
                                keep_open=False)
    async with RawServer(close_delimited) as server:
        answer = await client.post(server.url + "/x", b"1", timeout=5)
        assert answer.status == 200 and answer.body == b"all of it"
        assert client.open_connections == 0  # not kept: the server closed it


async def test_interim_100_continue_is_skipped(client: HttpClient) -> None:
    continue_first = answering(b"HTTP/1.1 100 Continue\r\n\r\n"
                               b"HTTP/1.1 202 Accepted\r\nContent-Length: 4\r\n\r\ndone")
    async with RawServer(continue_first) as server:
        answer = await client.post(server.url + "/x", b"1", timeout=5)
        assert answer.status == 202 and answer.body == b"done"


async def test_malformed_answer_is_a_protocol_error(client: HttpClient) -> None:
    async with RawServer(answering(b"SMTP ready\r\n\r\n")) as server:
        with pytest.raises(HttpClientError) as info:
            await client.post(server.url + "/x", b"1", timeout=5)
        assert info.value.kind == "protocol"
        assert client.open_connections == 0


async def test_oversized_answer_is_refused(client: HttpClient) -> None:
    huge = answering(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (MAX_RESPONSE_BYTES + 10)
                     + b"x" * (MAX_RESPONSE_BYTES + 10))
    async with RawServer(huge) as server:
        with pytest.raises(HttpClientError) as info:
            await client.post(server.url + "/x", b"1", timeout=10)
        assert info.value.kind == "protocol" and "larger than" in str(info.value)


async def test_cancelled_request_does_not_leave_its_connection_in_the_pool(web_server: WebServer) -> None:
    http = HttpClient(user_agent="t")
    try:
        task = asyncio.create_task(http.post(web_server.url + "/held", b"", timeout=10))
        await _until(lambda: web_server.holding >= 1, "the request held by the server")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert http.open_connections == 0
    finally:
        await http.aclose()


async def test_closed_client_refuses_requests(web_server: WebServer) -> None:
    http = HttpClient(user_agent="t")
    await http.post(web_server.url + "/echo", b"x", timeout=5)
    await http.aclose()
    await http.aclose()  # idempotent
    with pytest.raises(HttpClientError, match="closed"):
        await http.post(web_server.url + "/echo", b"x", timeout=5)


# --- TLS -----------------------------------------------------------------------------------------------


def _self_signed() -> tuple[bytes, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))


async def test_https_verifies_the_server_certificate(tmp_path) -> None:
    cert, key = _self_signed()
    (tmp_path / "cert.pem").write_bytes(cert)
    (tmp_path / "key.pem").write_bytes(key)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    server = WebServer()
    runner = await _serve(server, server_context)
    trusting = ssl.create_default_context(cadata=cert.decode())
    trusted = HttpClient(user_agent="t", ssl_context=trusting)
    default = HttpClient(user_agent="t")  # the system store: does not know our certificate
    try:
        answer = await trusted.post(server.url + "/echo", b"secret", timeout=5)
        assert answer.status == 201 and answer.body == b"terces"
        with pytest.raises(HttpClientError) as info:
            await default.post(server.url + "/echo", b"secret", timeout=5)
        assert info.value.kind == "tls" and "certificate" in str(info.value).lower()
        assert len(server.requests) == 1  # nothing was sent over the unverified connection
    finally:
        await trusted.aclose()
        await default.aclose()
        await runner.cleanup()


# --- headers -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("headers", [
    {"X-Team": "a\r\nX-Injected: 1"},
    {"X-Team": "a\nb"},
    {"Bad Name": "v"},
    {"": "v"},
    {"Host": "elsewhere"},
    {"Content-Length": "1"},
])
def test_encode_headers_refuses_injection_and_client_owned_names(headers: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="header"):
        encode_headers(headers)


def test_encode_headers_writes_lines() -> None:
    assert encode_headers({"A": "1", "b-c": " two "}) == b"A: 1\r\nb-c: two\r\n"


@pytest.mark.parametrize("url", ["ftp://h/x", "http:///nohost", "http://u:p@h/x", "http://h/a b"])
async def test_bad_urls_are_refused(client: HttpClient, url: str) -> None:
    with pytest.raises(ValueError):
        await client.post(url, b"", timeout=1)


def test_request_head_names_the_origin_as_http_wants_it() -> None:
    from sluicegate.net.http import _origin

    idn = _origin("https://münchen.example/otel/v1/traces?team=ü")
    assert idn.host_line == b"Host: xn--mnchen-3ya.example\r\n" and idn.key == ("https", "xn--mnchen-3ya.example", 443)
    assert idn.target == b"/otel/v1/traces?team=%C3%BC"
    assert _origin("http://[::1]:4318/v1/traces").host_line == b"Host: [::1]:4318\r\n"
    assert _origin("http://collector:80").host_line == b"Host: collector\r\n"  # default port left out
    assert _origin("http://collector:80").target == b"/"


async def test_a_streamed_gzip_answer_is_inflated_a_piece_at_a_time(client: HttpClient,
                                                                   web_server: WebServer) -> None:
    """A small compressed chunk that inflates to 32 MiB is handed over in pieces while the consumer reads: what
    waits in memory stays under the high-water mark plus one piece, and the whole body still arrives."""
    assert len(BOMB) < 64 * 1024
    answer = await client.stream("GET", web_server.url + "/bomb", timeout=30)
    try:
        stream = answer._conn.stream
        assert stream is not None
        total = most_waiting = 0
        async for data in answer.aiter_raw():
            assert len(data) <= _INFLATE_PIECE
            total += len(data)
            most_waiting = max(most_waiting, stream.buffered + len(data))
    finally:
        await answer.aclose()
    assert total == BOMB_SIZE
    assert most_waiting <= _STREAM_HIGH_WATER + _INFLATE_PIECE


@pytest.mark.parametrize("body", [
    b"\x1f\x8b" + b"not really gzip" * 10,  # broken at once: found while the answer is read
    BOMB[:-8] + bytes(b ^ 0xFF for b in BOMB[-8:-4]) + BOMB[-4:],  # a wrong CRC: found once the consumer gets there
], ids=["garbage", "bad-crc-after-32-MiB"])
async def test_a_streamed_answer_that_is_not_valid_gzip_fails_as_a_protocol_error(client: HttpClient,
                                                                                  body: bytes) -> None:
    """Bytes that are not valid gzip under ``Content-Encoding: gzip`` end the stream with a protocol error,
    whether the inflater meets them as they arrive or later, when the consumer has caught up."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(body)
                     + body)
        await writer.drain()
        await reader.read()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        answer = await client.stream("GET", f"http://127.0.0.1:{port}/", timeout=30)
        try:
            with pytest.raises(HttpClientError) as caught:
                async for _ in answer.aiter_raw():
                    pass
        finally:
            await answer.aclose()
        assert caught.value.kind == "protocol"
    finally:
        server.close()
        await server.wait_closed()
