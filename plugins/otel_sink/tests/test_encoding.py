"""The direct OTLP encoder gives exactly what the OpenTelemetry SDK's encoder gives for the same span."""

from __future__ import annotations

import json

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
    make_event(call_type="anthropic_messages", request_tags=["prod", "ключ"], end_user="u-1",
               metadata=LogMetadata(session_id="sess-1", user_api_key_alias="ci-key", user_api_key_team_id="t"),
               messages=[{"role": "user", "content": [{"type": "text", "text": "hi"},
                                                       {"type": "tool_result", "tool_use_id": "t1", "content": "ok"}]}],
               response={"id": "msg_1", "type": "message", "role": "assistant", "stop_reason": "tool_use",
                         "content": [{"type": "thinking", "thinking": "hm", "signature": "s"},
                                     {"type": "tool_use", "id": "t2", "name": "f", "input": {"a": 1}}]}),
], ids=["success", "failure", "traceparent", "parameters", "negative-and-unicode", "failure-empty-message",
                                 "anthropic-messages-with-attribution"])
def test_direct_encoding_matches_the_sdk_encoder(event) -> None:
    sink = OtelSink(decode_vars(OtelSink.Vars, {"otel_endpoint": "http://127.0.0.1:9/v1/traces",
                                                 "otel_resource_attributes": "deployment.environment=test"}))
    ours = ExportTraceServiceRequest.FromString(sink.encode([event]))
    sdk = encode_spans([event_to_span(event, sink._resource)])
    assert ours == sdk
    # negative control: a different event does not compare equal
    other = encode_spans([event_to_span(make_event(model="another-model"), sink._resource)])
    assert ours != other


def test_attribution_and_anthropic_messages_attributes() -> None:
    """The documented attribution attributes (``gen_ai.conversation.id``, ``sluicegate.session_id``,
    ``sluicegate.end_user``, ``sluicegate.request_tags``, with the key alias and team) and an Anthropic answer as
    GenAI output messages; an event without attribution has none of them."""
    sink = OtelSink(decode_vars(OtelSink.Vars, {"otel_endpoint": "http://127.0.0.1:9/v1/traces"}))
    event = make_event(call_type="anthropic_messages", request_tags=["prod", "cli"], end_user="u-1",
                       metadata=LogMetadata(session_id="sess-1", user_api_key_alias="ci-key",
                                            user_api_key_team_id="team-7"),
                       response={"id": "msg_1", "type": "message", "role": "assistant", "stop_reason": "tool_use",
                                 "content": [{"type": "text", "text": "Let me check."},
                                             {"type": "tool_use", "id": "t2", "name": "f", "input": {"a": 1}}]})
    attributes = dict(event_to_span(event, sink._resource).attributes)
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.conversation.id"] == attributes["sluicegate.session_id"] == "sess-1"
    assert attributes["sluicegate.end_user"] == "u-1" and list(attributes["sluicegate.request_tags"]) == ["prod", "cli"]
    assert (attributes["sluicegate.key_alias"], attributes["sluicegate.team_id"]) == ("ci-key", "team-7")
    assert list(attributes["gen_ai.response.finish_reasons"]) == ["tool_use"] and attributes["gen_ai.response.id"] == "msg_1"
    assert json.loads(attributes["gen_ai.output.messages"]) == [{"role": "assistant", "finish_reason": "tool_call",
                                                                 "parts": [
        {"type": "text", "content": "Let me check."},
        {"type": "tool_call", "id": "t2", "name": "f", "arguments": {"a": 1}}]}]
    plain = dict(event_to_span(make_event(), sink._resource).attributes)
    assert not {"gen_ai.conversation.id", "sluicegate.session_id", "sluicegate.end_user",
                "sluicegate.request_tags"} & set(plain)
