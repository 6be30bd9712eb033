"""Parity with the official ``langfuse`` SDK (5.x): the same generation, sent through the SDK and through this
sink to the loopback Langfuse receiver, arrives with the same ``langfuse.*`` attribute keys and values.

The receiver stands in for Langfuse (no runnable Langfuse server here: it needs Docker); both clients speak
the real OTLP/HTTP protocol to it, the SDK through its own exporter thread.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from typing import Any

import pytest
from langfuse import Langfuse, propagate_attributes
from opentelemetry.sdk.trace import TracerProvider

from sluicegate.events import LogEvent, LogMetadata
from sluicegate.testing import make_event
from sluicegate_langfuse_sink.sink import _output, event_to_span
from sluicegate_langfuse_sink.testing import LangfuseReceiver, ReceivedSpan


def _sdk_send(url: str, public_key: str, secret_key: str, event: LogEvent, *, as_generation: bool = True) -> None:
    """Send ``event`` the way an application using the SDK directly would describe it."""
    client = Langfuse(public_key=public_key, secret_key=secret_key, base_url=url, tracer_provider=TracerProvider())
    name = event.metadata.generation_name or f"sluicegate-{event.call_type}"
    trace_name = event.metadata.trace_name or f"sluicegate-{event.call_type}"
    if len(trace_name) > 200:  # the SDK would drop it and leave the trace unnamed; the sink names it as by default
        trace_name = f"sluicegate-{event.call_type}"
    failed = event.status == "failure"
    meta = event.metadata
    identity = {k: v for k, v in {
        "user_api_key_team_id": meta.user_api_key_team_id, "user_api_key_team_alias": meta.user_api_key_team_alias,
        "user_api_key_alias": meta.user_api_key_alias, "user_api_key_hash": meta.user_api_key_hash,
        "request_id": meta.request_id}.items() if v is not None}
    details = {**identity, "call_type": event.call_type, "status": event.status, "stream": event.stream,
               "cache_hit": event.cache_hit, "model_group": event.model_group,
               "custom_llm_provider": event.custom_llm_provider, "error_information": event.error_information}
    trace_context = None
    if event.metadata.traceparent:
        _, trace_id, parent, _ = event.metadata.traceparent.split("-")
        trace_context = {"trace_id": trace_id, "parent_span_id": parent}
    generation_fields: dict[str, Any] = {}
    if as_generation:
        generation_fields = dict(
            model=event.model,
            model_parameters=event.model_parameters,
            usage_details={"input": event.prompt_tokens, "output": event.completion_tokens,
                           "total": event.total_tokens},
            cost_details={"total": event.response_cost},
            completion_start_time=dt.datetime.fromtimestamp(event.completionStartTime or 0, tz=dt.timezone.utc))
    own = {"request_id", "user_api_key_team_id", "user_api_key_team_alias", "user_api_key_alias", "user_api_key_hash"}
    trace_metadata = {k: v for k, v in (meta.trace_metadata or {}).items() if k not in own}
    try:
        with propagate_attributes(trace_name=trace_name, metadata={**trace_metadata, **identity},
                                  user_id=event.metadata.trace_user_id or event.end_user,
                                  session_id=event.metadata.session_id, tags=event.request_tags or None):
            observation = client.start_observation(
                trace_context=trace_context, name=name, as_type="generation" if as_generation else "span",
                input=event.messages, output=_output(event.response) if event.response is not None else None,
                metadata=details, level="ERROR" if failed else None,
                status_message=event.error_str if failed else None, **generation_fields)
            observation.end()
        client.flush()
    finally:
        client.shutdown()


def _langfuse_attributes(span: ReceivedSpan) -> dict[str, Any]:
    def decoded(value: Any) -> Any:
        # SDK 5.x JSON-encodes string metadata ('"team-1"'); the sink sends strings as they are. Compare values.
        if isinstance(value, str):
            try:
                return json.loads(value)
            except ValueError:
                return value
        return value
    return {k: decoded(v) for k, v in span.attributes.items()
            if k.startswith("langfuse.") or k in ("user.id", "session.id")}


CASES = {
    "success": lambda: make_event(),
    "failure": lambda: make_event(status="failure"),
    "traceparent": lambda: make_event(metadata=LogMetadata(
        user_api_key_team_id="team-9", user_api_key_hash="f" * 64, request_id="req-9",
        traceparent="00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")),
    # the request's attribution: Langfuse's session, user, trace name and generation name
    "attribution": lambda: make_event(end_user="end-user-1", metadata=LogMetadata(
        user_api_key_team_id="team-9", request_id="req-10", session_id="sess-1", trace_user_id="user-7",
        trace_name="checkout-flow", generation_name="summarise")),
    # tags and trace metadata (nested values as JSON; the gateway's own keys not overridable), as the SDK sets them
    "tags_and_trace_metadata": lambda: make_event(
        end_user="end-user-2", request_tags=["prod", "checkout", "t" * 201, "ключ"],
        metadata=LogMetadata(user_api_key_team_id="team-9", request_id="req-11", session_id="sess-2",
                             trace_metadata={"env": "prod", "attempt": 3, "flags": {"beta": True}, "none": None,
                                             "request_id": "spoofed", "big": "x" * 300})),
    # an Anthropic message (/v1/messages): its content blocks as the output
    "anthropic_messages": lambda: make_event(call_type="anthropic_messages", response={
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude", "stop_reason": "end_turn",
        "content": [{"type": "text", "text": "Paris."}], "usage": {"input_tokens": 3, "output_tokens": 2}}),
    # the SDK drops a session id, user id or trace name over 200 characters: so does the sink
    "over_long_attribution": lambda: make_event(end_user="u" * 201, metadata=LogMetadata(
        request_id="req-12", session_id="s" * 201, trace_name="n" * 201, trace_user_id=None)),
}


@pytest.mark.parametrize("case", sorted(CASES))
async def test_sdk_and_sink_write_the_same_langfuse_attributes(langfuse_receiver: LangfuseReceiver,
                                                               make_sink: Any, case: str) -> None:
    event = CASES[case]()
    langfuse_receiver.add_project(f"pk-lf-sdk-{case}", "sk-lf-sdk", project_id=f"sdk-{case}")
    await asyncio.to_thread(_sdk_send, langfuse_receiver.url, f"pk-lf-sdk-{case}", "sk-lf-sdk", event)
    await make_sink().send([event])

    [from_sdk] = langfuse_receiver.spans(f"sdk-{case}")
    [from_sink] = langfuse_receiver.spans("project-1")
    sdk_attributes, sink_attributes = _langfuse_attributes(from_sdk), _langfuse_attributes(from_sink)
    assert sorted(sink_attributes) == sorted(sdk_attributes)
    assert sink_attributes == sdk_attributes
    assert (from_sink.status_code, from_sink.status_message) == (from_sdk.status_code, from_sdk.status_message)
    assert (from_sink.trace_id == from_sdk.trace_id) is (case == "traceparent")  # ids are ours otherwise
    assert from_sdk.scope_name == "langfuse-sdk" and from_sink.scope_name == "sluicegate"
    for key, value in EXPECTED.get(case, {}).items():  # the parity is not vacuous: these did arrive (or not)
        assert sink_attributes.get(key) == value, key


EXPECTED: dict[str, dict[str, Any]] = {
    "tags_and_trace_metadata": {"langfuse.trace.tags": ("prod", "checkout", "ключ"),
                                "langfuse.trace.metadata.env": "prod", "langfuse.trace.metadata.attempt": 3,
                                "langfuse.trace.metadata.flags": {"beta": True},
                                "langfuse.trace.metadata.request_id": "req-11", "langfuse.trace.metadata.big": None,
                                "langfuse.trace.metadata.none": None, "user.id": "end-user-2",
                                "session.id": "sess-2"},
    "anthropic_messages": {"langfuse.observation.output": {"role": "assistant",
                                                           "content": [{"type": "text", "text": "Paris."}]}},
    "over_long_attribution": {"session.id": None, "user.id": None, "langfuse.trace.name": "sluicegate-completion"},
}


async def test_parity_check_notices_a_difference(langfuse_receiver: LangfuseReceiver, make_sink: Any) -> None:
    """Negative control: a plain span from the SDK (not a generation) does not match the sink's generation."""
    event = make_event()
    langfuse_receiver.add_project("pk-lf-sdk-span", "sk-lf-sdk", project_id="sdk-span")
    await asyncio.to_thread(_sdk_send, langfuse_receiver.url, "pk-lf-sdk-span", "sk-lf-sdk", event,
                            as_generation=False)
    await make_sink().send([event])
    [from_sdk] = langfuse_receiver.spans("sdk-span")
    [from_sink] = langfuse_receiver.spans("project-1")
    missing = set(_langfuse_attributes(from_sink)) - set(_langfuse_attributes(from_sdk))
    assert "langfuse.observation.usage_details" in missing and "langfuse.observation.model.name" in missing
    assert event_to_span(event).name == from_sdk.name  # same name: only the observation kind differs
