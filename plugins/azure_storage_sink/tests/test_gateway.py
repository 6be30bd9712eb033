"""Through the whole gateway (config.yaml → request → dispatcher → azure_storage → Azurite): each team's events
reach only its own container (team B on another account), the GDPR team's reach nothing; ``/key/health`` makes a
real authenticated call and shows a key holder only the kind of failure; an outage spanning a gateway restart
loses nothing (the spool replays what was not delivered)."""

from __future__ import annotations

import asyncio
from typing import Any

from sluicegate.testing import running_gateway

from .conftest import ACCOUNT, ACCOUNT_KEY, OTHER_ACCOUNT, OTHER_KEY, Azurite, until

MASTER = "sk-master-azure-e2e"
ENVIRON = {"SLUICEGATE_LOAD_PLUGINS": "sluicegate-azure-storage-sink"}


def _team(team_id: str, azurite: Azurite, container: str, account: str = ACCOUNT, key: str = ACCOUNT_KEY) -> dict:
    return {"team_id": team_id, "success_callback": ["azure_storage"], "callback_vars": {
        "azure_storage_account_name": account, "azure_storage_account_key": key, "azure_storage_container": container,
        "azure_storage_endpoint": azurite.url(account), "azure_storage_path_prefix": team_id}}


def _config(tmp_path, teams: list[dict], **delivery: Any) -> dict[str, Any]:
    return {
        "model_list": [{"model_name": "mock", "litellm_params": {"model": "openai/m", "mock_response": "ok"}}],
        "general_settings": {"master_key": MASTER, "database_url": f"sqlite+aiosqlite:///{tmp_path}/gw.db"},
        "litellm_settings": {"default_team_settings": teams},
        "sluicegate_settings": {"delivery": {"batch_interval": 0.01, "retry_base_delay": 0.02, "retry_max_delay": 0.1,
                                             "spool_dir": str(tmp_path / "spool"), **delivery}},
    }


async def test_each_team_reaches_only_its_container_and_the_gdpr_team_nothing(azurite: Azurite, tmp_path) -> None:
    container_a = azurite.new_container("team-a")
    container_b = azurite.new_container("team-b", OTHER_ACCOUNT, OTHER_KEY)
    teams = [_team("team-a", azurite, container_a), _team("team-b", azurite, container_b, OTHER_ACCOUNT, OTHER_KEY),
             {"team_id": "gdpr-team", "success_callback": [], "failure_callback": []}]
    async with running_gateway(_config(tmp_path, teams), ENVIRON) as gw:
        keys = {t: await gw.new_key(team_id=t) for t in ("team-a", "team-b", "gdpr-team")}
        responses = await asyncio.gather(*(gw.chat(keys[t], f"{t} {n}") for t in keys for n in range(5)))
        assert all(r.status_code == 200 for r in responses)
        await gw.gateway.dispatcher.drain(10)
        health = (await gw.client.post("/key/health", headers={"Authorization": f"Bearer {keys['team-a']}"})).json()
        no_logging = (await gw.client.post("/key/health",
                                           headers={"Authorization": f"Bearer {keys['gdpr-team']}"})).json()
    in_a = azurite.events(container_a)
    in_b = azurite.events(container_b, OTHER_ACCOUNT, OTHER_KEY)
    assert len(in_a) == 5 and {e["metadata"]["user_api_key_team_id"] for e in in_a} == {"team-a"}
    assert len(in_b) == 5 and {e["metadata"]["user_api_key_team_id"] for e in in_b} == {"team-b"}
    assert all(name.startswith("team-a/") for name in azurite.blobs(container_a))
    assert ACCOUNT_KEY not in str(in_a) and OTHER_KEY not in str(in_b)
    assert "gdpr-team" not in str(in_a) + str(in_b)  # the GDPR team's requests reached no container
    assert health["key"] == "healthy" and health["logging_callbacks"]["status"] == "healthy", health
    assert not (no_logging["logging_callbacks"] or {}).get("callbacks")


async def test_key_health_is_a_real_call_and_shows_the_key_holder_only_the_kind(azurite: Azurite, tmp_path) -> None:
    container = azurite.new_container("health")
    teams = [_team("team-ok", azurite, container),
             _team("team-badkey", azurite, container, key=OTHER_KEY),
             _team("team-gone", azurite, "container-never-made")]
    async with running_gateway(_config(tmp_path, teams), ENVIRON) as gw:
        answers = {}
        for team in ("team-ok", "team-badkey", "team-gone"):
            key = await gw.new_key(team_id=team)
            answers[team] = (await gw.client.post("/key/health", headers={"Authorization": f"Bearer {key}"})).json()
        admin = await gw.admin("GET", "/-/sinks")
    assert answers["team-ok"]["key"] == "healthy"  # control
    assert answers["team-badkey"]["key"] == "unhealthy"
    assert answers["team-badkey"]["logging_callbacks"]["details"] == "azure_storage: auth"
    assert answers["team-gone"]["logging_callbacks"]["details"] == "azure_storage: rejected"
    assert OTHER_KEY not in str(answers) and OTHER_KEY not in admin.text


async def test_an_outage_across_a_gateway_restart_loses_nothing(azurite: Azurite, tmp_path) -> None:
    container = azurite.new_container("spool")
    cfg = _config(tmp_path, [_team("team-a", azurite, container)], max_retries=1000, shutdown_grace=0.5)
    azurite.stop()
    try:
        async with running_gateway(cfg, ENVIRON) as gw:
            key = await gw.new_key(team_id="team-a")
            for n in range(10):
                assert (await gw.chat(key, f"during the outage {n}")).status_code == 200  # requests never wait
            await until(lambda: any(s["retried"] >= 1 for s in gw.gateway.dispatcher.stats()),
                        "a failed, retried send")
    finally:
        azurite.start()
    assert azurite.events(container) == []
    async with running_gateway(cfg, ENVIRON) as gw:  # same database and spool: what was accepted is replayed
        await until(lambda: len(azurite.events(container)) >= 10, "the spooled events", timeout=20)
        await gw.gateway.dispatcher.drain(5)
    contents = sorted(e["messages"][0]["content"] for e in azurite.events(container))
    assert contents == sorted(f"during the outage {n}" for n in range(10))  # each once, none lost

