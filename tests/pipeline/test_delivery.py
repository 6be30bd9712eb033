"""Delivery: a slow, failing or dead sink never slows requests or other sinks; retries lose nothing; a clean
shutdown delivers everything it accepted; no secret reaches an event, a log line or a response."""

from __future__ import annotations

import asyncio
import logging

import pytest

pytestmark = pytest.mark.usefixtures("acme", "clean_env")

SECRET = "acme-secret-b7e19d42"


async def test_a_hanging_sink_does_not_slow_requests_or_other_sinks(receiver, make_config, start, vars_for):
    receiver.behave("/dest/stuck", hang=True)
    async with start(make_config(delivery={"shutdown_grace": 0.5, "max_retries": 0})) as gw:
        stuck = await gw.new_key(metadata={"logging": [{"callback_name": "acme", "callback_vars": vars_for("stuck")}]})
        fine = await gw.new_key(metadata={"logging": [{"callback_name": "acme", "callback_vars": vars_for("fine")}]})
        # Requests of the key whose sink hangs all complete while its sink still holds the first batch.
        responses = await asyncio.wait_for(asyncio.gather(*(gw.chat(stuck, f"s{i}") for i in range(30))), 10)
        assert all(r.status_code == 200 for r in responses)
        responses = await asyncio.gather(*(gw.chat(fine, f"f{i}") for i in range(30)))
        assert all(r.status_code == 200 for r in responses)
        assert await receiver.wait_for_async(lambda: len(receiver.events_at("/dest/fine")) == 30)
        stuck_slot = next(s for s in gw.gateway.dispatcher.stats() if s["sent"] == 0)
        assert stuck_slot["in_flight"] + stuck_slot["queued"] > 0  # still held by the hanging sink
        assert receiver.events_at("/dest/stuck") == []


async def test_a_raising_sink_is_retried_until_it_recovers_and_nothing_is_lost(
        receiver, make_config, start, vars_for):
    receiver.behave("/dest/flaky", fail_times=4, fail_status=503)
    async with start(make_config()) as gw:
        key = await gw.new_key(metadata={"logging": [{"callback_name": "acme", "callback_vars": vars_for("flaky")}]})
        for i in range(20):
            assert (await gw.chat(key, f"m{i}")).status_code == 200
        assert await receiver.wait_for_async(lambda: len(receiver.events_at("/dest/flaky")) == 20)
        await gw.gateway.dispatcher.drain(5)
        contents = [e["messages"][0]["content"] for e in receiver.events_at("/dest/flaky")]
        assert sorted(contents) == sorted(f"m{i}" for i in range(20)) and len(set(contents)) == 20
        stats = gw.gateway.dispatcher.stats()[0]
        assert stats["retried"] >= 4 and stats["dropped"] == 0 and stats["sent"] == 20
        assert "HTTPStatusError" in stats["last_error"]
        failed = [r for r in receiver.received("/dest/flaky", ok_only=False) if r.status == 503]
        assert len(failed) == 4


async def test_permanent_failures_are_dropped_and_counted_not_retried(receiver, make_config, start, vars_for):
    receiver.behave("/dest/denied", status=401)
    async with start(make_config()) as gw:
        key = await gw.new_key(metadata={"logging": [{"callback_name": "acme", "callback_vars": vars_for("denied")}]})
        assert (await gw.chat(key)).status_code == 200
        assert await receiver.wait_for_async(lambda: len(receiver.received("/dest/denied", ok_only=False)) == 1)
        await gw.gateway.dispatcher.drain(5)
        stats = gw.gateway.dispatcher.stats()[0]
        assert stats["dropped"] == 1 and stats["retried"] == 0


async def test_clean_shutdown_delivers_every_queued_event(receiver, make_config, start, vars_for):
    # A long linger keeps events queued; stopping the gateway must flush them rather than drop them.
    async with start(make_config(delivery={"batch_interval": 30})) as gw:
        key = await gw.new_key(metadata={"logging": [{"callback_name": "acme", "callback_vars": vars_for("late")}]})
        for i in range(25):
            assert (await gw.chat(key, f"q{i}")).status_code == 200
        assert receiver.events_at("/dest/late") == []
        assert gw.gateway.dispatcher.pending() == 25
    assert len(receiver.events_at("/dest/late")) == 25


async def test_queue_is_bounded_and_overflow_is_counted(receiver, make_config, start, vars_for):
    # Without the spool, the bounded queue drops its oldest events (the spooled variant is below).
    receiver.behave("/dest/slow", hang=True)
    async with start(make_config(delivery={"queue_size": 10, "shutdown_grace": 0.2, "max_retries": 0,
                                           "spool": False})) as gw:
        key = await gw.new_key(metadata={"logging": [{"callback_name": "acme", "callback_vars": vars_for("slow")}]})
        for i in range(40):
            assert (await gw.chat(key, f"o{i}")).status_code == 200
        stats = (await gw.admin("GET", "/-/sinks")).json()["sinks"][0]
        assert stats["queued"] <= 10 and stats["dropped"] >= 40 - 10 - stats["in_flight"]


