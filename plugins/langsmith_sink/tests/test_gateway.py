"""Through the whole gateway: config → request → dispatcher (spool on) → langsmith sink → loopback receiver.

Only this distribution's plugin is loaded (``SLUICEGATE_LOAD_PLUGINS``).
"""

from __future__ import annotations

import asyncio
from typing import Any

from sluicegate.testing import running_gateway, wait_until

from .conftest import tenant_of

MASTER = "sk-master-langsmith-test"
ENVIRON = {"SLUICEGATE_LOAD_PLUGINS": "sluicegate-langsmith-sink"}


def gateway_config(tmp_path, teams: list[dict[str, Any]], **delivery: Any) -> dict[str, Any]:
    return {
        "model_list": [{"model_name": "mock", "litellm_params": {"model": "openai/mock-1",
                                                                 "mock_response": "The answer is 42."}}],
        "general_settings": {"master_key": MASTER, "database_url": f"sqlite+aiosqlite:///{tmp_path}/gw.db"},
        "litellm_settings": {"default_team_settings": teams},
        "sluicegate_settings": {"delivery": {"batch_interval": 0.01, "retry_base_delay": 0.02,
                                             "retry_max_delay": 0.1, "spool_dir": str(tmp_path / "spool"),
                                             "spool_flush_interval": 0.05, **delivery},
                                "change_poll_interval": 0.05},
    }


def team(team_id: str, callback_vars: dict[str, Any]) -> dict[str, Any]:
    return {"team_id": team_id, "success_callback": ["langsmith"], "callback_vars": callback_vars}


async def ask(gw, key: str, content: str) -> None:
    response = await gw.chat(key, content)
    assert response.status_code == 200, response.text


def contents(receiver, callback_vars) -> list[str]:
    runs = receiver.runs(tenant_of(receiver, callback_vars), callback_vars["langsmith_project"]).values()
    return sorted(run["inputs"]["messages"][0]["content"] for run in runs)


async def test_each_team_logs_to_its_own_project_and_a_disabled_team_nowhere(langsmith_receiver, tenant, tmp_path):
    vars_a, vars_b, vars_gdpr = tenant(project="a"), tenant(project="b"), tenant(project="gdpr")
    cfg = gateway_config(tmp_path, [team("team-a", vars_a), team("team-b", vars_b), team("team-gdpr", vars_gdpr)])
    async with running_gateway(cfg, environ=ENVIRON) as gw:
        key_a, key_b, key_gdpr = [await gw.new_key(team_id=t) for t in ("team-a", "team-b", "team-gdpr")]
        await ask(gw, key_gdpr, "gdpr-before")  # control: the GDPR team's sink works while logging is on
        await asyncio.to_thread(wait_until, lambda: contents(langsmith_receiver, vars_gdpr), timeout=15,
                                what="the control run")
        assert (await gw.admin("POST", "/team/team-gdpr/disable_logging")).status_code == 200
        await asyncio.gather(*(ask(gw, key_a, f"a{i}") for i in range(3)), *(ask(gw, key_b, f"b{i}") for i in range(2)),
                             *(ask(gw, key_gdpr, f"gdpr-secret-{i}") for i in range(3)))
        await asyncio.to_thread(wait_until, lambda: len(contents(langsmith_receiver, vars_a)) >= 3
                                and len(contents(langsmith_receiver, vars_b)) >= 2, timeout=15, what="both teams' runs")
        await gw.gateway.dispatcher.drain(5)
        health = (await gw.client.post("/key/health", headers={"Authorization": f"Bearer {key_a}"})).json()
    assert contents(langsmith_receiver, vars_a) == ["a0", "a1", "a2"]
    assert contents(langsmith_receiver, vars_b) == ["b0", "b1"]
    assert contents(langsmith_receiver, vars_gdpr) == ["gdpr-before"]  # nothing after disable_logging
    assert "gdpr-secret" not in str(langsmith_receiver.all_runs())
    assert health["key"] == "healthy" and health["logging_callbacks"]["status"] == "healthy", health


async def test_key_health_makes_a_real_call_and_shows_a_key_holder_only_the_kind(langsmith_receiver, tenant, tmp_path):
    wrong = "lsv2_pt_wrong_for_health_0123456789"
    cfg = gateway_config(tmp_path, [team("team-ok", tenant()),
                                    team("team-wrong", {**tenant(), "langsmith_api_key": wrong})])
    async with running_gateway(cfg, environ=ENVIRON) as gw:
        answers = {}
        for name in ("ok", "wrong"):
            key = await gw.new_key(team_id=f"team-{name}")
            response = await gw.client.post("/key/health", headers={"Authorization": f"Bearer {key}"})
            answers[name] = response.json()
            assert wrong not in response.text
        admin_view = await gw.admin("GET", "/-/sinks")
    assert answers["ok"]["key"] == "healthy", answers["ok"]  # control
    assert answers["wrong"]["key"] == "unhealthy"
    assert answers["wrong"]["logging_callbacks"]["details"] == "langsmith: auth"
    assert wrong not in admin_view.text


async def test_an_outage_then_recovery_loses_nothing(langsmith_receiver, tenant, tmp_path):
    callback_vars = tenant(project="outage")
    cfg = gateway_config(tmp_path, [team("team-o", callback_vars)], queue_size=10, max_retries=2)
    async with running_gateway(cfg, environ=ENVIRON) as gw:
        key = await gw.new_key(team_id="team-o")
        langsmith_receiver.outage(503)
        sent = [f"outage-{i}" for i in range(30)]
        try:
            for first in range(0, len(sent), 10):
                await asyncio.gather(*(ask(gw, key, content) for content in sent[first:first + 10]))
            await asyncio.to_thread(wait_until, lambda: gw.gateway.dispatcher.stats()[0]["last_error"], timeout=10,
                                    what="a failed send during the outage")
            assert "HTTP 503" in gw.gateway.dispatcher.stats()[0]["last_error"]
        finally:
            langsmith_receiver.outage(None)
        after = [f"after-{i}" for i in range(5)]
        await asyncio.gather(*(ask(gw, key, content) for content in after))
        await asyncio.to_thread(wait_until, lambda: len(contents(langsmith_receiver, callback_vars)) >= 35,
                                timeout=20, what="every accepted run")
        stats = gw.gateway.dispatcher.stats()[0]
    assert contents(langsmith_receiver, callback_vars) == sorted(sent + after)  # none lost, none twice
    assert stats["dropped"] == 0 and stats["retried"] > 0, stats
