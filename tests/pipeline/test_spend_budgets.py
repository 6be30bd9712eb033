"""Spend and budgets through a real gateway (uvicorn on loopback, the acme sink really installed), on SQLite and
PostgreSQL: ``/spend/report`` adds up exactly what the sinks were told each request cost; budgets refuse before the
upstream call with LiteLLM's ``budget_exceeded``; concurrent load overshoots a budget by no more than the requests
in flight; a ``30s`` budget period ends on the (driven) clock; a soft budget is logged once and shown in /metrics.
"""

from __future__ import annotations

import asyncio
import os
import csv
import io
import logging
from collections import defaultdict
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.usefixtures("acme", "clean_env")

PRICES = {"input_cost_per_token": 1e-3, "output_cost_per_token": 2e-3}


def priced(name: str, **params: Any) -> dict[str, Any]:
    return {"model_name": name, "litellm_params": {"model": f"openai/{name}-up", "mock_response": f"{name} says hi",
                                                   **PRICES, **params}}


def upstream_model(name: str, upstream: Any) -> dict[str, Any]:
    return {"model_name": name, "litellm_params": {"model": f"openai/{name}-up", "api_base": upstream.url,
                                                   "api_key": "up-key", "timeout": 10, **PRICES}}


def chat_body(content: str = "hello", model: str = "m1", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


async def post(gw: Any, key: str, body: dict[str, Any]) -> httpx.Response:
    return await gw.client.post("/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"})


async def consume_stream(gw: Any, key: str, body: dict[str, Any]) -> None:
    async with gw.client.stream("POST", "/v1/chat/completions", json={**body, "stream": True},
                                headers={"Authorization": f"Bearer {key}"}) as response:
        assert response.status_code == 200
        async for _ in response.aiter_bytes():
            pass


def _cfg(make_config: Any, db_url: str, models: list[dict[str, Any]], **litellm: Any) -> dict[str, Any]:
    cfg = make_config(models=models, litellm=litellm)
    cfg["general_settings"]["database_url"] = db_url
    return cfg