async def test_with_the_spool_overflow_waits_on_disk_and_is_delivered_in_order(receiver, make_config, start,
                                                                               vars_for):
    receiver.behave("/dest/spill", status=503)
    async with start(make_config(delivery={"queue_size": 10, "max_retries": 0, "spool_flush_interval": 0.05})) as gw:
        key = await gw.new_key(metadata={"logging": [{"callback_name": "acme", "callback_vars": vars_for("spill")}]})
        for i in range(120):
            assert (await gw.chat(key, f"o{i}")).status_code == 200
        stats = (await gw.admin("GET", "/-/sinks")).json()["sinks"][0]
        # memory holds at most queue_size (+ one batch in flight); the rest is on disk, nothing dropped
        assert stats["queued"] <= 10 and stats["in_flight"] <= 50
        assert stats["spooled"] >= 120 - 10 - 50 and stats["dropped"] == 0
        assert stats["queued"] + stats["in_flight"] + stats["spooled"] == 120
        assert gw.gateway.dispatcher.spool.root.is_dir()
        receiver.behave("/dest/spill", status=200)  # the sink recovers (max_retries 0 is ignored with a spool)
        assert await receiver.wait_for_async(lambda: len(receiver.events_at("/dest/spill")) >= 120)
        contents = [e["messages"][0]["content"] for e in receiver.events_at("/dest/spill")]
        assert contents == [f"o{i}" for i in range(120)]  # every event, once, in the order accepted
        await gw.gateway.dispatcher.drain(5)
        gw.gateway.dispatcher.flush_spool()
        stats = (await gw.admin("GET", "/-/sinks")).json()["sinks"][0]
        assert stats["spooled"] == 0 and stats["spool_bytes"] == 0 and stats["sent"] == 120
        assert not any(gw.gateway.dispatcher.spool.root.glob("*/*.seg"))  # delivered segments are deleted


async def test_shutdown_keeps_what_it_cannot_deliver_and_the_next_start_replays_it(receiver, make_config, start,
                                                                                    vars_for):
    receiver.behave("/dest/later", status=503)
    cfg = make_config(delivery={"shutdown_grace": 0.3})
    async with start(cfg) as gw:
        key = await gw.new_key(metadata={"logging": [{"callback_name": "acme", "callback_vars": vars_for("later")}]})
        for i in range(15):
            assert (await gw.chat(key, f"k{i}")).status_code == 200
    assert receiver.events_at("/dest/later") == []
    receiver.behave("/dest/later", status=200)
    async with start(cfg) as gw:  # no request needed: the spool is replayed at start
        assert await receiver.wait_for_async(lambda: len(receiver.events_at("/dest/later")) >= 15)
        contents = [e["messages"][0]["content"] for e in receiver.events_at("/dest/later")]
        assert contents == [f"k{i}" for i in range(15)]
        assert all(e["id"] for e in receiver.events_at("/dest/later"))


async def test_without_the_spool_shutdown_drops_what_it_cannot_deliver(receiver, make_config, start, vars_for):
    receiver.behave("/dest/gone", status=503)
    cfg = make_config(delivery={"shutdown_grace": 0.3, "spool": False})
    async with start(cfg) as gw:
        key = await gw.new_key(metadata={"logging": [{"callback_name": "acme", "callback_vars": vars_for("gone")}]})
        for i in range(5):
            assert (await gw.chat(key, f"g{i}")).status_code == 200
    receiver.behave("/dest/gone", status=200)
    async with start(cfg) as gw:
        assert gw.gateway.dispatcher.spool is None and gw.gateway.dispatcher.pending() == 0
    assert receiver.events_at("/dest/gone") == []


