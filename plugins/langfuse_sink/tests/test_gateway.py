"""The seed's headline case end to end: team 1 → Langfuse project 1, team 2 → project 2, team 3 → nothing,
through the real gateway (config.yaml with ``os.environ/`` references, keys from ``/key/generate``), against the
loopback Langfuse OTLP receiver (no runnable Langfuse server without Docker; see ``testing.LangfuseReceiver``)."""

from __future__ import annotations

import asyncio

import pytest

from sluicegate.testing import running_gateway

TEAM_1 = "dbe2f686-a686-4896-864a-4c3924458709"
TEAM_2 = "06ed1e01-3fa7-4b9e-95bc-f2e59b74f3a8"
TEAM_3 = "gdpr-team-3"
MASTER = "sk-master-langfuse-e2e"


@pytest.fixture
def seed_config(tmp_path, langfuse_receiver, monkeypatch):
    monkeypatch.setenv("LANGFUSE_PUB_KEY_1", "pk-lf-1")
    monkeypatch.setenv("LANGFUSE_PRIVATE_KEY_1", "sk-lf-1")
    monkeypatch.setenv("LANGFUSE_PUB_KEY_2", "pk-lf-2")
    monkeypatch.setenv("LANGFUSE_SECRET_2", "sk-lf-2")
    monkeypatch.setenv("LANGFUSE_HOST", langfuse_receiver.url)
    return {
        "model_list": [{"model_name": "mock", "litellm_params": {"model": "openai/m", "mock_response": "ok"}}],
        "general_settings": {"master_key": MASTER, "database_url": f"sqlite+aiosqlite:///{tmp_path}/gw.db"},
        "litellm_settings": {"default_team_settings": [
            {"team_id": TEAM_1, "success_callback": ["langfuse"],
             "langfuse_public_key": "os.environ/LANGFUSE_PUB_KEY_1",
             "langfuse_secret": "os.environ/LANGFUSE_PRIVATE_KEY_1"},
            {"team_id": TEAM_2, "success_callback": ["langfuse"],
             "langfuse_public_key": "os.environ/LANGFUSE_PUB_KEY_2",
             "langfuse_secret": "os.environ/LANGFUSE_SECRET_2"},
            {"team_id": TEAM_3, "success_callback": [], "failure_callback": []},
        ]},
        "sluicegate_settings": {"delivery": {"batch_interval": 0.01, "retry_base_delay": 0.02,
                                             "retry_max_delay": 0.1}},
    }


def team_ids(spans):
    return {s.attributes.get("langfuse.trace.metadata.user_api_key_team_id") for s in spans}


async def test_each_team_reaches_only_its_project_and_team_3_nothing(seed_config, langfuse_receiver):
    async with running_gateway(seed_config) as gw:
        keys = {team: await gw.new_key(team_id=team) for team in (TEAM_1, TEAM_2, TEAM_3)}
        responses = await asyncio.gather(*(gw.chat(keys[t], f"{t} {n}") for t in keys for n in range(10)))
        assert all(r.status_code == 200 for r in responses)
        assert await asyncio.to_thread(langfuse_receiver.wait_for, lambda: (
            len(langfuse_receiver.span_ids("project-1")) == 10 and len(langfuse_receiver.span_ids("project-2")) == 10))
        await gw.gateway.dispatcher.drain(5)
    assert team_ids(langfuse_receiver.spans("project-1")) == {TEAM_1}
    assert team_ids(langfuse_receiver.spans("project-2")) == {TEAM_2}
    assert langfuse_receiver.total_span_ids() == 20  # nothing from team 3, anywhere


async def test_outage_then_recovery_delivers_every_event(seed_config, langfuse_receiver):
    async with running_gateway(seed_config) as gw:
        key = await gw.new_key(team_id=TEAM_1)
        langfuse_receiver.outage(503)
        for n in range(15):
            assert (await gw.chat(key, f"during outage {n}")).status_code == 200  # requests never wait on it
        assert await asyncio.to_thread(langfuse_receiver.wait_for, lambda: any(
            r.status == 503 for r in langfuse_receiver.requests))
        assert langfuse_receiver.span_ids("project-1") == set()
        langfuse_receiver.outage(None)
        assert await asyncio.to_thread(langfuse_receiver.wait_for,
                                       lambda: len(langfuse_receiver.span_ids("project-1")) == 15, 20)
        stats = (await gw.admin("GET", "/-/sinks")).json()["sinks"]
        assert stats[0]["retried"] >= 1 and stats[0]["dropped"] == 0
