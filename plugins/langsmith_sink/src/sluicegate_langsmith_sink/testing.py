"""A loopback server speaking the part of LangSmith's API that run ingestion depends on, for tests.

There is no runnable LangSmith server here (self-hosting needs its container images), so this receiver implements
what a client depends on and refuses what the real API refuses. Its acceptance is itself tested against the
official ``langsmith`` SDK (``tests/test_parity.py``): whatever the SDK sends, it accepts and stores.

- ``GET /info``: no authentication; the server info the SDK reads at start-up (``batch_ingest_config`` with
  ``use_multipart_endpoint``; ``zstd_compression_enabled`` off, so the SDK sends uncompressed bodies).
- ``POST /runs/multipart``: ``x-api-key`` must be a registered key (else 401 ``{"detail": ...}``); a body of
  ``multipart/form-data`` (415 for another type or a ````Content-Encoding``); parts named
  ``{post|patch}.{run_id}`` (the run) and ``{post|patch}.{run_id}.{inputs|outputs|events|extra|error|serialized}``,
  each ``application/json`` that decodes (422 otherwise; ``attachment.*`` and ``feedback.*`` parts are accepted and
  counted). Each posted run needs ``id`` (equal to the part's), ``trace_id``, ``dotted_order``, ``name``,
  ``start_time`` and a known ``run_type``; ``dotted_order`` must be ``{%Y%m%dT%H%M%S%fZ}{uuid}`` segments joined by
  ``.``, its first id the ``trace_id``, its last the run id, one segment exactly when there is no
  ``parent_run_id`` (422 naming the run otherwise). A run posted again is kept once. Answer: 202 ``{}``.
- ``GET /sessions``: the same authentication; the key's projects as a JSON list.
- ``outage(status)``: every request is answered with ``status`` until ``outage(None)``.

An aiohttp server on its own event loop in one thread, so the SDK's threads and async clients can both use it.
Runs are kept per (API key's tenant, project).
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections import defaultdict
from typing import Any

import msgspec
from aiohttp import web

__all__ = ("LangsmithReceiver", "ReceivedRequest")

RUN_TYPES = frozenset({"tool", "chain", "llm", "retriever", "embedding", "prompt", "parser"})
_PART_NAME = re.compile(r"^(post|patch)\.([0-9a-f-]{36})(?:\.(inputs|outputs|events|extra|error|serialized))?$")
_SEGMENT = re.compile(r"^(\d{8}T\d{12}Z)([0-9a-f-]{36})$")


class ReceivedRequest(msgspec.Struct, kw_only=True):
    path: str
    status: int
    headers: dict[str, str]
    parts: list[tuple[str, str, dict[str, str]]]
    """(name, content type, part headers) of each part, in order."""
    runs: dict[str, dict[str, Any]]
    """Each run of the request, its field parts merged in."""


class _Invalid(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


class LangsmithReceiver:
    def __init__(self) -> None:
        self.keys: dict[str, str] = {}  # api key -> tenant
        self.projects: dict[tuple[str, str], dict[str, dict[str, Any]]] = defaultdict(dict)
        self.requests: list[ReceivedRequest] = []
        self.outage_status: int | None = None
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, name="langsmith-receiver", daemon=True)
        self.url = ""

    # lifecycle --------------------------------------------------------------------------------------------
    def __enter__(self) -> LangsmithReceiver:
        self._thread.start()
        port = asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        self.url = f"http://127.0.0.1:{port}"
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)  # type: ignore[union-attr]
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _start(self) -> int:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/info", self._info)
        app.router.add_post("/runs/multipart", self._multipart)
        app.router.add_get("/sessions", self._sessions)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        return site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    # configuration and reading ---------------------------------------------------------------------------
    def add_key(self, api_key: str, tenant: str) -> None:
        self.keys[api_key] = tenant

    def outage(self, status: int | None) -> None:
        self.outage_status = status

    def runs(self, tenant: str, project: str) -> dict[str, dict[str, Any]]:
        with self._lock:
            return dict(self.projects.get((tenant, project), {}))

    def all_runs(self) -> list[dict[str, Any]]:
        with self._lock:
            return [run for runs in self.projects.values() for run in runs.values()]

    # handlers -------------------------------------------------------------------------------------------
    async def _info(self, request: web.Request) -> web.Response:
        return web.json_response({
            "version": "0.10.0", "license_expiration_time": None,
            "batch_ingest_config": {"use_multipart_endpoint": True, "size_limit": 100,
                                    "size_limit_bytes": 20_971_520, "scale_up_nthreads_limit": 16,
                                    "scale_up_qsize_trigger": 1000, "scale_down_nempty_trigger": 4},
            "instance_flags": {"zstd_compression_enabled": False}})

    def _tenant(self, request: web.Request) -> str:
        tenant = self.keys.get(request.headers.get("x-api-key", ""))
        if tenant is None:
            raise _Invalid(401, "Invalid token")
        return tenant

    async def _sessions(self, request: web.Request) -> web.Response:
        if self.outage_status is not None:
            return web.json_response({"detail": "unavailable"}, status=self.outage_status)
        try:
            tenant = self._tenant(request)
        except _Invalid as exc:
            return web.json_response({"detail": exc.detail}, status=exc.status)
        with self._lock:
            names = sorted({project for owner, project in self.projects if owner == tenant})
        return web.json_response([{"id": f"{tenant}-{name}", "name": name} for name in names])

    async def _multipart(self, request: web.Request) -> web.Response:
        record = ReceivedRequest(path=request.path, status=0, headers=dict(request.headers), parts=[], runs={})
        try:
            if self.outage_status is not None:
                raise _Invalid(self.outage_status, "service unavailable")
            tenant = self._tenant(request)
            runs = await self._read_runs(request, record)
            for run in runs.values():
                _check_run(run)
            with self._lock:
                for run in runs.values():
                    project = run.get("session_name") or "default"
                    self.projects[(tenant, project)].setdefault(run["id"], run)
            record.runs = runs
            record.status = 202
            return web.json_response({}, status=202)
        except _Invalid as exc:
            record.status = exc.status
            return web.json_response({"detail": exc.detail}, status=exc.status)
        finally:
            with self._lock:
                self.requests.append(record)

    async def _read_runs(self, request: web.Request, record: ReceivedRequest) -> dict[str, dict[str, Any]]:
        encoding = request.headers.get("Content-Encoding", "")
        if not request.content_type.startswith("multipart/form-data"):
            raise _Invalid(415, f"unsupported content type {request.content_type}")
        if encoding:  # the SDK compresses (zstd) only when /info enables it, which this receiver does not
            raise _Invalid(415, f"unsupported content encoding {encoding}")
        reader = await request.multipart()
        runs: dict[str, dict[str, Any]] = {}
        fields: list[tuple[str, str, Any]] = []
        while (part := await reader.next()) is not None:
            name = part.name or ""
            content_type = part.headers.get("Content-Type", "")
            record.parts.append((name, content_type, dict(part.headers)))
            data = await part.read()
            if name.startswith(("attachment.", "feedback.")):
                continue
            match = _PART_NAME.match(name)
            if not match:
                raise _Invalid(422, f"unknown part {name!r}")
            if not content_type.startswith("application/json"):
                raise _Invalid(422, f"part {name!r} must be application/json")
            try:
                value = msgspec.json.decode(data)
            except msgspec.DecodeError:
                raise _Invalid(422, f"part {name!r} is not JSON") from None
            operation, identifier, field = match.groups()
            if field is None:
                if not isinstance(value, dict):
                    raise _Invalid(422, f"part {name!r} must be a JSON object")
                if value.get("id") != identifier:
                    raise _Invalid(422, f"part {name!r}: id does not match the part name")
                runs.setdefault(identifier, {}).update(value)
            else:
                fields.append((identifier, field, value))
        for identifier, field, value in fields:
            if identifier not in runs:
                raise _Invalid(422, f"field part for run {identifier} without its run part")
            runs[identifier][field] = value
        if not runs:
            raise _Invalid(422, "no runs in the request")
        return runs


def _check_run(run: dict[str, Any]) -> None:
    identifier = run.get("id")
    for field in ("trace_id", "dotted_order", "name", "start_time", "run_type"):
        if not run.get(field):
            raise _Invalid(422, f"run {identifier}: {field} is required")
    if run["run_type"] not in RUN_TYPES:
        raise _Invalid(422, f"run {identifier}: run_type must be one of {sorted(RUN_TYPES)}")
    segments = [_SEGMENT.match(s) for s in str(run["dotted_order"]).split(".")]
    if not all(segments):
        raise _Invalid(422, f"run {identifier}: dotted_order is malformed")
    if segments[-1].group(2) != identifier or segments[0].group(2) != run["trace_id"]:  # type: ignore[union-attr]
        raise _Invalid(422, f"run {identifier}: dotted_order does not match id and trace_id")
    if (len(segments) == 1) != (run.get("parent_run_id") is None):
        raise _Invalid(422, f"run {identifier}: dotted_order depth does not match parent_run_id")