async def test_spend_report_adds_up_what_the_sinks_were_told(
        db_url, receiver, monkeypatch, make_config, start) -> None:
    monkeypatch.setenv("ACME_URL", f"{receiver.url}/dest/spend")
    monkeypatch.setenv("ACME_TOKEN", "spend-token")
    cfg = _cfg(make_config, db_url, [priced("m1"), priced("m2"), {"model_name": "down", "litellm_params": {
        "model": "openai/down", "api_base": "http://127.0.0.1:9/v1", "timeout": 5}}],
        callbacks=["acme"], cache=True, cache_params={"type": "local"})
    async with start(cfg) as gw:
        for team in ("red", "blue"):
            assert (await gw.admin("POST", "/team/new", json={"team_id": team})).status_code == 200
        k1 = await gw.new_key(team_id="red", user_id="ann")
        k2 = await gw.new_key(team_id="red")
        k3 = await gw.new_key(team_id="blue", user_id="bob")
        answered = 0
        for i in range(3):
            r = await post(gw, k1, chat_body(f"one {i}", user="alice", metadata={"tags": ["blue-tag", "x"]},
                                             cache={"no-cache": True}))
            assert r.status_code == 200, r.text
            answered += 1
        for i in range(2):
            await consume_stream(gw, k2, chat_body(f"two {i} and more words", stream_options={"include_usage": True}))
            answered += 1
        for _ in range(2):  # the second is a response-cache hit: it costs 0
            r = await post(gw, k3, chat_body("three", model="m2", user="carol"))
            assert r.status_code == 200
            answered += 1
        failed = await post(gw, k1, chat_body("nope", model="down"))
        assert failed.status_code >= 500
        assert await receiver.wait_for_async(lambda: len(receiver.events("/dest/spend")) >= answered + 1)
        events = receiver.events("/dest/spend")
        ok = [e for e in events if e["status"] == "success"]
        assert len(ok) == answered
        hits = [e for e in ok if e["cache_hit"]]
        assert len(hits) == 1 and hits[0]["response_cost"] == 0 and hits[0]["saved_cache_cost"] > 0
        expected: dict[str, dict[str, float]] = {kind: defaultdict(float) for kind in
                                                 ("team", "key", "user", "end_user", "tag", "model")}
        for e in ok:
            meta, cost = e["metadata"], e["response_cost"]
            expected["key"][meta["user_api_key_hash"]] += cost
            expected["team"][meta["user_api_key_team_id"]] += cost
            if meta["user_api_key_user_id"]:
                expected["user"][meta["user_api_key_user_id"]] += cost
            if e["end_user"]:
                expected["end_user"][e["end_user"]] += cost
            for tag in e["request_tags"]:
                expected["tag"][tag] += cost
            expected["model"][e["model_group"]] += cost
        total = sum(e["response_cost"] for e in ok)
        assert total > 0
        for group_by, sums in expected.items():
            report = (await gw.admin("GET", "/spend/report", params={"group_by": group_by})).json()
            got = {row[group_by]: row["spend"] for row in report["totals"]}
            assert got.keys() == sums.keys(), (group_by, got, dict(sums))
            for ident, spend in sums.items():
                assert got[ident] == pytest.approx(spend, rel=1e-9, abs=1e-12), (group_by, ident)
            if group_by in ("key", "model"):  # every request has a key and a model
                assert report["total_spend"] == pytest.approx(total, rel=1e-9)
                assert sum(row["requests"] for row in report["data"]) == answered  # the failure is not counted
        csv_text = (await gw.admin("GET", "/spend/report", params={"group_by": "model", "format": "csv"})).text
        rows = list(csv.DictReader(io.StringIO(csv_text)))
        assert sum(float(row["spend"]) for row in rows) == pytest.approx(total, rel=1e-9)
        assert {row["model"] for row in rows} == {"m1", "m2"}
        # /key/info and /team/info show the same spend
        info = (await gw.admin("GET", "/key/info", params={"key": k1})).json()["info"]
        assert info["spend"] == pytest.approx(expected["key"][info["token_id"]], rel=1e-9)
        team = (await gw.admin("GET", "/team/info", params={"team_id": "red"})).json()["team_info"]
        assert team["spend"] == pytest.approx(expected["team"]["red"], rel=1e-9)
        # negative controls: another date range holds nothing; a team's report holds only its own keys
        empty = (await gw.admin("GET", "/spend/report", params={"start_date": "2001-01-01", "end_date": "2001-01-31",
                                                                "group_by": "key"})).json()
        assert empty["data"] == [] and empty["total_spend"] == 0
        blue = (await gw.admin("GET", "/spend/report", params={"group_by": "key", "team_id": "blue"})).json()
        k3_id = (await gw.admin("GET", "/key/info", params={"key": k3})).json()["key"]
        assert [row["key"] for row in blue["totals"]] == [k3_id]
        bad = await gw.admin("GET", "/spend/report", params={"group_by": "organization"})
        assert bad.status_code == 422 and bad.json()["error"]["param"] == "group_by"
        assert (await gw.client.get("/spend/report", headers={"Authorization": f"Bearer {k1}"})).status_code == 403


