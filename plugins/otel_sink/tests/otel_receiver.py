"""Loopback OTLP trace receivers for the otel sink's tests.

``OtlpReceiver`` decodes ``opentelemetry-proto`` directly: OTLP/HTTP (protobuf or JSON, optionally gzip) on
``/<anything>/v1/traces`` and OTLP/gRPC ``TraceService/Export``. It checks what a real backend checks:
the path, the content type, an ``authorization`` header when ``tokens`` are set (401 / UNAUTHENTICATED
otherwise), and OTLP/JSON's hex trace and span ids. It serves from one thread with its own event loop (and a
fixed gRPC pool), so it adds a constant number of threads whatever the number of sink instances.

``Rotel`` runs the real rotel collector binary shipped in the ``rotel`` package (pinned in the root dev
group), receiving OTLP/gRPC and OTLP/HTTP and forwarding everything over OTLP/HTTP to an ``OtlpReceiver``.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import msgspec
from aiohttp import web
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from sluicegate.testing.waiting import wait_until  # the shared deadline-bounded wait, re-exported

__all__ = ("Export", "OtlpReceiver", "Rotel", "Span", "free_port", "wait_until")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _value(any_value: AnyValue) -> Any:
    kind = any_value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in any_value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in any_value.kvlist_value.values}
    return getattr(any_value, kind) if kind else None


@dataclass
class Span:
    """One received span, flattened for assertions."""

    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    kind: int
    status_code: int
    status_message: str
    start: int
    end: int
    attributes: dict[str, Any]
    resource: dict[str, Any]
    scope: str
    headers: dict[str, str]
    transport: str


@dataclass
class Export:
    transport: str
    path: str
    headers: dict[str, str]
    request: trace_service_pb2.ExportTraceServiceRequest
    spans: list[Span] = field(default_factory=list)


def _hex_ids_to_base64(data: dict[str, Any]) -> None:
    """OTLP/JSON carries ids as hex; the protobuf JSON mapping wants base64. Refuse anything else."""
    for resource_spans in data.get("resourceSpans", ()):
        for scope_spans in resource_spans.get("scopeSpans", ()):
            for span in scope_spans.get("spans", ()):
                for name, size in (("traceId", 32), ("spanId", 16), ("parentSpanId", 16)):
                    value = span.get(name)
                    if value:
                        if len(value) != size or any(c not in "0123456789abcdefABCDEF" for c in value):
                            raise ValueError(f"{name} is not {size} hex digits: {value!r}")
                        span[name] = base64.b64encode(bytes.fromhex(value)).decode()


class OtlpReceiver:
    """An OTLP trace receiver on 127.0.0.1: HTTP on ``http_port``, gRPC on ``grpc_port``."""

    def __init__(self, *, tokens: set[str] | None = None, name: str = "receiver") -> None:
        self.tokens = tokens
        self.name = name
        self.exports: list[Export] = []
        self.refused = 0
        self.stalled = 0
        self._cond = threading.Condition()
        self._release_stalled: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._grpc: grpc.Server | None = None
        self.http_port = free_port()
        self.grpc_port = free_port()

    # -- lifecycle --------------------------------------------------------------------------------------

    def start(self) -> OtlpReceiver:
        ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(ready,), name=f"{self.name}-http",
                                        daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("OTLP receiver did not start")
        pool = futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix=f"{self.name}-grpc")
        self._grpc = grpc.server(pool)
        service = "opentelemetry.proto.collector.trace.v1.TraceService"
        handler = grpc.method_handlers_generic_handler(service, {
            "Export": grpc.unary_unary_rpc_method_handler(
                self._grpc_export,
                request_deserializer=trace_service_pb2.ExportTraceServiceRequest.FromString,
                response_serializer=trace_service_pb2.ExportTraceServiceResponse.SerializeToString),
        })
        self._grpc.add_generic_rpc_handlers((handler,))
        self._grpc.add_insecure_port(f"127.0.0.1:{self.grpc_port}")
        self._grpc.start()
        return self

    def stop(self) -> None:
        if self._grpc is not None:
            self._grpc.stop(grace=None)
        if self._loop is not None:
            self.release_stalled()
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)

    def _serve(self, ready: threading.Event) -> None:
        loop = self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._release_stalled = asyncio.Event()
        app = web.Application(client_max_size=64 << 20)
        app.router.add_post("/{prefix:.*}", self._http_export)
        self._runner = web.AppRunner(app, access_log=None)
        loop.run_until_complete(self._runner.setup())
        loop.run_until_complete(web.TCPSite(self._runner, "127.0.0.1", self.http_port).start())
        ready.set()
        loop.run_forever()
        loop.close()

    # -- endpoints --------------------------------------------------------------------------------------

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/v1/traces"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def release_stalled(self) -> None:
        if self._loop is not None and self._release_stalled is not None:
            self._loop.call_soon_threadsafe(self._release_stalled.set)

    def _authorised(self, headers: Mapping[str, str]) -> bool:
        return self.tokens is None or headers.get("authorization") in self.tokens

    async def _http_export(self, request: web.Request) -> web.Response:
        if not request.path.endswith("/v1/traces"):
            return web.Response(status=404, text="not an OTLP traces path")
        headers = {k.lower(): v for k, v in request.headers.items()}
        if not self._authorised(headers):
            with self._cond:
                self.refused += 1
            return web.Response(status=401, text="unauthenticated")
        if request.path.startswith("/slow/"):
            # A destination that hangs until the test lets it answer.
            with self._cond:
                self.stalled += 1
            await self._release_stalled.wait()
        body = await request.read()
        if body[:2] == b"\x1f\x8b":  # gzip (rotel compresses) that aiohttp did not already inflate
            body = gzip.decompress(body)
        content_type = headers.get("content-type", "").split(";")[0].strip()
        message = trace_service_pb2.ExportTraceServiceRequest()
        try:
            if content_type == "application/x-protobuf":
                message.ParseFromString(body)
            elif content_type == "application/json":
                data = msgspec.json.decode(body)
                if not isinstance(data, dict) or "resourceSpans" not in data:
                    raise ValueError("missing resourceSpans")
                _hex_ids_to_base64(data)
                json_format.ParseDict(data, message)
            else:
                return web.Response(status=415, text=f"unsupported content type {content_type!r}")
        except Exception as exc:
            return web.Response(status=400, text=f"bad OTLP body: {exc}")
        self._record(Export("http/json" if content_type == "application/json" else "http/protobuf",
                            request.path, headers, message))
        answer = trace_service_pb2.ExportTraceServiceResponse()
        if content_type == "application/json":
            return web.Response(body=json_format.MessageToJson(answer).encode(),
                                content_type="application/json")
        return web.Response(body=answer.SerializeToString(), content_type="application/x-protobuf")

    def _grpc_export(self, request: trace_service_pb2.ExportTraceServiceRequest,
                     context: grpc.ServicerContext) -> trace_service_pb2.ExportTraceServiceResponse:
        headers = {k: v for k, v in context.invocation_metadata()}
        if not self._authorised(headers):
            with self._cond:
                self.refused += 1
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "unauthenticated")
        self._record(Export("grpc", "/opentelemetry.proto.collector.trace.v1.TraceService/Export", headers,
                            request))
        return trace_service_pb2.ExportTraceServiceResponse()

    # -- recorded data ----------------------------------------------------------------------------------

    def _record(self, export: Export) -> None:
        for resource_spans in export.request.resource_spans:
            resource = {kv.key: _value(kv.value) for kv in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    export.spans.append(Span(
                        name=span.name, trace_id=span.trace_id.hex(), span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex(), kind=span.kind,
                        status_code=span.status.code, status_message=span.status.message,
                        start=span.start_time_unix_nano, end=span.end_time_unix_nano,
                        attributes={kv.key: _value(kv.value) for kv in span.attributes},
                        resource=resource, scope=scope_spans.scope.name, headers=export.headers,
                        transport=export.transport))
        with self._cond:
            self.exports.append(export)
            self._cond.notify_all()

    def spans(self) -> list[Span]:
        with self._cond:
            return [span for export in self.exports for span in export.spans]

    def wait_for_spans(self, count: int, *, timeout: float = 10.0,
                       where: Callable[[Span], bool] = lambda s: True) -> list[Span]:
        """Block (in a thread, not the test's loop) until ``count`` matching spans arrived."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [s for e in self.exports for s in e.spans if where(s)]
                if len(found) >= count:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{self.name}: {len(found)} of {count} spans after {timeout}s")
                self._cond.wait(left)

    async def await_spans(self, count: int, *, timeout: float = 10.0,
                          where: Callable[[Span], bool] = lambda s: True) -> list[Span]:
        return await asyncio.to_thread(self.wait_for_spans, count, timeout=timeout, where=where)


class Rotel:
    """The rotel collector from the ``rotel`` package, forwarding traces to ``forward_to`` over OTLP/HTTP."""

    BINARY = Path(__import__("rotel").__file__).parent / "rotel-agent"

    def __init__(self, forward_to: OtlpReceiver, workdir: Path) -> None:
        self.forward_to = forward_to
        self.workdir = workdir
        self.grpc_port = free_port()
        self.http_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/v1/traces"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def start(self) -> Rotel:
        log = open(self.workdir / "rotel.out", "wb")  # noqa: SIM115 - closed in stop()
        self._log = log
        self.process = subprocess.Popen(
            [str(self.BINARY), "start",
             "--otlp-grpc-endpoint", self.grpc_target, "--otlp-http-endpoint", f"127.0.0.1:{self.http_port}",
             "--exporter", "otlp", "--otlp-exporter-protocol", "http",
             "--otlp-exporter-endpoint", f"http://127.0.0.1:{self.forward_to.http_port}",
             "--batch-timeout", "10ms", "--otlp-exporter-retry-initial-backoff", "100ms",
             "--pid-file", str(self.workdir / "rotel.pid"), "--log-file", str(self.workdir / "rotel.log")],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "NO_COLOR": "1"})
        wait_until(lambda: self._listening(self.grpc_port) and self._listening(self.http_port)
                   or self.process.poll() is not None, timeout=15, what="rotel to listen")
        if self.process.poll() is not None:
            raise RuntimeError(f"rotel exited: {(self.workdir / 'rotel.out').read_text()[-2000:]}")
        return self

    @staticmethod
    def _listening(port: int) -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        except OSError:
            return False
        return True

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self._log.close()
