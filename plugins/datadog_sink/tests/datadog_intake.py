"""A loopback server that speaks Datadog's logs intake API (v2) and its API-key validation endpoint.

Datadog's own fake intake (``fakeintake``, a Go program in the datadog-agent repository) is not installable
here: there is no package for it and no network to build it. This server implements the parts of the public
API the sink uses and checks what the real service checks:

- ``POST /api/v2/logs``: ``DD-API-KEY`` must be a key of the account on the site the request was addressed
  to (by ``Host``: ``http-intake.logs.{site}``), else 403 ``{"errors": ["Forbidden"]}``; the body is JSON,
  optionally ``Content-Encoding: gzip``; at most 5 MB uncompressed and 1,000 entries, else 413; each entry
  an object with a string ``message``, else 400; 202 ``{}`` when accepted.
- ``GET /api/v1/validate`` on ``api.{site}``: 200 ``{"valid": true}`` or 403 ``{"errors": ["Forbidden"]}``.
- Requests to ``127.0.0.1:{port}`` play an agent or log proxy: any known key is accepted (the agent holds
  the account), and ``/api/v1/validate`` answers 404 unless ``agent_validates`` is set.

Every request is recorded, including its raw headers and body, so tests can assert on the wire format.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import weakref
from collections import Counter
from typing import Any

import httpx
from aiohttp import web

__all__ = ("FakeDatadogIntake", "LoopbackTransport", "Received")

FORBIDDEN = {"errors": ["Forbidden"]}


class Received:
    """One request as the intake saw it."""

    def __init__(self, *, method: str, host: str, path: str, headers: dict[str, str], raw: bytes,
                 status: int, entries: list[dict[str, Any]] | None, peer: str) -> None:
        self.method, self.host, self.path, self.headers = method, host, path, headers
        self.raw, self.status, self.entries, self.peer = raw, status, entries, peer

    @property
    def api_key(self) -> str | None:
        return self.headers.get("dd-api-key")

    @property
    def site(self) -> str | None:
        for prefix in ("http-intake.logs.", "api."):
            if self.host.startswith(prefix):
                return self.host.removeprefix(prefix)
        return None

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(entry["message"]) for entry in self.entries or []]


class FakeDatadogIntake:
    """Datadog's logs intake on 127.0.0.1; ``accounts`` maps each valid API key to its site."""

    def __init__(self, accounts: dict[str, str], *, max_payload_bytes: int = 5_000_000,
                 max_entries: int = 1000, agent_validates: bool = False) -> None:
        self.accounts = accounts
        self.max_payload_bytes = max_payload_bytes
        self.max_entries = max_entries
        self.agent_validates = agent_validates
        self.received: list[Received] = []
        self.fail_accepted: dict[int, int] = {}
        """``{n: status}``: answer ``status`` instead of 202 to the n-th request that would be accepted (1-based)."""
        self.hold_validate: asyncio.Event | None = None
        """When set to an unset Event, validate requests wait on it (to test the health-check timeout)."""
        self._accepted_count = 0
        self._transports: weakref.WeakSet[asyncio.BaseTransport] = weakref.WeakSet()
        self.max_open_connections = 0
        self.connections_seen = 0
        self._runner: web.AppRunner | None = None
        self.port = 0

    # -- lifecycle ------------------------------------------------------------------------------------

    async def start(self) -> FakeDatadogIntake:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # The real intake sees the compressed bytes; keep them to assert the client really gzipped.
        self._runner = web.AppRunner(app, auto_decompress=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        if self.hold_validate is not None:
            self.hold_validate.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def agent_host(self) -> str:
        return f"127.0.0.1:{self.port}"

    # -- queries ----------------------------------------------------------------------------------------

    def accepted(self, *, site: str | None = None, api_key: str | None = None) -> list[Received]:
        return [r for r in self.received if r.status == 202 and r.path == "/api/v2/logs"
                and (site is None or r.site == site) and (api_key is None or r.api_key == api_key)]

    def accepted_event_ids(self, **filters: Any) -> Counter[str]:
        return Counter(event["id"] for r in self.accepted(**filters) for event in r.events())

    def statuses(self) -> list[int]:
        return [r.status for r in self.received if r.path == "/api/v2/logs"]

    # -- protocol ---------------------------------------------------------------------------------------

    def _key_ok(self, host: str, key: str | None) -> bool:
        if key is None or key not in self.accounts:
            return False
        if host == self.agent_host:
            return True
        site = self.accounts[key]
        return host in (f"http-intake.logs.{site}", f"api.{site}")

    async def _handle(self, request: web.Request) -> web.Response:
        if request.transport is not None and request.transport not in self._transports:
            self._transports.add(request.transport)
            self.connections_seen += 1
        open_now = sum(1 for t in list(self._transports) if not t.is_closing())
        self.max_open_connections = max(self.max_open_connections, open_now)
        raw = await request.read()
        host = request.headers.get("Host", "")
        headers = {k.lower(): v for k, v in request.headers.items()}
        peer = f"{request.transport.get_extra_info('peername')}" if request.transport else ""
        status, body, entries = await self._answer(request.method, host, request.path, headers, raw)
        self.received.append(Received(method=request.method, host=host, path=request.path, headers=headers,
                                      raw=raw, status=status, entries=entries, peer=peer))
        return web.json_response(body, status=status)

    async def _answer(self, method: str, host: str, path: str, headers: dict[str, str],
                      raw: bytes) -> tuple[int, Any, list[dict[str, Any]] | None]:
        key = headers.get("dd-api-key")
        if path == "/api/v1/validate":
            if method != "GET":
                return 405, {"errors": ["Method Not Allowed"]}, None
            if host == self.agent_host and not self.agent_validates:
                return 404, {"errors": ["Not Found"]}, None
            if self.hold_validate is not None:
                await self.hold_validate.wait()
            if not host.startswith("api.") and host != self.agent_host:
                return 404, {"errors": ["Not Found"]}, None
            return (200, {"valid": True}, None) if self._key_ok(host, key) else (403, FORBIDDEN, None)
        if path != "/api/v2/logs" or not (host.startswith("http-intake.logs.") or host == self.agent_host):
            return 404, {"errors": ["Not Found"]}, None
        if method != "POST":
            return 405, {"errors": ["Method Not Allowed"]}, None
        if not self._key_ok(host, key):
            return 403, FORBIDDEN, None
        encoding = headers.get("content-encoding", "identity")
        if encoding == "gzip":
            try:
                data = gzip.decompress(raw)
            except (OSError, EOFError):
                return 400, {"errors": ["invalid gzip body"]}, None
        elif encoding == "identity":
            data = raw
        else:
            return 415, {"errors": [f"unsupported Content-Encoding {encoding}"]}, None
        if not headers.get("content-type", "").startswith("application/json"):
            return 400, {"errors": ["expected Content-Type application/json"]}, None
        if len(data) > self.max_payload_bytes:
            return 413, {"errors": ["Payload too large"]}, None
        try:
            payload = json.loads(data)
        except ValueError:
            return 400, {"errors": ["invalid JSON"]}, None
        entries = payload if isinstance(payload, list) else [payload]
        if len(entries) > self.max_entries:
            return 413, {"errors": ["Too many entries"]}, None
        if not all(isinstance(e, dict) and isinstance(e.get("message"), str) for e in entries):
            return 400, {"errors": ["each log needs a string message"]}, None
        self._accepted_count += 1
        injected = self.fail_accepted.get(self._accepted_count)
        if injected is not None:
            return injected, {"errors": ["injected failure"]}, None
        return 202, {}, entries


class LoopbackTransport(httpx.AsyncBaseTransport):
    """Sends every request to the fake intake on 127.0.0.1, keeping its ``Host`` header (the site routing).

    The sink builds real ``https://http-intake.logs.{site}`` URLs; this transport is what lets a test see
    where they were addressed without leaving loopback.
    """

    def __init__(self, port: int, inner: httpx.AsyncBaseTransport) -> None:
        self._port = port
        self._inner = inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        request.url = request.url.copy_with(scheme="http", host="127.0.0.1", port=self._port)
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()
