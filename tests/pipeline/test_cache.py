"""The response cache: hits and misses, TTL, per-team policy, team isolation, streams, controls, Redis outages.

Everything is real: a real gateway under uvicorn, the real OpenAI-compatible mock upstream (it records every
request, so "went upstream" is counted, not inferred), real Redis (the machine's at 127.0.0.1:6379, and for the
outage test a private ``redis-server`` on a free port that the test kills), and log events delivered by the
real acme plugin over HTTP to a loopback receiver.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from sluicegate.cache import DEFAULT_NAMESPACE, HIT_HEADER, KEY_HEADER, ResponseCache, sse_chunks
from sluicegate.config import ConfigError, parse_settings

pytestmark = pytest.mark.usefixtures("acme", "clean_env")

REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
INPUT_COST = 0.001


# --- fixtures -----------------------------------------------------------------------------------------------
def _redis_reason() -> str | None:
    try:
        redis.Redis(host=REDIS_HOST, port=REDIS_PORT, socket_connect_timeout=2).ping()
    except Exception as exc:
        return f"Redis at {REDIS_HOST}:{REDIS_PORT} unreachable: {type(exc).__name__}: {exc}"
    return None


@pytest.fixture
def shared_redis() -> Iterator[str]:
    """A namespace of its own on the machine's Redis; its keys are deleted afterwards. CI=true: never skip."""
    reason = _redis_reason()
    if reason:
        if IN_CI:
            pytest.fail(f"{reason} (CI=true: Redis tests must run)", pytrace=False)
        pytest.skip(reason)
    namespace = f"sgtest-{uuid.uuid4().hex[:12]}"
    yield namespace
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT)
    for key in client.scan_iter(f"{namespace}:*"):
        client.delete(key)


@pytest.fixture(params=["local", "redis"])
def backend(request: pytest.FixtureRequest) -> dict[str, Any]:
    """``cache_params`` for each backend (Redis under a namespace of its own)."""
    if request.param == "local":
        return {"type": "local"}
    namespace = request.getfixturevalue("shared_redis")
    return {"type": "redis", "host": REDIS_HOST, "port": REDIS_PORT, "namespace": namespace}


@pytest.fixture
def events_to_receiver(receiver, monkeypatch):
    """Global acme sink → ``/dest/global`` on the receiver; returns the receiver."""
    monkeypatch.setenv("ACME_URL", f"{receiver.url}/dest/global")
    monkeypatch.setenv("ACME_TOKEN", "global-token")
    return receiver


def models(upstream_url: str) -> list[dict[str, Any]]:
    return [{"model_name": "up", "litellm_params": {
        "model": "openai/up-model", "api_base": upstream_url, "api_key": "sk-upstream-x", "timeout": 5,
        "input_cost_per_token": INPUT_COST, "output_cost_per_token": INPUT_COST}}]


def cfg(make_config, upstream, *, cache: bool = True, params: dict[str, Any] | None = None,
        teams: list[dict[str, Any]] | None = None, events: bool = False) -> dict[str, Any]:
    litellm: dict[str, Any] = {"callbacks": ["acme"] if events else [], "cache": cache, "cache_params": params or {"type": "local"}}
    if teams:
        litellm["default_team_settings"] = teams
    return make_config(litellm=litellm, models=models(upstream.url))


def calls_with(upstream, marker: str) -> int:
    """How many requests reached the upstream whose messages contain ``marker``."""
    return sum(1 for r in upstream.requests if marker in json.dumps((r["body"] or {}).get("messages")))


def cache_state(response) -> str | None:
    return response.headers.get(HIT_HEADER)


def parse_sse(text: str) -> list[Any]:
    frames = [block for block in text.split("\n\n") if block.strip()]
    out: list[Any] = []
    for frame in frames:
        assert frame.startswith("data: "), frame
        payload = frame[len("data: "):]
        out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out


def streamed_text(chunks: list[Any]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks
                   if isinstance(c, dict) and c["choices"])


