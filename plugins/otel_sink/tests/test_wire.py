"""The otel sink on the wire: OTLP over HTTP (protobuf, JSON) and gRPC, to real servers on 127.0.0.1.

Two kinds of server are used, each for what it can show:

* the real rotel collector (``rotel`` package, pinned in the root dev group), receiving the sink's OTLP/HTTP
  and OTLP/gRPC and forwarding to a loopback receiver: span content, GenAI attributes, trace context. A
  collector accepting and re-exporting the spans is also the proof that the encoding is valid OTLP.
* ``OtlpReceiver`` (tests/otel_receiver.py), which decodes ``opentelemetry-proto`` directly, for what rotel
  cannot show: the headers each export carried (rotel neither checks nor forwards them), per-team
  endpoints refusing other teams' tokens, a stalled endpoint, and exactly which request carried which span.
"""

from __future__ import annotations

import asyncio
import os
import resource
import threading
import time
import uuid

import pytest
from sluicegate.events import REDACTED, LogMetadata
from sluicegate.sinks.vars import decode_vars
from sluicegate.testing import make_event
from sluicegate_otel_sink.sink import OtelExportError, OtelSink

PROTOCOLS = ("http/protobuf", "http/json", "grpc")
SPAN_KIND_CLIENT = 3
STATUS_ERROR = 2


def make_sink(**callback_vars) -> OtelSink:
    return OtelSink(decode_vars(OtelSink.Vars, callback_vars))


def endpoint_for(server, protocol: str) -> str:
    return server.grpc_target if protocol == "grpc" else server.http_url


def event_with(*, team_id: str = "team-1", traceparent: str | None = None, **overrides):
    request_id = uuid.uuid4().hex
    metadata = LogMetadata(user_api_key_alias=f"{team_id}-key", user_api_key_team_id=team_id,
                           request_id=request_id, traceparent=traceparent)
    return make_event(team_id=team_id, request_id=request_id, metadata=metadata, **overrides)


