"""Rate limits (issue 25): ``rpm_limit``, ``tpm_limit``, ``max_parallel_requests`` on keys and teams, a key's
``model_rpm_limit`` / ``model_tpm_limit``, ``default_key_generate_params`` / ``upperbound_key_generate_params``.

Real parts: gateways served by uvicorn on loopback (two of them sharing one SQLite database and the machine's
Redis for the cross-gateway tests, each with its own Redis client and counters: what two processes share), a
real upstream (aiohttp on loopback, speaking OpenAI's chat API) that holds requests until the test lets them go
and counts how many it holds at once, the openai SDK as a client where the headers matter. Redis down is a port
nothing listens on.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import time
import types
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import openai
import pytest
import redis
from aiohttp import web

from sluicegate.config import ConfigError, parse_settings
from sluicegate.db.store import KeyRecord, TeamRecord
from sluicegate.limits.ratelimit import RateLimiter, Scope, limit_scopes
from sluicegate.limits.ratelimit_redis import RedisStore
from sluicegate.limits.resp import RedisError, RespClient, pack
from sluicegate.testing.waiting import wait_until_async

pytestmark = pytest.mark.usefixtures("clean_env")

REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
LONG_WINDOW = 365 * 86400.0  # no window boundary falls inside a test


# --- fixtures -----------------------------------------------------------------------------------------------
class HeldUpstream:
    """An OpenAI-compatible upstream on loopback that holds every request until :meth:`release` and counts how many
    it holds at once (``most``). ``stream: true`` answers SSE: one chunk at once, the rest after the release."""

    def __init__(self) -> None:
        self.holding = 0
        self.most = 0
        self.seen = 0
        self.gate = asyncio.Event()
        self.runner: web.AppRunner | None = None
        self.port = 0

    def release(self) -> None:
        self.gate.set()

    def hold(self) -> None:
        self.gate = asyncio.Event()

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.seen += 1
        self.holding += 1
        self.most = max(self.most, self.holding)
        try:
            usage = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
            if body.get("stream"):
                response = web.StreamResponse(headers={"content-type": "text/event-stream"})
                await response.prepare(request)
                chunk = {"id": "c1", "object": "chat.completion.chunk", "model": "held",
                         "choices": [{"index": 0, "delta": {"role": "assistant", "content": "hel"}}]}
                await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
                await self.gate.wait()
                chunk["choices"] = [{"index": 0, "delta": {"content": "lo"}, "finish_reason": "stop"}]
                await response.write(f"data: {json.dumps(chunk)}\n\ndata: [DONE]\n\n".encode())
                return response
            await self.gate.wait()
            return web.json_response({"id": "c1", "object": "chat.completion", "model": "held", "created": 0,
                                      "choices": [{"index": 0, "finish_reason": "stop",
                                                   "message": {"role": "assistant", "content": "hello"}}],
                                      "usage": usage})
        finally:
            self.holding -= 1

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        await web.SockSite(self.runner, sock).start()

    async def stop(self) -> None:
        self.release()
        if self.runner is not None:
            await self.runner.cleanup()


@pytest.fixture
async def held() -> AsyncIterator[HeldUpstream]:
    upstream = HeldUpstream()
    await upstream.start()
    try:
        yield upstream
    finally:
        await upstream.stop()


def _redis_reason() -> str | None:
    try:
        redis.Redis(host=REDIS_HOST, port=REDIS_PORT, socket_connect_timeout=2).ping()
    except Exception as exc:
        return f"Redis at {REDIS_HOST}:{REDIS_PORT} unreachable: {type(exc).__name__}: {exc}"
    return None


@pytest.fixture
def shared_redis() -> Iterator[list[str]]:
    """The machine's Redis (CI=true: never skipped). Yields a list the test appends key hashes to; their counters
    are deleted afterwards."""
    reason = _redis_reason()
    if reason:
        if IN_CI:
            pytest.fail(f"{reason} (CI=true: Redis tests must run)", pytrace=False)
        pytest.skip(reason)
    used: list[str] = []
    yield used
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT)
    for ident in used:
        for key in client.scan_iter(f"sluicegate:rl:*{ident}*"):
            client.delete(key)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def limits_config(make_config: Any, *, redis_port: int | None = None, window: float = LONG_WINDOW,
                  fail_closed: bool = False, held: HeldUpstream | None = None,
                  litellm: dict[str, Any] | None = None) -> dict[str, Any]:
    models = [{"model_name": "mock", "litellm_params": {"model": "openai/mock-1", "mock_response": "The answer."}},
              {"model_name": "other", "litellm_params": {"model": "openai/mock-2", "mock_response": "Other."}}]
    if held is not None:
        models.append({"model_name": "held", "litellm_params": {
            "model": "openai/held", "api_base": f"http://127.0.0.1:{held.port}/v1", "api_key": "sk-upstream-x"}})
    cfg = make_config(models=models, litellm=litellm)
    cfg["sluicegate_settings"].update(rate_limit_window=window, rate_limit_fail_closed=fail_closed,
                                      rate_limit_redis_timeout=0.3)
    if redis_port is not None:
        cfg["router_settings"] = {"redis_host": REDIS_HOST, "redis_port": redis_port}
    return cfg


@asynccontextmanager
async def two_gateways(start: Any, cfg: dict[str, Any]) -> AsyncIterator[tuple[Any, Any]]:
    """Two gateways on one database (and, when configured, one Redis): as two processes or replicas."""
    async with start(cfg) as first, start(cfg) as second:
        yield first, second


async def token_id(gw: Any, key: str) -> str:
    return (await gw.admin("GET", "/key/info", params={"key": key})).json()["key"]


# --- the admin API ------------------------------------------------------------------------------------------
async def test_limits_are_stored_and_shown_on_keys_and_teams(make_config, start):
    async with start(limits_config(make_config)) as gw:
        team = f"t-{uuid.uuid4().hex[:8]}"
        made = await gw.admin("POST", "/team/new", json={"team_id": team, "rpm_limit": 100, "tpm_limit": 5000,
                                                         "max_parallel_requests": 4})
        assert made.status_code == 200, made.text
        info = (await gw.admin("GET", "/team/info", params={"team_id": team})).json()["team_info"]
        assert (info["rpm_limit"], info["tpm_limit"], info["max_parallel_requests"]) == (100, 5000, 4)
        changed = await gw.admin("POST", "/team/update", json={"team_id": team, "rpm_limit": None, "tpm_limit": 10})
        assert (changed.json()["rpm_limit"], changed.json()["tpm_limit"]) == (None, 10)
        assert changed.json()["max_parallel_requests"] == 4  # not sent: unchanged

        key = await gw.new_key(team_id=team, rpm_limit=7, tpm_limit=700, max_parallel_requests=2,
                               model_rpm_limit={"mock": 3}, metadata={"model_tpm_limit": {"other": 50}})
        info = (await gw.admin("GET", "/key/info", params={"key": key})).json()["info"]
        assert (info["rpm_limit"], info["tpm_limit"], info["max_parallel_requests"]) == (7, 700, 2)
        assert info["model_rpm_limit"] == {"mock": 3}
        assert info["model_tpm_limit"] == {"other": 50}  # LiteLLM's metadata spelling, taken out of metadata
        assert "model_tpm_limit" not in info["metadata"]
        updated = await gw.admin("POST", "/key/update", json={"key": key, "rpm_limit": 9, "model_rpm_limit": None})
        assert updated.status_code == 200, updated.text
        assert (updated.json()["rpm_limit"], updated.json()["model_rpm_limit"], updated.json()["tpm_limit"]) == (
            9, None, 700)

        # negative controls: refused by name, nothing stored
        for body, field in (({"rpm_limit": -1}, "rpm_limit"), ({"tpm_limit": "many"}, "tpm_limit"),
                            ({"max_parallel_requests": 1.5}, "max_parallel_requests"),
                            ({"model_rpm_limit": {"mock": -2}}, "model_rpm_limit[...]")):
            refused = await gw.admin("POST", "/key/generate", json=body)
            assert refused.status_code == 422, (body, refused.text)
            assert refused.json()["error"]["param"] == field
        unknown_model = await gw.admin("POST", "/key/generate", json={"model_rpm_limit": {"gpt-typo": 3}})
        assert unknown_model.status_code == 400
        assert unknown_model.json()["error"]["param"] == "model_rpm_limit"
        assert "gpt-typo" in unknown_model.json()["error"]["message"]
        bad_team = await gw.admin("POST", "/team/update", json={"team_id": team, "max_parallel_requests": -3})
        assert bad_team.status_code == 422 and bad_team.json()["error"]["param"] == "max_parallel_requests"


async def test_upperbound_and_default_key_generate_params(make_config, start):
    litellm = {"upperbound_key_generate_params": {"rpm_limit": 100, "max_parallel_requests": 5, "duration": "30d"},
               "default_key_generate_params": {"tpm_limit": 1000, "rpm_limit": 10, "models": ["mock"]}}
    async with start(limits_config(make_config, litellm=litellm)) as gw:
        over = await gw.admin("POST", "/key/generate", json={"rpm_limit": 101})
        assert over.status_code == 400
        assert over.json()["error"]["param"] == "rpm_limit"
        assert over.json()["error"]["message"] == ("rpm_limit is over max limit set in config - user_value=101; "
                                                   "max_value=100")
        too_long = await gw.admin("POST", "/key/generate", json={"duration": "31d"})
        assert too_long.status_code == 400 and too_long.json()["error"]["param"] == "duration"
        # defaults fill what a request leaves out, ceilings what is still missing; a value given is kept
        info = (await gw.admin("GET", "/key/info", params={"key": await gw.new_key()})).json()["info"]
        assert (info["rpm_limit"], info["tpm_limit"], info["max_parallel_requests"]) == (10, 1000, 5)
        assert info["models"] == ["mock"] and info["expires"] is not None
        own = (await gw.admin("GET", "/key/info", params={"key": await gw.new_key(rpm_limit=50, models=["other"])}
                              )).json()["info"]
        assert (own["rpm_limit"], own["models"]) == (50, ["other"])
        # /key/update is checked too; removing a capped limit (null) is over any ceiling
        key = await gw.new_key()
        for body in ({"rpm_limit": 500}, {"max_parallel_requests": None}):
            refused = await gw.admin("POST", "/key/update", json={"key": key, **body})
            assert refused.status_code == 400, refused.text
            assert refused.json()["error"]["param"] == next(iter(body))
        ok = await gw.admin("POST", "/key/update", json={"key": key, "rpm_limit": 100})
        assert ok.status_code == 200 and ok.json()["rpm_limit"] == 100


def test_key_generate_params_that_are_not_applied_stop_start_up():
    with pytest.raises(ConfigError) as caught:
        parse_settings({"litellm_settings": {"default_key_generate_params": {"allowed_routes": ["x"], "rpm_limit": -4},
                                             "upperbound_key_generate_params": {"models": ["a"]}},
                        "sluicegate_settings": {"rate_limit_window": 0}})
    text = str(caught.value)
    assert "litellm_settings.default_key_generate_params.allowed_routes: not applied" in text
    assert "litellm_settings.default_key_generate_params.rpm_limit: expected a whole number from 0" in text
    assert "litellm_settings.upperbound_key_generate_params.models: not applied" in text
    assert "sluicegate_settings.rate_limit_window: must be more than 0" in text
    # negative control: the accepted keys load
    settings = parse_settings({"litellm_settings": {"default_key_generate_params": {"rpm_limit": 4},
                                                    "upperbound_key_generate_params": {"duration": "1mo"}}})
    assert settings.litellm_settings.default_key_generate_params == {"rpm_limit": 4}
    # fail closed: our key or LiteLLM's turns it on; neither: open
    assert not RateLimiter(settings).fail_closed
    assert RateLimiter(parse_settings({"general_settings": {"fail_closed_rate_limit_enforcement": True}})).fail_closed
    assert RateLimiter(parse_settings({"sluicegate_settings": {"rate_limit_fail_closed": True}})).fail_closed
    with pytest.raises(ConfigError, match="rate_limit_fail_closd"):  # ours only: a misspelling stops start-up
        parse_settings({"sluicegate_settings": {"rate_limit_fail_closd": True}})


# --- in one process -----------------------------------------------------------------------------------------
async def test_rpm_limit_in_process_answers_litellms_429_with_headers(make_config, start):
    async with start(limits_config(make_config)) as gw:
        assert gw.gateway.limits.mode == "local"
        now = [1_000_000.0 * LONG_WINDOW]  # the start of a window
        gw.gateway.limits.local.clock = lambda: now[0]
        limited, free = await gw.new_key(rpm_limit=3), await gw.new_key()
        client = openai.AsyncOpenAI(api_key=limited, base_url=f"{str(gw.client.base_url).rstrip('/')}/v1",
                                    max_retries=0)
        remaining = []
        for _ in range(3):
            raw = await client.chat.completions.with_raw_response.create(
                model="mock", messages=[{"role": "user", "content": "hi"}])
            remaining.append(raw.headers["x-ratelimit-remaining-requests"])
            assert raw.headers["x-ratelimit-limit-requests"] == "3"
            assert "x-ratelimit-api_key-remaining-requests" not in raw.headers  # per scope: with a 429 only
        assert remaining == ["2", "1", "0"]
        with pytest.raises(openai.RateLimitError) as caught:
            await client.chat.completions.create(model="mock", messages=[{"role": "user", "content": "hi"}])
        response = caught.value.response
        tid = await token_id(gw, limited)
        error = response.json()["error"]
        assert error["type"] == "rate_limit_error" and error["code"] == "429"
        assert error["message"].startswith(f"Rate limit exceeded for api_key: {tid}. Limit type: requests. "
                                           "Current limit: 3, Remaining: 0. Limit resets at: ")
        assert int(response.headers["retry-after"]) >= 1
        assert response.headers["x-ratelimit-remaining-requests"] == "0"
        assert response.headers["rate_limit_type"] == "requests"
        assert response.headers["x-ratelimit-api_key-remaining-requests"] == "0"
        assert response.headers["x-ratelimit-api_key-limit-requests"] == "3"
        # the next window admits again; a stream carries the headers too
        now[0] += LONG_WINDOW
        streamed = await gw.chat(limited, stream=True)
        assert streamed.status_code == 200 and b"[DONE]" in streamed.content
        assert streamed.headers["x-ratelimit-remaining-requests"] == "2"
        # negative control: a key without limits is never refused and carries no rate-limit headers
        for _ in range(5):
            answer = await gw.chat(free)
            assert answer.status_code == 200
            assert not [h for h in answer.headers if h.startswith("x-ratelimit")]


async def test_team_and_model_limits_count_on_their_own(make_config, start):
    async with start(limits_config(make_config)) as gw:
        team = f"t-{uuid.uuid4().hex[:8]}"
        await gw.admin("POST", "/team/new", json={"team_id": team, "rpm_limit": 3})
        one, two = await gw.new_key(team_id=team), await gw.new_key(team_id=team)
        statuses = [(await gw.chat(k)).status_code for k in (one, two, one, two)]
        assert statuses == [200, 200, 200, 429]  # the team's 3 shared by both keys
        refused = await gw.chat(one)
        assert refused.json()["error"]["message"].startswith(f"Rate limit exceeded for team: {team}.")
        # per model: 2 for "mock", nothing on "other"
        key = await gw.new_key(model_rpm_limit={"mock": 2})
        assert [(await gw.chat(key, model="mock")).status_code for _ in range(3)] == [200, 200, 429]
        assert [(await gw.chat(key, model="other")).status_code for _ in range(3)] == [200, 200, 200]
        assert "model_per_key" in (await gw.chat(key, model="mock")).json()["error"]["message"]


async def test_tpm_limit_counts_usage_after_the_call(make_config, start):
    async with start(limits_config(make_config)) as gw:
        key = await gw.new_key(tpm_limit=40)
        first = await gw.chat(key)
        used = first.json()["usage"]["total_tokens"]
        assert 0 < used < 40 and first.headers["x-ratelimit-remaining-tokens"] == "40"  # before its own usage
        second = await gw.chat(key)
        assert second.headers["x-ratelimit-remaining-tokens"] == str(40 - used)
        calls = 2
        while (answer := await gw.chat(key)).status_code == 200:
            calls += 1
            assert calls * used < 40 + used, "admitted past the limit"
        assert answer.status_code == 429
        assert "Limit type: tokens" in answer.json()["error"]["message"]
        assert calls == -(-40 // used)  # admitted while under: the last one may overshoot by its own usage
        # negative control: the same traffic on a key with a requests limit only is not refused for tokens
        other = await gw.new_key(rpm_limit=1000)
        assert all([(await gw.chat(other)).status_code == 200 for _ in range(calls + 2)])


async def test_max_parallel_in_process_released_on_every_path(make_config, start, held):
    async with start(limits_config(make_config, held=held)) as gw:
        key = await gw.new_key(max_parallel_requests=2)
        tasks = [asyncio.create_task(gw.chat(key, model="held")) for _ in range(5)]
        await wait_until_async(lambda: held.holding == 2 and sum(t.done() for t in tasks) == 3, timeout=10)
        assert all(t.result().status_code == 429 for t in tasks if t.done())
        assert "max_parallel_requests" in next(t for t in tasks if t.done()).result().json()["error"]["message"]
        held.release()
        assert [t.status_code for t in await asyncio.gather(*(t for t in tasks if not t.done()))] == [200, 200]
        assert held.most == 2
        scope = f"{{api_key:{await token_id(gw, key)}}}"
        assert gw.gateway.limits.local.inflight(scope) == 0
        # an upstream error releases, and so does a client that goes away mid-stream
        held.hold()
        async with httpx.AsyncClient(base_url=str(gw.client.base_url), timeout=30) as client:
            async with client.stream("POST", "/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                                     json={"model": "held", "stream": True,
                                           "messages": [{"role": "user", "content": "x"}]}) as response:
                async for _ in response.aiter_bytes():
                    break  # the first chunk arrived: leave with the upstream still holding the rest
        await wait_until_async(lambda: gw.gateway.limits.local.inflight(scope) == 0, timeout=10,
                               what="the slot of the abandoned stream")
        held.release()
        down = await gw.chat(await gw.new_key(max_parallel_requests=1), model="mock")
        assert down.status_code == 200
        # negative control: without the limit the upstream sees all five at once
        held.hold()
        free = await gw.new_key()
        held.most = 0
        tasks = [asyncio.create_task(gw.chat(free, model="held")) for _ in range(5)]
        await wait_until_async(lambda: held.holding == 5, timeout=10)
        held.release()
        assert all(r.status_code == 200 for r in await asyncio.gather(*tasks))


# --- across gateways, through Redis -------------------------------------------------------------------------
async def test_rpm_limit_shared_across_two_gateways_through_redis(make_config, start, shared_redis):
    async with two_gateways(start, limits_config(make_config, redis_port=REDIS_PORT)) as (first, second):
        assert first.gateway.limits.mode == second.gateway.limits.mode == "redis"
        key = await first.new_key(rpm_limit=60)
        shared_redis.append(await token_id(first, key))
        answers = await asyncio.gather(*(gw.chat(key) for _ in range(50) for gw in (first, second)))
        passed = sum(a.status_code == 200 for a in answers)
        assert 59 <= passed <= 61, passed
        assert sum(a.status_code == 429 for a in answers) == 100 - passed
        assert {a.headers["x-ratelimit-limit-requests"] for a in answers} == {"60"}

    # negative control: the same two gateways without Redis each count alone, so together they let 100 through
    async with two_gateways(start, limits_config(make_config)) as (first, second):
        key = await first.new_key(rpm_limit=60)
        answers = await asyncio.gather(*(gw.chat(key) for _ in range(50) for gw in (first, second)))
        assert sum(a.status_code == 200 for a in answers) == 100


async def test_rpm_window_resets_through_redis(make_config, start, shared_redis):
    async with start(limits_config(make_config, redis_port=REDIS_PORT, window=2.0)) as gw:
        for _attempt in range(5):  # a burst that straddles a window boundary proves nothing: try again, afresh
            key = await gw.new_key(rpm_limit=2)  # a new key: no earlier attempt's requests in its window
            shared_redis.append(await token_id(gw, key))
            answers = [await gw.chat(key) for _ in range(3)]
            if [a.status_code for a in answers] == [200, 200, 429]:
                break
        assert [a.status_code for a in answers] == [200, 200, 429]
        assert answers[2].headers["retry-after"] in ("1", "2")
        trying: list[asyncio.Task[httpx.Response]] = []

        def admitted_again() -> bool:  # one request at a time until one is admitted (the window has reset)
            if trying and trying[-1].done():
                if trying[-1].result().status_code == 200:
                    return True
                assert trying[-1].result().status_code == 429
            if not trying or trying[-1].done():
                trying.append(asyncio.ensure_future(gw.chat(key)))
            return False

        await wait_until_async(admitted_again, timeout=6, interval=0.05, what="the next window")


async def test_max_parallel_shared_across_two_gateways_through_redis(make_config, start, held, shared_redis):
    async with two_gateways(start, limits_config(make_config, redis_port=REDIS_PORT, held=held)) as (first, second):
        key = await first.new_key(max_parallel_requests=2)
        shared_redis.append(await token_id(first, key))
        tasks = [asyncio.create_task(gw.chat(key, model="held")) for _ in range(4) for gw in (first, second)]
        await wait_until_async(lambda: held.holding == 2 and sum(t.done() for t in tasks) == 6, timeout=10)
        assert held.most == 2 and all(t.result().status_code == 429 for t in tasks if t.done())
        held.release()
        assert all(r.status_code == 200 for r in await asyncio.gather(*tasks) if r.status_code != 429)
        # the slots come back (released from the gateways' background flush): two more may be held at once
        held.hold()
        await wait_until_async(lambda: first.gateway.limits.redis.idle and second.gateway.limits.redis.idle,
                               timeout=5)
        again = [asyncio.create_task(gw.chat(key, model="held")) for gw in (first, second)]
        await wait_until_async(lambda: held.holding == 2, timeout=10)
        held.release()
        assert [r.status_code for r in await asyncio.gather(*again)] == [200, 200]
        assert held.most == 2
        # tpm through Redis: usage recorded by one gateway refuses the other's next request
        tpm_key = await first.new_key(tpm_limit=15)
        shared_redis.append(await token_id(first, tpm_key))
        assert (await first.chat(tpm_key, model="held")).status_code == 200  # 15 tokens used
        await wait_until_async(lambda: first.gateway.limits.redis.idle, timeout=5)
        refused = await second.chat(tpm_key, model="held")
        assert refused.status_code == 429 and "Limit type: tokens" in refused.json()["error"]["message"]


# --- Redis down ---------------------------------------------------------------------------------------------
async def test_redis_down_fails_open_to_this_process_counts_with_one_warning(make_config, start, caplog):
    dead = free_port()
    async with start(limits_config(make_config, redis_port=dead)) as gw:
        key, free = await gw.new_key(rpm_limit=2), await gw.new_key()
        with caplog.at_level("WARNING", logger="sluicegate.limits"):
            statuses = [(await gw.chat(key)).status_code for _ in range(4)]
        assert statuses == [200, 200, 429, 429]  # still limited, by this process's counts
        warnings = [r for r in caplog.records if r.name == "sluicegate.limits"]
        assert len(warnings) == 1 and "this process only" in warnings[0].getMessage()
        assert (await gw.chat(free)).status_code == 200


async def test_redis_down_fails_closed_when_configured(make_config, start):
    dead = free_port()
    async with start(limits_config(make_config, redis_port=dead, fail_closed=True)) as gw:
        key, free = await gw.new_key(rpm_limit=100), await gw.new_key()
        refused = await gw.chat(key)
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "1"
        assert "rate_limit_fail_closed" in refused.json()["error"]["message"]
        # negative control: a key without limits never needs Redis
        assert (await gw.chat(free)).status_code == 200
    # and with Redis up the same configuration admits
    if _redis_reason() is None:
        async with start(limits_config(make_config, redis_port=REDIS_PORT, fail_closed=True)) as gw:
            key = await gw.new_key(rpm_limit=100)
            try:
                assert (await gw.chat(key)).status_code == 200
            finally:
                client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT)
                for name in client.scan_iter(f"sluicegate:rl:*{await token_id(gw, key)}*"):
                    client.delete(name)


# --- a private Redis: password, flushed scripts, an outage and its end ----------------------------------------
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


class PrivateRedis:
    """Our own redis-server on ``port`` with ``requirepass`` (never the machine's shared one), stopped by its pid;
    it can be stopped and started again on the same port."""

    def __init__(self, port: int, password: str) -> None:
        if not os.path.exists(REDIS_SERVER):
            if IN_CI:
                pytest.fail(f"{REDIS_SERVER} not found (CI=true: Redis tests must run)", pytrace=False)
            pytest.skip(f"{REDIS_SERVER} not found")
        self.port = port
        self.password = password
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--daemonize", "no", "--requirepass", self.password],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                self.client().ping()
                return
            except redis.ConnectionError:
                assert self.proc.poll() is None, "private redis-server exited"
                assert time.monotonic() < deadline, "private redis-server did not answer within 10 s"
                time.sleep(0.02)  # deliberate: polls a condition under a deadline

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait(5)

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, password=self.password, socket_connect_timeout=0.2)


def _requests_in_redis(client: redis.Redis, ident: str) -> int:
    return sum(int(client.hget(name, "r") or 0) for name in client.scan_iter(f"sluicegate:rl:{{api_key:{ident}}}:*")
               if not name.endswith(b":p"))


async def test_private_redis_password_flushed_scripts_outage_and_return(make_config, start, register_secret):
    server = PrivateRedis(free_port(), register_secret("redis-pw-" + uuid.uuid4().hex[:12]))
    cfg = limits_config(make_config, redis_port=server.port)
    cfg["router_settings"]["redis_password"] = server.password
    server.start()
    try:
        async with start(cfg) as gw:
            key = await gw.new_key(rpm_limit=3)
            ident = await token_id(gw, key)
            assert [(await gw.chat(key)).status_code for _ in range(2)] == [200, 200]
            assert _requests_in_redis(server.client(), ident) == 2  # counted in Redis, through AUTH
            server.client().script_flush()  # as after a Redis restart: the next check loads the scripts again
            assert (await gw.chat(key)).status_code == 200
            assert _requests_in_redis(server.client(), ident) == 3
            assert (await gw.chat(key)).status_code == 429

            # Redis gone: this process counts on its own (fail open), from zero
            server.stop()
            assert [(await gw.chat(key)).status_code for _ in range(4)] == [200, 200, 200, 429]
            # Redis back (empty): after its second of rest the limiter counts there again
            server.start()
            limiter = gw.gateway.limits.redis
            await wait_until_async(limiter.usable, timeout=5, what="the limiter to try Redis again")
            assert (await gw.chat(key)).status_code == 200
            assert _requests_in_redis(server.client(), ident) == 1

        # negative control: a wrong password is refused by Redis, and said so
        wrong = RespClient(port=server.port, password="not-" + server.password, timeout=1)
        with pytest.raises(RedisError, match="refused"):
            await wrong.execute([pack("PING")])
        wrong.close()
    finally:
        server.stop()


def test_a_callers_user_is_counted_like_its_team():
    """The users table feeds its limits in through ``ctx.user`` (any record with ``user_id`` and the three limit
    fields): the scopes then include the user's, counted as LiteLLM's ``user`` descriptor."""
    key = KeyRecord(token_id="a" * 64, key_name="sk-...aaaa", team_id="t1", rpm_limit=5, model_rpm_limit={"m": 2})
    team = TeamRecord(team_id="t1", tpm_limit=100)
    user = types.SimpleNamespace(user_id="u1", rpm_limit=7, tpm_limit=None, max_parallel_requests=3)
    ctx = types.SimpleNamespace(token_id=key.token_id, key=key, team=team, user=user)
    scopes, per_model = limit_scopes(ctx)  # type: ignore[arg-type]
    assert [(s.kind, s.ident, s.rpm, s.tpm, s.parallel) for s in scopes] == [
        ("api_key", key.token_id, 5, None, None), ("team", "t1", None, 100, None), ("user", "u1", 7, None, 3)]
    assert [(s.kind, s.ident, s.rpm) for s in per_model.values()] == [("model_per_key", f"{key.token_id}:m", 2)]
    # negative control: a user without limits, and a team without limits, add no scope
    ctx.user = types.SimpleNamespace(user_id="u2", rpm_limit=None, tpm_limit=None, max_parallel_requests=None)
    ctx.team = TeamRecord(team_id="t1")
    assert [s.kind for s in limit_scopes(ctx)[0]] == ["api_key"]  # type: ignore[arg-type]


async def test_a_stream_without_usage_counts_an_estimate_of_its_tokens(make_config, start, held):
    """An upstream stream that reports no usage (OpenAI's without ``include_usage``) still counts toward
    ``tpm_limit``: a quarter of the characters of prompt and answer."""
    async with start(limits_config(make_config, held=held)) as gw:
        held.release()
        key = await gw.new_key(tpm_limit=10)
        first = await gw.chat(key, "x" * 60, model="held", stream=True)
        assert first.status_code == 200 and b"[DONE]" in first.content and b'"usage"' not in first.content
        refused = await gw.chat(key, model="held")
        assert refused.status_code == 429 and "Limit type: tokens" in refused.json()["error"]["message"]
        assert refused.headers["x-ratelimit-remaining-tokens"] == "0"
        # negative control: a short stream leaves the window under the limit
        other = await gw.new_key(tpm_limit=10)
        assert (await gw.chat(other, "x", model="held", stream=True)).status_code == 200
        assert (await gw.chat(other, model="held")).status_code == 200


async def test_parallel_leases_are_renewed_while_held_and_expire_with_their_process(shared_redis):
    """A slot held by a live process stays held past the lease time (renewed); one whose process is gone (its
    store closed without releasing) is free once the lease time passes. Short leases for the test's sake."""
    ident = f"lease-{uuid.uuid4().hex[:12]}"
    shared_redis.append(ident)
    scopes = (Scope("api_key", ident, None, None, 1),)
    holder = RedisStore({"host": REDIS_HOST, "port": REDIS_PORT}, window=60, timeout=1, lease_ttl=0.6)
    other = RedisStore({"host": REDIS_HOST, "port": REDIS_PORT}, window=60, timeout=1, lease_ttl=0.6)
    holder.start()
    other.start()
    try:
        assert (await holder.acquire(scopes, "holder-1")).failed == 0
        began = time.monotonic()
        refusals = 0

        async def still_refused_after_two_lease_times() -> None:
            nonlocal refusals
            while time.monotonic() - began < 1.5:
                outcome = await other.acquire(scopes, "other-1")
                assert outcome.failed == 1, "the held slot was lost while its process lived"
                refusals += 1
                await asyncio.sleep(0.1)  # pacing of the probe, not synchronisation

        await still_refused_after_two_lease_times()
        assert refusals >= 5
        await holder.aclose()  # the process ends without giving its slot back
        admitted: list[int] = []

        def free_again() -> bool:
            if admitted and admitted[-1] == 0:
                return True
            task = asyncio.ensure_future(other.acquire(scopes, f"other-{len(admitted) + 2}"))
            task.add_done_callback(lambda t: admitted.append(t.result().failed))
            return False

        await wait_until_async(free_again, timeout=5, interval=0.1, what="the dead holder's lease to expire")
        # negative control: the slot taken now is held again
        assert (await other.acquire(scopes, "other-x")).failed == 1
    finally:
        await holder.aclose()
        await other.aclose()


async def test_requests_one_after_another_are_admitted_from_reserved_blocks_never_past_the_limit(shared_redis):
    """Far from the limit, requests that come one after another are admitted from blocks their process reserved
    (a round trip per block, not per request); across two processes the limit still holds exactly: every request
    Redis counted is admitted by the process that reserved it, and none more."""
    ident = f"block-{uuid.uuid4().hex[:12]}"
    shared_redis.append(ident)
    scopes = (Scope("api_key", ident, 300, None, None),)
    first = RedisStore({"host": REDIS_HOST, "port": REDIS_PORT}, window=LONG_WINDOW, timeout=1)
    second = RedisStore({"host": REDIS_HOST, "port": REDIS_PORT}, window=LONG_WINDOW, timeout=1)
    first.start()
    second.start()
    try:
        for _ in range(100):
            assert (await first.acquire(scopes, None)).failed == 0
        assert first.round_trips <= 20, first.round_trips  # blocks of 2, 4, 8...: far fewer than 100
        counted = _requests_in_redis(redis.Redis(host=REDIS_HOST, port=REDIS_PORT), ident)
        assert 100 <= counted <= 100 + 300 // 16, counted  # reserved ahead, never more than a sixteenth of the rest
        admitted = {first: 100, second: 0}
        refused_in_a_row = 0
        turn = 0
        while refused_in_a_row < 4:  # both processes ask in turn until each is refused twice in a row
            store = (first, second)[turn % 2]
            turn += 1
            if (await store.acquire(scopes, None)).failed == 0:
                admitted[store] += 1
                refused_in_a_row = 0
            else:
                refused_in_a_row += 1
        assert sum(admitted.values()) == 300, admitted  # no credit left behind, none admitted past the limit
        assert admitted[second] > 0
        # negative control: a check Redis refuses with no credit left here is refused
        assert (await second.acquire(scopes, None)).failed == 1
    finally:
        await first.aclose()
        await second.aclose()


async def test_a_freed_parallel_slot_is_reused_by_its_process_then_given_back(shared_redis):
    """A finished request's slot stays with its process for a moment: the next request takes it without a round
    trip, while the other process is still refused; once the slot is given back, the other process gets it."""
    ident = f"pool-{uuid.uuid4().hex[:12]}"
    shared_redis.append(ident)
    scopes = (Scope("api_key", ident, None, None, 1),)
    holder = RedisStore({"host": REDIS_HOST, "port": REDIS_PORT}, window=LONG_WINDOW, timeout=1)
    other = RedisStore({"host": REDIS_HOST, "port": REDIS_PORT}, window=LONG_WINDOW, timeout=1)
    holder.start()
    other.start()
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT)
    try:
        outcome = await holder.acquire(scopes, "lease-1")
        assert outcome.failed == 0
        holder.finish(scopes, "lease-1", 0)
        trips = holder.round_trips
        again = await holder.acquire(scopes, "lease-2")
        assert again.failed == 0 and again.lease == "lease-1"  # the pooled slot, taken in process
        assert holder.round_trips == trips
        assert client.zcard(f"sluicegate:rl:{{api_key:{ident}}}:p") == 1
        assert (await other.acquire(scopes, "other-1")).failed == 1  # held (in use) for the other process
        holder.finish(scopes, "lease-1", 0)
        await wait_until_async(lambda: holder.idle, timeout=5, what="the pooled slot to be given back")
        assert client.zcard(f"sluicegate:rl:{{api_key:{ident}}}:p") == 0
        assert (await other.acquire(scopes, "other-2")).failed == 0
    finally:
        await holder.aclose()
        await other.aclose()


def _gauge(text: str, name: str) -> list[float]:
    from prometheus_client.parser import text_string_to_metric_families

    return [s.value for family in text_string_to_metric_families(text) for s in family.samples if s.name == name]


async def test_remaining_per_model_gauges_read_redis_windows_shared_by_gateways(make_config, start, shared_redis):
    """``litellm_remaining_api_key_requests_for_model`` / ``..._tokens_for_model`` with Redis: read from Redis's
    window when scraped, so each gateway reports what every gateway used."""
    async with two_gateways(start, limits_config(make_config, redis_port=REDIS_PORT)) as (first, second):
        key = await first.new_key(model_rpm_limit={"mock": 10}, model_tpm_limit={"mock": 10_000})
        shared_redis.append(await token_id(first, key))
        answers = [await first.chat(key), await second.chat(key), await second.chat(key)]
        assert [a.status_code for a in answers] == [200] * 3
        used_tokens = sum(a.json()["usage"]["total_tokens"] for a in answers)
        for gw in (first, second):
            # requests count at admission; tokens leave with the gateway's next batch to Redis (within ms)
            async def scraped(gw: Any = gw) -> str | None:
                text = (await gw.admin("GET", "/metrics")).text
                tokens = _gauge(text, "litellm_remaining_api_key_tokens_for_model")
                return text if tokens == [10_000 - used_tokens] else None

            text = await wait_until_async(scraped, timeout=10, interval=0.01, what="the tokens gauge")
            assert _gauge(text, "litellm_remaining_api_key_requests_for_model") == [7]  # 10 - 3, not this one's
