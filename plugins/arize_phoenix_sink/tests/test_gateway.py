"""End to end against the real Phoenix: requests through the gateway become OpenInference LLM spans, team A's in
project A only, team B's in project B only, the GDPR team's nowhere (read back with Phoenix's own client); a
wrong key is refused by Phoenix (401) and shown scrubbed; ``/key/health`` makes a real authenticated export and
shows a key holder only the kind of failure; an outage (a relay in front of Phoenix closed, then reopened) loses
nothing with the spool on."""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

from openinference.semconv.resource import ResourceAttributes
from openinference.semconv.trace import OpenInferenceSpanKindValues, SpanAttributes

from sluicegate.testing import TcpRelay, deliver, make_event, running_gateway, wait_until
from sluicegate_arize_phoenix_sink.sink import ArizePhoenixSink

from .conftest import ADMIN_SECRET, Phoenix, until

MASTER = "sk-master-phoenix-e2e"
ENVIRON = {"SLUICEGATE_LOAD_PLUGINS": "sluicegate-arize-phoenix-sink"}


def _team(team_id: str, phoenix: Phoenix, project: str, key: str = ADMIN_SECRET) -> dict[str, Any]:
    return {"team_id": team_id, "success_callback": ["arize_phoenix"], "callback_vars": {
        "phoenix_collector_endpoint": phoenix.url, "phoenix_api_key": key, "phoenix_project_name": project}}


def _config(tmp_path, teams: list[dict], **delivery: Any) -> dict[str, Any]:
    return {
        "model_list": [{"model_name": "mock", "litellm_params": {"model": "openai/m", "mock_response": "ok"}}],
        "general_settings": {"master_key": MASTER, "database_url": f"sqlite+aiosqlite:///{tmp_path}/gw.db"},
        "litellm_settings": {"default_team_settings": teams},
        "sluicegate_settings": {"delivery": {"batch_interval": 0.01, "retry_base_delay": 0.02, "retry_max_delay": 0.1,
                                             "spool_dir": str(tmp_path / "spool"), **delivery}},
    }


async def test_each_team_lands_in_its_own_phoenix_project_only(phoenix: Phoenix, tmp_path) -> None:
    project_a, project_b = f"team-a-{uuid.uuid4().hex[:6]}", f"team-b-{uuid.uuid4().hex[:6]}"
    teams = [_team("team-a", phoenix, project_a), _team("team-b", phoenix, project_b),
             {"team_id": "gdpr-team", "success_callback": [], "failure_callback": []}]
    async with running_gateway(_config(tmp_path, teams), ENVIRON) as gw:
        keys = {t: await gw.new_key(team_id=t) for t in ("team-a", "team-b", "gdpr-team")}
        responses = await asyncio.gather(*(gw.chat(keys[t], f"{t} question {n}") for t in keys for n in range(3)))
        assert all(r.status_code == 200 for r in responses)
        await gw.gateway.dispatcher.drain(10)
        health = (await gw.client.post("/key/health", headers={"Authorization": f"Bearer {keys['team-a']}"})).json()
    await until(lambda: len(phoenix.spans(project_a)) == 3 and len(phoenix.spans(project_b)) == 3,
                "both teams' spans in Phoenix", timeout=30)
    spans_a, spans_b = phoenix.spans(project_a), phoenix.spans(project_b)
    inputs_a = {s["attributes"][SpanAttributes.INPUT_VALUE] for s in spans_a}
    assert all("team-a question" in text for text in inputs_a) and len(inputs_a) == 3
    assert all("team-b question" in s["attributes"][SpanAttributes.INPUT_VALUE] for s in spans_b)
    everything = str(spans_a) + str(spans_b)
    assert "gdpr-team" not in everything and ADMIN_SECRET not in everything
    # Phoenix keeps openinference.span.kind as the span's kind, not among its attributes.
    assert {s["span_kind"] for s in spans_a + spans_b} == {OpenInferenceSpanKindValues.LLM.value}
    span = spans_a[0]["attributes"]
    assert span[SpanAttributes.LLM_MODEL_NAME] == "mock"
    assert span[f"{SpanAttributes.LLM_OUTPUT_MESSAGES}.0.message.content"] == "ok"
    assert span[f"{SpanAttributes.LLM_INPUT_MESSAGES}.0.message.role"] == "user"
    assert isinstance(span[SpanAttributes.LLM_TOKEN_COUNT_TOTAL], int)
    assert health["key"] == "healthy", health
    assert ResourceAttributes.PROJECT_NAME == "openinference.project.name"  # the attribute the sink files under


