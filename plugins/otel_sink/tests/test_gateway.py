"""End to end: the gateway (offline mock model) routes a team's requests to this sink over OTLP.

The span reaches a loopback ``OtlpReceiver`` (decodes opentelemetry-proto directly); the client's W3C
``traceparent`` header must come out as the span's trace and parent, and a team with message logging
turned off must get no messages.
"""

from __future__ import annotations

import uuid

from litestar.testing import AsyncTestClient
from sluicegate.app import create_app
from sluicegate.config import parse_settings

MASTER = "sk-" + uuid.uuid4().hex


def settings_for(receiver, tmp_path):
    team_vars = {"otel_endpoint": receiver.http_url, "otel_headers": "authorization=Bearer gateway-test",
                 "otel_service_name": "gateway-e2e"}
    return parse_settings({
        "model_list": [{"model_name": "gpt-4o-mini",
                        "litellm_params": {"model": "openai/gpt-4o-mini", "mock_response": "Paris."}}],
        "general_settings": {"master_key": MASTER,
                             "database_url": f"sqlite+aiosqlite:///{tmp_path / 'gateway.db'}"},
        "litellm_settings": {"default_team_settings": [
            {"team_id": "team-otel", "success_callback": ["otel"], "callback_vars": team_vars},
            {"team_id": "team-quiet", "success_callback": ["otel"], "callback_vars": team_vars,
             "turn_off_message_logging": True},
        ]},
        "sluicegate_settings": {"delivery": {"batch_interval": 0.05}},
    })


async def test_gateway_request_becomes_a_span_in_the_callers_trace(otlp_receiver, tmp_path) -> None:
    app = create_app(settings_for(otlp_receiver, tmp_path))
    admin = {"Authorization": f"Bearer {MASTER}"}
    trace_id, parent_id = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    async with AsyncTestClient(app) as client:
        keys = {}
        for team in ("team-otel", "team-quiet"):
            answer = await client.post("/key/generate", json={"team_id": team, "key_alias": f"{team}-key"},
                                       headers=admin)
            assert answer.status_code == 200, answer.text
            keys[team] = answer.json()["key"]
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Capital of France?"}]}
        for team in ("team-otel", "team-quiet"):
            answer = await client.post("/v1/chat/completions", json=body, headers={
                "Authorization": f"Bearer {keys[team]}", "traceparent": f"00-{trace_id}-{parent_id}-01"})
            assert answer.status_code == 200, answer.text
        spans = await otlp_receiver.await_spans(2, where=lambda s: s.trace_id == trace_id)
    by_team = {s.attributes["sluicegate.team_id"]: s for s in spans}
    loud, quiet = by_team["team-otel"], by_team["team-quiet"]
    assert loud.parent_span_id == parent_id and quiet.parent_span_id == parent_id
    assert loud.name == "chat gpt-4o-mini" and loud.resource["service.name"] == "gateway-e2e"
    assert loud.headers["authorization"] == "Bearer gateway-test"
    assert loud.attributes["sluicegate.key_alias"] == "team-otel-key"
    assert "Capital of France?" in loud.attributes["gen_ai.input.messages"]
    assert "Paris." in loud.attributes["gen_ai.output.messages"]
    # Negative control: the same request from the team with message logging off carries no messages.
    assert "gen_ai.input.messages" not in quiet.attributes
    assert "gen_ai.output.messages" not in quiet.attributes