def os_thread_count() -> int:
    """Threads of this process as the kernel counts them (includes gRPC's and aiohttp's native ones)."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("Threads:"))


# --- through the real collector ----------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_rotel_forwards_genai_span(rotel, protocol) -> None:
    sink = make_sink(otel_endpoint=endpoint_for(rotel, protocol), otel_protocol=protocol,
                     otel_service_name=f"gateway-{protocol}",
                     otel_resource_attributes="deployment.environment=test,team.tier=gold")
    success = event_with(team_id="team-genai", model_parameters={"temperature": 0.2, "max_tokens": 64,
                                                                 "top_p": 0.9, "stop": ["END"]})
    failure = event_with(team_id="team-genai", status="failure")
    await sink.send([success, failure])
    spans = await rotel.forward_to.await_spans(
        2, where=lambda s: s.attributes.get("sluicegate.event_id") in (success.id, failure.id))
    by_id = {s.attributes["sluicegate.event_id"]: s for s in spans}
    ok, bad = by_id[success.id], by_id[failure.id]

    assert ok.name == "chat gpt-4o-mini" and ok.kind == SPAN_KIND_CLIENT
    assert ok.resource["service.name"] == f"gateway-{protocol}"
    assert ok.resource["deployment.environment"] == "test" and ok.resource["team.tier"] == "gold"
    assert ok.scope == "sluicegate"
    attrs = ok.attributes
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.system"] == "openai"
    assert attrs["gen_ai.request.model"] == "gpt-4o-mini"
    assert attrs["gen_ai.response.model"] == "gpt-4o-mini"
    assert attrs["gen_ai.response.id"] == "chatcmpl-1"
    assert attrs["gen_ai.response.finish_reasons"] == ["stop"]
    assert attrs["gen_ai.usage.input_tokens"] == 12 and attrs["gen_ai.usage.output_tokens"] == 5
    assert attrs["gen_ai.request.temperature"] == 0.2 and attrs["gen_ai.request.max_tokens"] == 64
    assert attrs["gen_ai.request.top_p"] == 0.9 and attrs["gen_ai.request.stop_sequences"] == ["END"]
    assert attrs["sluicegate.team_id"] == "team-genai"
    assert attrs["sluicegate.key_alias"] == "team-genai-key"
    assert attrs["sluicegate.request_id"] == success.metadata.request_id
    assert "What is the capital of France?" in attrs["gen_ai.input.messages"]
    assert "Paris." in attrs["gen_ai.output.messages"]
    assert ok.start == int(success.startTime * 1e9) and ok.end >= ok.start
    assert ok.status_code != STATUS_ERROR

    # The failed request beside it: error status and error.type, no output messages.
    assert bad.status_code == STATUS_ERROR and bad.status_message == "upstream returned 500"
    assert bad.attributes["error.type"] == "UpstreamError"
    assert bad.attributes["http.response.status_code"] == 500
    assert "gen_ai.output.messages" not in bad.attributes
    assert "error.type" not in attrs


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_rotel_span_joins_incoming_trace(rotel, protocol) -> None:
    sink = make_sink(otel_endpoint=endpoint_for(rotel, protocol), otel_protocol=protocol)
    trace_id, parent_id = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    joined = event_with(traceparent=f"00-{trace_id}-{parent_id}-01")
    alone = event_with()  # negative control: no traceparent
    broken = event_with(traceparent=f"00-{'0' * 32}-{parent_id}-01")  # invalid all-zero trace id
    await sink.send([joined, alone, broken])
    ids = {joined.id, alone.id, broken.id}
    spans = await rotel.forward_to.await_spans(
        3, where=lambda s: s.attributes.get("sluicegate.event_id") in ids)
    by_id = {s.attributes["sluicegate.event_id"]: s for s in spans}

    assert by_id[joined.id].trace_id == trace_id
    assert by_id[joined.id].parent_span_id == parent_id
    assert by_id[alone.id].trace_id == alone.trace_id  # the gateway's request id, 32 hex digits
    assert by_id[alone.id].parent_span_id == ""
    assert by_id[broken.id].trace_id == broken.trace_id and by_id[broken.id].parent_span_id == ""
    assert len({s.span_id for s in spans}) == 3


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_rotel_health_check(rotel, otel_helpers, protocol) -> None:
    sink = make_sink(otel_endpoint=endpoint_for(rotel, protocol), otel_protocol=protocol)
    healthy = await sink.health_check()
    assert healthy.healthy, healthy.details
    closed = otel_helpers.free_port()  # negative control: nothing listens there
    endpoint = f"127.0.0.1:{closed}" if protocol == "grpc" else f"http://127.0.0.1:{closed}/v1/traces"
    down = await make_sink(otel_endpoint=endpoint, otel_protocol=protocol).health_check()
    assert not down.healthy and down.error_kind == "connection" and "otel" in down.details


# --- per-team destinations, headers, failures ---------------------------------------------------------------


@pytest.fixture(scope="module")
def team_receivers(otel_helpers):
    """Two teams' own backends, each accepting only its own token."""
    a = otel_helpers.OtlpReceiver(tokens={"Bearer token-a"}, name="team-a").start()
    b = otel_helpers.OtlpReceiver(tokens={"Bearer token-b"}, name="team-b").start()
    yield a, b
    a.stop()
    b.stop()


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_per_team_endpoints_and_headers(team_receivers, protocol) -> None:
    a, b = team_receivers
    sink_a = make_sink(otel_endpoint=endpoint_for(a, protocol), otel_protocol=protocol,
                       otel_headers="authorization=Bearer%20token-a,x-team=team-a")
    # The mapping form (as a JSON object string) for team b.
    sink_b = make_sink(otel_endpoint=endpoint_for(b, protocol), otel_protocol=protocol,
                       otel_headers='{"Authorization": "Bearer token-b", "X-Team": "team-b"}')
    events_a = [event_with(team_id="team-a") for _ in range(3)]
    events_b = [event_with(team_id="team-b") for _ in range(2)]
    await asyncio.gather(sink_a.send(events_a), sink_b.send(events_b))

    ids_a, ids_b = {e.id for e in events_a}, {e.id for e in events_b}
    got_a = await a.await_spans(3, where=lambda s: s.attributes["sluicegate.event_id"] in ids_a)
    got_b = await b.await_spans(2, where=lambda s: s.attributes["sluicegate.event_id"] in ids_b)
    def sent(spans):
        return {(s.headers["authorization"], s.headers["x-team"]) for s in spans}

    assert sent(got_a) == {("Bearer token-a", "team-a")}
    assert sent(got_b) == {("Bearer token-b", "team-b")}
    assert {s.transport for s in got_a + got_b} == {protocol}
    # Isolation: no team's span reached the other team's backend.
    assert not [s for s in a.spans() if s.attributes["sluicegate.event_id"] in ids_b]
    assert not [s for s in b.spans() if s.attributes["sluicegate.event_id"] in ids_a]

    # Negative control: team b's token at team a's endpoint is refused, and send raises for a retry.
    wrong = make_sink(otel_endpoint=endpoint_for(a, protocol), otel_protocol=protocol,
                      otel_headers="authorization=Bearer token-b")
    refused_before = a.refused
    stray = event_with(team_id="team-b")
    with pytest.raises(OtelExportError) as info:
        await wrong.send([stray])
    assert info.value.kind == "auth" and "token-b" not in str(info.value)
    assert a.refused == refused_before + 1
    assert not [s for s in a.spans() if s.attributes["sluicegate.event_id"] == stray.id]

    health = await wrong.health_check()
    assert not health.healthy and health.error_kind == "auth" and "token" not in health.details
    assert (await sink_a.health_check()).healthy


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_redacted_messages_are_not_exported(otlp_receiver, protocol) -> None:
    sink = make_sink(otel_endpoint=endpoint_for(otlp_receiver, protocol), otel_protocol=protocol)
    redacted = event_with(messages=REDACTED, response=REDACTED)
    redacted_parts = event_with(messages=[{"role": "user", "content": REDACTED}],
                                response={"id": "r-2", "model": "gpt-4o-mini", "choices": [
                                    {"index": 0, "message": {"role": "assistant", "content": REDACTED},
                                     "finish_reason": "stop"}]})
    plain = event_with()  # negative control
    await sink.send([redacted, redacted_parts, plain])
    ids = {redacted.id, redacted_parts.id, plain.id}
    spans = await otlp_receiver.await_spans(3, where=lambda s: s.attributes["sluicegate.event_id"] in ids)
    by_id = {s.attributes["sluicegate.event_id"]: s for s in spans}
    for event in (redacted, redacted_parts):
        attrs = by_id[event.id].attributes
        assert "gen_ai.input.messages" not in attrs and "gen_ai.output.messages" not in attrs
        assert REDACTED not in repr(attrs)
    assert by_id[redacted_parts.id].attributes["gen_ai.response.id"] == "r-2"
    assert "gen_ai.input.messages" in by_id[plain.id].attributes
    assert "gen_ai.output.messages" in by_id[plain.id].attributes