async def test_a_wrong_key_is_refused_by_phoenix_and_scrubbed(phoenix: Phoenix) -> None:
    project = f"wrong-key-{uuid.uuid4().hex[:6]}"
    wrong = "not-the-phoenix-key-0123456789"
    vars_ = {"phoenix_collector_endpoint": phoenix.url, "phoenix_api_key": wrong, "phoenix_project_name": project}
    report = await deliver(ArizePhoenixSink, vars_, make_event())
    assert (report.sent, report.dropped, report.retried) == (0, 1, 0), report
    assert "HTTP 401" in (report.last_error or "") and wrong not in (report.last_error or "")
    # control: the right key, same project
    assert (await deliver(ArizePhoenixSink, {**vars_, "phoenix_api_key": ADMIN_SECRET}, make_event())).delivered
    await until(lambda: len(phoenix.spans(project)) == 1, "the control span")


async def test_redacted_routes_send_no_message_content(phoenix: Phoenix) -> None:
    project = f"redacted-{uuid.uuid4().hex[:6]}"
    vars_ = {"phoenix_collector_endpoint": phoenix.url, "phoenix_api_key": ADMIN_SECRET,
             "phoenix_project_name": project}
    assert (await deliver(ArizePhoenixSink, vars_, make_event(), redact=True)).delivered
    await until(lambda: len(phoenix.spans(project)) == 1, "the redacted span")
    assert "capital of France" not in str(phoenix.spans(project))


def _contents(spans: list[dict]) -> list[str]:
    """The user message of each span, as Phoenix stored it."""
    return [s["attributes"][f"{SpanAttributes.LLM_INPUT_MESSAGES}.0.message.content"] for s in spans]


async def _until_stored(phoenix: Phoenix, project: str, count: int, what: str) -> None:
    """Wait (off the gateway's event loop: Phoenix's client blocks) until ``project`` holds ``count`` spans."""
    await asyncio.to_thread(wait_until, lambda: len(phoenix.spans(project)) >= count, timeout=30, interval=0.2,
                            what=what)


