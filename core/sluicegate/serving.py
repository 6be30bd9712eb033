"""The event loop the gateway serves on: uvloop, with listening sockets that accept every waiting connection at once.

uvloop (libuv) accepts one new connection per turn of the event loop. A busy gateway's turn takes a few milliseconds
(64 requests in flight, batches of log events being encoded), so a burst of new connections waited in the kernel's
accept queue one turn each: 64 connections opened at once took 300 ms to be accepted (``bench/README.md``, eighth
round), and a client that opens a connection per request could not get more than one accepted per turn. Plain
asyncio accepts up to the backlog per wake-up but is slower at everything else.

:class:`GatewayLoop` is uvloop with ``create_server`` replaced for plain TCP: the listening socket is watched with
``add_reader``, every connection waiting in the queue is accepted when it is readable (at most ``backlog`` per
wake-up, as asyncio does), and each is handed to uvloop's own transport (``connect_accepted_socket``), which is what
serves it from then on. TLS and UNIX sockets, which the gateway's command line does not use, keep uvloop's server.

``sluicegate serve`` runs uvicorn with ``--loop sluicegate.serving:new_event_loop``.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
from typing import TYPE_CHECKING, Any

import uvloop

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

__all__ = ("AcceptingServer", "GatewayLoop", "new_event_loop")

log = logging.getLogger("sluicegate.serving")

_OUT_OF_RESOURCES = frozenset((errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM))
_RESUME_AFTER = 1.0
"""Seconds to stop accepting after running out of file descriptors or memory (asyncio waits as long)."""


class AcceptingServer(asyncio.AbstractServer):
    """Listening sockets whose waiting connections are all accepted as soon as one is readable."""

    def __init__(self, loop: asyncio.AbstractEventLoop, protocol_factory: Callable[[], asyncio.BaseProtocol],
                 sockets: list[socket.socket], backlog: int) -> None:
        self._loop = loop
        self._protocol_factory = protocol_factory
        self._sockets = sockets
        self._backlog = max(1, backlog)
        self._serving = False
        self._closed = False
        self._handing_over: set[asyncio.Task[Any]] = set()  # connections on their way to a transport
        self._closing: asyncio.Future[None] | None = None  # what serve_forever waits on

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return tuple(self._sockets)

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def is_serving(self) -> bool:
        return self._serving

    async def start_serving(self) -> None:
        self._start()

    async def serve_forever(self) -> None:
        """Serve until :meth:`close`."""
        self._start()
        if not self._closed:
            self._closing = self._loop.create_future()
            await self._closing

    def _start(self) -> None:
        if self._serving or self._closed:
            return
        self._serving = True
        for sock in self._sockets:
            sock.setblocking(False)
            sock.listen(self._backlog)
            self._loop.add_reader(sock.fileno(), self._accept, sock)

    def _accept(self, sock: socket.socket) -> None:
        for _ in range(self._backlog):
            try:
                conn, _ = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno == errno.ECONNABORTED:  # the client gave up while queued: nothing to serve
                    continue
                if exc.errno in _OUT_OF_RESOURCES:
                    log.error("cannot accept connections on %s: %s; pausing for %.0fs", _name(sock), exc,
                              _RESUME_AFTER)
                    self._loop.remove_reader(sock.fileno())
                    self._loop.call_later(_RESUME_AFTER, self._resume, sock)
                    return
                log.error("accept failed on %s: %s", _name(sock), exc)
                return
            conn.setblocking(False)
            task = self._loop.create_task(self._hand_over(conn))
            self._handing_over.add(task)
            task.add_done_callback(self._handing_over.discard)

    def _resume(self, sock: socket.socket) -> None:
        if self._serving and not self._closed:
            self._loop.add_reader(sock.fileno(), self._accept, sock)

    async def _hand_over(self, conn: socket.socket) -> None:
        try:
            await self._loop.connect_accepted_socket(self._protocol_factory, sock=conn)
        except Exception as exc:  # the peer reset it already, or the protocol refused it: that connection only
            log.debug("dropped an accepted connection: %s", exc)
            conn.close()

    def close(self) -> None:
        """Stop listening and close the listening sockets; connections already accepted go on."""
        if self._closed:
            return
        self._closed = True
        self._serving = False
        for sock in self._sockets:
            if sock.fileno() >= 0:
                self._loop.remove_reader(sock.fileno())
                sock.close()
        if self._closing is not None and not self._closing.done():
            self._closing.set_result(None)

    async def wait_closed(self) -> None:
        if self._handing_over:
            await asyncio.wait(list(self._handing_over))


def _name(sock: socket.socket) -> str:
    try:
        return str(sock.getsockname())
    except OSError:
        return "a closed socket"


def _bind(host: str | list[str] | None, port: int | None, *, reuse_address: bool | None,
          reuse_port: bool | None) -> list[socket.socket]:
    """Sockets bound to ``host`` and ``port`` as ``asyncio``'s ``create_server`` binds them (the server listens on
    them when it starts)."""
    hosts: Iterable[str | None] = [host] if host is None or isinstance(host, str) else host
    infos = {info for each in hosts for info in socket.getaddrinfo(each or None, port, type=socket.SOCK_STREAM,
                                                                     flags=socket.AI_PASSIVE)}
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in sorted(infos, key=lambda i: i[0]):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            if reuse_address is None or reuse_address:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    if not sockets:
        raise OSError(f"no address to listen on for host {host!r}")
    return sockets


class GatewayLoop(uvloop.Loop):  # type: ignore[misc]
    """uvloop whose plain TCP servers accept every waiting connection per wake-up (see the module's docstring)."""

    async def create_server(self, protocol_factory: Callable[[], asyncio.BaseProtocol], host: Any = None,
                            port: Any = None, *, sock: socket.socket | None = None, backlog: int = 100,
                            ssl: Any = None, reuse_address: bool | None = None, reuse_port: bool | None = None,
                            start_serving: bool = True, **options: Any) -> asyncio.AbstractServer:
        family = sock.family if sock is not None else None
        if ssl is not None or options or family not in (None, socket.AF_INET, socket.AF_INET6):
            return await super().create_server(protocol_factory, host, port, sock=sock, backlog=backlog, ssl=ssl,
                                               reuse_address=reuse_address, reuse_port=reuse_port,
                                               start_serving=start_serving, **options)
        if sock is not None:
            if host is not None or port is not None:
                raise ValueError("host/port and sock can not be specified at the same time")
            sockets = [sock]
        else:
            # Bound here, once at start-up: a thread for the name lookup would stay in the pool for good.
            sockets = _bind(host, port, reuse_address=reuse_address, reuse_port=reuse_port)
        server = AcceptingServer(self, protocol_factory, sockets, backlog)
        if start_serving:
            server._start()
            _announce()
        return server


ANNOUNCE_ENV = "SLUICEGATE_ANNOUNCE"


def _announce() -> None:
    """Print ``sluicegate serve``'s "listening on" line, once per process, now that the socket accepts and the app
    has started (uvicorn binds after the lifespan start-up)."""
    line = os.environ.pop(ANNOUNCE_ENV, None)
    if line:
        print(line, flush=True)


def new_event_loop() -> asyncio.AbstractEventLoop:
    """The loop factory uvicorn's ``--loop`` takes."""
    return GatewayLoop()
