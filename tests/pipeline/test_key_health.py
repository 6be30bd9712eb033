"""``POST /key/health``: probes every sink of the key's effective routing, whichever layer it comes from."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.usefixtures("acme", "clean_env")

SECRET = "acme-secret-health-55aa"


async def health(gw, key):
    response = await gw.client.post("/key/health", headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 200, response.text
    return response.json()


async def test_healthy_key_logging_in_the_seed_shape(receiver, make_config, start, vars_for):
    async with start(make_config()) as gw:
        key = await gw.new_key(metadata={"logging": [{"callback_name": "acme", "callback_vars": vars_for("h")}]})
        body = await health(gw, key)
        assert body["key"] == "healthy"
        assert body["logging_callbacks"]["callbacks"] == ["acme"]
        assert body["logging_callbacks"]["status"] == "healthy"
        assert body["logging_callbacks"]["details"].startswith("No logger exceptions triggered, system is healthy.")
        assert any(r.method == "GET" and r.path == "/dest/h" for r in receiver.received(ok_only=False))


async def test_unhealthy_team_sink_is_named_without_its_secret(receiver, make_config, start, vars_for):
    receiver.behave("/dest/team", require_header=("authorization", "Bearer right-token"))
    async with start(make_config()) as gw:
        await gw.admin("POST", "/team/new", json={"team_id": "t"})
        await gw.admin("POST", "/team/t/callback", json={"callback_name": "acme",
                                                          "callback_vars": vars_for("team", token=SECRET)})
        key = await gw.new_key(team_id="t")  # no logging of its own: the team layer is probed
        body = await health(gw, key)
        assert body["key"] == "unhealthy"
        status = body["logging_callbacks"]
        assert status["status"] == "unhealthy" and status["source"] == "team"
        assert "acme" in status["details"] and "auth" in status["details"]
        assert SECRET not in str(body)
        # negative control: with the right token the same probe is healthy
        await gw.admin("DELETE", "/team/t/callback/acme")
        await gw.admin("POST", "/team/t/callback", json={"callback_name": "acme",
                                                          "callback_vars": vars_for("team", token="right-token")})
        assert (await health(gw, key))["logging_callbacks"]["status"] == "healthy"


async def test_unreachable_and_hanging_sinks_are_reported_within_the_timeout(receiver, make_config, start, vars_for):
    receiver.behave("/dest/hang", hang=True)
    async with start(make_config(delivery={"health_timeout": 0.5})) as gw:
        key = await gw.new_key(metadata={"logging": [
            {"callback_name": "acme", "callback_vars": vars_for("hang")},
            {"callback_name": "acme", "callback_vars": {"url": "http://127.0.0.1:9/closed", "api_token": "t"}},
            {"callback_name": "acme", "callback_vars": vars_for("fine")},
        ]})
        body = await health(gw, key)
        details = body["logging_callbacks"]["details"]
        assert body["logging_callbacks"]["status"] == "unhealthy"
        assert "timeout" in details and "unreachable" in details
        assert len(details.split("; ")) == 2  # the healthy one is not listed as failing


async def test_key_that_logs_nowhere_gets_null(make_config, start, vars_for):
    cfg = make_config(litellm={"default_team_settings": [
        {"team_id": "gdpr", "success_callback": [], "failure_callback": []}]})
    async with start(cfg) as gw:
        for key in (await gw.new_key(team_id="gdpr"), await gw.new_key()):
            assert await health(gw, key) == {"key": "healthy", "logging_callbacks": None}
        assert (await gw.client.post("/key/health")).status_code == 401
