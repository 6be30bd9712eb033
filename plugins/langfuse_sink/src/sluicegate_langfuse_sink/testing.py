"""A loopback server that speaks Langfuse's OTLP ingestion API, for tests and benchmarks.

There is no runnable Langfuse server here (it needs Docker, PostgreSQL, ClickHouse, Redis and S3), so this
receiver implements the parts of the real API a client depends on and checks what the real one checks:

- ``POST /api/public/otel/v1/traces``: ``Authorization: Basic base64(public_key:secret_key)`` per project
  (401 with a JSON message for a missing or wrong pair, as Langfuse answers); ``Content-Encoding: gzip``
  (the only encoding Langfuse decodes; anything else is 415); OTLP protobuf (``application/x-protobuf``)
  and OTLP JSON (``application/json``) bodies, 400 when they do not decode or a trace/span id has the wrong
  length; the ``x-langfuse-ingestion-version`` header is recorded and, with ``require_ingestion_version``,
  enforced (the real server accepts its absence and falls back to the legacy pipeline; we enforce it so a
  client that forgets it fails a test). The answer is an ``ExportTraceServiceResponse`` in the request's
  encoding.
- ``GET /api/public/projects``: the same Basic auth, answering ``{"data": [{id, name, organization,
  metadata}]}`` for the key's project, as the SDK's ``projects.get()`` expects.
- ``outage(status)``: every request is answered with ``status`` (e.g. 503) until ``outage(None)``.

It runs an aiohttp server on its own event loop in one thread, so synchronous clients (the ``langfuse`` SDK
exporter) and async ones can both talk to it. Received spans are kept per project id.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import gzip
import threading
from collections.abc import Callable
from typing import Any

import msgspec
from aiohttp import web
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

from sluicegate_langfuse_sink.sink import INGESTION_PATH, PROJECTS_PATH

__all__ = ("LangfuseReceiver", "Project", "ReceivedRequest", "ReceivedSpan")


class Project(msgspec.Struct, frozen=True):
    project_id: str
    name: str
    public_key: str
    secret_key: str


class ReceivedSpan(msgspec.Struct, frozen=True, kw_only=True):
    project_id: str
    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    start_time_unix_nano: int
    end_time_unix_nano: int
    status_code: int
    status_message: str
    attributes: dict[str, Any]
    resource_attributes: dict[str, Any]
    scope_name: str
    scope_version: str


class ReceivedRequest(msgspec.Struct, frozen=True, kw_only=True):
    method: str
    path: str
    status: int
    project_id: str | None
    content_type: str | None
    content_encoding: str | None
    ingestion_version: str | None
    span_count: int = 0


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return tuple(_value(v) for v in value.array_value.values)
    if kind == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in value.kvlist_value.values}
    return getattr(value, kind) if kind else None


def _attributes(pairs: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in pairs}


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"message": message, "error": message}, status=status)


class LangfuseReceiver:
    """Start with :meth:`start` (or as a context manager); ``url`` is its base URL."""

    def __init__(self, *, require_ingestion_version: str | None = "4", keep_spans: bool = True) -> None:
        self.require_ingestion_version = require_ingestion_version
        self.keep_spans = keep_spans
        self._projects: dict[str, Project] = {}
        self._spans: dict[str, list[ReceivedSpan]] = {}
        self._span_ids: dict[str, set[str]] = {}
        self.requests: list[ReceivedRequest] = []
        self._outage: int | None = None
        self._changed = threading.Condition()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self.port = 0

    # --- configuration --------------------------------------------------------------------------

    def add_project(self, public_key: str, secret_key: str, *, project_id: str | None = None,
                    name: str | None = None) -> Project:
        project_id = project_id or f"project-{len(self._projects) + 1}"
        project = Project(project_id, name or project_id, public_key, secret_key)
        with self._changed:
            self._projects[public_key] = project
            self._spans.setdefault(project_id, [])
            self._span_ids.setdefault(project_id, set())
        return project

    def outage(self, status: int | None) -> None:
        """Answer every request with ``status`` from now on; ``None`` ends the outage."""
        self._outage = status

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # --- what arrived ---------------------------------------------------------------------------

    def spans(self, project_id: str) -> list[ReceivedSpan]:
        with self._changed:
            return list(self._spans.get(project_id, ()))

    def span_ids(self, project_id: str) -> set[str]:
        with self._changed:
            return set(self._span_ids.get(project_id, ()))

    def total_span_ids(self) -> int:
        with self._changed:
            return sum(len(ids) for ids in self._span_ids.values())

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
        """Block until ``predicate()`` holds (checked on every arrival) or ``timeout`` passes."""
        with self._changed:
            return self._changed.wait_for(predicate, timeout)

    # --- server ---------------------------------------------------------------------------------

    def _project_for(self, request: web.Request) -> Project | web.Response:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "basic" or not token:
            return _error(401, "Unauthorized: no Basic authorization header")
        try:
            public_key, sep, secret_key = base64.b64decode(token, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return _error(401, "Unauthorized: malformed Basic authorization header")
        project = self._projects.get(public_key)
        if not sep or project is None or project.secret_key != secret_key:
            return _error(401, "Invalid credentials. Confirm that you've configured the correct host.")
        return project

    def _record(self, request: web.Request, status: int, project: Project | None, spans: int = 0) -> None:
        with self._changed:
            self.requests.append(ReceivedRequest(
                method=request.method, path=request.path, status=status,
                project_id=project.project_id if project else None,
                content_type=request.headers.get("Content-Type"),
                content_encoding=request.headers.get("Content-Encoding"),
                ingestion_version=request.headers.get("x-langfuse-ingestion-version"),
                span_count=spans))
            self._changed.notify_all()

    def _admit(self, request: web.Request) -> Project | web.Response:
        """The authenticated project, or the answer for an outage or a refused credential (recorded)."""
        if self._outage is not None:
            self._record(request, self._outage, None)
            return _error(self._outage, "Service unavailable")
        project = self._project_for(request)
        if isinstance(project, web.Response):
            self._record(request, project.status, None)
        return project

    async def _ingest(self, request: web.Request) -> web.Response:
        project = self._admit(request)
        if isinstance(project, web.Response):
            return project
        answer = self._decode(request, await request.read())
        if isinstance(answer, web.Response):
            self._record(request, answer.status, project)
            return answer
        received, as_json = answer
        spans = self._flatten(project.project_id, received)
        if isinstance(spans, web.Response):
            self._record(request, spans.status, project)
            return spans
        with self._changed:
            if self.keep_spans:
                self._spans[project.project_id].extend(spans)
            self._span_ids[project.project_id].update(s.span_id for s in spans)
        self._record(request, 200, project, len(spans))
        reply = ExportTraceServiceResponse()
        if as_json:
            return web.json_response(json_format.MessageToDict(reply))
        return web.Response(body=reply.SerializeToString(), content_type="application/x-protobuf")

    def _decode(self, request: web.Request, body: bytes) -> tuple[ExportTraceServiceRequest, bool] | web.Response:
        version = request.headers.get("x-langfuse-ingestion-version")
        if self.require_ingestion_version is not None and version != self.require_ingestion_version:
            return _error(400, f"x-langfuse-ingestion-version must be {self.require_ingestion_version!r}")
        encoding = (request.headers.get("Content-Encoding") or "identity").lower()
        if encoding == "gzip":
            try:
                body = gzip.decompress(body)
            except (OSError, EOFError):
                return _error(400, "body is not valid gzip")
        elif encoding != "identity":
            return _error(415, f"unsupported Content-Encoding {encoding!r} (gzip only)")
        content_type = (request.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        message = ExportTraceServiceRequest()
        try:
            if content_type == "application/x-protobuf":
                message.ParseFromString(body)
                return message, False
            if content_type == "application/json":
                json_format.Parse(body, message)
                return message, True
        except (DecodeError, json_format.ParseError) as exc:
            return _error(400, f"cannot decode OTLP body: {exc}")
        return _error(415, f"unsupported Content-Type {content_type!r}")

    def _flatten(self, project_id: str, message: ExportTraceServiceRequest) -> list[ReceivedSpan] | web.Response:
        spans = []
        for resource_spans in message.resource_spans:
            resource = _attributes(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    if len(span.trace_id) != 16 or len(span.span_id) != 8 or len(span.parent_span_id) not in (0, 8):
                        return _error(400, "invalid trace or span id length")
                    spans.append(ReceivedSpan(
                        project_id=project_id, trace_id=span.trace_id.hex(), span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex(), name=span.name,
                        start_time_unix_nano=span.start_time_unix_nano,
                        end_time_unix_nano=span.end_time_unix_nano,
                        status_code=span.status.code, status_message=span.status.message,
                        attributes=_attributes(span.attributes), resource_attributes=resource,
                        scope_name=scope_spans.scope.name, scope_version=scope_spans.scope.version))
        return spans

    async def _projects_endpoint(self, request: web.Request) -> web.Response:
        project = self._admit(request)
        if isinstance(project, web.Response):
            return project
        self._record(request, 200, project)
        return web.json_response({"data": [{
            "id": project.project_id, "name": project.name, "metadata": {},
            "organization": {"id": "org-1", "name": "Sluicegate tests"}}]})

    def start(self) -> LangfuseReceiver:
        started = threading.Event()
        failure: list[BaseException] = []

        async def serve() -> None:
            app = web.Application(client_max_size=16 * 1024 * 1024)
            app.router.add_post(INGESTION_PATH, self._ingest)
            app.router.add_get(PROJECTS_PATH, self._projects_endpoint)
            # Raw bodies: the receiver decodes gzip itself so it can tell what was (not) compressed.
            self._runner = web.AppRunner(app, access_log=None, auto_decompress=False)
            await self._runner.setup()
            site = web.TCPSite(self._runner, "127.0.0.1", 0, backlog=4096)
            await site.start()
            self.port = self._runner.addresses[0][1]

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            try:
                self._loop.run_until_complete(serve())
            except BaseException as exc:  # reported to start()
                failure.append(exc)
                started.set()
                return
            started.set()
            self._loop.run_forever()
            self._loop.run_until_complete(self._runner.cleanup())  # type: ignore[union-attr]
            self._loop.close()

        self._thread = threading.Thread(target=run, name="langfuse-receiver", daemon=True)
        self._thread.start()
        if not started.wait(10):
            raise RuntimeError("langfuse receiver did not start within 10 s")
        if failure:
            raise failure[0]
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop = self._thread = None

    def __enter__(self) -> LangfuseReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
