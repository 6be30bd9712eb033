"""The bytes the sink sends parse equal to the same generation built with the protobuf message classes."""

from __future__ import annotations

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from sluicegate import LogMetadata
from sluicegate.sinks.redaction import redact
from sluicegate.testing import make_event
from sluicegate_langfuse_sink.sink import encode_request, event_to_span, wire_request, wire_span

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.mark.parametrize("events", [
    [make_event()],
    [make_event(status="failure")],
    [make_event(status="failure", error_str="")],
    [make_event(metadata=LogMetadata(traceparent=TRACEPARENT, request_id="r", user_api_key_team_id="t"))],
    [redact(make_event(messages=[{"role": "user", "content": "héllo ✓ " * 50}]))],
    [make_event(response_cost=0.0, cache_hit=True, model_parameters={}), make_event(team_id=None)],
], ids=["success", "failure", "failure-no-message", "traceparent", "redacted-unicode", "two-spans"])
def test_wire_bytes_parse_equal_to_the_message_classes(events) -> None:
    ours = ExportTraceServiceRequest.FromString(wire_request([wire_span(e) for e in events]))
    reference = ExportTraceServiceRequest.FromString(encode_request([event_to_span(e) for e in events]))
    assert ours == reference
    # negative control: another event does not compare equal
    other = ExportTraceServiceRequest.FromString(encode_request([event_to_span(make_event(model="other"))]))
    assert ours != other
