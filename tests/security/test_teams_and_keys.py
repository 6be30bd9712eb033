"""Finding #1 (a deleted team's keys fell through to the global sinks) and the admin-API parts of #9 (unbounded
listings, an unthrottled ``/key/health``, a 500 on invalid UTF-8)."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

pytestmark = pytest.mark.usefixtures("acme", "clean_env")


async def test_deleting_a_team_deletes_its_keys_and_its_prompts_never_reach_global_sinks(
        receiver, make_config, start, vars_for, monkeypatch):
    monkeypatch.setenv("ACME_URL", f"{receiver.url}/dest/global")
    monkeypatch.setenv("ACME_TOKEN", "global-token-1234")
    async with start(make_config(litellm={"callbacks": ["acme"]})) as gw:
        await gw.admin("POST", "/team/new", json={"team_id": "gdpr"})
        assert (await gw.admin("POST", "/team/gdpr/disable_logging")).status_code == 200
        key = await gw.new_key(team_id="gdpr")
        assert (await gw.chat(key, "private prompt")).status_code == 200
        deleted = await gw.admin("POST", "/team/delete", json={"team_ids": ["gdpr"]})
        assert deleted.status_code == 200 and deleted.json() == {"deleted_teams": ["gdpr"], "deleted_keys": 1}
        after = await gw.chat(key, "private prompt")
        assert after.status_code == 401, after.text
        health = await gw.client.post("/key/health", headers={"Authorization": f"Bearer {key}"})
        assert health.status_code == 401
        # Re-creating the team does not bring the old key back.
        await gw.admin("POST", "/team/new", json={"team_id": "gdpr"})
        assert (await gw.chat(key, "private prompt")).status_code == 401
        # Negative control: a key of another team still logs to the global sink, so the sink was reachable.
        other = await gw.new_key()
        assert (await gw.chat(other, "fine to log")).status_code == 200
        assert await receiver.wait_for_async(lambda: len(receiver.events_at("/dest/global")) == 1)
        assert "private prompt" not in str([r.body for r in receiver.received()])


async def test_a_key_whose_team_row_is_gone_is_refused_not_resolved_globally(make_config, start):
    """A key written with a team id whose row is missing (concurrent delete, a hand edit) is refused."""
    async with start(make_config()) as gw:
        key = await gw.new_key(team_id="t")
        async with gw.gateway.store.engine.begin() as conn:  # the row goes, the key stays
            await conn.execute(sa.text("DELETE FROM sg_teams WHERE team_id = 't'"))
        gw.gateway.invalidate()
        response = await gw.chat(key)
        assert response.status_code == 401 and "no longer exists" in response.json()["error"]["message"]


async def test_team_and_key_listings_are_paginated(make_config, start):
    async with start(make_config()) as gw:
        for index in range(7):
            await gw.admin("POST", "/team/new", json={"team_id": f"team-{index}"})
            await gw.new_key(team_id=f"team-{index}")
        page = await gw.admin("GET", "/team/list", params={"page": 2, "page_size": 3})
        assert page.status_code == 200
        assert [t["team_id"] for t in page.json()] == ["team-3", "team-4", "team-5"]
        assert page.headers["x-total-count"] == "7" and page.headers["x-total-pages"] == "3"
        assert len((await gw.admin("GET", "/team/list")).json()) == 7  # default page: up to 1,000
        keys = (await gw.admin("GET", "/key/list", params={"page": 3, "size": 3})).json()
        assert len(keys["keys"]) == 1 and keys["total_count"] == 7
        assert keys["current_page"] == 3 and keys["total_pages"] == 3
        keys = (await gw.admin("GET", "/key/list", params={"page_size": 5})).json()
        assert len(keys["keys"]) == 5 and keys["total_pages"] == 2
        for path, params, param in (("/team/list", {"page_size": 1001}, "page_size"),
                                    ("/team/list", {"page": 0}, "page"),
                                    ("/key/list", {"size": "ten"}, "size"),
                                    ("/key/list", {"page_size": -1}, "page_size")):
            refused = await gw.admin("GET", path, params=params)
            assert refused.status_code == 422 and refused.json()["error"]["param"] == param, refused.text


async def test_key_health_is_rate_limited_per_key(receiver, make_config, start, vars_for):
    cfg = make_config()
    cfg["sluicegate_settings"]["key_health_per_minute"] = 3
    async with start(cfg) as gw:
        key = await gw.new_key(metadata={"logging": [{"callback_name": "acme", "callback_vars": vars_for("h")}]})
        other = await gw.new_key(metadata={"logging": [{"callback_name": "acme", "callback_vars": vars_for("h")}]})
        codes = [(await gw.client.post("/key/health", headers={"Authorization": f"Bearer {key}"})).status_code
                 for _ in range(5)]
        assert codes == [200, 200, 200, 429, 429]
        limited = await gw.client.post("/key/health", headers={"Authorization": f"Bearer {key}"})
        assert limited.json()["error"]["type"] == "rate_limit_error" and int(limited.headers["retry-after"]) >= 1
        probes = [r for r in receiver.received(ok_only=False) if r.method == "GET" and r.path == "/dest/h"]
        assert len(probes) == 3  # the refused calls made no outbound request
        # Another key has its own allowance.
        assert (await gw.client.post("/key/health", headers={"Authorization": f"Bearer {other}"})).status_code == 200


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/key/generate", "/team/new"])
async def test_invalid_utf8_in_a_body_is_a_400_naming_the_body(make_config, start, path):
    async with start(make_config()) as gw:
        key = await gw.new_key()
        token = key if "chat" in path else gw.master_key
        body = b'{"model": "mock", "team_id": "\xc3\x28", "messages": [{"role": "user", "content": "\xff"}]}'
        response = await gw.client.post(path, content=body, headers={"Authorization": f"Bearer {token}",
                                                                    "Content-Type": "application/json"})
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["param"] == "body" and "UTF-8" in error["message"] and "Traceback" not in response.text
