"""The bytes the sink sends parse equal to the same generation built with the protobuf message classes."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from sluicegate import LogMetadata
from sluicegate.sinks.redaction import redact
from sluicegate.testing import make_event
from sluicegate_langfuse_sink import sink as sink_module
from sluicegate_langfuse_sink.sink import encode_request, event_to_span, wire_request, wire_span

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.mark.parametrize("events", [
    [make_event()],
    [make_event(status="failure")],
    [make_event(status="failure", error_str="")],
    [make_event(metadata=LogMetadata(traceparent=TRACEPARENT, request_id="r", user_api_key_team_id="t"))],
    [redact(make_event(messages=[{"role": "user", "content": "héllo ✓ " * 50}]))],
    [make_event(response_cost=0.0, cache_hit=True, model_parameters={}), make_event(team_id=None)],
    [make_event(request_tags=["a", "ключ", "t" * 150], end_user="u", metadata=LogMetadata(
        session_id="s", trace_metadata={"k": "v", "n": 3, "nested": {"x": [1, 2]}}))],
], ids=["success", "failure", "failure-no-message", "traceparent", "redacted-unicode", "two-spans",
                "tags-and-trace-metadata"])
def test_wire_bytes_parse_equal_to_the_message_classes(events) -> None:
    ours = ExportTraceServiceRequest.FromString(wire_request([wire_span(e) for e in events]))
    reference = ExportTraceServiceRequest.FromString(encode_request([event_to_span(e) for e in events]))
    assert ours == reference
    # negative control: another event does not compare equal
    other = ExportTraceServiceRequest.FromString(encode_request([event_to_span(make_event(model="other"))]))
    assert ours != other


@settings(max_examples=3000, deadline=None)
@given(st.one_of(st.floats(min_value=0, max_value=4_102_444_800, allow_nan=False),
                 st.integers(min_value=0, max_value=4_102_444_800).map(float),
                 st.integers(min_value=0, max_value=4_102_444_800).map(lambda s: s + 0.9999995),
                 st.integers(min_value=0, max_value=4_102_444_800).map(lambda s: s + 0.0000005)))
def test_iso_timestamps_match_datetime_isoformat(timestamp: float) -> None:
    """The fast formatter writes what ``datetime.fromtimestamp(ts, utc).isoformat()`` does (rounding half-even,
    no fraction on whole seconds), called in any order (it keeps the last second's text)."""
    assert sink_module._iso(timestamp) == sink_module._iso_slow(timestamp)
    assert sink_module._iso(timestamp + 1) == sink_module._iso_slow(timestamp + 1)
    assert sink_module._iso(timestamp) == sink_module._iso_slow(timestamp)


def test_iso_timestamps_outside_the_fast_range_take_the_datetime_path() -> None:
    for timestamp in (-1.5, 253402300799.25):
        assert sink_module._iso(timestamp) == sink_module._iso_slow(timestamp)


_HASHED = object()  # the trace id is a hash of the event's trace id: 16 bytes that are not its hex


@pytest.mark.parametrize(("traceparent", "trace_id", "expected_trace", "expected_parent"), [
    (TRACEPARENT, "ignored", "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"),
    (f"  {TRACEPARENT.upper()} ", "ignored", "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"),
    ("ff" + TRACEPARENT[2:], "a" * 32, "a" * 32, None),  # version ff is invalid
    (f"00-{'0' * 32}-00f067aa0ba902b7-01", "b" * 32, "b" * 32, None),  # all-zero trace id is invalid
    (f"00-4bf92f3577b34da6a3ce929d0e0e4736-{'0' * 16}-01", "c" * 32, "c" * 32, None),  # all-zero parent
    ("not a traceparent", "D" * 32, "d" * 32, None),
    (None, "0b38c7a3-6d7e-4e53-9a3c-2d27f1d3e0f1", "0b38c7a36d7e4e539a3c2d27f1d3e0f1", None),  # a UUID
    (None, "0" * 32, _HASHED, None),  # all zeros: hashed, never sent as is
    (None, "req-123", _HASHED, None),
    ("", "e" * 32, "e" * 32, None),
])
def test_trace_and_parent_ids(traceparent, trace_id, expected_trace, expected_parent) -> None:
    event = make_event(trace_id=trace_id, metadata=LogMetadata(traceparent=traceparent))
    trace, span, parent = sink_module._ids(event)
    assert len(span) == 8 and span == sink_module._ids(event)[1]  # stable: a redelivery upserts
    if expected_trace is _HASHED:
        assert len(trace) == 16 and trace != bytes(16) and trace.hex() != trace_id.replace("-", "").lower()
    else:
        assert trace.hex() == expected_trace
    assert (parent.hex() if parent is not None else None) == expected_parent


def test_attribute_names_are_the_installed_sdks() -> None:
    """The sink spells out Langfuse's span attribute names (importing the SDK is slow); each must be the SDK's."""
    from langfuse import LangfuseOtelSpanAttributes

    ours = {name: value for name, value in vars(sink_module.Attr).items() if name.isupper()}
    assert len(ours) >= 18
    assert ours == {name: getattr(LangfuseOtelSpanAttributes, name) for name in ours}
