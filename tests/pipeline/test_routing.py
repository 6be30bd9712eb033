"""Who logs where: key > team (API) > team (config) > global, with disable and callback types.

Every event is delivered by the real acme plugin over HTTP to a loopback receiver; each destination is a path,
so counting what arrived per path shows exactly where each event went.
"""

from __future__ import annotations

import asyncio

import pytest

pytestmark = pytest.mark.usefixtures("acme", "clean_env")


def teams_of(events):
    return sorted({e["metadata"]["user_api_key_team_id"] for e in events})


async def test_each_layer_wins_in_order_and_empty_lists_disable_everything(
        receiver, make_config, start, vars_for, monkeypatch):
    monkeypatch.setenv("ACME_URL", f"{receiver.url}/dest/global")
    monkeypatch.setenv("ACME_TOKEN", "global-token")
    cfg = make_config(litellm={
        "callbacks": ["acme"],
        "default_team_settings": [
            {"team_id": "cfg", "success_callback": ["acme"], **vars_for("cfg")},
            {"team_id": "api", "success_callback": ["acme"], **vars_for("cfg-api")},
            {"team_id": "gdpr", "success_callback": [], "failure_callback": []},
            {"team_id": "cache-only", "cache": False},
        ]})
    async with start(cfg) as gw:
        response = await gw.admin("POST", "/team/api/callback", json={
            "callback_name": "acme", "callback_type": "success", "callback_vars": vars_for("api")})
        assert response.status_code == 200, response.text
        keys = {
            "cfg": await gw.new_key(team_id="cfg"),
            "api": await gw.new_key(team_id="api"),
            "gdpr": await gw.new_key(team_id="gdpr"),
            "cache-only": await gw.new_key(team_id="cache-only"),
            "none": await gw.new_key(),
            "own": await gw.new_key(team_id="cfg", metadata={"logging": [
                {"callback_name": "acme", "callback_type": "success", "callback_vars": vars_for("key")}]}),
            "own-off": await gw.new_key(team_id="cfg", metadata={"logging": []}),
        }
        for name, key in keys.items():
            response = await gw.chat(key, f"from {name}")
            assert response.status_code == 200, (name, response.text)
        expected = {"/dest/cfg": 1, "/dest/api": 1, "/dest/global": 2, "/dest/key": 1}
        assert await receiver.wait_for_async(
            lambda: all(len(receiver.events_at(p)) >= n for p, n in expected.items()))
        await gw.gateway.dispatcher.drain(5)
        assert [e["messages"][0]["content"] for e in receiver.events_at("/dest/cfg")] == ["from cfg"]
        assert [e["messages"][0]["content"] for e in receiver.events_at("/dest/api")] == ["from api"]
        assert [e["messages"][0]["content"] for e in receiver.events_at("/dest/key")] == ["from own"]
        assert sorted(e["messages"][0]["content"] for e in receiver.events_at("/dest/global")) == [
            "from cache-only", "from none"]
        assert receiver.events_at("/dest/cfg-api") == []  # the API layer replaced the config layer
        everything = [e["messages"][0]["content"] for e in receiver.events("/dest")]
        assert "from gdpr" not in everything and "from own-off" not in everything
        assert len(everything) == 5


async def test_disable_logging_through_the_api_stops_global_sinks_too(receiver, make_config, start, monkeypatch):
    monkeypatch.setenv("ACME_URL", f"{receiver.url}/dest/global")
    monkeypatch.setenv("ACME_TOKEN", "global-token")
    async with start(make_config(litellm={"success_callback": ["acme"]})) as gw:
        key = await gw.new_key(team_id="team-3")
        assert (await gw.chat(key, "before")).status_code == 200
        assert await receiver.wait_for_async(lambda: len(receiver.events_at("/dest/global")) == 1)
        response = await gw.admin("POST", "/team/team-3/disable_logging")
        assert response.json() == {"status": "success", "message": "Logging disabled for team team-3",
                                   "data": {"team_id": "team-3", "success_callbacks": [], "failure_callbacks": []}}
        assert (await gw.chat(key, "after")).status_code == 200
        other = await gw.new_key(team_id="team-4")
        assert (await gw.chat(other, "control")).status_code == 200
        assert await receiver.wait_for_async(lambda: len(receiver.events_at("/dest/global")) == 2)
        await gw.gateway.dispatcher.drain(5)
        assert [e["messages"][0]["content"] for e in receiver.events_at("/dest/global")] == ["before", "control"]
        response = await gw.admin("POST", "/team/team-3/enable_logging")
        assert response.status_code == 200
        assert (await gw.chat(key, "re-enabled")).status_code == 200
        assert await receiver.wait_for_async(lambda: len(receiver.events_at("/dest/global")) == 3)


