"""Finding #3: ``os.environ/NAME`` written through the admin API must not read arbitrary process variables.

An API-written callback may reference a variable only in a secret field and only for a name matching
``sluicegate_settings.allowed_env_refs`` (default: none); the refusal reads the same whether or not the variable
exists. config.yaml (the most trusted author) may still reference any variable.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.usefixtures("acme", "clean_env")

UPSTREAM_TOKEN = "upstream-token-5b2e9d71"


@pytest.fixture(autouse=True)
def _secret_env(monkeypatch, register_secret):
    register_secret(UPSTREAM_TOKEN)
    monkeypatch.setenv("SECRET_UPSTREAM_TOKEN", UPSTREAM_TOKEN)
    monkeypatch.setenv("SG_TEAM_TOKEN", "team-token-77aa11")


async def _add(gw, team_id, callback_vars):
    return await gw.admin("POST", f"/team/{team_id}/callback", json={"callback_name": "acme",
                                                                      "callback_vars": callback_vars})


async def test_a_reference_in_a_non_secret_field_is_refused_and_nothing_is_sent(receiver, make_config, start):
    cfg = make_config()
    cfg["sluicegate_settings"]["allowed_env_refs"] = ["*"]  # even with every name allowed
    async with start(cfg) as gw:
        await gw.admin("POST", "/team/new", json={"team_id": "t"})
        # The attack: the variable's value would become the destination URL (or any field sent in the clear).
        response = await _add(gw, "t", {"url": "os.environ/SECRET_UPSTREAM_TOKEN", "api_token": "tok-12345678"})
        assert response.status_code == 422, response.text
        error = response.json()["error"]
        assert error["param"] == "callback_vars.url" and "secret fields" in error["message"]
        assert UPSTREAM_TOKEN not in response.text
        assert (await gw.admin("GET", "/team/t/callback")).json()["data"]["source"] == "global"


async def test_an_unlisted_name_is_refused_without_saying_whether_it_exists(make_config, start):
    async with start(make_config()) as gw:
        await gw.admin("POST", "/team/new", json={"team_id": "t"})
        existing = await _add(gw, "t", {"url": "http://127.0.0.1:9/x", "api_token": "os.environ/SECRET_UPSTREAM_TOKEN"})
        missing = await _add(gw, "t", {"url": "http://127.0.0.1:9/x", "api_token": "os.environ/SG_NO_SUCH_VAR_1"})
        assert existing.status_code == missing.status_code == 422
        assert existing.json()["error"]["param"] == missing.json()["error"]["param"] == "callback_vars.api_token"
        assert existing.json()["error"]["message"] == missing.json()["error"]["message"]
        assert "allowed_env_refs" in existing.json()["error"]["message"]
        # The same rule for a key's own logging.
        key = await gw.admin("POST", "/key/generate", json={"metadata": {"logging": [{"callback_name": "acme",
              "callback_vars": {"url": "http://127.0.0.1:9/x", "api_token": "os.environ/SECRET_UPSTREAM_TOKEN"}}]}})
        assert key.status_code == 422 and "allowed_env_refs" in key.json()["error"]["message"]


async def test_a_listed_name_in_a_secret_field_is_resolved_for_delivery(receiver, make_config, start, vars_for):
    cfg = make_config()
    cfg["sluicegate_settings"]["allowed_env_refs"] = ["SG_TEAM_*"]
    async with start(cfg) as gw:
        await gw.admin("POST", "/team/new", json={"team_id": "t"})
        response = await _add(gw, "t", vars_for("t", token="os.environ/SG_TEAM_TOKEN"))
        assert response.status_code == 200, response.text
        # A name outside the list stays refused beside it.
        refused = await _add(gw, "t", {**vars_for("t2"), "api_token": "os.environ/SECRET_UPSTREAM_TOKEN"})
        assert refused.status_code in (400, 422)
        key = await gw.new_key(team_id="t")
        assert (await gw.chat(key)).status_code == 200
        assert await receiver.wait_for_async(lambda: len(receiver.events_at("/dest/t")) == 1)
        assert receiver.received("/dest/t")[0].headers["authorization"] == "Bearer team-token-77aa11"


async def test_a_stored_reference_no_longer_allowed_logs_nothing(receiver, make_config, start, vars_for,
                                                                 monkeypatch):
    """Narrowing the allow-list later switches such a callback off; it never falls back to other sinks."""
    cfg = make_config()
    cfg["sluicegate_settings"]["allowed_env_refs"] = ["SG_TEAM_*"]
    async with start(cfg) as gw:
        await gw.admin("POST", "/team/new", json={"team_id": "t"})
        assert (await _add(gw, "t", vars_for("t", token="os.environ/SG_TEAM_TOKEN"))).status_code == 200
        key = await gw.new_key(team_id="t")
    cfg["sluicegate_settings"]["allowed_env_refs"] = []
    cfg["litellm_settings"] = {"callbacks": ["acme"]}
    monkeypatch.setenv("ACME_URL", f"{receiver.url}/dest/global")
    monkeypatch.setenv("ACME_TOKEN", "global-tok-1")
    async with start(cfg) as gw:
        assert (await gw.chat(key)).status_code == 200
        other = await gw.new_key()
        assert (await gw.chat(other)).status_code == 200
        assert await receiver.wait_for_async(lambda: len(receiver.events_at("/dest/global")) == 1)
        assert receiver.events_at("/dest/t") == [] and len(receiver.events_at("/dest/global")) == 1


async def test_config_yaml_may_reference_any_variable(receiver, make_config, start):
    cfg = make_config(litellm={"default_team_settings": [{"team_id": "cfg", "success_callback": ["acme"],
                                                          "url": f"{receiver.url}/dest/cfg",
                                                          "api_token": "os.environ/SECRET_UPSTREAM_TOKEN"}]})
    async with start(cfg) as gw:
        key = await gw.new_key(team_id="cfg")
        assert (await gw.chat(key)).status_code == 200
        assert await receiver.wait_for_async(lambda: len(receiver.events_at("/dest/cfg")) == 1)
        assert receiver.received("/dest/cfg")[0].headers["authorization"] == f"Bearer {UPSTREAM_TOKEN}"