async def test_redelivery_sends_the_same_span(otlp_receiver) -> None:
    sink = make_sink(otel_endpoint=otlp_receiver.http_url)
    first, other = event_with(), event_with()
    await sink.send([first])
    await sink.send([first, other])  # the core retrying a batch
    spans = await otlp_receiver.await_spans(3, where=lambda s: s.attributes["sluicegate.event_id"]
                                            in (first.id, other.id))
    first_ids = {(s.trace_id, s.span_id) for s in spans if s.attributes["sluicegate.event_id"] == first.id}
    other_ids = {(s.trace_id, s.span_id) for s in spans if s.attributes["sluicegate.event_id"] == other.id}
    assert len(first_ids) == 1  # a backend sees one span, twice
    assert first_ids != other_ids


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_unreachable_endpoint_raises(otel_helpers, protocol) -> None:
    port = otel_helpers.free_port()
    endpoint = f"127.0.0.1:{port}" if protocol == "grpc" else f"http://127.0.0.1:{port}/v1/traces"
    sink = make_sink(otel_endpoint=endpoint, otel_protocol=protocol,
                     otel_headers="authorization=Bearer hidden")
    with pytest.raises(OtelExportError) as info:
        await sink.send([event_with()])
    assert info.value.kind == "connection" and "hidden" not in str(info.value)


async def test_slow_endpoint_does_not_delay_other_instances(otel_helpers) -> None:
    receiver = otel_helpers.OtlpReceiver(name="slow-and-fast").start()
    try:
        slow = make_sink(otel_endpoint=f"http://127.0.0.1:{receiver.http_port}/slow/v1/traces")
        slow_task = asyncio.ensure_future(slow.send([event_with(team_id="team-slow")]))
        await asyncio.to_thread(otel_helpers.wait_until, lambda: receiver.stalled == 1, timeout=5,
                                what="the slow endpoint to hold a request")
        others = [make_sink(otel_endpoint=f"http://127.0.0.1:{receiver.http_port}/team-{i}/v1/traces",
                            otel_protocol="http/json" if i % 2 else "http/protobuf") for i in range(50)]
        events = [event_with(team_id=f"team-{i}") for i in range(50)]
        started = time.monotonic()
        sends = asyncio.gather(*(s.send([e]) for s, e in zip(others, events, strict=True)))
        await asyncio.wait_for(sends, timeout=5)
        assert time.monotonic() - started < 5
        assert not slow_task.done()  # the slow export is still waiting, the others did not
        receiver.release_stalled()
        await asyncio.wait_for(slow_task, timeout=5)
        await receiver.await_spans(51)
    finally:
        receiver.stop()


