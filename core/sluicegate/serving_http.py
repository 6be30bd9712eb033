"""uvicorn's httptools protocol with the two limits it lacks: a deadline for a request's head and a size cap on it.

Without them a client could hold a connection for ever by sending its headers a byte at a time (or nothing at all:
uvicorn arms its keep-alive timer only after a response), and an 8 MiB bearer token was parsed and kept in memory.
Here a connection must deliver each request head (request line and headers) within ``header_timeout`` seconds of
its first byte (or of connecting), else it gets ``408`` and is closed (checked by a sweep every quarter of the
timeout, so up to a quarter later); a head larger than ``max_header_bytes`` gets
``431`` and is closed, and the bytes past the cap are never handed to the parser.

``sluicegate serve`` runs uvicorn with ``--http sluicegate.serving_http:GatewayHttpProtocol``; the limits come from
``sluicegate_settings`` through the environment the serving process is started with (``SLUICEGATE_HEADER_TIMEOUT``,
``SLUICEGATE_MAX_HEADER_BYTES``), read once per process.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from sluicegate.errors import error_body

if TYPE_CHECKING:
    import asyncio

__all__ = ("HEADER_TIMEOUT_ENV", "MAX_HEADER_BYTES_ENV", "GatewayHttpProtocol")

log = logging.getLogger("sluicegate.serving")

HEADER_TIMEOUT_ENV = "SLUICEGATE_HEADER_TIMEOUT"
MAX_HEADER_BYTES_ENV = "SLUICEGATE_MAX_HEADER_BYTES"


def _limit(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name) or default)
    except ValueError:
        return default


class GatewayHttpProtocol(HttpToolsProtocol):
    """:class:`HttpToolsProtocol` with a per-request head deadline and head size cap (see the module).

    The deadline costs the request path one clock read per request: no timer is armed per request (a timer armed
    and cancelled for every request cost ~10 us, ``bench.protocol``). One sweep per server, every
    ``header_timeout / 4`` seconds (at most 1 s), closes the connections whose head started too long ago.
    """

    header_timeout: float = _limit(HEADER_TIMEOUT_ENV, 10.0)
    max_header_bytes: int = int(_limit(MAX_HEADER_BYTES_ENV, 64 * 1024))

    @classmethod
    def read_limits(cls) -> None:
        """Read the limits from the environment again (it was set after this module was imported)."""
        cls.header_timeout = _limit(HEADER_TIMEOUT_ENV, 10.0)
        cls.max_header_bytes = int(_limit(MAX_HEADER_BYTES_ENV, 64 * 1024))

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True
        self._head_bytes = 0
        self._head_started = 0.0  # loop time the current head's first byte (or the connection) came; 0: not yet

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._head_started = self.loop.time()
        if self.header_timeout > 0 and getattr(self.server_state, "_sluicegate_head_sweep", None) is None:
            self._schedule_sweep()

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            if not self._head_started:
                self._head_started = self.loop.time()
            self._head_bytes += len(data)
            if self._head_bytes > self.max_header_bytes:
                self._over_cap(data)
                return
        super().data_received(data)

    def _over_cap(self, data: bytes) -> None:
        # Feed only what fits: if the head ends within it, the rest is body (or the next request) and goes on.
        room = self.max_header_bytes - (self._head_bytes - len(data))
        self._head_bytes = self.max_header_bytes
        super().data_received(data[:room])
        if self._in_head:
            self._refuse(431, "Request Header Fields Too Large",
                         f"the request line and headers exceed {self.max_header_bytes} bytes")
        elif not self.transport.is_closing():
            self.data_received(data[room:])

    # parser callbacks ---------------------------------------------------------------------------------
    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_bytes = 0
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._in_head = True  # the next bytes on this connection start the next request's head
        self._head_started = 0.0
        super().on_message_complete()

    # the deadline -------------------------------------------------------------------------------------
    def _schedule_sweep(self) -> None:
        state = self.server_state
        interval = min(1.0, self.header_timeout / 4)

        def sweep() -> None:
            if not state.connections:  # idle server: the next connection schedules the sweep again
                state._sluicegate_head_sweep = None  # type: ignore[attr-defined]
                return
            deadline = self.loop.time() - self.header_timeout
            for connection in list(state.connections):
                if (isinstance(connection, GatewayHttpProtocol) and connection._in_head
                        and 0 < connection._head_started <= deadline):
                    connection._head_timed_out()
            state._sluicegate_head_sweep = self.loop.call_later(  # type: ignore[attr-defined]
                interval, sweep)

        state._sluicegate_head_sweep = self.loop.call_later(interval, sweep)  # type: ignore[attr-defined]

    def _head_timed_out(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self._refuse(408, "Request Timeout",
                         f"the request line and headers did not arrive within {self.header_timeout:g} s")

    def _refuse(self, status: int, reason: str, message: str) -> None:
        log.info("closing a connection from %s: %s", self.client[0] if self.client else "?", message)
        body = error_body(message, type="invalid_request_error", code=str(status))
        self.transport.write(b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                             b"connection: close\r\n\r\n" % (status, reason.encode(), len(body)) + body)
        self.transport.close()
        self._in_head = False