# --- hit / miss -----------------------------------------------------------------------------------------------
async def test_second_identical_request_is_a_hit_and_is_logged_free(
        start, make_config, mock_upstream, backend, events_to_receiver):
    receiver = events_to_receiver
    marker = uuid.uuid4().hex
    async with start(cfg(make_config, mock_upstream, params=backend, events=True)) as gw:
        key = await gw.new_key(team_id="t-hit")
        first = await gw.chat(key, f"q {marker}", model="up")
        second = await gw.chat(key, f"q {marker}", model="up")
        assert first.status_code == second.status_code == 200, (first.text, second.text)
        assert (cache_state(first), cache_state(second)) == ("miss", "hit")
        assert second.json() == first.json()  # the same answer, its id included
        assert calls_with(mock_upstream, marker) == 1
        digest = second.headers[KEY_HEADER]
        assert len(digest) == 64 and KEY_HEADER not in first.headers
        # negative controls: another message, another answer-changing parameter → misses that go upstream
        other = await gw.chat(key, f"other {marker}", model="up")
        warmer = await gw.chat(key, f"q {marker}", model="up", temperature=0.5)
        assert (cache_state(other), cache_state(warmer)) == ("miss", "miss")
        assert calls_with(mock_upstream, marker) == 3
        assert await receiver.wait_for_async(lambda: len(receiver.events_at("/dest/global")) == 4)
        await gw.gateway.dispatcher.drain(5)
        events = receiver.events_at("/dest/global")
        hits = [e for e in events if e["cache_hit"]]
        misses = [e for e in events if not e["cache_hit"]]
        assert len(hits) == 1 and len(misses) == 3
        hit = hits[0]
        original = next(e for e in misses if e["response"]["id"] == hit["response"]["id"])
        assert hit["id"] != original["id"]  # every request is its own event
        assert hit["cache_key"] == original["cache_key"] == digest
        assert hit["response_cost"] == 0.0 and original["response_cost"] > 0
        usage = first.json()["usage"]
        assert (hit["prompt_tokens"], hit["completion_tokens"], hit["total_tokens"]) == (
            usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"])
        assert hit["status"] == "success" and hit["response"]["choices"] == first.json()["choices"]
        assert gw.gateway.cache.hits == 1


async def test_ttl_expiry_turns_a_hit_back_into_a_miss(start, make_config, mock_upstream, backend):
    marker = uuid.uuid4().hex
    async with start(cfg(make_config, mock_upstream, params={**backend, "ttl": 0.3})) as gw:
        key = await gw.new_key(team_id="t-ttl")
        assert cache_state(await gw.chat(key, marker, model="up")) == "miss"
        stored = time.monotonic()
        again = await gw.chat(key, marker, model="up")
        if time.monotonic() - stored < 0.25:  # within the TTL (the positive control)
            assert cache_state(again) == "hit"
        deadline = time.monotonic() + 5
        while cache_state(response := await gw.chat(key, marker, model="up")) == "hit":
            assert time.monotonic() < deadline, "entry still served 5 s after a 0.3 s TTL"
            await asyncio.sleep(0.02)  # deliberate: polls a condition under a deadline
        assert response.status_code == 200 and time.monotonic() - stored >= 0.29
        assert cache_state(await gw.chat(key, marker, model="up")) == "hit"  # the fresh answer was stored


# --- policy ---------------------------------------------------------------------------------------------------
async def test_team_settings_and_team_metadata_override_the_global_switch(start, make_config, mock_upstream):
    teams = [{"team_id": "cfg-off", "cache": False}, {"team_id": "cfg-on", "cache": True},
             {"team_id": "api-overrides", "cache": False}]
    for global_on in (True, False):
        marker = uuid.uuid4().hex
        async with start(cfg(make_config, mock_upstream, cache=global_on, teams=teams)) as gw:
            for team, metadata in (("api-off", {"cache": "False"}), ("api-overrides", {"cache": True})):
                if not global_on:  # the same database: the teams exist from the first round
                    break
                response = await gw.admin("POST", "/team/new", json={"team_id": team, "metadata": metadata})
                assert response.status_code == 200, response.text
            expected = {"cfg-off": False, "cfg-on": True, "api-off": False, "api-overrides": True,
                        "no-entry": global_on}
            for team, cached in expected.items():
                key = await gw.new_key(team_id=team)
                text = f"{team} {marker}"
                states = [cache_state(await gw.chat(key, text, model="up")) for _ in range(2)]
                assert states == (["miss", "hit"] if cached else [None, None]), (global_on, team, states)
                assert calls_with(mock_upstream, text) == (1 if cached else 2), (global_on, team)
            no_team = await gw.new_key()
            states = [cache_state(await gw.chat(no_team, f"solo {marker}", model="up")) for _ in range(2)]
            assert states == (["miss", "hit"] if global_on else [None, None])


async def test_with_caching_off_the_backend_is_never_built(start, make_config, mock_upstream, shared_redis):
    params = {"type": "redis", "host": REDIS_HOST, "port": REDIS_PORT, "namespace": shared_redis}
    async with start(cfg(make_config, mock_upstream, cache=False, params=params)) as gw:
        key = await gw.new_key(team_id="t-off")
        for _ in range(3):
            response = await gw.chat(key, "same", model="up", cache={"no-store": False})
            assert response.status_code == 200 and HIT_HEADER not in response.headers
        assert gw.gateway.cache.backend is None  # no key derived, no client created, no Redis round trip
        assert gw.gateway.cache.stats()["misses"] == 0
    assert list(redis.Redis(host=REDIS_HOST, port=REDIS_PORT).scan_iter(f"{shared_redis}:*")) == []


async def test_one_team_never_receives_another_teams_answer(start, make_config, mock_upstream, backend):
    marker = uuid.uuid4().hex
    async with start(cfg(make_config, mock_upstream, params=backend)) as gw:
        a1, a2, b = (await gw.new_key(team_id="team-a"), await gw.new_key(team_id="team-a"),
                     await gw.new_key(team_id="team-b"))
        first = await gw.chat(a1, marker, model="up")
        other_team = await gw.chat(b, marker, model="up")
        same_team = await gw.chat(a2, marker, model="up")
        assert [cache_state(r) for r in (first, other_team, same_team)] == ["miss", "miss", "hit"]
        assert other_team.json()["id"] != first.json()["id"] and same_team.json()["id"] == first.json()["id"]
        assert calls_with(mock_upstream, marker) == 2


async def test_concurrent_teams_only_ever_see_their_own_answers(start, make_config, mock_upstream):
    marker = uuid.uuid4().hex
    async with start(cfg(make_config, mock_upstream)) as gw:
        keys = {f"iso-{i}": await gw.new_key(team_id=f"iso-{i}") for i in range(8)}
        for team in keys:  # each team's own answer names the team
            mock_upstream.on("up-model", content=f"answer for {team}")
            assert (await gw.chat(keys[team], marker, model="up")).json()["choices"][0]["message"][
                "content"] == f"answer for {team}"
        mock_upstream.on("up-model")
        responses = await asyncio.gather(*(gw.chat(k, marker, model="up") for k in keys.values() for _ in range(5)))
        teams = [t for t in keys for _ in range(5)]
        for team, response in zip(teams, responses, strict=True):
            assert cache_state(response) == "hit"
            assert response.json()["choices"][0]["message"]["content"] == f"answer for {team}"


# --- streams --------------------------------------------------------------------------------------------------
async def test_streaming_requests_are_served_from_cache_as_valid_sse(start, make_config, mock_upstream, backend):
    marker = uuid.uuid4().hex
    async with start(cfg(make_config, mock_upstream, params=backend)) as gw:
        key = await gw.new_key(team_id="t-stream")
        plain = await gw.chat(key, f"one {marker}", model="up")
        answer = plain.json()["choices"][0]["message"]["content"]
        hit = await gw.chat(key, f"one {marker}", model="up", stream=True,
                            stream_options={"include_usage": True})
        assert hit.status_code == 200 and cache_state(hit) == "hit"
        assert hit.headers["content-type"].startswith("text/event-stream")
        chunks = parse_sse(hit.text)
        assert chunks[-1] == "[DONE]" and streamed_text(chunks) == answer
        assert all(c["object"] == "chat.completion.chunk" and c["id"] == plain.json()["id"] for c in chunks[:-1])
        assert chunks[-2]["usage"] == plain.json()["usage"] and chunks[-2]["choices"] == []
        assert [c["choices"][0]["finish_reason"] for c in chunks[:-2]][-1] == "stop"
        no_usage = parse_sse((await gw.chat(key, f"one {marker}", model="up", stream=True)).text)
        assert not any("usage" in c for c in no_usage if isinstance(c, dict))  # usage only when asked for
        # a streamed miss is stored as it passes and answers the next request, streamed or not
        streamed = await gw.chat(key, f"two {marker}", model="up", stream=True)
        assert cache_state(streamed) == "miss"
        text = streamed_text(parse_sse(streamed.text))
        replay = await gw.chat(key, f"two {marker}", model="up")
        assert cache_state(replay) == "hit" and replay.json()["choices"][0]["message"]["content"] == text
        assert calls_with(mock_upstream, marker) == 2


async def test_the_openai_sdk_reads_a_cached_stream(start, make_config, mock_upstream):
    openai = pytest.importorskip("openai")
    marker = uuid.uuid4().hex
    async with start(cfg(make_config, mock_upstream)) as gw:
        key = await gw.new_key(team_id="t-sdk")
        client = openai.AsyncOpenAI(api_key=key, base_url=str(gw.client.base_url) + "/v1")
        messages = [{"role": "user", "content": marker}]
        first = await client.chat.completions.create(model="up", messages=messages)
        stream = await client.chat.completions.create(model="up", messages=messages, stream=True)
        pieces = [chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices]
        assert "".join(pieces) == first.choices[0].message.content
        assert calls_with(mock_upstream, marker) == 1
        await client.close()


# --- per-request controls -------------------------------------------------------------------------------------
async def test_no_store_and_no_cache(start, make_config, mock_upstream, backend):
    marker = uuid.uuid4().hex
    async with start(cfg(make_config, mock_upstream, params=backend)) as gw:
        key = await gw.new_key(team_id="t-ctl")
        unstored = await gw.chat(key, marker, model="up", cache={"no-store": True})
        after = await gw.chat(key, marker, model="up")
        assert (cache_state(unstored), cache_state(after)) == ("miss", "miss")  # nothing had been stored
        assert cache_state(await gw.chat(key, marker, model="up")) == "hit"  # control: the plain one was
        fresh = await gw.chat(key, marker, model="up", cache={"no-cache": True})
        assert cache_state(fresh) == "miss" and fresh.json()["id"] != after.json()["id"]
        assert cache_state(latest := await gw.chat(key, marker, model="up")) == "hit"
        assert latest.json()["id"] == fresh.json()["id"]  # no-cache still stored its answer
        assert calls_with(mock_upstream, marker) == 3
        assert not any("cache" in (r["body"] or {}) for r in mock_upstream.requests)  # never sent upstream


@pytest.mark.parametrize(("cache", "param"), [
    ("yes", "cache"), ({"no_cache": True}, "cache.no_cache"), ({"no-cache": "maybe"}, "cache.no-cache"),
    ({"ttl": -1}, "cache.ttl"), ({"namespace": "a:b"}, "cache.namespace")])
async def test_bad_cache_controls_are_a_400_naming_the_field(start, make_config, mock_upstream, cache, param):
    async with start(cfg(make_config, mock_upstream)) as gw:
        key = await gw.new_key(team_id="t-bad")
        response = await gw.chat(key, "x", model="up", cache=cache)
        assert response.status_code == 400 and response.json()["error"]["param"] == param, response.text
        assert (await gw.chat(key, "x", model="up", cache={"no-cache": True})).status_code == 200  # control


async def test_s_maxage_refuses_entries_older_than_asked(start, make_config, mock_upstream):
    marker = uuid.uuid4().hex
    async with start(cfg(make_config, mock_upstream)) as gw:
        key = await gw.new_key(team_id="t-age")
        assert cache_state(await gw.chat(key, marker, model="up")) == "miss"
        assert cache_state(await gw.chat(key, marker, model="up", cache={"s-maxage": 60})) == "hit"
        deadline = time.monotonic() + 5
        while cache_state(await gw.chat(key, marker, model="up", cache={"s-maxage": 0.05, "no-store": True})) \
                == "hit":
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)  # deliberate: polls a condition under a deadline