async def test_a_team_admin_reads_only_their_teams_spend_by_any_group(db_url, mock_upstream, make_config,
                                                                     start) -> None:
    for name in ("u", "v"):
        mock_upstream.on(f"{name}-up", content="ok")
    cfg = _cfg(make_config, db_url, [upstream_model("u", mock_upstream), upstream_model("v", mock_upstream)])
    cost = 7 * PRICES["input_cost_per_token"] + 1 * PRICES["output_cost_per_token"]  # the mock's usage: 7 + 1
    async with start(cfg) as gw:
        for team in ("red", "blue", "green"):
            assert (await gw.admin("POST", "/team/new", json={"team_id": team})).status_code == 200
        made = await gw.admin("POST", "/user/new", json={"user_id": "ada", "teams": [
            {"team_id": "red", "user_role": "admin"}]})
        ada = made.json()["key"]
        member = (await gw.admin("POST", "/user/new", json={"user_id": "mo", "teams": ["red"]})).json()["key"]
        red = await gw.new_key(team_id="red", user_id="ann")
        blue = await gw.new_key(team_id="blue", user_id="ann")  # ann spends in two teams
        blue_bob = await gw.new_key(team_id="blue", user_id="bob")
        for _ in range(2):
            r = await post(gw, red, chat_body(model="u", user="carol", metadata={"tags": ["t1"]}))
            assert r.status_code == 200, r.text
        for _ in range(3):
            assert (await post(gw, blue, chat_body(model="v", user="carol", metadata={"tags": ["t1"]}))).status_code == 200
        assert (await post(gw, blue_bob, chat_body(model="u"))).status_code == 200
        red_id = (await gw.admin("GET", "/key/info", params={"key": red})).json()["key"]

        async def totals(key: str, group_by: str, **params: str) -> dict[str, float]:
            answer = await gw.client.get("/spend/report", params={"group_by": group_by, **params},
                                         headers={"Authorization": f"Bearer {key}"})
            assert answer.status_code == 200, answer.text
            return {row[group_by]: round(row["spend"] / cost, 6) for row in answer.json()["totals"]}

        # ada is red's admin: every grouping holds what red's keys spent, nothing of blue's
        expected = {"team": {"red": 2}, "key": {red_id: 2}, "user": {"ann": 2}, "end_user": {"carol": 2},
                    "tag": {"t1": 2}, "model": {"u": 2}}
        for group_by, sums in expected.items():
            assert await totals(ada, group_by) == sums, group_by
            assert await totals(ada, group_by, team_id="red") == sums, group_by
        csv_text = (await gw.client.get("/spend/report", params={"group_by": "user", "format": "csv"},
                                        headers={"Authorization": f"Bearer {ada}"})).text
        assert [row["user"] for row in csv.DictReader(io.StringIO(csv_text))] == ["ann"]
        # the proxy admin sees every team's (the negative control: blue's spend is there to be hidden)
        assert await totals(gw.master_key, "user") == {"ann": 5, "bob": 1}
        assert await totals(gw.master_key, "model", team_id="blue") == {"u": 1, "v": 3}
        # another team's report: 403 naming the team
        other = await gw.client.get("/spend/report", params={"team_id": "blue", "group_by": "model"},
                                    headers={"Authorization": f"Bearer {ada}"})
        assert other.status_code == 403 and other.json()["error"]["param"] == "team_id"
        assert "'blue'" in other.json()["error"]["message"]
        # a plain member of red reads no report
        for params in ({}, {"team_id": "red"}):
            refused = await gw.client.get("/spend/report", params=params,
                                          headers={"Authorization": f"Bearer {member}"})
            assert refused.status_code == 403 and refused.json()["error"]["type"] == "permission_error"
        # the admin of two teams names the one they want
        added = await gw.admin("POST", "/team/member_add", json={"team_id": "green", "member": {
            "role": "admin", "user_id": "ada"}})
        assert added.status_code == 200, added.text
        unnamed = await gw.client.get("/spend/report", headers={"Authorization": f"Bearer {ada}"})
        assert unnamed.status_code == 422 and unnamed.json()["error"]["param"] == "team_id"
        assert "green, red" in unnamed.json()["error"]["message"]
        assert await totals(ada, "model", team_id="green") == {}
        assert await totals(ada, "model", team_id="red") == {"u": 2}


async def test_budget_exhaustion_under_concurrent_load_overshoots_by_at_most_the_requests_in_flight(
        db_url, mock_upstream, make_config, start) -> None:
    mock_upstream.on("slow-up", delay=0.15, content="ok")
    cfg = _cfg(make_config, db_url, [upstream_model("slow", mock_upstream)])
    cost = 7 * PRICES["input_cost_per_token"] + 1 * PRICES["output_cost_per_token"]  # the mock's usage: 7 + 1
    budget = 5 * cost - cost / 2  # the 5th request is admitted (4.0 < 4.5), the 6th only while 5 are in flight
    in_flight, total = 8, 40
    async with start(cfg) as gw:
        key = await gw.new_key(max_budget=budget)
        free = await gw.new_key()
        gate = asyncio.Semaphore(in_flight)

        async def one(k: str) -> httpx.Response:
            async with gate:
                return await post(gw, k, chat_body("load", model="slow"))

        before = len(mock_upstream.requests)
        answers = await asyncio.gather(*(one(key) for _ in range(total)))
        upstream_calls = len(mock_upstream.requests) - before
        passed = [a for a in answers if a.status_code == 200]
        refused = [a for a in answers if a.status_code != 200]
        spent = len(passed) * cost
        assert len(passed) >= 5, "the budget allowed fewer requests than it pays for"
        assert spent - budget <= in_flight * cost + 1e-12, (len(passed), spent, budget)
        assert upstream_calls == len(passed)  # refused before the upstream call
        token_id = (await gw.admin("GET", "/key/info", params={"key": key})).json()["key"]
        for answer in refused:
            assert answer.status_code == 400
            error = answer.json()["error"]
            assert error["type"] == "budget_exceeded" and error["code"] == "400"
            assert error["message"].startswith(f"Budget has been exceeded! Key={token_id} Current cost: ")
            assert error["message"].endswith(f"Max budget: {budget}")
        info = (await gw.admin("GET", "/key/info", params={"key": key})).json()["info"]
        assert info["spend"] == pytest.approx(spent, rel=1e-9)
        # negative control: a key without a budget is never refused
        answers = await asyncio.gather(*(one(free) for _ in range(10)))
        assert [a.status_code for a in answers] == [200] * 10


