"""The ``arize`` sink against a loopback OTLP/HTTP receiver that checks what Arize's endpoint checks.

Arize's hosted endpoint cannot run here. The receiver holds requests to the headers Arize's own exporter
(``arize-otel``, ``arize.otel.otel._get_arize_auth_headers``) sends: the key as ``authorization`` (and the older
``api_key``), the space as ``arize-space-id`` (and the older ``space_id``), answering 401 otherwise, and it files
spans under the project named by the resource (``openinference.project.name``, or ``model_id`` in Arize's older
SDKs), answering 400 for a resource without one. Its 401 answer quotes the headers it got, as careless servers do,
so the scrubbing of the sink's error text is tested against a destination that really echoes the key.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from aiohttp import web
from openinference.semconv.resource import ResourceAttributes
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import KeyValue

from sluicegate.sinks.vars import decode_vars
from sluicegate.testing import deliver, make_event
from sluicegate_arize_phoenix_sink.sink import ArizeSink

SPACE = "U3BhY2U6dGVzdC1zcGFjZQ=="
"""Test values (never real credentials): the receiver accepts only these."""
KEY = "ak-test-arize-key-0123456789abcdef"
ARIZE_HEADERS = {"authorization": KEY, "api_key": KEY, "arize-space-id": SPACE, "space_id": SPACE,
                 "arize-interface": "otel"}
"""What ``arize-otel`` sends with this space and key (its ``_get_arize_auth_headers``)."""


def _attributes(pairs: Any) -> dict[str, Any]:
    return {kv.key: getattr(kv.value, kv.value.WhichOneof("value")) for kv in pairs if kv.value.WhichOneof("value")}


@dataclass
class ArizeReceiver:
    url: str = ""
    accepted: list[tuple[dict[str, str], ExportTraceServiceRequest]] = field(default_factory=list)
    refused: list[tuple[int, str]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        headers = {k.lower(): v for k, v in request.headers.items()}
        body = await request.read()
        key = headers.get("authorization") or headers.get("api_key")
        space = headers.get("arize-space-id") or headers.get("space_id")
        if key != KEY or space != SPACE:
            return self._refuse(401, f"invalid space or api key: space={space!r} key={key!r}")
        if request.path != "/v1/traces" or headers.get("content-type") != "application/x-protobuf":
            return self._refuse(415, "OTLP/HTTP protobuf on /v1/traces only")
        export = ExportTraceServiceRequest()
        try:
            export.ParseFromString(body)
        except Exception:
            return self._refuse(400, "not an ExportTraceServiceRequest")
        for resource_spans in export.resource_spans:
            resource = _attributes(resource_spans.resource.attributes)
            if not (resource.get(ResourceAttributes.PROJECT_NAME) or resource.get("model_id")):
                return self._refuse(400, "no project: set openinference.project.name on the resource")
        self.accepted.append((headers, export))
        return web.Response(status=200, body=ExportTraceServiceRequest().SerializeToString(),
                            content_type="application/x-protobuf")

    def _refuse(self, status: int, message: str) -> web.Response:
        self.refused.append((status, message))
        return web.Response(status=status, text=message)

    def spans(self) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        """Every accepted span's (resource, attributes)."""
        return [(_attributes(rs.resource.attributes), _attributes(span.attributes))
                for _, export in self.accepted for rs in export.resource_spans
                for ss in rs.scope_spans for span in ss.spans]


@pytest.fixture
async def arize() -> AsyncIterator[ArizeReceiver]:
    receiver = ArizeReceiver()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", receiver.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    receiver.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
    yield receiver
    await runner.cleanup()


def _vars(arize: ArizeReceiver, **overrides: str) -> dict[str, str]:
    return {"arize_endpoint": f"{arize.url}/v1/traces", "arize_space_key": SPACE, "arize_api_key": KEY,
            "arize_project_name": "team-7", **overrides}


async def test_exports_carry_arize_headers_and_the_project_on_the_resource(arize: ArizeReceiver) -> None:
    report = await deliver(ArizeSink, _vars(arize), [make_event(), make_event()])
    assert report.delivered, report
    assert len(arize.accepted) == 1 and arize.refused == []
    headers = arize.accepted[0][0]
    assert {name: headers.get(name) for name in ARIZE_HEADERS} == ARIZE_HEADERS
    spans = arize.spans()
    assert len(spans) == 2
    for resource, attributes in spans:
        assert resource[ResourceAttributes.PROJECT_NAME] == resource["model_id"] == "team-7"
        assert attributes["openinference.span.kind"] == "LLM" and attributes["llm.model_name"] == "gpt-4o-mini"


async def test_a_wrong_key_or_space_is_refused_and_never_quoted(arize: ArizeReceiver) -> None:
    wrong_key, wrong_space = "ak-wrong-arize-key-9876543210", "U3BhY2U6d3Jvbmc="
    for overrides, secret in (({"arize_api_key": wrong_key}, wrong_key),
                              ({"arize_space_key": wrong_space}, wrong_space)):
        report = await deliver(ArizeSink, _vars(arize, **overrides), make_event())
        assert (report.sent, report.dropped, report.retried) == (0, 1, 0), report  # 401 is permanent
        assert "HTTP 401" in (report.last_error or "") and "invalid space or api key" in (report.last_error or "")
        assert secret not in (report.last_error or "")
        assert secret in arize.refused[-1][1]  # the receiver did quote it: the sink scrubbed it
    assert arize.accepted == []
    # control: the right space and key
    assert (await deliver(ArizeSink, _vars(arize), make_event())).delivered
    assert len(arize.accepted) == 1


async def test_health_check_is_an_authenticated_empty_export(arize: ArizeReceiver) -> None:
    good = ArizeSink(decode_vars(ArizeSink.Vars, _vars(arize)))
    bad = ArizeSink(decode_vars(ArizeSink.Vars, _vars(arize, arize_api_key="ak-wrong-for-health-000")))
    healthy, refused = await good.health_check(), await bad.health_check()
    assert healthy.healthy, healthy
    assert not refused.healthy and refused.error_kind == "auth"
    assert "ak-wrong-for-health-000" not in (refused.details or "")
    assert arize.spans() == []  # an empty export files nothing


async def test_the_receiver_refuses_an_export_without_a_project(arize: ArizeReceiver) -> None:
    """Negative control of the receiver itself: with the right headers, a resource naming no project is refused."""
    export = ExportTraceServiceRequest()
    resource_spans = export.resource_spans.add()
    resource_spans.resource.attributes.append(KeyValue(key="service.name"))
    resource_spans.resource.attributes[0].value.string_value = "sluicegate"
    resource_spans.scope_spans.add().spans.add(name="completion")
    async with httpx.AsyncClient() as client:
        answer = await client.post(f"{arize.url}/v1/traces", content=export.SerializeToString(),
                                   headers={**ARIZE_HEADERS, "content-type": "application/x-protobuf"})
    assert answer.status_code == 400 and "no project" in answer.text
