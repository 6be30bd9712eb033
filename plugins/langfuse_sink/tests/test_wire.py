"""The sink against a loopback server speaking Langfuse's OTLP ingestion API.

No real Langfuse server can run here (it needs Docker with PostgreSQL, ClickHouse, Redis and S3), so
``LangfuseReceiver`` implements the real endpoints and checks what they check: Basic auth per project (401
on a wrong secret), gzip, OTLP protobuf/JSON decoding, id lengths and the ingestion-version header.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
from collections.abc import Callable

import httpx
import msgspec
import pytest
from google.protobuf import json_format
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from sluicegate.events import REDACTED, LogMetadata
from sluicegate.testing import make_event
from sluicegate_langfuse_sink import sink as sink_module
from sluicegate_langfuse_sink.sink import (
    GZIP_MIN_BYTES,
    INGESTION_PATH,
    LangfuseDeliveryError,
    LangfuseSink,
    encode_request,
    event_to_span,
    wire_request,
    wire_span,
)
from sluicegate_langfuse_sink.testing import LangfuseReceiver

MakeSink = Callable[..., LangfuseSink]


async def test_event_arrives_as_one_generation(langfuse_receiver: LangfuseReceiver, make_sink: MakeSink) -> None:
    event = make_event(team_id="team-1")
    await make_sink().send([event])

    [span] = langfuse_receiver.spans("project-1")
    attrs = span.attributes
    assert attrs["langfuse.observation.type"] == "generation"
    assert attrs["langfuse.observation.model.name"] == "gpt-4o-mini"
    assert json.loads(attrs["langfuse.observation.input"]) == event.messages
    assert json.loads(attrs["langfuse.observation.output"]) == {"role": "assistant", "content": "Paris."}
    assert json.loads(attrs["langfuse.observation.usage_details"]) == {"input": 12, "output": 5, "total": 17}
    assert json.loads(attrs["langfuse.observation.cost_details"]) == {"total": pytest.approx(0.000123)}
    assert json.loads(attrs["langfuse.observation.model.parameters"]) == {"temperature": 0.2}
    assert json.loads(attrs["langfuse.observation.completion_start_time"]).endswith("Z")
    assert attrs["langfuse.observation.metadata.user_api_key_team_id"] == "team-1"
    assert attrs["langfuse.observation.metadata.user_api_key_team_alias"] == "team-1 alias"
    assert attrs["langfuse.observation.metadata.user_api_key_alias"] == "alias-1"
    assert attrs["langfuse.observation.metadata.user_api_key_hash"] == "0" * 64
    assert attrs["langfuse.observation.metadata.request_id"] == event.metadata.request_id
    assert attrs["langfuse.trace.metadata.user_api_key_team_id"] == "team-1"
    assert span.trace_id == event.trace_id  # a 32-hex request id is the Langfuse trace id
    assert span.start_time_unix_nano == int(event.startTime * 1e9)
    assert span.status_code == 0 and "langfuse.observation.level" not in attrs
    assert span.scope_name == "sluicegate"
    # The wire: protobuf + ingestion version 4, to the OTLP path; one small span goes uncompressed.
    [request] = [r for r in langfuse_receiver.requests if r.path == INGESTION_PATH]
    assert (request.status, request.content_type, request.content_encoding, request.ingestion_version) == (
        200, "application/x-protobuf", None, "4")
    # Negative control: the other project received nothing.
    assert langfuse_receiver.spans("project-2") == []


async def test_wrong_secret_is_refused_and_raises(langfuse_receiver: LangfuseReceiver, make_sink: MakeSink) -> None:
    wrong = make_sink("pk-lf-1", "sk-lf-WRONG")
    with pytest.raises(LangfuseDeliveryError) as info:
        await wrong.send([make_event()])
    assert info.value.status_code == 401
    assert "sk-lf-WRONG" not in str(info.value)
    assert langfuse_receiver.spans("project-1") == []
    # Positive control beside it: the right secret is accepted by the same server.
    await make_sink("pk-lf-1", "sk-lf-1").send([make_event()])
    assert len(langfuse_receiver.spans("project-1")) == 1


async def test_failure_event_is_an_error_generation(langfuse_receiver: LangfuseReceiver, make_sink: MakeSink) -> None:
    await make_sink().send([make_event(status="failure"), make_event()])
    failed, ok = langfuse_receiver.spans("project-1")
    assert failed.status_code == 2 and failed.status_message == "upstream returned 500"
    assert failed.attributes["langfuse.observation.level"] == "ERROR"
    assert failed.attributes["langfuse.observation.status_message"] == "upstream returned 500"
    assert json.loads(failed.attributes["langfuse.observation.metadata.error_information"])["status_code"] == 500
    assert "langfuse.observation.output" not in failed.attributes
    assert ok.status_code == 0 and "langfuse.observation.level" not in ok.attributes


async def test_redacted_event_arrives_redacted(langfuse_receiver: LangfuseReceiver, make_sink: MakeSink) -> None:
    await make_sink().send([make_event(messages=REDACTED, response=REDACTED), make_event()])
    redacted, plain = langfuse_receiver.spans("project-1")
    assert redacted.attributes["langfuse.observation.input"] == REDACTED
    assert redacted.attributes["langfuse.observation.output"] == REDACTED
    assert "capital of France" not in msgspec.json.encode(redacted.attributes).decode()
    assert "capital of France" in plain.attributes["langfuse.observation.input"]  # control


async def test_no_secret_or_callback_var_in_what_is_sent(langfuse_receiver: LangfuseReceiver,
                                                         make_sink: MakeSink) -> None:
    await make_sink().send([make_event()])
    [span] = langfuse_receiver.spans("project-1")
    sent = msgspec.json.encode([span.attributes, span.resource_attributes]).decode()
    assert "sk-lf-1" not in sent and "pk-lf-1" not in sent


async def test_traceparent_puts_the_generation_under_the_callers_trace(
        langfuse_receiver: LangfuseReceiver, make_sink: MakeSink) -> None:
    trace_id, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    with_parent = make_event(metadata=LogMetadata(traceparent=f"00-{trace_id}-{parent}-01", request_id="r1"))
    malformed = make_event(metadata=LogMetadata(traceparent="00-nothex-00f067aa0ba902b7-01", request_id="r2"))
    await make_sink().send([with_parent, malformed])
    first, second = langfuse_receiver.spans("project-1")
    assert (first.trace_id, first.parent_span_id) == (trace_id, parent)
    assert first.attributes["langfuse.internal.as_root"] is True
    assert (second.trace_id, second.parent_span_id) == (malformed.trace_id, "")
    assert "langfuse.internal.as_root" not in second.attributes


async def test_redelivery_reuses_ids_so_langfuse_upserts(langfuse_receiver: LangfuseReceiver,
                                                          make_sink: MakeSink) -> None:
    batch = [make_event(), make_event(trace_id="not-hex request id")]
    sink = make_sink()
    await sink.send(batch)
    await sink.send(batch)
    spans = langfuse_receiver.spans("project-1")
    assert len(spans) == 4
    assert len({(s.trace_id, s.span_id) for s in spans}) == 2
    assert len({s.span_id for s in spans[:2]}) == 2  # control: two events, two ids


async def test_teams_reach_only_their_own_project_concurrently(langfuse_receiver: LangfuseReceiver,
                                                                make_sink: MakeSink) -> None:
    teams = 60
    for n in range(3, teams + 1):
        langfuse_receiver.add_project(f"pk-lf-{n}", f"sk-lf-{n}", project_id=f"project-{n}")
    sinks = {n: make_sink(f"pk-lf-{n}", f"sk-lf-{n}") for n in range(1, teams + 1)}

    async def team_traffic(n: int) -> None:
        for _ in range(4):
            await sinks[n].send([make_event(team_id=f"team-{n}"), make_event(team_id=f"team-{n}")])

    await asyncio.gather(*(team_traffic(n) for n in sinks))
    for n in sinks:
        spans = langfuse_receiver.spans(f"project-{n}")
        assert len(spans) == 8, n
        assert {s.attributes["langfuse.observation.metadata.user_api_key_team_id"] for s in spans} == {f"team-{n}"}


async def test_outage_raises_then_recovery_delivers(langfuse_receiver: LangfuseReceiver, make_sink: MakeSink) -> None:
    sink = make_sink()
    batch = [make_event() for _ in range(5)]
    langfuse_receiver.outage(503)
    with pytest.raises(LangfuseDeliveryError) as info:
        await sink.send(batch)
    assert info.value.status_code == 503
    assert langfuse_receiver.spans("project-1") == []
    langfuse_receiver.outage(None)
    await sink.send(batch)  # what the core's retry does: the same batch again
    assert len(langfuse_receiver.span_ids("project-1")) == 5


async def test_unreachable_host_raises(make_sink: MakeSink) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    with pytest.raises(LangfuseDeliveryError, match="ConnectError") as info:
        await make_sink(host=f"http://127.0.0.1:{port}").send([make_event()])
    assert info.value.status_code is None


async def test_rotated_secret_takes_effect_for_the_next_event(langfuse_receiver: LangfuseReceiver,
                                                              make_sink: MakeSink) -> None:
    old = make_sink("pk-lf-1", "sk-lf-1")
    await old.send([make_event()])
    langfuse_receiver.add_project("pk-lf-1", "sk-lf-rotated", project_id="project-1")
    # The core builds a new instance for the new vars; nothing is cached per public key (the SDK's flaw).
    await make_sink("pk-lf-1", "sk-lf-rotated").send([make_event()])
    with pytest.raises(LangfuseDeliveryError):
        await old.send([make_event()])
    assert len(langfuse_receiver.spans("project-1")) == 2


async def test_big_batch_is_split_into_several_requests(langfuse_receiver: LangfuseReceiver, make_sink: MakeSink,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sink_module, "MAX_REQUEST_BYTES", 5_000)
    await make_sink().send([make_event() for _ in range(40)])
    posts = [r for r in langfuse_receiver.requests if r.path == INGESTION_PATH]
    assert len(posts) > 1 and all(r.status == 200 for r in posts)
    assert sum(r.span_count for r in posts) == 40 == len(langfuse_receiver.span_ids("project-1"))


async def test_bodies_from_64_kib_are_gzipped_and_smaller_ones_are_not(langfuse_receiver: LangfuseReceiver,
                                                                      make_sink: MakeSink) -> None:
    sink = make_sink()
    await sink.send([make_event()])
    medium = [make_event(messages=[{"role": "user", "content": "tell me more " * 200}]) for _ in range(10)]
    big = [make_event(messages=[{"role": "user", "content": "tell me more " * 400}]) for _ in range(20)]
    # the batches straddle the threshold, as encoded
    assert 16 * 1024 < len(wire_request([wire_span(e) for e in medium])) < GZIP_MIN_BYTES
    assert len(wire_request([wire_span(e) for e in big])) >= GZIP_MIN_BYTES == 64 * 1024
    await sink.send(medium)
    await sink.send(big)
    small_post, medium_post, big_post = [r for r in langfuse_receiver.requests if r.path == INGESTION_PATH]
    assert (small_post.status, small_post.content_encoding, small_post.span_count) == (200, None, 1)
    assert (medium_post.status, medium_post.content_encoding, medium_post.span_count) == (200, None, 10)
    assert (big_post.status, big_post.content_encoding, big_post.span_count) == (200, "gzip", 20)
    assert len(langfuse_receiver.span_ids("project-1")) == 31


async def test_health_check(langfuse_receiver: LangfuseReceiver, make_sink: MakeSink) -> None:
    healthy = await make_sink().health_check()
    assert healthy.healthy and "project-1" in healthy.details

    wrong = await make_sink("pk-lf-1", "sk-lf-WRONG").health_check()
    assert (wrong.healthy, wrong.error_kind) == (False, "auth")
    assert "sk-lf-WRONG" not in wrong.details and "langfuse" in wrong.details

    langfuse_receiver.outage(503)
    down = await make_sink().health_check()
    assert (down.healthy, down.error_kind) == (False, "server_error")
    langfuse_receiver.outage(None)

    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    gone = await make_sink(host=f"http://127.0.0.1:{port}").health_check()
    assert (gone.healthy, gone.error_kind) == (False, "unreachable")


async def test_receiver_decodes_otlp_json_like_protobuf(langfuse_receiver: LangfuseReceiver) -> None:
    """The receiver's own checks: JSON and protobuf decode to the same span; bad encodings are refused."""
    event = make_event()
    body = encode_request([event_to_span(event)])
    as_json = json_format.MessageToJson(ExportTraceServiceRequest.FromString(body)).encode()
    headers = {"Authorization": httpx.BasicAuth("pk-lf-2", "sk-lf-2")._auth_header,
               "x-langfuse-ingestion-version": "4", "Content-Encoding": "gzip"}
    url = langfuse_receiver.url + INGESTION_PATH
    async with httpx.AsyncClient() as client:
        ok_json = await client.post(url, content=gzip.compress(as_json),
                                    headers={**headers, "Content-Type": "application/json"})
        ok_proto = await client.post(url, content=gzip.compress(body),
                                     headers={**headers, "Content-Type": "application/x-protobuf"})
        not_gzip = await client.post(url, content=body,
                                     headers={**headers, "Content-Type": "application/x-protobuf"})
        deflate = await client.post(url, content=body, headers={
            **headers, "Content-Type": "application/x-protobuf", "Content-Encoding": "deflate"})
        no_version = await client.post(url, content=gzip.compress(body), headers={
            **{k: v for k, v in headers.items() if k != "x-langfuse-ingestion-version"},
            "Content-Type": "application/x-protobuf"})
        garbage = await client.post(url, content=gzip.compress(b"\xff\x00garbage"),
                                    headers={**headers, "Content-Type": "application/x-protobuf"})
    assert (ok_json.status_code, ok_proto.status_code) == (200, 200)
    from_json, from_proto = langfuse_receiver.spans("project-2")
    assert from_json == from_proto
    assert (not_gzip.status_code, deflate.status_code, no_version.status_code, garbage.status_code) == (
        400, 415, 400, 400)