async def test_team_end_user_user_and_proxy_budgets_name_the_entity(make_config, start, db_url) -> None:
    cfg = _cfg(make_config, db_url, [priced("m1")])
    async with start(cfg) as gw:
        await gw.admin("POST", "/team/new", json={"team_id": "broke", "max_budget": 0})
        await gw.admin("POST", "/team/new", json={"team_id": "rich", "max_budget": 100})
        broke, rich = await gw.new_key(team_id="broke"), await gw.new_key(team_id="rich", user_id="uma")
        r = await post(gw, broke, chat_body())
        assert r.status_code == 400 and "Team=broke Current cost: 0.0, Max budget: 0.0" in r.json()["error"]["message"]
        assert (await post(gw, rich, chat_body())).status_code == 200  # negative control
        # end users, under both of LiteLLM's names
        made = await gw.admin("POST", "/customer/new", json={"user_id": "bob", "max_budget": 0})
        assert made.status_code == 200 and made.json()["litellm_budget_table"]["max_budget"] == 0
        await gw.admin("POST", "/end_user/new", json={"user_id": "eve", "blocked": True})
        r = await post(gw, rich, chat_body(user="bob"))
        assert r.status_code == 400 and r.json()["error"]["type"] == "budget_exceeded"
        assert "End User=bob" in r.json()["error"]["message"]
        assert (await post(gw, rich, chat_body(user="eve"))).status_code == 403
        assert (await post(gw, rich, chat_body(user="carol"))).status_code == 200  # unknown end user: no budget
        raised = await gw.admin("POST", "/customer/update", json={"user_id": "bob", "max_budget": 10})
        assert raised.status_code == 200
        assert (await post(gw, rich, chat_body(user="bob"))).status_code == 200  # the new budget applies at once
        info = (await gw.admin("GET", "/customer/info", params={"end_user_id": "bob"})).json()
        assert info["spend"] > 0 and info["max_budget"] == 10
        # users: the key's owner has a budget of their own
        assert (await gw.admin("POST", "/user/update", json={"user_id": "uma", "max_budget": 0})).status_code == 200
        r = await post(gw, rich, chat_body())
        assert r.status_code == 400 and r.json()["error"]["type"] == "budget_exceeded"
        assert "User=uma Current cost: " in r.json()["error"]["message"]
        assert (await gw.admin("POST", "/user/update", json={"user_id": "uma", "max_budget": None})).status_code == 200
        assert (await post(gw, rich, chat_body())).status_code == 200
    # the proxy's budget counts every request: the database above already spent more than this one allows
    proxy_cfg = make_config(models=[priced("m1")], litellm={"max_budget": 0.001})
    async with start(proxy_cfg) as gw:
        key = await gw.new_key()
        assert (await post(gw, key, chat_body())).status_code == 200  # spend 0 < 0.001: admitted, costs more
        r = await post(gw, key, chat_body())
        assert r.status_code == 400 and r.json()["error"]["message"].startswith("Budget has been exceeded! Proxy ")


