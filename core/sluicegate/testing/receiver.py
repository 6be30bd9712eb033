"""A loopback HTTP server that records every request, for testing sinks against a real socket.

It runs in its own thread with its own event loop, so a test's loop (and the gateway in it) never shares a
scheduler with it: a receiver told to hang really hangs only the connection that hit it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import threading
import time
from collections.abc import Callable
from typing import Any

import msgspec
from aiohttp import web

__all__ = ("Behaviour", "HttpReceiver", "Recorded")


class Recorded(msgspec.Struct, kw_only=True):
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    status: int

    def json(self) -> Any:
        body = self.body
        # aiohttp already inflates gzip request bodies; inflate here only what is still compressed.
        if body[:2] == b"\x1f\x8b":
            body = gzip.decompress(body)
        return msgspec.json.decode(body)


HANG_LIMIT = 30.0
"""Seconds a ``hang=True`` request is held at most (released earlier when the receiver stops)."""


class Behaviour(msgspec.Struct, kw_only=True):
    status: int = 200
    fail_times: int = 0
    fail_status: int = 503
    hang: bool = False
    body: bytes = b"{}"
    require_header: tuple[str, str] | None = None


class HttpReceiver:
    """Start with ``with HttpReceiver() as receiver:``; ``receiver.url`` is ``http://127.0.0.1:PORT``."""

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self._behaviours: dict[str, Behaviour] = {}
        self._condition = threading.Condition()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._release = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def behave(self, path_prefix: str, **behaviour: Any) -> None:
        """Answer requests whose path starts with ``path_prefix`` this way (longest prefix wins)."""
        with self._condition:
            self._behaviours[path_prefix] = Behaviour(**behaviour)

    def _behaviour(self, path: str) -> tuple[str, Behaviour]:
        matches = [p for p in self._behaviours if path.startswith(p)]
        if not matches:
            return "", Behaviour()
        prefix = max(matches, key=len)
        return prefix, self._behaviours[prefix]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        with self._condition:
            prefix, behaviour = self._behaviour(request.path)
            status = behaviour.status
            if behaviour.require_header is not None:
                name, value = behaviour.require_header
                if request.headers.get(name) != value:
                    status = 401
            if status < 400 and behaviour.fail_times > 0:
                status = behaviour.fail_status
                self._behaviours[prefix] = msgspec.structs.replace(behaviour, fail_times=behaviour.fail_times - 1)
            hang = behaviour.hang
        if hang:
            assert self._release is not None
            # Bounded, so a client that never gives up on its request (a swallowed cancellation) cannot keep a
            # test's event loop from closing for ever: at worst it waits HANG_LIMIT seconds.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._release.wait(), HANG_LIMIT)
            status = 503
        recorded = Recorded(method=request.method, path=request.path, query=request.query_string,
                            headers={k.lower(): v for k, v in request.headers.items()}, body=body, status=status)
        with self._condition:
            self.requests.append(recorded)
            self._condition.notify_all()
        return web.Response(status=status, body=behaviour.body, content_type="application/json")

    def __enter__(self) -> HttpReceiver:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            self._release = asyncio.Event()
            app = web.Application(client_max_size=64 * 1024 * 1024)
            app.router.add_route("*", "/{tail:.*}", self._handle)
            self._runner = web.AppRunner(app, access_log=None)
            loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            loop.run_until_complete(site.start())
            self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._runner.cleanup())
            loop.close()

        self._thread = threading.Thread(target=run, name="http-receiver", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("receiver did not start within 10 s")
        return self

    def release_hung(self) -> None:
        """Answer (503) every request held by a ``hang`` behaviour."""
        if self._loop is not None and self._release is not None:
            self._loop.call_soon_threadsafe(self._release.set)

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None:
            self.release_hung()
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)

    # reading what arrived -----------------------------------------------------------------------------
    def received(self, path_prefix: str = "", *, ok_only: bool = True, exact: bool = False) -> list[Recorded]:
        with self._condition:
            return [r for r in self.requests
                    if (r.path == path_prefix if exact else r.path.startswith(path_prefix))
                    and (r.status < 400 or not ok_only)]

    def events(self, path_prefix: str = "", *, exact: bool = False) -> list[dict[str, Any]]:
        """Every JSON object delivered (successfully) under ``path_prefix``; arrays are flattened."""
        found: list[dict[str, Any]] = []
        for request in self.received(path_prefix, exact=exact):
            if request.method != "POST" or not request.body:
                continue
            payload = request.json()
            found.extend(payload if isinstance(payload, list) else [payload])
        return found

    def events_at(self, path: str) -> list[dict[str, Any]]:
        """Events delivered to exactly ``path``."""
        return self.events(path, exact=True)

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
        """Block until ``predicate()`` holds (re-checked on every request) or ``timeout`` passes."""
        deadline = time.monotonic() + timeout
        with self._condition:
            while not predicate():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._condition.wait(min(remaining, 0.5))
        return True

    async def wait_for_async(self, predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
        """:meth:`wait_for` without blocking the caller's event loop."""
        return await asyncio.to_thread(self.wait_for, predicate, timeout)