# --- Redis outage ---------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def private_redis(port: int) -> Iterator[subprocess.Popen[bytes]]:
    """Our own redis-server on ``port`` (never the machine's shared one), stopped by its pid."""
    if not os.path.exists(REDIS_SERVER):
        message = f"{REDIS_SERVER} not found"
        if IN_CI:
            pytest.fail(f"{message} (CI=true: Redis tests must run)", pytrace=False)
        pytest.skip(message)
    proc = subprocess.Popen([REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--daemonize", "no"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis(port=port, socket_connect_timeout=0.2).ping()
                break
            except redis.ConnectionError:
                assert proc.poll() is None, "private redis-server exited"
                assert time.monotonic() < deadline, "private redis-server did not answer within 10 s"
                time.sleep(0.02)  # deliberate: polls a condition under a deadline
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(5)


async def test_redis_stopped_mid_run_sends_requests_upstream_and_logs_once(
        start, make_config, mock_upstream, caplog):
    port = _free_port()
    marker = uuid.uuid4().hex
    params = {"type": "redis", "host": "127.0.0.1", "port": port, "retry_after": 0.05, "timeout": 0.5}
    caplog.set_level(logging.WARNING, logger="sluicegate.cache")
    with private_redis(port) as server:
        async with start(cfg(make_config, mock_upstream, params=params)) as gw:
            key = await gw.new_key(team_id="t-outage")
            assert cache_state(await gw.chat(key, marker, model="up")) == "miss"
            assert cache_state(await gw.chat(key, marker, model="up")) == "hit"
            server.kill()
            server.wait(5)
            outage = []
            for _ in range(10):
                outage.append(await gw.chat(key, marker, model="up"))
                await asyncio.sleep(0.06)  # deliberate: spacing beyond retry_after, so each request tries Redis again
            assert [r.status_code for r in outage] == [200] * 10
            assert all(cache_state(r) == "miss" for r in outage)
            assert calls_with(mock_upstream, marker) == 11  # every outage request went upstream
            cache = gw.gateway.cache
            assert cache.errors >= 10 and cache.stats()["last_error"]
            lines = [r for r in caplog.records if r.name == "sluicegate.cache"]
            assert len(lines) == 1 and "unavailable" in lines[0].getMessage()  # once a minute, not per failure
            # Redis back on the same port: the cache recovers without a restart
            with private_redis(port):
                deadline = time.monotonic() + 5
                states = []
                while "hit" not in states:
                    assert time.monotonic() < deadline, states
                    states.append(cache_state(await gw.chat(key, marker, model="up")))
                    await asyncio.sleep(0.06)  # deliberate: spacing beyond retry_after
                assert all(r.status_code == 200 for r in outage)


async def test_redis_never_reachable_is_not_an_error(start, make_config, mock_upstream):
    params = {"type": "redis", "host": "127.0.0.1", "port": _free_port(), "retry_after": 60}
    async with start(cfg(make_config, mock_upstream, params=params)) as gw:
        key = await gw.new_key(team_id="t-never")
        started = time.monotonic()
        responses = [await gw.chat(key, "x", model="up") for _ in range(20)]
        assert [r.status_code for r in responses] == [200] * 20
        stats = gw.gateway.cache.stats()
        assert stats["errors"] == 1 and stats["bypassed"] >= 19  # one attempt, then left alone for retry_after
        assert time.monotonic() - started < 5


# --- configuration, key derivation, SSE framing ---------------------------------------------------------------
@pytest.mark.parametrize(("params", "path"), [
    ({"type": "memcached"}, "litellm_settings.cache_params.type"),
    ({"ttl": 0}, "litellm_settings.cache_params.ttl"),
    ({"ttl": "soon"}, "litellm_settings.cache_params.ttl"),
    ({"namespace": "a:b"}, "litellm_settings.cache_params.namespace"),
    ({"type": "redis", "redis_startup_nodes": [{"host": "127.0.0.1", "port": "7001"}]},
     "litellm_settings.cache_params.redis_startup_nodes"),
    ({"type": "redis", "service_name": "mymaster", "sentinel_nodes": [["127.0.0.1", 26379]]},
     "litellm_settings.cache_params.service_name"),
    ("redis", "litellm_settings.cache_params")])
def test_bad_cache_params_stop_start_up_naming_the_path(params, path):
    with pytest.raises(ConfigError) as caught:
        parse_settings({"litellm_settings": {"cache": True, "cache_params": params}})
    assert any(p.startswith(path + ":") for p in caught.value.problems), caught.value.problems
    good = parse_settings({"litellm_settings": {"cache": True, "cache_params": {"type": "redis", "ttl": 5}}})
    assert good.litellm_settings.cache is True  # control


def test_unknown_cache_params_are_a_warning_and_env_references_resolve(monkeypatch):
    monkeypatch.setenv("SG_TEST_REDIS_PASSWORD", "hunter2-secret")
    settings = parse_settings({"litellm_settings": {"cache": True, "cache_params": {
        "type": "redis", "password": "os.environ/SG_TEST_REDIS_PASSWORD", "supported_call_types": ["x"]}}})
    assert any("supported_call_types" in w for w in settings.warnings)
    cache = ResponseCache(settings)
    assert cache.params.password == "hunter2-secret" and cache.params.namespace == DEFAULT_NAMESPACE
    assert "hunter2" not in repr(cache.stats())


def test_key_covers_model_messages_parameters_and_team_but_not_framing():
    from sluicegate.providers.models import Deployment

    dep = Deployment(model_name="m", custom_llm_provider="openai", upstream_model="u", api_base="http://x/v1")
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0.2}
    base = ResponseCache.key_for("t1", dep, body)
    same = [{**body, "stream": True}, {**body, "stream_options": {"include_usage": True}},
            {**body, "metadata": {"tag": "x"}}, dict(reversed(list(body.items())))]
    assert all(ResponseCache.key_for("t1", dep, b) == base for b in same)
    different = [("t2", dep, body), (None, dep, body),
                 ("t1", Deployment(model_name="m", custom_llm_provider="openai", upstream_model="u2", api_base="http://x/v1"),
                  body),
                 ("t1", dep, {**body, "temperature": 0.3}), ("t1", dep, {**body, "max_tokens": 5}),
                 ("t1", dep, {**body, "tools": [{"type": "function", "function": {"name": "f"}}]}),
                 ("t1", dep, {**body, "messages": [{"role": "user", "content": "hi!"}]})]
    keys = {ResponseCache.key_for(*args) for args in different}
    assert base not in keys and len(keys) == len(different)


def test_sse_replay_of_tool_calls_and_several_choices():
    completion = {"id": "c1", "created": 1, "model": "m", "usage": {"prompt_tokens": 1, "completion_tokens": 2,
                                                                      "total_tokens": 3},
                  "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
                      "role": "assistant", "content": None,
                      "tool_calls": [{"id": "t", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}},
                      {"index": 1, "finish_reason": "stop", "message": {"role": "assistant", "content": "b"}}]}
    frames = [f.decode() for f in sse_chunks(completion, include_usage=False)]
    assert frames[-1] == "data: [DONE]\n\n" and all(f.endswith("\n\n") for f in frames)
    chunks = [json.loads(f[6:]) for f in frames[:-1]]
    calls = [c for c in chunks if "tool_calls" in c["choices"][0]["delta"]]
    assert calls[0]["choices"][0]["delta"]["tool_calls"][0]["function"] == {"name": "f", "arguments": "{}"}
    assert {c["choices"][0]["index"] for c in chunks} == {0, 1}
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"][0]["finish_reason"]] == [
        "tool_calls", "stop"]
    assert not any("usage" in c for c in chunks)
    assert "usage" in json.loads(sse_chunks(completion, include_usage=True)[-2][6:])


async def test_cache_counters_are_in_metrics_and_sinks(start, make_config, mock_upstream):
    marker = uuid.uuid4().hex
    async with start(cfg(make_config, mock_upstream)) as gw:
        key = await gw.new_key(team_id="t-metrics")
        assert cache_state(await gw.chat(key, marker, model="up")) == "miss"
        assert cache_state(await gw.chat(key, marker, model="up")) == "hit"
        assert cache_state(await gw.chat(key, marker, model="up")) == "hit"
        text = (await gw.admin("GET", "/metrics")).text
        assert "sluicegate_cache_hits_total 2" in text and "sluicegate_cache_misses_total 1" in text
        assert "sluicegate_cache_stores_total 1" in text and "sluicegate_cache_errors_total 0" in text
        cache = (await gw.admin("GET", "/-/sinks")).json()["cache"]
        assert (cache["hits"], cache["misses"], cache["stores"]) == (2, 1, 1)
