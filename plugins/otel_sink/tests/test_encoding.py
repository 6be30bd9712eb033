"""The direct OTLP encoder gives exactly what the OpenTelemetry SDK's encoder gives for the same span."""

from __future__ import annotations

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from sluicegate import LogMetadata
from sluicegate.sinks.vars import decode_vars
from sluicegate.testing import make_event
from sluicegate_otel_sink.sink import OtelSink, event_to_span

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.mark.parametrize("event", [
    make_event(),
    make_event(status="failure"),
    make_event(metadata=LogMetadata(traceparent=TRACEPARENT, request_id="r1", user_api_key_team_id="t")),
    make_event(model_parameters={"temperature": 0.5, "max_tokens": 10, "stop": ["a", "b"], "top_p": 1}),
    make_event(model_parameters={"seed": -5, "frequency_penalty": -0.5, "stop": ""}, model="модель-ü",
               messages=[{"role": "user", "content": "héllo ✓ " * 40}], error_str=""),
    make_event(status="failure", error_str="", response=None, messages=None, api_base=None),
], ids=["success", "failure", "traceparent", "parameters", "negative-and-unicode", "failure-empty-message"])
def test_direct_encoding_matches_the_sdk_encoder(event) -> None:
    sink = OtelSink(decode_vars(OtelSink.Vars, {"otel_endpoint": "http://127.0.0.1:9/v1/traces",
                                                 "otel_resource_attributes": "deployment.environment=test"}))
    ours = ExportTraceServiceRequest.FromString(sink.encode([event]))
    sdk = encode_spans([event_to_span(event, sink._resource)])
    assert ours == sdk
    # negative control: a different event does not compare equal
    other = encode_spans([event_to_span(make_event(model="another-model"), sink._resource)])
    assert ours != other
