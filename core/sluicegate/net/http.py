"""A lean HTTP/1.1 client for sink deliveries and upstream completions: pooled keep-alive connections and a C
response parser, no more.

A sink sends a body it already holds to a fixed URL and reads a short answer, hundreds of times a second
when thousands of teams log, on the event loop that also serves requests. Through aiohttp's client one such
POST cost 140-220 us of CPU; through this client, 30-40 us (``python -m bench.http_client``). The gateway's
upstream calls are the same shape (a body in memory, one answer, read whole or as a stream of server-sent
events), so the default upstream client (``sluicegate.providers.upstream.BuiltinUpstream``) sends them through it
too.

What it does: ``http`` and ``https`` (certificates verified against the system store, or a given
``ssl.SSLContext``); per-origin pools of keep-alive connections with a per-origin and a total limit and an
idle expiry; responses framed by ``Content-Length``, chunked, or ended by the server closing; ``gzip`` and
``deflate`` answers inflated; one timeout for the whole request; one quiet retry on a fresh connection when
a reused idle connection turns out to have been closed by the server before any byte of the answer (the race
every keep-alive client has); answers read whole, or as they arrive (:meth:`HttpClient.stream`, reading paused
while the consumer lags). What it does not: redirects, proxies, cookies, HTTP/2, streamed request bodies.

Responses are parsed by ``httptools`` (llhttp, the parser of Node.js and of uvicorn's ``httptools`` mode).
"""

from __future__ import annotations

import asyncio
import collections
import socket
import ssl
import time
import zlib
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import quote, urlsplit

import httptools

from sluicegate.sinks.destinations import literal_address

if TYPE_CHECKING:
    from sluicegate.sinks.destinations import DestinationPolicy

__all__ = ("HttpClient", "HttpClientError", "HttpTimeoutError", "Response", "StreamedResponse", "encode_headers")

MAX_RESPONSE_BYTES = 8 * 1024 * 1024
"""By default an answer bigger than this is refused (a sink reads status lines and short JSON or protobuf
bodies); ``HttpClient(max_response_bytes=...)`` sets another limit."""
_BIG_BODY = 64 * 1024  # above this the head and body are written separately instead of joined (a copy)
_STREAM_HIGH_WATER = 256 * 1024  # a streamed answer buffered beyond this pauses reading until it is consumed
_INFLATE_PIECE = 64 * 1024  # a compressed stream is inflated at most this much at a time
_COMPRESSED = frozenset({"gzip", "x-gzip", "deflate"})  # Content-Encodings the client inflates


def _inflater(encoding: str) -> Any:
    """A zlib decompressor for an answer in ``encoding`` (gzip or zlib framing, told apart by the header), or
    ``None`` when it is not compressed."""
    return zlib.decompressobj(wbits=47) if encoding in _COMPRESSED else None


class Response(NamedTuple):
    status: int
    headers: dict[str, str]
    """Header names in lower case; repeated headers joined with ``", "``."""
    body: bytes