async def test_host_default_is_read_when_the_instance_is_built(monkeypatch: pytest.MonkeyPatch) -> None:
    from sluicegate.sinks.vars import decode_vars

    def build(**extra: str) -> LangfuseSink:
        return LangfuseSink(decode_vars(LangfuseSink.Vars, {"langfuse_public_key": "pk", "langfuse_secret": "sk",
                                                            **extra}))

    monkeypatch.delenv("LANGFUSE_HOST", raising=False)
    monkeypatch.delenv("LANGFUSE_BASE_URL", raising=False)
    assert build().base_url == "https://cloud.langfuse.com"
    monkeypatch.setenv("LANGFUSE_BASE_URL", "https://base.example/")
    assert build().base_url == "https://base.example"
    monkeypatch.setenv("LANGFUSE_HOST", "langfuse.internal:3000")
    assert build().base_url == "http://langfuse.internal:3000"
    assert build(langfuse_host="https://eu.example").base_url == "https://eu.example"  # explicit wins


def test_env_defaults() -> None:
    assert LangfuseSink.env_defaults({}) == {}
    assert LangfuseSink.env_defaults({"LANGFUSE_PUBLIC_KEY": "pk", "LANGFUSE_SECRET_KEY": "sk",
                                      "LANGFUSE_BASE_URL": "https://b"}) == {
        "langfuse_public_key": "pk", "langfuse_secret_key": "sk", "langfuse_host": "https://b"}
    assert LangfuseSink.env_defaults({"LANGFUSE_HOST": "https://h", "LANGFUSE_BASE_URL": "https://b"})[
        "langfuse_host"] == "https://h"