async def test_callback_type_routes_success_and_failure(receiver, make_config, start, vars_for):
    async with start(make_config()) as gw:
        key = await gw.new_key(team_id="t", metadata={"logging": [
            {"callback_name": "acme", "callback_type": "success", "callback_vars": vars_for("ok")},
            {"callback_name": "acme", "callback_type": "failure", "callback_vars": vars_for("bad")},
            {"callback_name": "acme", "callback_vars": vars_for("both")},
        ]})
        assert (await gw.chat(key, "fine")).status_code == 200
        failed = await gw.chat(key, "broken", model="down")
        assert failed.status_code == 502
        assert await receiver.wait_for_async(lambda: len(receiver.events_at("/dest/both")) == 2)
        await gw.gateway.dispatcher.drain(5)
        assert [e["status"] for e in receiver.events_at("/dest/ok")] == ["success"]
        assert [e["status"] for e in receiver.events_at("/dest/bad")] == ["failure"]
        assert receiver.events_at("/dest/bad")[0]["error_str"]
        assert sorted(e["status"] for e in receiver.events_at("/dest/both")) == ["failure", "success"]


async def test_entries_keep_their_own_vars(receiver, make_config, start, vars_for):
    """Two entries of one sink with different vars go to two places (LiteLLM flattened them: last won)."""
    async with start(make_config()) as gw:
        key = await gw.new_key(metadata={"logging": [
            {"callback_name": "acme", "callback_vars": vars_for("first", token="token-first")},
            {"callback_name": "acme", "callback_vars": vars_for("second", token="token-second")},
        ]})
        assert (await gw.chat(key)).status_code == 200
        assert await receiver.wait_for_async(
            lambda: len(receiver.events_at("/dest/first")) == 1 and len(receiver.events_at("/dest/second")) == 1)
        assert receiver.received("/dest/first")[0].headers["authorization"] == "Bearer token-first"
        assert receiver.received("/dest/second")[0].headers["authorization"] == "Bearer token-second"


async def test_many_teams_concurrently_each_event_reaches_exactly_its_team(receiver, make_config, start, vars_for):
    teams = [f"team-{i}" for i in range(12)]
    per_team = 6
    async with start(make_config()) as gw:
        keys = {}
        for index, team in enumerate(teams):
            if index % 2:
                await gw.admin("POST", "/team/new", json={"team_id": team})
                response = await gw.admin("POST", f"/team/{team}/callback",
                                          json={"callback_name": "acme", "callback_vars": vars_for(team)})
                assert response.status_code == 200, response.text
                keys[team] = await gw.new_key(team_id=team)
            else:
                keys[team] = await gw.new_key(team_id=team, metadata={"logging": [
                    {"callback_name": "acme", "callback_vars": vars_for(team)}]})
        results = await asyncio.gather(*(gw.chat(keys[t], f"{t} #{n}") for t in teams for n in range(per_team)))
        assert all(r.status_code == 200 for r in results)
        assert await receiver.wait_for_async(lambda: len(receiver.events("/dest/")) >= len(teams) * per_team)
        await gw.gateway.dispatcher.drain(5)
        for team in teams:
            events = receiver.events_at(f"/dest/{team}")
            assert len(events) == per_team, team
            assert teams_of(events) == [team]
            assert sorted(e["messages"][0]["content"] for e in events) == sorted(
                f"{team} #{n}" for n in range(per_team))
        assert len(receiver.events("/dest/")) == len(teams) * per_team


async def test_key_update_changes_routing_for_the_next_request(receiver, make_config, start, vars_for):
    async with start(make_config()) as gw:
        key = await gw.new_key(metadata={"logging": [{"callback_name": "acme", "callback_vars": vars_for("old")}]})
        assert (await gw.chat(key, "one")).status_code == 200
        response = await gw.admin("POST", "/key/update", json={"key": key, "metadata": {"logging": [
            {"callback_name": "acme", "callback_vars": vars_for("new")}]}})
        assert response.status_code == 200, response.text
        assert (await gw.chat(key, "two")).status_code == 200
        assert await receiver.wait_for_async(lambda: len(receiver.events_at("/dest/new")) == 1)
        await gw.gateway.dispatcher.drain(5)
        assert [e["messages"][0]["content"] for e in receiver.events_at("/dest/old")] == ["one"]
        assert [e["messages"][0]["content"] for e in receiver.events_at("/dest/new")] == ["two"]


async def test_a_team_switched_off_in_config_wins_over_its_keys_own_logging(receiver, make_config, start, vars_for):
    cfg = make_config(litellm={"default_team_settings": [
        {"team_id": "gdpr", "success_callback": [], "failure_callback": []},
        {"team_id": "open", "cache": False}]})
    async with start(cfg) as gw:
        muted = await gw.new_key(team_id="gdpr", metadata={"logging": [
            {"callback_name": "acme", "callback_vars": vars_for("muted")}]})
        control = await gw.new_key(team_id="open", metadata={"logging": [
            {"callback_name": "acme", "callback_vars": vars_for("control")}]})
        assert (await gw.chat(muted, "secret")).status_code == 200
        assert (await gw.chat(control, "fine")).status_code == 200
        assert await receiver.wait_for_async(lambda: len(receiver.events_at("/dest/control")) == 1)
        await gw.gateway.dispatcher.drain(5)
        assert receiver.events_at("/dest/muted") == []