class HttpClientError(Exception):
    """No usable answer: ``kind`` is ``connect``, ``refused`` (the destination policy refused every address the
    host resolved to; no connection was opened), ``tls``, ``timeout``, ``closed`` or ``protocol``.

    Transport failures are worth retrying; the dispatcher does.
    """

    retryable = True

    def __init__(self, message: str, *, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


class HttpTimeoutError(HttpClientError, TimeoutError):
    """The request did not complete within its timeout."""

    def __init__(self, message: str) -> None:
        super().__init__(message, kind="timeout")


def encode_headers(headers: Mapping[str, str]) -> bytes:
    """``headers`` as the lines of a request head, for reuse across requests; refuses CR, LF and NUL.

    ``Host``, ``Content-Length`` and ``Transfer-Encoding`` are the client's to write and are refused here.
    """
    lines = []
    for name, value in headers.items():
        name, value = str(name), str(value)
        if not name or any(c in name for c in " \t\r\n\0:") or any(c in value for c in "\r\n\0"):
            raise ValueError(f"header {name!r}: a header name must be a token and a value must not contain "
                             "CR, LF or NUL")
        if name.lower() in ("host", "content-length", "transfer-encoding"):
            raise ValueError(f"header {name!r} is set by the client")
        lines.append(f"{name}: {value.strip()}\r\n")
    return "".join(lines).encode("latin-1")


class _Origin(NamedTuple):
    """Where a URL's requests go, and the parts of the request line and head that depend on the URL alone."""

    key: tuple[Any, ...]  # (scheme, host, port), and the destination policy when the request has one
    host: str
    port: int
    tls: bool
    target: bytes  # path and query, percent-encoded as given
    host_line: bytes


def _origin(url: str) -> _Origin:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    if parts.username or parts.password:
        raise ValueError("credentials in the URL are not supported: send an Authorization header")
    tls = scheme == "https"
    host = parts.hostname
    port = parts.port or (443 if tls else 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if any(c in target for c in " \r\n\0"):
        raise ValueError(f"URL path must not contain spaces or control characters: {url!r}")
    if not target.isascii():
        target = quote(target, safe="/?&=%:@!$'()*+,;~-._")
    if not host.isascii():  # an internationalized name: the Host header carries its ASCII (punycode) form
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError as exc:
            raise ValueError(f"host name {host!r} cannot be encoded: {exc}") from None
    shown = f"[{host}]" if ":" in host else host
    default_port = port == (443 if tls else 80)
    host_line = f"Host: {shown if default_port else f'{shown}:{port}'}\r\n"
    return _Origin((scheme, host, port), host, port, tls, target.encode("ascii", "strict"),
                   host_line.encode("ascii"))


class _BodyStream:
    """The body of a streamed answer: chunks handed over as they arrive, reading paused while too many wait.

    A gzip/deflate body is inflated :data:`_INFLATE_PIECE` bytes at a time and only while less than
    :data:`_STREAM_HIGH_WATER` waits; the rest stays compressed (``tail``) until the consumer catches up, so a
    small chunk that inflates to gigabytes costs no more memory than a plain stream.
    """

    __slots__ = ("buffered", "chunks", "error", "finished", "inflater", "paused", "tail", "transport", "wakeup")

    def __init__(self, transport: asyncio.Transport, inflater: Any) -> None:
        self.chunks: collections.deque[bytes] = collections.deque()
        self.buffered = 0
        self.finished = False
        self.error: HttpClientError | None = None
        self.wakeup: asyncio.Future[None] | None = None
        self.transport = transport
        self.paused = False
        self.inflater = inflater  # a zlib decompressobj for gzip/deflate answers, else None
        self.tail = b""  # compressed bytes received and not inflated yet

    def _wake(self) -> None:
        wakeup = self.wakeup
        if wakeup is not None and not wakeup.done():
            wakeup.set_result(None)

    def _push(self, data: bytes) -> None:
        self.chunks.append(data)
        self.buffered += len(data)
        if self.buffered > _STREAM_HIGH_WATER and not self.paused:
            self.paused = True
            self.transport.pause_reading()
        self._wake()

    def _inflate(self) -> None:
        """Inflate held bytes while under the high-water mark, a piece at a time (raises ``zlib.error``); at the
        end of the answer, what the inflater still holds."""
        inflater = self.inflater
        while self.tail and self.buffered <= _STREAM_HIGH_WATER:
            data = inflater.decompress(self.tail, _INFLATE_PIECE)
            self.tail = inflater.unconsumed_tail
            if data:
                self._push(data)
        if self.tail:
            if not self.paused:  # the consumer is behind: read no more until it catches up
                self.paused = True
                self.transport.pause_reading()
        elif self.finished:
            rest = inflater.flush()
            if rest:
                self._push(rest)

    def feed(self, data: bytes) -> None:
        if self.inflater is None:
            if data:
                self._push(data)
            return
        self.tail = self.tail + data if self.tail else data
        try:
            self._inflate()
        except zlib.error:
            self.tail = b""
            raise  # stops the parser: a protocol failure

    def _inflate_or_fail(self) -> None:
        """:meth:`_inflate` off the parser (the consumer caught up, or the answer ended): bad data ends the stream
        with a protocol error for the consumer."""
        try:
            self._inflate()
        except zlib.error as exc:
            self.tail = b""
            self.error = HttpClientError(f"answer body is not valid gzip/deflate: {exc}", kind="protocol")

    def finish(self) -> None:
        self.finished = True
        if self.inflater is not None:
            self._inflate_or_fail()
        self._wake()

    def fail(self, exc: HttpClientError) -> None:
        if not self.finished and self.error is None:
            self.error = exc
            self._wake()

    async def next(self) -> bytes | None:
        """The next chunk; ``None`` at the end; raises :class:`HttpClientError` when the answer broke off."""
        while True:
            if self.tail and self.buffered <= _STREAM_HIGH_WATER // 2:
                self._inflate_or_fail()
            if self.chunks:
                data = self.chunks.popleft()
                self.buffered -= len(data)
                if self.paused and not self.tail and self.buffered <= _STREAM_HIGH_WATER // 2:
                    self.paused = False
                    self.transport.resume_reading()
                return data
            if self.error is not None:
                raise self.error
            if self.finished and not self.tail:
                return None
            self.wakeup = asyncio.get_running_loop().create_future()
            try:
                await self.wakeup
            finally:
                self.wakeup = None


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection; at most one request at a time (no pipelining)."""

    __slots__ = ("chunks", "closed", "done", "framed", "headers", "idle_since", "keep_alive", "limit", "origin_key",
                 "oversized", "parser", "received", "requests", "size", "status", "stream", "streaming", "transport",
                 "waiter")

    def __init__(self, origin_key: tuple[Any, ...], limit: int = MAX_RESPONSE_BYTES) -> None:
        self.origin_key = origin_key
        self.limit = limit  # bytes of answer body accepted
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[Response] | None = None
        self.status = 0
        self.headers: dict[str, str] = {}
        self.chunks: list[bytes] = []
        self.size = 0
        self.framed = False  # Content-Length or chunked: a close before the end is a truncation
        self.done = False
        self.keep_alive = False
        self.received = False  # any byte of the current answer
        self.closed = False
        self.requests = 0
        self.idle_since = 0.0
        self.oversized = False
        self.streaming = False  # the current request wants its answer's body as a stream
        self.stream: _BodyStream | None = None  # that stream, once the answer's head has arrived

    # asyncio.Protocol --------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.waiter is None or (self.waiter.done() and (self.stream is None or self.done)):
            self._fail(HttpClientError("the server sent data without a request", kind="protocol"))
            return
        self.received = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            reason = (f"answer larger than {self.limit} bytes" if self.oversized
                      else f"malformed HTTP response: {exc}")
            self._fail(HttpClientError(reason, kind="protocol"))

    def eof_received(self) -> bool | None:
        return None  # close the transport; connection_lost settles the request

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        stream = self.stream
        if stream is not None and not self.done:  # the head was handed over; the body was streaming
            if self.status and not self.framed:  # ended by the close: complete now
                self.done = True
                self.keep_alive = False
                stream.finish()
            else:
                reason = f": {exc}" if exc else ""
                stream.fail(HttpClientError(f"the server closed the connection in the middle of its answer{reason}",
                                            kind="closed"))
            return
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        if self.status and not self.framed:  # an answer ended by the close: it is complete now
            self.keep_alive = False
            self._complete()
            return
        reason = f": {exc}" if exc else ""
        what = "before answering" if not self.received else "in the middle of its answer"
        waiter.set_exception(HttpClientError(f"the server closed the connection {what}{reason}",
                                             kind="closed"))

    # httptools callbacks ----------------------------------------------------------------------------
    def on_message_begin(self) -> None:
        self.status = 0
        self.headers = {}
        self.chunks = []
        self.size = 0
        self.framed = False

    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        if key in ("content-length", "transfer-encoding"):
            self.framed = True
        old = self.headers.get(key)
        self.headers[key] = text if old is None else f"{old}, {text}"

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        if self.status in (204, 304):
            self.framed = True  # no body, whatever the headers say
        if self.streaming and not 100 <= self.status < 200:
            waiter = self.waiter
            if waiter is None or waiter.done() or self.transport is None:
                return
            self.stream = _BodyStream(self.transport,
                                      _inflater(self.headers.get("content-encoding", "").strip().lower()))
            waiter.set_result(Response(self.status, self.headers, b""))

    def on_body(self, body: bytes) -> None:
        if self.stream is not None:
            self.stream.feed(body)
            return
        self.size += len(body)
        if self.size > self.limit:
            self.oversized = True
            raise ValueError("oversized")  # stops the parser; data_received reports it
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        if 100 <= self.status < 200:  # interim (100 Continue, 103 Early Hints): the real answer follows
            return
        self.keep_alive = self.parser.should_keep_alive()
        if self.stream is not None:
            self.done = True
            self.stream.finish()
            return
        self._complete()

    # ------------------------------------------------------------------------------------------------
    def _complete(self) -> None:
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        body = b"".join(self.chunks) if len(self.chunks) != 1 else self.chunks[0]
        self.chunks = []
        encoding = self.headers.get("content-encoding", "").strip().lower()
        inflater = _inflater(encoding) if body else None
        if inflater is not None:
            problem = ""
            try:
                body = inflater.decompress(body, self.limit)
                if inflater.unconsumed_tail:
                    problem = f"answer larger than {self.limit} bytes inflated"
            except zlib.error as exc:
                problem = f"answer body is not valid {encoding}: {exc}"
            if problem:
                self.keep_alive = False
                waiter.set_exception(HttpClientError(problem, kind="protocol"))
                return
        self.done = True
        waiter.set_result(Response(self.status, self.headers, body))

    def _fail(self, exc: HttpClientError) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        if self.stream is not None:
            self.stream.fail(exc)
        self.close()

    def start(self, loop: asyncio.AbstractEventLoop, data: bytes,
              body: bytes | None, *, streaming: bool = False) -> asyncio.Future[Response]:
        self.waiter = waiter = loop.create_future()
        self.done = self.received = self.keep_alive = False
        self.streaming = streaming
        self.stream = None
        self.requests += 1
        assert self.transport is not None
        self.transport.write(data)
        if body is not None:
            self.transport.write(body)
        return waiter

    def reusable(self, now: float, expiry: float) -> bool:
        return (not self.closed and self.transport is not None and not self.transport.is_closing()
                and now - self.idle_since < expiry)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


class _Pool:
    __slots__ = ("idle", "open", "waiters")

    def __init__(self) -> None:
        self.idle: list[_Connection] = []  # most recently used last
        self.open = 0
        self.waiters: collections.deque[asyncio.Future[None]] = collections.deque()


class HttpClient:
    """Pooled HTTP/1.1 requests with in-memory bodies; one per event loop (its connections are the loop's).

    ``max_per_origin`` bounds the connections to one scheme/host/port, ``max_connections`` all of them; a
    request over a limit waits for a connection (within its timeout). Idle connections close after
    ``keepalive_expiry`` seconds. An answer body over ``max_response_bytes`` (inflated, when compressed) fails
    the request.
    """

    def __init__(self, *, user_agent: str, max_per_origin: int = 64, max_connections: int = 512,
                 keepalive_expiry: float = 30.0, ssl_context: ssl.SSLContext | None = None,
                 max_response_bytes: int = MAX_RESPONSE_BYTES) -> None:
        self._agent_line = encode_headers({"User-Agent": user_agent})
        self.max_per_origin = max(1, max_per_origin)
        self.max_connections = max(self.max_per_origin, max_connections)
        self.keepalive_expiry = keepalive_expiry
        self.max_response_bytes = max(1, max_response_bytes)
        self._ssl = ssl_context
        self._pools: dict[tuple[Any, ...], _Pool] = {}
        self._open = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()  # for the total limit
        self._origins: dict[str, _Origin] = {}
        self._connections: set[_Connection] = set()
        self._swept_at = time.monotonic()
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def open_connections(self) -> int:
        return self._open

    async def post(self, url: str, body: bytes, *, headers: bytes = b"", timeout: float,
                   policy: DestinationPolicy | None = None) -> Response:
        """``POST`` ``body`` to ``url`` with ``headers`` (from :func:`encode_headers`): the answer, whatever
        its status. Raises :class:`HttpClientError` when no answer came (:class:`HttpTimeoutError` after
        ``timeout`` seconds, connecting included).

        ``policy`` (a sink's ``destination_policy``): every address the host resolves to is checked before a
        connection to it opens, and connections are pooled apart from other policies' (kind ``refused`` when
        every address is refused)."""
        return await self.request("POST", url, body=body, headers=headers, timeout=timeout, policy=policy)

    async def request(self, method: str, url: str, *, body: bytes = b"", headers: bytes = b"",
                      timeout: float, policy: DestinationPolicy | None = None) -> Response:
        _, response, _ = await self._exchange(method, url, body, headers, timeout, streaming=False, policy=policy)
        return response

    async def stream(self, method: str, url: str, *, body: bytes = b"", headers: bytes = b"",
                     timeout: float, policy: DestinationPolicy | None = None) -> StreamedResponse:
        """Like :meth:`request`, but returns once the answer's status and headers have arrived; its body comes
        from :meth:`StreamedResponse.aiter_raw` as it arrives. ``timeout`` covers the whole answer, body
        included; :meth:`StreamedResponse.aclose` must follow (it returns a finished connection to the pool and
        closes an unfinished one)."""
        conn, response, timer = await self._exchange(method, url, body, headers, timeout, streaming=True,
                                                     policy=policy)
        assert timer is not None
        return StreamedResponse(self, conn, response, timer)

    async def _exchange(self, method: str, url: str, body: bytes, headers: bytes, timeout: float, *,
                        streaming: bool, policy: DestinationPolicy | None = None,
                        ) -> tuple[_Connection, Response, asyncio.TimerHandle | None]:
        if self._closed:
            raise HttpClientError("the HTTP client is closed", kind="closed")
        origin = self._origins.get(url)
        if origin is None:
            origin = _origin(url)
            if len(self._origins) >= 4096:
                self._origins.clear()
            self._origins[url] = origin
        if policy is not None and policy.trusted:
            policy = None
        if policy is not None:
            # Pooled apart: a connection opened unchecked (or under another policy) must not carry this request.
            origin = origin._replace(key=(*origin.key, policy))
        head = b"".join((method.encode("ascii"), b" ", origin.target, b" HTTP/1.1\r\n", origin.host_line,
                         self._agent_line, headers, b"Content-Length: %d\r\n\r\n" % len(body)))
        if len(body) <= _BIG_BODY:
            data, extra = head + body, None
        else:
            data, extra = head, body
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        for _ in range(2):
            conn = self._idle_connection(origin)
            if conn is None:  # connect, or wait for a connection: the slow path, under an asyncio timeout
                try:
                    async with asyncio.timeout_at(deadline):
                        conn = await self._acquire(loop, origin, policy)
                except TimeoutError:
                    raise HttpTimeoutError(f"no connection to {_shown(origin)} within {timeout:g}s") from None
            reused = conn.requests > 0
            waiter = conn.start(loop, data, extra, streaming=streaming)
            # A plain timer rather than asyncio.timeout(): a third of the client's CPU per request went there.
            timer = loop.call_at(deadline, _expire, conn, origin, timeout)
            try:
                response = await waiter
            except HttpClientError as exc:
                timer.cancel()
                self._release(conn, reuse=False)
                if reused and exc.kind == "closed" and not conn.received:
                    # The server closed it while idle (a restart, or its keep-alive timeout): the other idle
                    # connections to it are likely gone too, so the one more try goes on a new connection.
                    self._drop_idle(origin)
                    continue
                if isinstance(exc, HttpTimeoutError):
                    raise
                raise HttpClientError(f"{_shown(origin)}: {exc}", kind=exc.kind) from None
            except BaseException:  # cancelled mid-request: the answer may still come, so the connection goes
                timer.cancel()
                self._release(conn, reuse=False)
                raise
            if streaming:
                return conn, response, timer  # the timer bounds the body too; StreamedResponse.aclose ends it
            timer.cancel()
            self._release(conn, reuse=conn.keep_alive)
            return conn, response, None
        raise AssertionError("unreachable")  # pragma: no cover

    def _drop_idle(self, origin: _Origin) -> None:
        pool = self._pools.get(origin.key)
        if pool is not None:
            idle, pool.idle = pool.idle, []
            for conn in idle:
                self._discard(pool, conn)

    def _idle_connection(self, origin: _Origin) -> _Connection | None:
        """A pooled connection to ``origin`` that is still open and fresh, if there is one."""
        pool = self._pools.get(origin.key)
        if pool is None or not pool.idle:
            return None
        now = time.monotonic()
        idle = pool.idle
        while idle:
            conn = idle.pop()
            if conn.reusable(now, self.keepalive_expiry):
                return conn
            self._discard(pool, conn)
        return None

    async def _acquire(self, loop: asyncio.AbstractEventLoop, origin: _Origin,
                       policy: DestinationPolicy | None = None) -> _Connection:
        while True:
            if self._closed:
                raise HttpClientError("the HTTP client is closed", kind="closed")
            pool = self._pools.get(origin.key)  # again each turn: a sweep drops pools with no connection
            if pool is None:
                pool = self._pools[origin.key] = _Pool()
            conn = self._idle_connection(origin)
            if conn is not None:
                return conn
            if pool.open < self.max_per_origin and (self._open < self.max_connections
                                                    or self._close_one_idle()):
                return await self._connect(loop, origin, pool, policy)
            waiter = loop.create_future()
            (pool.waiters if pool.open >= self.max_per_origin else self._waiters).append(waiter)
            try:
                await waiter
            except BaseException:
                if not waiter.cancelled() and waiter.done():
                    self._wake(pool)  # we were woken but leave: pass the turn on
                raise

    async def _connect(self, loop: asyncio.AbstractEventLoop, origin: _Origin, pool: _Pool,
                       policy: DestinationPolicy | None = None) -> _Connection:
        pool.open += 1
        self._open += 1
        context = None
        if origin.tls:
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
            context = self._ssl
        try:
            if policy is None:
                _, conn = await loop.create_connection(
                    lambda: _Connection(origin.key, self.max_response_bytes), origin.host, origin.port, ssl=context,
                    server_hostname=origin.host if context is not None else None)
            else:
                conn = await self._connect_checked(loop, origin, policy, context)
        except BaseException as exc:
            pool.open -= 1
            self._open -= 1
            self._wake(pool)
            if isinstance(exc, _Refused):
                error = HttpClientError(f"{_shown(origin)}: {exc}", kind="refused")
                raise error from None
            if isinstance(exc, ssl.SSLError):
                raise HttpClientError(f"{_shown(origin)}: TLS failed: {exc}", kind="tls") from None
            if isinstance(exc, OSError):
                reason = exc.strerror or str(exc) or type(exc).__name__
                raise HttpClientError(f"cannot connect to {_shown(origin)}: {reason}",
                                      kind="connect") from None
            raise
        self._connections.add(conn)
        return conn

    async def _connect_checked(self, loop: asyncio.AbstractEventLoop, origin: _Origin, policy: DestinationPolicy,
                               context: ssl.SSLContext | None) -> _Connection:
        """Resolve ``origin``'s host, drop the addresses ``policy`` refuses, and connect to the first of the rest
        that answers: by address, so nothing resolves again between check and connect (DNS rebinding); the name
        stays in the TLS handshake (SNI, certificate check) and the ``Host`` header."""
        literal = literal_address(origin.host)
        if literal is not None:
            addresses = [literal]
        else:
            infos = await loop.getaddrinfo(origin.host, origin.port, type=socket.SOCK_STREAM,
                                           proto=socket.IPPROTO_TCP)
            addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        allowed = [a for a in addresses if policy.address_problem(a, origin.host) is None]
        if not allowed:
            raise _Refused(policy.address_problem(addresses[0], origin.host) if addresses else "no address")
        error: OSError | None = None
        for address in allowed:
            try:
                _, conn = await loop.create_connection(
                    lambda: _Connection(origin.key, self.max_response_bytes), address, origin.port, ssl=context,
                    server_hostname=origin.host if context is not None else None)
            except ssl.SSLError:
                raise
            except OSError as exc:
                error = exc
                continue
            return conn
        assert error is not None
        raise error

    def _release(self, conn: _Connection, *, reuse: bool) -> None:
        pool = self._pools.get(conn.origin_key)
        if pool is None:  # the client was closed meanwhile
            conn.close()
            return
        conn.waiter = None
        if reuse and conn.done and not conn.closed and not self._closed:
            conn.idle_since = time.monotonic()
            pool.idle.append(conn)
        else:
            self._discard(pool, conn)
        self._wake(pool)
        if conn.idle_since - self._swept_at > self.keepalive_expiry / 2:
            self._sweep(conn.idle_since)

    def _discard(self, pool: _Pool, conn: _Connection) -> None:
        conn.close()
        self._connections.discard(conn)
        pool.open -= 1
        self._open -= 1

    def _wake(self, pool: _Pool) -> None:
        """A connection came back or closed: one waiter of its origin and one for the total limit retry."""
        for waiters in (pool.waiters, self._waiters):
            while waiters:
                waiter = waiters.popleft()
                if not waiter.done():
                    waiter.set_result(None)
                    break

    def _close_one_idle(self) -> bool:
        """At the total limit: close the longest-idle connection of any origin to make room; False if none."""
        oldest: tuple[float, _Pool] | None = None
        for pool in self._pools.values():
            if pool.idle and (oldest is None or pool.idle[0].idle_since < oldest[0]):
                oldest = (pool.idle[0].idle_since, pool)
        if oldest is None:
            return False
        pool = oldest[1]
        self._discard(pool, pool.idle.pop(0))
        return True

    def _sweep(self, now: float) -> None:
        """Close idle connections past their expiry (at most twice per expiry period, from ``_release``)."""
        self._swept_at = now
        for key, pool in list(self._pools.items()):
            keep = []
            for conn in pool.idle:
                if conn.reusable(now, self.keepalive_expiry):
                    keep.append(conn)
                else:
                    self._discard(pool, conn)
            pool.idle = keep
            if not pool.open and not pool.waiters:
                del self._pools[key]

    async def aclose(self) -> None:
        """Close every connection; requests in flight fail. Idempotent."""
        self._closed = True
        pools, self._pools = self._pools, {}
        connections, self._connections = self._connections, set()
        for conn in connections:
            conn.close()
        for pool in pools.values():
            for waiter in pool.waiters:
                if not waiter.done():
                    waiter.set_result(None)
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._open = 0
        await asyncio.sleep(0)  # let the transports' connection_lost run


def _expire(conn: _Connection, origin: _Origin, timeout: float) -> None:
    exc = HttpTimeoutError(f"no complete answer from {_shown(origin)} within {timeout:g}s")
    waiter = conn.waiter
    if waiter is not None and not waiter.done():
        waiter.set_exception(exc)
    elif conn.stream is not None and not conn.done:
        conn.stream.fail(exc)
        conn.close()


class StreamedResponse:
    """An answer whose body is read as it arrives (:meth:`HttpClient.stream`)."""

    __slots__ = ("_client", "_closed", "_conn", "_timer", "headers", "status")

    def __init__(self, client: HttpClient, conn: _Connection, head: Response, timer: asyncio.TimerHandle) -> None:
        self.status = head.status
        self.headers = head.headers
        self._client = client
        self._conn = conn
        self._timer = timer
        self._closed = False

    async def aiter_raw(self) -> AsyncIterator[bytes]:
        """The body's bytes as they arrive (inflated when gzip/deflate); raises :class:`HttpClientError` when
        the answer breaks off or its timeout passes."""
        stream = self._conn.stream
        assert stream is not None
        while True:
            data = await stream.next()
            if data is None:
                return
            yield data

    async def read(self, limit: int | None = None) -> bytes:
        """The rest of the body at once (an error answer's); more than ``limit`` bytes (default: the client's
        ``max_response_bytes``) fails with :class:`HttpClientError`."""
        limit = self._client.max_response_bytes if limit is None else limit
        parts: list[bytes] = []
        size = 0
        async for data in self.aiter_raw():
            size += len(data)
            if size > limit:
                raise HttpClientError(f"answer larger than {limit} bytes", kind="protocol")
            parts.append(data)
        return b"".join(parts)

    async def aclose(self) -> None:
        """Done with the answer: a finished connection goes back to the pool, an unfinished one is closed."""
        if self._closed:
            return
        self._closed = True
        self._timer.cancel()
        conn = self._conn
        stream = conn.stream
        if stream is not None and stream.paused and not conn.closed and conn.transport is not None:
            stream.paused = False
            conn.transport.resume_reading()
        conn.stream = None
        self._client._release(conn, reuse=conn.done and conn.keep_alive)


class _Refused(Exception):
    """Every address of a host refused by the destination policy (reported as ``HttpClientError`` ``refused``)."""


def _shown(origin: _Origin) -> str:
    scheme = "https" if origin.tls else "http"
    return f"{scheme}://{origin.host}:{origin.port}"
