"""uvicorn's httptools protocol with the two limits it lacks: a deadline for a request's head and a size cap on it.

Without them a client could hold a connection for ever by sending its headers a byte at a time (or nothing at all:
uvicorn arms its keep-alive timer only after a response), and an 8 MiB bearer token was parsed and kept in memory.
Here a connection must deliver each request head (request line and headers) within ``header_timeout`` seconds of
its first byte (or of connecting), else it gets ``408`` and is closed; a head larger than ``max_header_bytes`` gets
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
    """:class:`HttpToolsProtocol` with a per-request head deadline and head size cap (see the module)."""

    header_timeout: float = _limit(HEADER_TIMEOUT_ENV, 10.0)
    max_header_bytes: int = int(_limit(MAX_HEADER_BYTES_ENV, 64 * 1024))

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True
        self._head_bytes = 0
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not self._in_head:
            super().data_received(data)
            return
        if self._head_timer is None:
            self._arm_head_timer()
        room = self.max_header_bytes - self._head_bytes
        if len(data) <= room:
            self._head_bytes += len(data)
            super().data_received(data)
            return
        # Feed only what fits: if the head ends within it, the rest is body (or the next request) and goes on.
        self._head_bytes += room
        super().data_received(data[:room])
        if self._in_head:
            self._refuse(431, "Request Header Fields Too Large",
                         f"the request line and headers exceed {self.max_header_bytes} bytes")
            return
        if not self.transport.is_closing():
            self.data_received(data[room:])

    # parser callbacks ---------------------------------------------------------------------------------
    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_bytes = 0
        self._cancel_head_timer()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._in_head = True  # the next bytes on this connection start the next request's head
        super().on_message_complete()

    # limits -------------------------------------------------------------------------------------------
    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        if self.header_timeout > 0:
            self._head_timer = self.loop.call_later(self.header_timeout, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._in_head and self.transport is not None and not self.transport.is_closing():
            self._refuse(408, "Request Timeout",
                         f"the request line and headers did not arrive within {self.header_timeout:g} s")

    def _refuse(self, status: int, reason: str, message: str) -> None:
        log.info("closing a connection from %s: %s", self.client[0] if self.client else "?", message)
        self._cancel_head_timer()
        body = error_body(message, type="invalid_request_error", code=str(status))
        self.transport.write(b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                             b"connection: close\r\n\r\n" % (status, reason.encode(), len(body)) + body)
        self.transport.close()
        self._in_head = False
