"""The router end to end: real gateways under uvicorn, real OpenAI-compatible upstreams on loopback (the shared
``mock_upstream``, with per-model faults; a closed port for refused connections), the real acme sink delivering
log events to a loopback receiver, and the machine's Redis for two replicas sharing a cooldown.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import pytest
import redis

from tests.conftest import IN_CI, closed_port

pytestmark = pytest.mark.usefixtures("acme", "clean_env")

REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379


@pytest.fixture
def events(receiver, monkeypatch):
    monkeypatch.setenv("ACME_URL", f"{receiver.url}/dest/global")
    monkeypatch.setenv("ACME_TOKEN", "global-token")
    return receiver


def up(name: str, upstream_model: str, base: str, ident: str, **params: Any) -> dict[str, Any]:
    return {"model_name": name, "model_info": {"id": ident},
            "litellm_params": {"model": f"openai/{upstream_model}", "api_base": base, "api_key": "sk-upstream-r",
                               "timeout": 5, **params}}


def tag() -> str:
    return uuid.uuid4().hex[:10]


def cfg(make_config, models: list[dict[str, Any]], router: dict[str, Any] | None = None,
        events: bool = False) -> dict[str, Any]:
    config = make_config(models=models, litellm={"callbacks": ["acme"] if events else []})
    config["router_settings"] = router or {}
    return config


def upstream_calls(upstream, model: str) -> int:
    return sum(1 for r in upstream.requests if (r["body"] or {}).get("model") == model)


async def delivered(receiver, gw, count: int) -> list[dict[str, Any]]:
    assert await receiver.wait_for_async(lambda: len(receiver.events_at("/dest/global")) >= count)
    await gw.gateway.dispatcher.drain(5)
    return receiver.events_at("/dest/global")


async def test_a_deployment_answering_500_is_retried_on_the_other_and_the_event_shows_both(
        start, make_config, mock_upstream, events):
    t = tag()
    mock_upstream.on(f"bad-{t}", status=500)
    models = [up("g", f"bad-{t}", mock_upstream.url, f"bad-{t}"), up("g", f"good-{t}", mock_upstream.url, f"good-{t}")]
    async with start(cfg(make_config, models, {"allowed_fails": 1000}, events=True)) as gw:
        key = await gw.new_key()
        answers = [await gw.chat(key, f"q{i}", model="g") for i in range(12)]
        assert [a.status_code for a in answers] == [200] * 12
        assert upstream_calls(mock_upstream, f"good-{t}") == 12
        assert 1 <= upstream_calls(mock_upstream, f"bad-{t}") < 12  # picked at random, then retried elsewhere
        found = await delivered(events, gw, 12)
        assert len(found) == 12 and {e["status"] for e in found} == {"success"}  # one event per request
        assert {e["model_id"] for e in found} == {f"good-{t}"}
        retried = [e for e in found if len(e["attempts"]) == 2]
        assert retried, found
        first, second = retried[0]["attempts"]
        assert (first["model_id"], first["status_code"], first["error_class"]) == (f"bad-{t}", 500,
                                                                                   "InternalServerError")
        assert (second["model_id"], second["status_code"], second["error_class"]) == (f"good-{t}", 200, None)
        assert all(a["duration"] >= 0 for e in found for a in e["attempts"])


async def test_each_deployment_of_a_group_gets_its_own_url_and_key(start, make_config, mock_upstream):
    t = tag()
    refused = f"http://127.0.0.1:{closed_port()}/v1"
    models = [up("k", f"a-{t}", mock_upstream.url, f"a-{t}", api_key=f"sk-key-a-{t}"),
              up("k", f"b-{t}", mock_upstream.url, f"b-{t}", api_key=f"sk-key-b-{t}"),
              up("k", f"c-{t}", refused, f"c-{t}")]
    async with start(cfg(make_config, models, {"num_retries": 0, "disable_cooldowns": True})) as gw:
        key = await gw.new_key()
        statuses = [(await gw.chat(key, f"q{i}", model="k")).status_code for i in range(30)]
        for name in ("a", "b"):
            seen = [r["headers"].get("authorization") for r in mock_upstream.requests
                    if (r["body"] or {}).get("model") == f"{name}-{t}"]
            assert seen and set(seen) == {f"Bearer sk-key-{name}-{t}"}, (name, set(seen))
        # the refused deployment is never reached through another deployment's URL
        assert upstream_calls(mock_upstream, f"c-{t}") == 0
        assert statuses.count(502) == 30 - upstream_calls(mock_upstream, f"a-{t}") - upstream_calls(
            mock_upstream, f"b-{t}") > 0


async def test_retries_stop_at_num_retries_and_a_bad_request_is_never_retried(start, make_config, mock_upstream,
                                                                               events):
    t = tag()
    mock_upstream.on(f"down-{t}", status=503)
    mock_upstream.on(f"bad-{t}", status=400)
    models = [up("down", f"down-{t}", mock_upstream.url, f"d-{t}"), up("bad", f"bad-{t}", mock_upstream.url, f"b-{t}")]
    async with start(cfg(make_config, models, {"num_retries": 3}, events=True)) as gw:
        key = await gw.new_key()
        assert (await gw.chat(key, model="down")).status_code == 503
        assert upstream_calls(mock_upstream, f"down-{t}") == 4  # 1 + num_retries
        assert (await gw.chat(key, model="bad")).status_code == 400
        assert upstream_calls(mock_upstream, f"bad-{t}") == 1
        assert (await gw.chat(key, model="down", num_retries=0)).status_code == 503  # per request
        assert upstream_calls(mock_upstream, f"down-{t}") == 5
        found = await delivered(events, gw, 3)
        assert [e["status"] for e in found] == ["failure"] * 3  # the request as a whole failed: one event each
        assert [len(e["attempts"]) for e in found] == [4, 1, 1]


async def test_fallback_to_another_group_when_connections_are_refused(start, make_config, mock_upstream, events):
    t = tag()
    refused = f"http://127.0.0.1:{closed_port()}/v1"
    models = [up("primary", f"p-{t}", refused, f"p-{t}"), up("backup", f"b-{t}", mock_upstream.url, f"b-{t}"),
              up("other", f"o-{t}", mock_upstream.url, f"o-{t}")]
    async with start(cfg(make_config, models, {"num_retries": 1, "fallbacks": [{"primary": ["backup"]}]},
                         events=True)) as gw:
        key = await gw.new_key()
        answer = await gw.chat(key, "hello", model="primary")
        assert answer.status_code == 200, answer.text
        assert answer.json()["model"] == f"b-{t}"
        # the request's own fallbacks replace the configured ones
        answer = await gw.chat(key, "hello", model="primary", fallbacks=["other"])
        assert answer.status_code == 200 and answer.json()["model"] == f"o-{t}"
        sent = [r["body"] for r in mock_upstream.requests if (r["body"] or {}).get("model") == f"o-{t}"]
        assert "fallbacks" not in sent[-1]  # router fields never go upstream
        found = await delivered(events, gw, 2)
        assert [e["status"] for e in found] == ["success", "success"]
        assert [(a["model_group"], a["error_class"]) for a in found[0]["attempts"]] == [
            ("primary", "APIConnectionError"), ("primary", "APIConnectionError"), ("backup", None)]
        assert found[0]["model_group"] == "backup" and found[0]["model_id"] == f"b-{t}"


async def test_bad_router_fields_in_a_request_are_400_naming_the_field(start, make_config, mock_upstream):
    t = tag()
    models = [up("g", f"g-{t}", mock_upstream.url, f"g-{t}"), up("h", f"h-{t}", mock_upstream.url, f"h-{t}")]
    async with start(cfg(make_config, models)) as gw:
        key = await gw.new_key(models=["g"])
        for extra, field in (({"num_retries": "3"}, "num_retries"), ({"num_retries": 99}, "num_retries"),
                             ({"fallbacks": "h"}, "fallbacks"), ({"fallbacks": ["nope"]}, "fallbacks")):
            answer = await gw.chat(key, model="g", **extra)
            assert answer.status_code == 400, (extra, answer.text)
            assert answer.json()["error"]["param"] == field
        answer = await gw.chat(key, model="g", fallbacks=["h"])  # the key may not use h, even as a fallback
        assert answer.status_code == 403 and answer.json()["error"]["param"] == "fallbacks"
        assert (await gw.chat(key, model="g", num_retries=1)).status_code == 200  # negative control


async def test_streams_retry_before_the_first_byte_never_after(start, make_config, mock_upstream):
    t = tag()
    mock_upstream.on(f"refuse-{t}", status=429)
    mock_upstream.on(f"stall-{t}", chunk_delay=3)
    models = [up("s", f"refuse-{t}", mock_upstream.url, f"r-{t}", weight=1000),
              up("s", f"ok-{t}", mock_upstream.url, f"ok-{t}", weight=1),
              up("stall", f"stall-{t}", mock_upstream.url, f"st-{t}", timeout=0.5)]
    async with start(cfg(make_config, models, {"allowed_fails": 1000})) as gw:
        key = await gw.new_key()
        answer = await gw.chat(key, "a b c", model="s", stream=True)
        assert answer.status_code == 200
        assert "data: [DONE]" in answer.text and upstream_calls(mock_upstream, f"ok-{t}") == 1
        started = time.monotonic()
        answer = await gw.chat(key, "a b c d", model="stall", stream=True)
        assert answer.status_code == 200  # the head went out: the failure arrives in the stream
        frames = [f[6:] for f in answer.text.split("\n\n") if f.startswith("data: ")]
        assert "[DONE]" not in frames
        assert "error" in json.loads(frames[-1])  # an OpenAI error frame ends it
        assert upstream_calls(mock_upstream, f"stall-{t}") == 1  # not retried after bytes reached the client
        assert time.monotonic() - started < 4


async def test_cooldown_then_429_naming_the_group_when_every_deployment_cools(start, make_config, mock_upstream):
    t = tag()
    refused = f"http://127.0.0.1:{closed_port()}/v1"
    models = [up("c", f"a-{t}", refused, f"a-{t}"), up("c", f"b-{t}", refused, f"b-{t}")]
    async with start(cfg(make_config, models, {"allowed_fails": 0, "cooldown_time": 60, "num_retries": 1})) as gw:
        key = await gw.new_key()
        first = await gw.chat(key, model="c")
        assert first.status_code == 502  # both tried once, both now cooling
        second = await gw.chat(key, model="c")
        assert second.status_code == 429
        error = second.json()["error"]
        assert "model group 'c'" in error["message"] and "reopens in" in error["message"]
        assert error["code"] == "model_group_cooling_down" and int(second.headers["retry-after"]) >= 59
        info = await gw.admin("GET", "/model/info")
        assert all(m["model_info"]["cooldown_until"] for m in info.json()["data"] if m["model_name"] == "c")


async def test_model_info_lists_deployments_masked_and_models_lists_groups_once(start, make_config, mock_upstream,
                                                                                register_secret):
    secret = register_secret("sk-upstream-key-never-shown-9876")
    t = tag()
    models = [up("g", f"a-{t}", mock_upstream.url, "dep-a", api_key=secret, rpm=10),
              up("g", f"b-{t}", mock_upstream.url, "dep-b", api_key=secret)]
    async with start(cfg(make_config, models, {"model_group_alias": {"g-alias": "g"}})) as gw:
        key = await gw.new_key(models=["g-alias"])
        for path in ("/model/info", "/v1/model/info"):
            info = await gw.admin("GET", path)
            assert info.status_code == 200
            assert secret not in info.text
            data = info.json()["data"]
            assert [(m["model_name"], m["model_info"]["id"]) for m in data] == [("g", "dep-a"), ("g", "dep-b")]
            assert data[0]["litellm_params"]["api_key"] == "***9876" and data[0]["litellm_params"]["rpm"] == 10
            refused = await gw.client.get(path, headers={"Authorization": f"Bearer {key}"})
            assert refused.status_code == 403
        listed = await gw.client.get("/v1/models", headers={"Authorization": f"Bearer {gw.master_key}"})
        assert [m["id"] for m in listed.json()["data"]] == ["g", "g-alias"]
        # key restrictions apply to the name the client used: the alias is allowed, the group itself is not
        assert (await gw.chat(key, model="g-alias")).status_code == 200
        assert (await gw.chat(key, model="g")).status_code == 403


def _redis_or_skip() -> None:
    try:
        redis.Redis(host=REDIS_HOST, port=REDIS_PORT, socket_connect_timeout=2).ping()
    except Exception as exc:
        reason = f"Redis at {REDIS_HOST}:{REDIS_PORT} unreachable: {type(exc).__name__}"
        if IN_CI:  # as every Redis test: CI=true never skips
            pytest.fail(f"{reason} (CI=true: Redis tests must run)", pytrace=False)
        pytest.skip(reason)


async def test_two_replicas_on_redis_share_a_cooldown_within_a_second(start, make_config, mock_upstream, tmp_path):
    _redis_or_skip()
    t = tag()
    mock_upstream.on(f"bad-{t}", status=500)
    models = [up("r", f"bad-{t}", mock_upstream.url, f"bad-{t}"), up("r", f"good-{t}", mock_upstream.url, f"good-{t}")]
    router = {"allowed_fails": 0, "cooldown_time": 30, "num_retries": 0, "routing_strategy": "least-busy",
              "redis_host": REDIS_HOST, "redis_port": REDIS_PORT}
    one = cfg(make_config, models, router)
    two = {**one, "general_settings": {**one["general_settings"],
                                       "database_url": f"sqlite+aiosqlite:///{tmp_path}/gw2.db"}}
    async with start(one) as first, start(two) as second:
        assert second.gateway.router.state.cooling_until(f"bad-{t}") is None
        key = await first.new_key()
        while upstream_calls(mock_upstream, f"bad-{t}") == 0:  # least-busy ties break at random
            await first.chat(key, model="r")
        cooled_at = time.monotonic()
        assert first.gateway.router.state.cooling_until(f"bad-{t}") is not None
        while second.gateway.router.state.cooling_until(f"bad-{t}") is None:
            assert time.monotonic() - cooled_at < 1.0, "the other replica did not see the cooldown within 1 s"
            await asyncio.sleep(0.01)  # deliberate: the poll interval of a deadline-bounded wait
        before = upstream_calls(mock_upstream, f"bad-{t}")
        key2 = await second.new_key()
        for _ in range(10):
            assert (await second.chat(key2, model="r")).status_code == 200
        assert upstream_calls(mock_upstream, f"bad-{t}") == before  # the second replica skips it too
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT)
    for name in client.scan_iter(f"sluicegate:router:*{t}*"):
        client.delete(name)
