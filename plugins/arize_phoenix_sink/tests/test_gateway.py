"""End to end against the real Phoenix: requests through the gateway become OpenInference LLM spans, team A's in
project A only, team B's in project B only, the GDPR team's nowhere (read back with Phoenix's own client); a
wrong key is refused by Phoenix (401) and shown scrubbed; ``/key/health`` makes a real authenticated export."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from openinference.semconv.resource import ResourceAttributes
from openinference.semconv.trace import OpenInferenceSpanKindValues, SpanAttributes

from sluicegate.testing import deliver, make_event, running_gateway
from sluicegate_arize_phoenix_sink.sink import ArizePhoenixSink

from .conftest import ADMIN_SECRET, Phoenix, until

MASTER = "sk-master-phoenix-e2e"
ENVIRON = {"SLUICEGATE_LOAD_PLUGINS": "sluicegate-arize-phoenix-sink"}


def _team(team_id: str, phoenix: Phoenix, project: str, key: str = ADMIN_SECRET) -> dict[str, Any]:
    return {"team_id": team_id, "success_callback": ["arize_phoenix"], "callback_vars": {
        "phoenix_collector_endpoint": phoenix.url, "phoenix_api_key": key, "phoenix_project_name": project}}


def _config(tmp_path, teams: list[dict]) -> dict[str, Any]:
    return {
        "model_list": [{"model_name": "mock", "litellm_params": {"model": "openai/m", "mock_response": "ok"}}],
        "general_settings": {"master_key": MASTER, "database_url": f"sqlite+aiosqlite:///{tmp_path}/gw.db"},
        "litellm_settings": {"default_team_settings": teams},
        "sluicegate_settings": {"delivery": {"batch_interval": 0.01, "retry_base_delay": 0.02, "retry_max_delay": 0.1,
                                             "spool_dir": str(tmp_path / "spool")}},
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