async def test_a_30s_budget_starts_again_when_its_period_ends(db_url, make_config, start, query_db) -> None:
    cfg = _cfg(make_config, db_url, [priced("m1")])
    now = [1_900_000_000.0]
    async with start(cfg) as gw:
        ledger = gw.gateway.spend
        ledger.clock = lambda: now[0]
        key = await gw.new_key(max_budget=0.001, budget_duration="30s")
        shown = (await gw.admin("GET", "/key/info", params={"key": key})).json()["info"]
        assert shown["budget_reset_at"].startswith("2030-03-17T17:47:10")  # 1.9e9 + 30 s
        assert (await post(gw, key, chat_body())).status_code == 200
        assert (await post(gw, key, chat_body())).status_code == 400
        one_request = (await gw.admin("GET", "/key/info", params={"key": key})).json()["info"]["spend"]
        assert one_request > 0.001
        now[0] += 29  # negative control: still the same period
        assert (await post(gw, key, chat_body())).status_code == 400
        now[0] += 2
        assert (await post(gw, key, chat_body())).status_code == 200  # a new period
        assert (await post(gw, key, chat_body())).status_code == 400
        await ledger.flush()
        token_id = shown["token_id"]
        rows = query_db(db_url, "SELECT spend, budget_reset_at FROM sg_keys WHERE token_id = :t", t=token_id)
        one = (await gw.admin("GET", "/key/info", params={"key": key})).json()["info"]
        assert rows[0]["spend"] == pytest.approx(one_request) and one["spend"] == pytest.approx(one_request)
        assert one["budget_reset_at"] > shown["budget_reset_at"]


async def test_a_users_budget_covers_all_their_keys_and_its_period_ends_on_the_clock(
        db_url, mock_upstream, make_config, start, query_db) -> None:
    mock_upstream.on("u-up", content="ok")
    cfg = _cfg(make_config, db_url, [upstream_model("u", mock_upstream)])
    cost = 7 * PRICES["input_cost_per_token"] + 1 * PRICES["output_cost_per_token"]  # the mock's usage: 7 + 1
    now = [1_900_000_000.0]
    async with start(cfg) as gw:
        ledger = gw.gateway.spend
        ledger.clock = lambda: now[0]
        made = await gw.admin("POST", "/user/new", json={"user_id": "ulla", "max_budget": 1.5 * cost,
                                                          "soft_budget": cost / 2, "budget_duration": "30s"})
        assert made.status_code == 200, made.text
        assert made.json()["budget_reset_at"].startswith("2030-03-17T17:47:10")  # 1.9e9 + 30 s
        first = made.json()["key"]
        second = await gw.new_key(user_id="ulla")  # the budget is the user's: every key of theirs spends it
        other = await gw.new_key(user_id="otto")  # negative control: another user, no budget
        assert (await post(gw, first, chat_body(model="u"))).status_code == 200
        assert (await post(gw, second, chat_body(model="u"))).status_code == 200  # spend cost < 1.5 cost
        before = len(mock_upstream.requests)
        for key in (first, second):
            r = await post(gw, key, chat_body(model="u"))
            assert r.status_code == 400, r.text
            error = r.json()["error"]
            assert error["type"] == "budget_exceeded" and error["code"] == "400"
            assert error["message"].startswith("Budget has been exceeded! User=ulla Current cost: ")
            assert error["message"].endswith(f"Max budget: {1.5 * cost}")
        assert len(mock_upstream.requests) == before  # refused before the upstream call
        assert (await post(gw, other, chat_body(model="u"))).status_code == 200
        info = (await gw.admin("GET", "/user/info", params={"user_id": "ulla"})).json()["user_info"]
        assert info["spend"] == pytest.approx(2 * cost, rel=1e-9) and info["max_budget"] == 1.5 * cost
        assert ledger.soft_crossed.get("user") == 1
        now[0] += 29  # negative control: still the same period
        assert (await post(gw, first, chat_body(model="u"))).status_code == 400
        now[0] += 2  # a new period
        assert (await post(gw, second, chat_body(model="u"))).status_code == 200
        await ledger.flush()
        rows = query_db(db_url, "SELECT spend, budget_reset_at FROM sg_users WHERE user_id = 'ulla'")
        assert rows[0]["spend"] == pytest.approx(cost, rel=1e-9)
        info = (await gw.admin("GET", "/user/info", params={"user_id": "ulla"})).json()["user_info"]
        assert info["spend"] == pytest.approx(cost, rel=1e-9)
        assert info["budget_reset_at"].startswith("2030-03-17T17:47:40")  # the next period's end
        # raising the budget applies at once; so does writing the spend back to 0
        assert (await post(gw, first, chat_body(model="u"))).status_code == 200
        assert (await post(gw, first, chat_body(model="u"))).status_code == 400
        updated = await gw.admin("POST", "/user/update", json={"user_id": "ulla", "spend": 0})
        assert updated.status_code == 200 and updated.json()["data"]["spend"] == 0
        assert (await post(gw, first, chat_body(model="u"))).status_code == 200