# --- many teams ---------------------------------------------------------------------------------------------


async def test_thousand_instances_bounded_threads_every_span_delivered(otel_helpers) -> None:
    """1,000 instances (one per team, own headers and destination path): threads stay flat, no span lost."""
    receiver = otel_helpers.OtlpReceiver(name="thousand").start()
    try:
        # Warm up shared parts once (encode pool, aiohttp session, gRPC poller) so the baseline includes them.
        warm = [make_sink(otel_endpoint=endpoint_for(receiver, p), otel_protocol=p) for p in PROTOCOLS]
        await asyncio.gather(*(s.send([event_with(team_id="warm-up")]) for s in warm))
        threads_before, rss_before = os_thread_count(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

        protocols = [PROTOCOLS[i % 3] for i in range(1000)]
        sinks = [make_sink(otel_endpoint=(receiver.grpc_target if p == "grpc"
                                          else f"http://127.0.0.1:{receiver.http_port}/team-{i}/v1/traces"),
                           otel_protocol=p, otel_headers=f"x-team=team-{i}", otel_service_name=f"svc-{i}")
                 for i, p in enumerate(protocols)]
        batches = [[event_with(team_id=f"team-{i}") for _ in range(2)] for i in range(1000)]
        peak = 0
        stop = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not stop.is_set():
                peak = max(peak, os_thread_count())
                stop.wait(0.005)

        sampler = threading.Thread(target=sample, name="thread-sampler")
        sampler.start()
        started = time.perf_counter()
        try:
            await asyncio.gather(*(s.send(b) for s, b in zip(sinks, batches, strict=True)))
        finally:
            stop.set()
            sampler.join()
        elapsed = time.perf_counter() - started
        spans = await receiver.await_spans(
            2000, timeout=20, where=lambda s: s.attributes["sluicegate.team_id"].startswith("team-"))
        threads_after = os_thread_count()
        rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

        # Every span, once, at its own team's destination with its own headers and resource.
        assert len(spans) == 2000
        assert {s.attributes["sluicegate.event_id"] for s in spans} == {e.id for b in batches for e in b}
        for span in spans:
            team = span.attributes["sluicegate.team_id"]
            assert span.headers["x-team"] == team
            assert span.resource["service.name"] == f"svc-{team.removeprefix('team-')}"
        # Bounded: the sampler thread is the only addition the test made; allow a few for
        # asyncio.to_thread's default executor, never anything that grows with 1,000 instances.
        assert peak - threads_before <= 6, (threads_before, peak)
        assert threads_after - threads_before <= 6, (threads_before, threads_after)
        print(f"\n1000 instances: {len(spans)} spans in {elapsed:.2f}s ({len(spans) / elapsed:.0f} spans/s); "
              f"threads {threads_before} -> peak {peak} -> {threads_after}; "
              f"max RSS {rss_before // 1024} -> {rss_after // 1024} MiB (pid {os.getpid()})")
    finally:
        receiver.stop()


def test_thread_count_sees_a_thread_per_destination() -> None:
    """Negative control for the bound above: the SDK pipeline per destination (LiteLLM's way) is counted."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    # Thread ids, not a count: a thread left by an earlier test may end meanwhile and hide a new one.
    before = set(os.listdir("/proc/self/task"))
    providers = []
    try:
        for _ in range(20):
            provider = TracerProvider()
            provider.add_span_processor(BatchSpanProcessor(InMemorySpanExporter()))
            provider.get_tracer("per-team").start_span("chat").end()
            providers.append(provider)
        assert len(set(os.listdir("/proc/self/task")) - before) >= 20
    finally:
        for provider in providers:
            provider.shutdown()


async def test_shutdown_releases_shared_parts_and_they_come_back(otlp_receiver) -> None:
    sink = make_sink(otel_endpoint=otlp_receiver.http_url)
    await sink.send([event_with()])
    transports = OtelSink._shared[asyncio.get_running_loop()]
    client = transports.http()
    assert client.open_connections == 1  # the keep-alive connection of the first send
    await OtelSink.shutdown()
    assert client.closed and client.open_connections == 0
    assert asyncio.get_running_loop() not in OtelSink._shared
    again = event_with()
    await sink.send([again])  # shared parts are created anew on first use
    await otlp_receiver.await_spans(1, where=lambda s: s.attributes["sluicegate.event_id"] == again.id)
    await sink.aclose()
    await sink.aclose()
