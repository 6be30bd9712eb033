"""The sink on the wire: events go through Sluicegate's real dispatcher to the loopback LangSmith receiver.
Each positive case has its negative control beside it."""

from __future__ import annotations

from sluicegate.sinks.destinations import DestinationPolicy
from sluicegate.sinks.vars import decode_vars
from sluicegate.testing import deliver, make_event
from sluicegate_langsmith_sink.sink import LangsmithSink, run_id, sampled

from .conftest import tenant_of


async def test_a_batch_is_one_multipart_request_of_llm_runs_in_the_project(langsmith_receiver, tenant) -> None:
    callback_vars = tenant(project="team-a-project")
    events = [make_event(), make_event(status="failure")]
    before = len(langsmith_receiver.requests)
    report = await deliver(LangsmithSink, callback_vars, events)
    assert report.delivered, report
    requests = langsmith_receiver.requests[before:]
    assert len(requests) == 1 and requests[0].status == 202 and requests[0].path == "/runs/multipart"
    runs = langsmith_receiver.runs(tenant_of(langsmith_receiver, callback_vars), "team-a-project")
    assert sorted(runs) == sorted(str(run_id(e)) for e in events)
    ok, failed = runs[str(run_id(events[0]))], runs[str(run_id(events[1]))]
    assert ok["run_type"] == "llm" and ok["inputs"]["messages"] == events[0].messages
    assert ok["outputs"]["choices"] == events[0].response["choices"] and "error" not in ok
    assert failed["error"] == events[1].error_str
    assert ok["extra"]["metadata"]["user_api_key_team_id"] == events[0].metadata.user_api_key_team_id


async def test_a_wrong_key_is_a_permanent_failure_and_never_echoed(langsmith_receiver, tenant) -> None:
    callback_vars = {**tenant(), "langsmith_api_key": "lsv2_pt_not_registered_0123456789"}
    report = await deliver(LangsmithSink, callback_vars, make_event())
    assert (report.sent, report.dropped, report.retried) == (0, 1, 0), report
    assert "HTTP 401" in report.last_error and "lsv2_pt_not_registered" not in report.last_error
    health = await LangsmithSink(decode_vars(LangsmithSink.Vars, callback_vars)).health_check()
    assert not health.healthy and health.error_kind == "auth"
    good = LangsmithSink(decode_vars(LangsmithSink.Vars, tenant()))
    assert (await good.health_check()).healthy  # control


async def test_an_outage_is_retried_and_redelivery_is_kept_once(langsmith_receiver, tenant) -> None:
    callback_vars = tenant()
    sink = LangsmithSink(decode_vars(LangsmithSink.Vars, callback_vars))
    event = make_event()
    langsmith_receiver.outage(503)
    try:
        await sink.send([event])
        raise AssertionError("send must fail during the outage")
    except Exception as exc:
        assert getattr(exc, "status_code", None) == 503
    langsmith_receiver.outage(None)
    await sink.send([event])
    await sink.send([event])  # a retry after a lost answer: the same run id, stored once
    assert len(langsmith_receiver.runs(tenant_of(langsmith_receiver, callback_vars), "proj")) == 1


async def test_sampling_is_decided_per_event_id(langsmith_receiver, tenant) -> None:
    events = [make_event() for _ in range(40)]
    half = tenant(langsmith_sampling_rate=0.5)
    assert (await deliver(LangsmithSink, half, events)).delivered
    kept = langsmith_receiver.runs(tenant_of(langsmith_receiver, half), "proj")
    assert sorted(kept) == sorted(str(run_id(e)) for e in events if sampled(e, 0.5))
    assert 0 < len(kept) < len(events)
    none = tenant(langsmith_sampling_rate=0.0)
    assert (await deliver(LangsmithSink, none, events)).delivered
    assert langsmith_receiver.runs(tenant_of(langsmith_receiver, none), "proj") == {}


async def test_redacted_routes_send_no_message_content(langsmith_receiver, tenant) -> None:
    event = make_event()
    redacted_vars, plain_vars = tenant(), tenant()
    assert (await deliver(LangsmithSink, redacted_vars, event, redact=True)).delivered
    assert (await deliver(LangsmithSink, plain_vars, event, redact=False)).delivered
    (redacted,) = langsmith_receiver.runs(tenant_of(langsmith_receiver, redacted_vars), "proj").values()
    (plain,) = langsmith_receiver.runs(tenant_of(langsmith_receiver, plain_vars), "proj").values()
    assert "capital of France" not in str(redacted["inputs"])
    assert "capital of France" in str(plain["inputs"])


async def test_api_written_callbacks_keep_to_the_destination_policy(langsmith_receiver, tenant) -> None:
    callback_vars = decode_vars(LangsmithSink.Vars, tenant())
    refusing = DestinationPolicy(deny=["127.0.0.0/8"])
    assert [f for f, _ in LangsmithSink.destination_problems(callback_vars, refusing)] == ["langsmith_base_url"]
    assert LangsmithSink.destination_problems(callback_vars, DestinationPolicy()) == []  # control
    sink = LangsmithSink(callback_vars)
    sink.destination_policy = refusing
    before = len(langsmith_receiver.requests)
    assert not (await sink.health_check()).healthy
    try:
        await sink.send([make_event()])
        raise AssertionError("send must fail")
    except Exception as exc:
        assert "unreachable (refused)" in str(exc)
    assert len(langsmith_receiver.requests) == before