async def test_no_secret_in_events_logs_or_responses(receiver, make_config, start, caplog, monkeypatch,
                                                    register_secret):
    # Our loggers at DEBUG; third-party drivers at INFO (aiosqlite's DEBUG echoes SQL parameters, and the CLI
    # pins those loggers at WARNING whatever --log-level says).
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.DEBUG, logger="sluicegate")
    monkeypatch.setenv("SG_SECRET_TOKEN", SECRET)
    receiver.behave("/dest/err", fail_times=2, fail_status=500)
    upstream_key = register_secret("sk-upstream-" + "9" * 20)
    register_secret(SECRET)
    cfg = make_config(models=[{"model_name": "mock", "litellm_params": {
        "model": "openai/m", "mock_response": "ok", "api_key": upstream_key}}])
    cfg["sluicegate_settings"]["allowed_env_refs"] = ["SG_SECRET_*"]
    async with start(cfg) as gw:
        generated = await gw.admin("POST", "/key/generate", json={"team_id": "t", "metadata": {"logging": [
            {"callback_name": "acme", "callback_vars": {"url": f"{receiver.url}/dest/err",
                                                        "api_token": "os.environ/SG_SECRET_TOKEN"}},
            {"callback_name": "acme", "callback_vars": {"url": f"{receiver.url}/dest/plain", "api_token": SECRET}},
        ]}})
        key = generated.json()["key"]
        texts = [generated.text]
        texts.append((await gw.chat(key, "hi")).text)
        texts.append((await gw.chat(key, "hi", stream=True)).text)
        assert await receiver.wait_for_async(lambda: len(receiver.events_at("/dest/err")) == 2)
        assert await receiver.wait_for_async(lambda: len(receiver.events_at("/dest/plain")) == 2)
        for path in ("/-/sinks", "/-/plugins", "/team/t/callback", f"/key/info?key={key}", "/key/list"):
            texts.append((await gw.admin("GET", path)).text)
        texts.append((await gw.client.post("/key/health", headers={"Authorization": f"Bearer {key}"})).text)
        bodies = [r.body.decode() for r in receiver.received()]
        own = str(gw.client.base_url)
    # every log line but the test client's own request lines (httpx logs the URLs this test asks, /key/info?key=
    # included, when no earlier test in the process pinned its logger at WARNING)
    logged = "\n".join(caplog.handler.format(r) for r in caplog.records  # with any traceback, as caplog.text
                       if not (r.name == "httpx" and own in r.getMessage()))
    haystack = "\n".join(texts + bodies + [logged])
    assert SECRET not in haystack
    assert upstream_key not in haystack
    assert key not in "\n".join(bodies + [logged])  # the plaintext key is only in its own responses
    assert "acme-secret" in receiver.received("/dest/plain")[0].headers["authorization"]  # delivered as auth


async def test_metrics_carry_the_sink_counters_and_need_the_master_key(receiver, make_config, start, vars_for):
    async with start(make_config()) as gw:
        key = await gw.new_key(metadata={"logging": [{"callback_name": "acme", "callback_vars": vars_for("m")}]})
        for i in range(3):
            assert (await gw.chat(key, f"m{i}")).status_code == 200
        assert await receiver.wait_for_async(lambda: len(receiver.events_at("/dest/m")) == 3)
        await gw.gateway.dispatcher.drain(5)
        assert (await gw.client.get("/metrics")).status_code == 401
        assert (await gw.client.get("/metrics", headers={"Authorization": f"Bearer {key}"})).status_code == 403
        response = await gw.admin("GET", "/metrics")
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
        row = (await gw.admin("GET", "/-/sinks")).json()["sinks"][0]
        labels = f'{{callback_name="acme",instance_id="{row["instance_id"]}"}}'
        for field, metric in (("sent", "sluicegate_sink_events_sent_total"), ("spooled", "sluicegate_sink_events_spooled"),
                              ("dropped", "sluicegate_sink_events_dropped_total"),
                              ("accepted", "sluicegate_sink_events_accepted_total")):
            assert f"{metric}{labels} {row[field]}" in response.text
        assert row["sent"] == 3 and "tok-" not in response.text


async def test_spool_over_its_limit_drops_the_oldest_and_counts_them(receiver, make_config, start, vars_for, caplog):
    receiver.behave("/dest/full", status=503)
    cfg = make_config(delivery={"queue_size": 2, "spool_max_bytes": 1024 * 1024, "spool_segment_bytes": 64 * 1024,
                                "spool_flush_interval": 0.02, "shutdown_grace": 0.2})
    async with start(cfg) as gw:
        key = await gw.new_key(metadata={"logging": [{"callback_name": "acme", "callback_vars": vars_for("full")}]})
        filler = "z" * 60_000
        for i in range(40):  # ~2.4 MB of events against a 1 MiB spool
            assert (await gw.chat(key, f"{i}:{filler}")).status_code == 200
        gw.gateway.dispatcher.flush_spool()
        row = (await gw.admin("GET", "/-/sinks")).json()["sinks"][0]
        assert row["spool_bytes"] <= 1024 * 1024 and row["dropped"] > 0
        assert row["dropped"] + row["spooled"] + row["queued"] + row["in_flight"] >= 40
        assert "spool over its limit" in caplog.text
        receiver.behave("/dest/full", status=200)
        assert await receiver.wait_for_async(lambda: gw.gateway.dispatcher.pending() == 0 and
                                             len(receiver.events_at("/dest/full")) > 0)
        delivered = [int(e["messages"][0]["content"].split(":")[0]) for e in receiver.events_at("/dest/full")]
        assert 39 in delivered and 0 not in delivered[1:]  # the newest kept, the oldest dropped
        assert delivered == sorted(delivered)