async def test_crossing_a_soft_budget_is_logged_once_and_shown_in_metrics(make_config, start, db_url,
                                                                            caplog) -> None:
    caplog.set_level(logging.WARNING, logger="sluicegate")
    cfg = _cfg(make_config, db_url, [priced("m1")])
    async with start(cfg) as gw:
        soft = await gw.new_key(soft_budget=0.0001)
        calm = await gw.new_key(soft_budget=1000)
        for _ in range(3):
            assert (await post(gw, soft, chat_body())).status_code == 200  # soft: never refused
            assert (await post(gw, calm, chat_body())).status_code == 200
        token_id = (await gw.admin("GET", "/key/info", params={"key": soft})).json()["key"]
        calm_id = (await gw.admin("GET", "/key/info", params={"key": calm})).json()["key"]
        crossed = [r for r in caplog.records if "soft budget crossed" in r.getMessage()]
        assert len(crossed) == 1 and token_id in crossed[0].getMessage()
        metrics = (await gw.admin("GET", "/metrics")).text
        assert 'sluicegate_soft_budget_crossed_total{entity_type="key"} 1' in metrics
        assert f'sluicegate_soft_budget_exceeded{{entity_type="key",entity_id="{token_id}"}} 1' in metrics
        soft_lines = "\n".join(line for line in metrics.splitlines() if line.startswith("sluicegate_soft_budget"))
        assert calm_id not in soft_lines  # (the request metrics name every key by its hash, as LiteLLM's do)


async def test_two_gateways_sharing_redis_hold_one_budget_under_concurrent_load(
        db_url, mock_upstream, make_config, start) -> None:
    """Two gateways (each its own ledger, as two processes) on one database and the machine's real Redis."""
    import redis

    try:
        redis.Redis(host="127.0.0.1", port=6379, socket_connect_timeout=2).ping()
    except Exception as exc:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"Redis unreachable under CI=true: {exc}", pytrace=False)
        pytest.skip(f"Redis at 127.0.0.1:6379 unreachable: {type(exc).__name__}")
    mock_upstream.on("shared-up", delay=0.15, content="ok")
    cfg = _cfg(make_config, db_url, [upstream_model("shared", mock_upstream)])
    cfg["router_settings"] = {"redis_host": "127.0.0.1", "redis_port": 6379}
    cost = 7 * PRICES["input_cost_per_token"] + 1 * PRICES["output_cost_per_token"]
    budget = 20 * cost - cost / 2
    per_gateway, total = 3, 30
    async with start(cfg) as one, start(cfg) as two:
        key = await one.new_key(max_budget=budget)
        gates = {id(one): asyncio.Semaphore(per_gateway), id(two): asyncio.Semaphore(per_gateway)}

        async def call(gw: Any) -> httpx.Response:
            async with gates[id(gw)]:
                return await post(gw, key, chat_body("load", model="shared"))

        order = [gw for _ in range(total) for gw in (one, two)]
        answers = await asyncio.gather(*(call(gw) for gw in order))
        refused = [a for a in answers if a.status_code != 200]
        assert all(a.status_code == 400 and a.json()["error"]["type"] == "budget_exceeded" for a in refused)
        passed = {id(one): 0, id(two): 0}
        for gw, answer in zip(order, answers, strict=True):
            passed[id(gw)] += answer.status_code == 200
        in_flight = 2 * per_gateway
        spent = sum(passed.values()) * cost
        assert spent >= budget
        # near the budget every check reads Redis: the overshoot is what was in flight in both gateways
        assert spent - budget <= in_flight * cost + 1e-12, (passed, budget / cost)
        # each gateway stopped before its own spend reached the budget: it counted the other's
        assert all(count * cost < budget for count in passed.values()), (passed, budget / cost)