async def test_key_health_with_a_wrong_key_shows_the_key_holder_only_the_kind(phoenix: Phoenix, tmp_path, caplog,
                                                                                  monkeypatch) -> None:
    project = f"health-{uuid.uuid4().hex[:6]}"
    wrong = "phoenix-wrong-key-for-health-0123456789"
    # The admin's own routing is the global entry: `arize_phoenix` configured from LiteLLM's PHOENIX_* variables.
    monkeypatch.setenv("PHOENIX_COLLECTOR_ENDPOINT", phoenix.url)
    monkeypatch.setenv("PHOENIX_API_KEY", wrong)
    monkeypatch.setenv("PHOENIX_PROJECT_NAME", project)
    cfg = _config(tmp_path, [_team("team-ok", phoenix, project), _team("team-wrong", phoenix, project, key=wrong)])
    cfg["litellm_settings"]["success_callback"] = ["arize_phoenix"]
    caplog.set_level(logging.DEBUG)
    async with running_gateway(cfg, ENVIRON) as gw:
        answers, keys = {}, {}
        for name in ("ok", "wrong"):
            keys[name] = await gw.new_key(team_id=f"team-{name}")
            response = await gw.client.post("/key/health", headers={"Authorization": f"Bearer {keys[name]}"})
            assert response.status_code == 200, response.text
            answers[name] = response.json()
        # A real send with the wrong key: Phoenix refuses it (401), the event is dropped and the drop logged.
        refused = await gw.chat(keys["wrong"], "sent with the wrong key")
        await gw.gateway.dispatcher.drain(10)
        admin_health = await gw.client.post("/key/health", headers={"Authorization": f"Bearer {MASTER}"})
        admin_view = await gw.admin("GET", "/-/sinks")
    assert answers["ok"]["key"] == "healthy", answers["ok"]  # control: the right key, same Phoenix and project
    assert answers["wrong"]["key"] == "unhealthy"
    assert answers["wrong"]["logging_callbacks"]["details"] == "arize_phoenix: auth"  # the kind, nothing more
    admin_details = admin_health.json()["logging_callbacks"]["details"]
    assert admin_details.startswith("arize_phoenix: auth: ") and "HTTP 401" in admin_details, admin_details
    assert f"127.0.0.1:{phoenix.port}/v1/traces" in admin_details  # the admin reads where and what failed
    failed = [s for s in admin_view.json()["sinks"] if s["dropped"]]
    assert len(failed) == 1 and "HTTP 401" in failed[0]["last_error"], admin_view.json()
    assert "HTTP 401" in caplog.text  # the drop was logged: the log is where the key could have leaked
    for text in (str(answers), refused.text, admin_health.text, admin_view.text, caplog.text):
        assert wrong not in text and ADMIN_SECRET not in text
    assert phoenix.spans(project) == []  # the health checks exported no span, the refused send none either


async def test_an_outage_then_recovery_loses_nothing(phoenix: Phoenix, tmp_path) -> None:
    project = f"outage-{uuid.uuid4().hex[:6]}"
    relay = TcpRelay(phoenix.port)
    team = {"team_id": "team-o", "success_callback": ["arize_phoenix"], "callback_vars": {
        "phoenix_collector_endpoint": relay.url, "phoenix_api_key": ADMIN_SECRET, "phoenix_project_name": project}}
    cfg = _config(tmp_path, [team], queue_size=10, max_retries=2, spool_flush_interval=0.05)
    before = [f"before the outage {n}" for n in range(3)]
    during = [f"during the outage {n}" for n in range(30)]
    after = [f"after the outage {n}" for n in range(5)]
    async with relay, running_gateway(cfg, ENVIRON) as gw:
        await relay.open()
        key = await gw.new_key(team_id="team-o")

        async def ask(contents: list[str]) -> None:
            responses = await asyncio.gather(*(gw.chat(key, c) for c in contents))
            assert all(r.status_code == 200 for r in responses)  # requests never wait for the sink

        await ask(before)
        await _until_stored(phoenix, project, len(before), "the spans sent before the outage")
        await relay.close()
        for first in range(0, len(during), 10):
            await ask(during[first:first + 10])

        def spooled_while_failing() -> bool:
            stats = gw.gateway.dispatcher.stats()[0]
            return stats["spooled"] > 0 and "unreachable" in (stats["last_error"] or "")

        await asyncio.to_thread(wait_until, spooled_while_failing, timeout=10,
                                what="failed sends and events past queue_size in the spool")
        assert len(phoenix.spans(project)) == len(before)  # nothing got through while the port refused
        await relay.open()
        await ask(after)
        expected = before + during + after
        await _until_stored(phoenix, project, len(expected), "every accepted event in Phoenix")
        await gw.gateway.dispatcher.drain(5)
        stats = gw.gateway.dispatcher.stats()[0]
    assert sorted(_contents(phoenix.spans(project))) == sorted(expected)  # none lost, none twice
    assert stats["sent"] == stats["accepted"] == len(expected)  # each event exported once, none re-sent
    assert stats["dropped"] == 0 and stats["retried"] > 0 and stats["spooled"] == 0, stats
