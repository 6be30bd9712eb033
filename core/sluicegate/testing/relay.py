"""A TCP relay on a fixed loopback port, for outages a test can switch on and off in front of a real server."""

from __future__ import annotations

import asyncio
import socket
from contextlib import suppress

__all__ = ("TcpRelay",)


class TcpRelay:
    """Relays ``127.0.0.1:port`` to ``127.0.0.1:target_port`` while open; closed, the port refuses connections.

    The port is chosen once and kept across :meth:`close` and :meth:`open`, so a sink configured with it sees the
    destination go away and come back. :meth:`close` also cuts the connections already relayed (a pooled
    keep-alive connection must not outlive the outage). Runs in the caller's event loop.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.connections = 0
        """Connections accepted while open, over the relay's life."""
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def is_open(self) -> bool:
        return self._server is not None

    async def open(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port, reuse_address=True)

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
        await server.wait_closed()

    async def __aenter__(self) -> TcpRelay:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._server is None:  # accepted just as the relay closed
            writer.transport.abort()
            return
        self.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with suppress(ConnectionError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        try:
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        finally:
            self._writers.difference_update((writer, up_writer))
