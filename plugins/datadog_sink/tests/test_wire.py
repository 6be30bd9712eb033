"""The datadog sink against a loopback server speaking Datadog's logs intake API v2.

Datadog's own fake intake is not installable here (a Go program with no package, and no network to build
it), so ``datadog_intake.FakeDatadogIntake`` implements the intake's public API and checks what the real one
does: the ``DD-API-KEY`` of the addressed site's account (403 otherwise), gzip bodies, JSON arrays of entries
with a string ``message``, 5 MB / 1,000-entry limits (413). Requests to ``https://http-intake.logs.{site}``
reach it through ``LoopbackTransport``, which keeps the ``Host`` header, so site routing is checked too.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import threading
from typing import Any

import pytest

from sluicegate.events import REDACTED
from sluicegate.sinks.vars import decode_vars
from sluicegate.testing import make_event
from sluicegate_datadog_sink.sink import MAX_PAYLOAD_BYTES, DatadogIntakeError, DatadogSink, DatadogVars

ACCOUNTS = {
    "dd-key-global-0123456789abcdef": "datadoghq.com",
    "dd-key-team-a-0123456789abcdef": "datadoghq.eu",
    "dd-key-team-b-0123456789abcdef": "us5.datadoghq.com",
}
GLOBAL_KEY, TEAM_A_KEY, TEAM_B_KEY = ACCOUNTS


def sink_for(**raw: Any) -> DatadogSink:
    return DatadogSink(decode_vars(DatadogVars, raw))


def events(n: int, **overrides: Any) -> list[Any]:
    return [make_event(**overrides) for _ in range(n)]


# -- wire format ---------------------------------------------------------------------------------------------


async def test_entries_are_gzipped_json_with_datadog_fields(intake: Any, route_sites: Any) -> None:
    route_sites(intake)
    sink = sink_for(dd_api_key=TEAM_A_KEY, dd_site="datadoghq.eu", dd_service="gw", dd_source="sluice",
                    dd_tags="env:test,region:eu")
    batch = events(3, team_id="team-a", model="gpt-4o-mini")
    await sink.send(batch)

    [request] = intake.received
    assert (request.status, request.method, request.host, request.path) == (
        202, "POST", "http-intake.logs.datadoghq.eu", "/api/v2/logs")
    assert request.api_key == TEAM_A_KEY
    assert request.headers["content-encoding"] == "gzip"
    assert request.headers["content-type"].startswith("application/json")
    assert json.loads(gzip.decompress(request.raw)) == request.entries  # the body on the wire really is gzip
    assert [e["id"] for e in request.events()] == [e.id for e in batch]
    for entry, event in zip(request.entries, batch, strict=True):
        assert entry["ddsource"] == "sluice" and entry["service"] == "gw" and entry["hostname"]
        assert entry["status"] == "info"
        assert set(entry["ddtags"].split(",")) == {
            "team:team-a alias", "team_id:team-a", "key_alias:alias-1", "model:gpt-4o-mini", "status:success",
            "env:test", "region:eu"}
        assert json.loads(entry["message"])["messages"] == event.messages
        assert entry["timestamp"] == int(event.startTime * 1000)


async def test_failure_events_are_error_status(intake: Any, route_sites: Any) -> None:
    route_sites(intake)
    sink = sink_for(dd_api_key=GLOBAL_KEY)
    await sink.send([make_event(status="failure"), make_event()])
    failure, success = intake.received[0].entries
    assert (failure["status"], "status:failure" in failure["ddtags"]) == ("error", True)
    assert (success["status"], "status:success" in success["ddtags"]) == ("info", True)


async def test_request_tags_become_request_tag_ddtags(intake: Any, route_sites: Any) -> None:
    route_sites(intake)
    sink = sink_for(dd_api_key=GLOBAL_KEY)
    await sink.send([make_event(request_tags=["prod", "a,b", "checkout flow"]), make_event()])
    tagged, plain = (entry["ddtags"].split(",") for entry in intake.received[0].entries)
    assert [t for t in tagged if t.startswith("request_tag:")] == [
        "request_tag:prod", "request_tag:a_b", "request_tag:checkout flow"]  # a comma would split the tag
    assert not [t for t in plain if t.startswith("request_tag:")]  # negative control: no tags, none added


async def test_default_site_and_app_prefix(intake: Any, route_sites: Any) -> None:
    route_sites(intake)
    await sink_for(dd_api_key=GLOBAL_KEY).send(events(1))
    await sink_for(dd_api_key=TEAM_A_KEY, dd_site="https://app.datadoghq.eu/").send(events(1))
    assert [r.host for r in intake.received] == ["http-intake.logs.datadoghq.com", "http-intake.logs.datadoghq.eu"]
    assert intake.statuses() == [202, 202]


async def test_wrong_key_is_refused_and_not_echoed(intake: Any, route_sites: Any) -> None:
    route_sites(intake)
    sink = sink_for(dd_api_key="not-a-datadog-key-42", dd_site="datadoghq.eu")
    with pytest.raises(DatadogIntakeError) as info:
        await sink.send(events(2))
    assert (info.value.status, info.value.kind) == (403, "auth")
    assert "not-a-datadog-key-42" not in str(info.value)
    assert intake.accepted() == []
    # Control: the right key on the same site is accepted.
    await sink_for(dd_api_key=TEAM_A_KEY, dd_site="datadoghq.eu").send(events(2))
    assert len(intake.accepted(site="datadoghq.eu")) == 1


async def test_redacted_events_are_sent_as_given(intake: Any, route_sites: Any) -> None:
    """The core redacts (e.g. the seed's per-key turn_off_message_logging override); the sink sends what it gets."""
    route_sites(intake)
    sink = sink_for(dd_api_key=GLOBAL_KEY)
    redacted = make_event(messages=REDACTED, response=REDACTED)
    plain = make_event()
    await sink.send([redacted, plain])
    by_id = {e["id"]: e for e in intake.received[0].events()}
    assert by_id[redacted.id]["messages"] == REDACTED and by_id[redacted.id]["response"] == REDACTED
    assert "capital of France" not in intake.received[0].entries[0]["message"]
    assert by_id[plain.id]["messages"][0]["content"] == "What is the capital of France?"


async def test_traceparent_becomes_datadog_correlation_ids(intake: Any, route_sites: Any) -> None:
    route_sites(intake)
    event = make_event()
    event.metadata.traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    await sink_for(dd_api_key=GLOBAL_KEY).send([event, make_event()])
    with_trace, without = intake.received[0].entries
    assert with_trace["dd.trace_id"] == str(int("8448eb211c80319c", 16))
    assert with_trace["dd.span_id"] == str(int("b7ad6b7169203331", 16))
    assert "dd.trace_id" not in without and "dd.span_id" not in without


# -- destinations and isolation ------------------------------------------------------------------------------


async def test_per_team_keys_reach_their_own_accounts(intake: Any, route_sites: Any,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    route_sites(intake)
    monkeypatch.setenv("DD_API_KEY", GLOBAL_KEY)
    monkeypatch.setenv("DD_SITE", "datadoghq.com")
    global_sink = sink_for(**DatadogSink.env_defaults(os.environ))
    team_a = sink_for(dd_api_key=TEAM_A_KEY, dd_site="datadoghq.eu")
    team_b = sink_for(dd_api_key=TEAM_B_KEY, dd_site="us5.datadoghq.com")  # env DD_SITE must not override it
    sent: dict[DatadogSink, list[Any]] = {global_sink: [], team_a: [], team_b: []}

    async def feed(sink: DatadogSink, team: str) -> None:
        for _ in range(10):
            batch = events(7, team_id=team)
            sent[sink].extend(e.id for e in batch)
            await sink.send(batch)

    await asyncio.gather(feed(global_sink, "none"), feed(team_a, "team-a"), feed(team_b, "team-b"))

    for sink, key, site in ((global_sink, GLOBAL_KEY, "datadoghq.com"), (team_a, TEAM_A_KEY, "datadoghq.eu"),
                            (team_b, TEAM_B_KEY, "us5.datadoghq.com")):
        assert set(intake.accepted_event_ids(api_key=key)) == set(sent[sink])
        assert all(r.site == site for r in intake.accepted(api_key=key))
    assert all(c == 1 for c in intake.accepted_event_ids().values())
    assert intake.statuses() == [202] * 30


async def test_team_entry_never_falls_back_to_env_key(intake: Any, route_sites: Any,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    route_sites(intake)
    monkeypatch.setenv("DD_API_KEY", GLOBAL_KEY)
    team = sink_for(dd_site="datadoghq.eu")  # the team named a site but no key
    with pytest.raises(DatadogIntakeError) as info:
        await team.send(events(1))
    assert info.value.kind == "config"
    assert intake.received == []  # nothing left the process, least of all the global key
    health = await team.health_check()
    assert (health.healthy, health.error_kind) == (False, "config")
    # Control: the same sink named globally gets the env key via env_defaults.
    await sink_for(**DatadogSink.env_defaults(os.environ)).send(events(1))
    assert intake.accepted(api_key=GLOBAL_KEY)


async def test_agent_mode_posts_over_http_with_the_key(intake: Any) -> None:
    sink = sink_for(dd_api_key=TEAM_B_KEY, dd_agent_host="127.0.0.1", dd_agent_port=intake.port,
                    dd_site="datadoghq.eu")  # the agent wins over the site
    await sink.send(events(2))
    [request] = intake.received
    assert (request.host, request.path, request.status, request.api_key) == (
        f"127.0.0.1:{intake.port}", "/api/v2/logs", 202, TEAM_B_KEY)
    # Control: an agent that does not know the key refuses it.
    with pytest.raises(DatadogIntakeError):
        await sink_for(dd_api_key="unknown", dd_agent_host="127.0.0.1", dd_agent_port=intake.port).send(events(1))


async def test_agent_mode_without_key_sends_no_key_header(intake: Any) -> None:
    sink = sink_for(dd_agent_host="127.0.0.1", dd_agent_port=intake.port)
    with pytest.raises(DatadogIntakeError):  # this fake agent wants a key; a real one may add its own
        await sink.send(events(1))
    assert "dd-api-key" not in intake.received[0].headers


# -- limits and 413 ------------------------------------------------------------------------------------------


async def test_413_halves_the_request_until_it_fits(make_intake: Any, route_sites: Any) -> None:
    intake = await make_intake(max_payload_bytes=20_000)
    route_sites(intake)
    batch = events(40)
    await sink_for(dd_api_key=GLOBAL_KEY).send(batch)
    statuses = intake.statuses()
    assert 413 in statuses and statuses.count(202) >= 3
    assert intake.accepted_event_ids() == {e.id: 1 for e in batch}
    assert all(len(gzip.decompress(r.raw)) <= 20_000 for r in intake.accepted())
    # Order is kept across the halves.
    assert [e["id"] for r in intake.accepted() for e in r.events()] == [e.id for e in batch]


async def test_no_split_when_the_batch_fits(intake: Any, route_sites: Any) -> None:
    route_sites(intake)
    await sink_for(dd_api_key=GLOBAL_KEY).send(events(40))
    assert intake.statuses() == [202]


async def test_a_single_entry_413_raises(make_intake: Any, route_sites: Any) -> None:
    intake = await make_intake(max_payload_bytes=100)
    route_sites(intake)
    with pytest.raises(DatadogIntakeError) as info:
        await sink_for(dd_api_key=GLOBAL_KEY).send(events(1))
    assert (info.value.status, info.value.kind) == (413, "too_large")


async def test_client_side_limit_of_1000_entries(intake: Any, route_sites: Any) -> None:
    route_sites(intake)
    small = [make_event(messages=None, response=None) for _ in range(1001)]
    await sink_for(dd_api_key=GLOBAL_KEY).send(small)
    assert [len(r.entries) for r in intake.received] == [1000, 1]
    assert intake.statuses() == [202, 202]


async def test_client_side_limit_of_5mb_and_1mb_messages(intake: Any, route_sites: Any) -> None:
    route_sites(intake)
    big = "x" * 900_000
    batch = [make_event(messages=[{"role": "user", "content": big}]) for _ in range(6)]
    huge = make_event(messages=[{"role": "user", "content": "y" * 1_500_000}])
    await sink_for(dd_api_key=GLOBAL_KEY).send([*batch, huge])
    assert 413 not in intake.statuses() and len(intake.received) == 2
    assert all(len(gzip.decompress(r.raw)) <= MAX_PAYLOAD_BYTES for r in intake.received)
    entries = [e for r in intake.received for e in r.entries]
    assert entries[-1]["truncated"] is True and len(entries[-1]["message"].encode()) <= 1_000_000
    assert all("truncated" not in e for e in entries[:-1])


# -- failures and retries ------------------------------------------------------------------------------------


async def test_5xx_raises_and_the_retry_delivers(make_intake: Any, route_sites: Any) -> None:
    intake = await make_intake()
    intake.fail_accepted = {1: 503}
    route_sites(intake)
    sink = sink_for(dd_api_key=GLOBAL_KEY)
    batch = events(5)
    with pytest.raises(DatadogIntakeError) as info:
        await sink.send(batch)
    assert (info.value.status, info.value.kind) == (503, "http_status")
    assert intake.accepted() == []
    await sink.send(batch)  # what the core does next
    assert intake.accepted_event_ids() == {e.id: 1 for e in batch}


async def test_retry_after_a_partial_split_does_not_duplicate(make_intake: Any, route_sites: Any) -> None:
    intake = await make_intake(max_payload_bytes=20_000)
    intake.fail_accepted = {3: 500}  # two halves land, the third fails
    route_sites(intake)
    sink = sink_for(dd_api_key=GLOBAL_KEY)
    batch = events(40)
    with pytest.raises(DatadogIntakeError):
        await sink.send(batch)
    partial = intake.accepted_event_ids()
    assert 0 < len(partial) < len(batch)  # the first attempt really delivered part of the batch
    await sink.send(batch)
    assert intake.accepted_event_ids() == {e.id: 1 for e in batch}
    # Control: a different batch afterwards is sent in full (the remembered ids were cleared).
    later = events(3)
    await sink.send(later)
    assert all(intake.accepted_event_ids()[e.id] == 1 for e in later)


async def test_unreachable_intake_raises_connection_error(intake: Any) -> None:
    port = intake.port
    await DatadogSink.shutdown()
    await intake.stop()
    with pytest.raises(DatadogIntakeError) as info:
        await sink_for(dd_api_key=GLOBAL_KEY, dd_agent_host="127.0.0.1", dd_agent_port=port).send(events(1))
    assert info.value.kind == "connection"


async def test_send_after_aclose_raises(intake: Any, route_sites: Any) -> None:
    route_sites(intake)
    sink = sink_for(dd_api_key=GLOBAL_KEY)
    await sink.send(events(1))
    await sink.aclose()
    with pytest.raises(RuntimeError):
        await sink.send(events(1))


# -- health --------------------------------------------------------------------------------------------------


async def test_health_check_validates_the_key_on_the_site(intake: Any, route_sites: Any) -> None:
    route_sites(intake)
    good = await sink_for(dd_api_key=TEAM_A_KEY, dd_site="datadoghq.eu").health_check()
    assert good.healthy and "api.datadoghq.eu/api/v1/validate" in good.details
    assert intake.received[-1].host == "api.datadoghq.eu" and intake.received[-1].method == "GET"
    wrong_site = await sink_for(dd_api_key=TEAM_A_KEY, dd_site="us5.datadoghq.com").health_check()
    assert (wrong_site.healthy, wrong_site.error_kind) == (False, "auth")
    assert TEAM_A_KEY not in wrong_site.details
    assert intake.accepted() == []  # a health check never writes a log


async def test_health_check_times_out(intake: Any, route_sites: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    route_sites(intake)
    intake.hold_validate = asyncio.Event()
    monkeypatch.setattr(DatadogSink, "health_timeout", 0.2)
    result = await sink_for(dd_api_key=GLOBAL_KEY).health_check()
    assert (result.healthy, result.error_kind) == (False, "timeout")
    intake.hold_validate.set()
    ok = await sink_for(dd_api_key=GLOBAL_KEY).health_check()
    assert ok.healthy


async def test_health_check_agent(make_intake: Any) -> None:
    plain = await make_intake()
    validating = await make_intake(agent_validates=True)
    reachable = await sink_for(dd_agent_host="127.0.0.1", dd_agent_port=plain.port).health_check()
    assert reachable.healthy and "does not validate" in reachable.details
    checked = await sink_for(dd_api_key=TEAM_B_KEY, dd_agent_host="127.0.0.1",
                             dd_agent_port=validating.port).health_check()
    assert checked.healthy and "accepted" in checked.details
    refused = await sink_for(dd_api_key="nope", dd_agent_host="127.0.0.1",
                             dd_agent_port=validating.port).health_check()
    assert (refused.healthy, refused.error_kind) == (False, "auth")
    port = plain.port
    await DatadogSink.shutdown()
    await plain.stop()
    down = await sink_for(dd_agent_host="127.0.0.1", dd_agent_port=port).health_check()
    assert (down.healthy, down.error_kind) == (False, "connection")


# -- shared resources ----------------------------------------------------------------------------------------


async def test_instances_share_one_bounded_client(intake: Any, route_sites: Any) -> None:
    route_sites(intake)
    threads_before = set(threading.enumerate())  # threads an earlier test left may end meanwhile: count new ones
    keys = list(ACCOUNTS.items())
    sinks = [sink_for(dd_api_key=keys[i % 3][0], dd_site=keys[i % 3][1], dd_tags=f"tenant:{i}") for i in range(300)]
    await asyncio.gather(*(s.send(events(2)) for s in sinks))
    assert len(DatadogSink._clients) == 1
    assert set(threading.enumerate()) - threads_before == set()
    assert 1 < intake.max_open_connections <= 64  # concurrent, within the shared pool's limit
    assert intake.connections_seen <= 64  # and reused, not one connection per request
    assert sum(intake.accepted_event_ids().values()) == 600
    # shutdown releases the client; the next send builds a new one.
    first = next(iter(DatadogSink._clients.values()))
    await DatadogSink.shutdown()
    assert first.is_closed and len(DatadogSink._clients) == 0
    await sinks[0].send(events(1))
    assert len(DatadogSink._clients) == 1 and next(iter(DatadogSink._clients.values())) is not first


async def test_dd_tags_as_list_and_litellm_strings(intake: Any, route_sites: Any) -> None:
    route_sites(intake)
    sink = sink_for(dd_api_key=GLOBAL_KEY, dd_tags=["env:prod", " region:eu "])
    await sink.send([make_event(team_id=None, model="m,odel")])
    tags = intake.received[0].entries[0]["ddtags"].split(",")
    assert tags == ["key_alias:alias-1", "model:m_odel", "status:success", "env:prod", "region:eu"]
    # LiteLLM writes every var as a string: the port arrives as "10518"-style text.
    agent = sink_for(dd_api_key=GLOBAL_KEY, dd_agent_host="127.0.0.1", dd_agent_port=str(intake.port))
    await agent.send(events(1))
    assert intake.statuses() == [202, 202]
