"""The spend ledger against real databases (SQLite and PostgreSQL), real Redis and a real ``sluicegate serve``:

- two ledgers on one database (two processes' worth) see each other's spend after their flushes, and through Redis
  before any flush (without Redis, not before: the negative control);
- batched upserts add up over flushes; a failed flush keeps what it held for the next one;
- SIGTERM writes every answered request's spend before the process exits.
"""

from __future__ import annotations

import os
import signal
import uuid
from typing import Any

import httpx
import pytest
import redis

from sluicegate.auth import AuthContext
from sluicegate.config import parse_settings
from sluicegate.db.store import KeyRecord, Store
from sluicegate.errors import ApiError
from sluicegate.events import LogEvent
from sluicegate.limits.shared import SharedSpend
from sluicegate.limits.spend import SpendLedger
from sluicegate.testing.waiting import wait_until_async

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
REDIS = {"host": "127.0.0.1", "port": 6379}


def _redis_or_skip() -> None:
    try:
        redis.Redis(socket_connect_timeout=2, **REDIS).ping()
    except Exception as exc:
        reason = f"Redis at 127.0.0.1:6379 unreachable: {type(exc).__name__}"
        if IN_CI:
            pytest.fail(f"{reason} (CI=true: Redis tests must run)", pytrace=False)
        pytest.skip(reason)


def event(cost: float, **extra: Any) -> LogEvent:
    return LogEvent(id=uuid.uuid4().hex, trace_id="t", response_cost=cost, model_group="m", prompt_tokens=3,
                    completion_tokens=2, **extra)


async def _ledgers(db_url: str, shared: bool, namespace: str) -> tuple[list[SpendLedger], list[Store]]:
    settings = parse_settings({"general_settings": {"database_url": db_url}})
    stores = [Store(db_url), Store(db_url)]
    await stores[0].migrate()
    ledgers = []
    for store in stores:
        ledger = SpendLedger(store, settings, shared=SharedSpend(REDIS, namespace=namespace) if shared else None)
        await ledger.start()
        ledgers.append(ledger)
    return ledgers, stores


async def _close(ledgers: list[SpendLedger], stores: list[Store]) -> None:
    for ledger in ledgers:
        await ledger.aclose()
    for store in stores:
        await store.aclose()


async def _key(store: Store, max_budget: float) -> AuthContext:
    token_id = uuid.uuid4().hex * 2
    record = await store.create_key(KeyRecord(token_id=token_id, key_name="sk-...test", max_budget=max_budget))
    return AuthContext(token_id=token_id, is_admin=False, key=record)


async def test_two_processes_see_each_others_spend_after_their_flushes(db_url: str) -> None:
    (a, b), stores = await _ledgers(db_url, shared=False, namespace="unused")
    try:
        ctx = await _key(stores[0], max_budget=1.0)
        await a.check(ctx, None)
        a.record(event(1.5, status="success"), ctx)
        with pytest.raises(ApiError):  # A knows at once
            await a.check(ctx, None)
        await b.check(ctx, None)  # negative control: B has not seen A's spend yet (no Redis, no flush)
        await a.flush()
        await b.flush()  # B reads back the period spend of the entities it checks
        with pytest.raises(ApiError) as refused:
            await b.check(ctx, None)
        assert refused.value.type == "budget_exceeded" and "Current cost: 1.5" in refused.value.message
        daily = await stores[0].spend_report("key", "2000-01-01", "2999-12-31")
        assert [(r.entity_id, r.spend, r.requests, r.prompt_tokens) for r in daily] == [(ctx.token_id, 1.5, 1, 3)]
        a.record(event(0.25, status="success"), ctx)  # a second flush adds to the same day's row
        b.record(event(0.25, status="success"), ctx)
        await a.flush()
        await b.flush()
        daily = await stores[0].spend_report("key", "2000-01-01", "2999-12-31")
        assert [(r.spend, r.requests) for r in daily] == [(2.0, 3)]
        assert (await stores[0].read_spend("key", [ctx.token_id]))[ctx.token_id][0] == pytest.approx(2.0)
    finally:
        await _close([a, b], stores)


async def test_through_redis_a_process_sees_the_others_spend_before_any_flush(db_url: str) -> None:
    _redis_or_skip()
    namespace = f"sluicegate-test:{uuid.uuid4().hex[:8]}"
    (a, b), stores = await _ledgers(db_url, shared=True, namespace=namespace)
    try:
        ctx = await _key(stores[0], max_budget=1.0)
        for ledger in (a, b):  # as in the pipeline: each request is checked before its spend is recorded
            await ledger.check(ctx, None)
        a.record(event(0.6, status="success"), ctx)
        await a.check(ctx, None)  # 0.6 < 1: both still admit
        await b.check(ctx, None)
        a.record(event(0.6, status="success"), ctx)

        async def b_refuses() -> bool:
            try:
                await b.check(ctx, None)
            except ApiError:
                return True
            return False

        # A sends its spend to Redis and B reads it back, each at its next refresh (every 50 ms)
        await wait_until_async(b_refuses, timeout=5, what="B refusing on A's spend, through Redis")
        assert a.flushes == 0 and b.flushes == 0  # nothing was written to the database yet
        await a.flush()  # A's part moves from Redis to the database: B still refuses, and counts it once
        await b.flush()

        async def b_sees() -> str:
            try:
                await b.check(ctx, None)
            except ApiError as exc:
                return exc.message.split("Current cost: ", 1)[1].split(",", 1)[0]
            return "admitted"

        async def b_sees_once() -> bool:
            return await b_sees() == "1.2"

        await wait_until_async(b_sees_once, timeout=5, what="B seeing 1.2 once A took its part back")
        assert await b_sees() == "1.2"  # not 2.4 (database + Redis): nothing counted twice
    finally:
        await _close([a, b], stores)
        client = redis.Redis(**REDIS)
        for key in client.scan_iter(f"{namespace}:*"):
            client.delete(key)


async def test_a_failed_flush_keeps_its_spend_for_the_next_one(db_url: str) -> None:
    (a, b), stores = await _ledgers(db_url, shared=False, namespace="unused")
    try:
        ctx = await _key(stores[0], max_budget=10.0)
        a.record(event(0.5, status="success"), ctx)
        # the database goes away (its tables, here): the flush fails and keeps what it held
        await stores[1].engine.dispose()
        async with stores[1].engine.begin() as conn:
            await conn.exec_driver_sql("ALTER TABLE sg_daily_spend RENAME TO sg_daily_spend_away")
        with pytest.raises(Exception):
            await a.flush()
        assert a.flushes == 0
        async with stores[1].engine.begin() as conn:
            await conn.exec_driver_sql("ALTER TABLE sg_daily_spend_away RENAME TO sg_daily_spend")
        a.record(event(0.25, status="success"), ctx)
        await a.flush()
        daily = await stores[0].spend_report("key", "2000-01-01", "2999-12-31")
        assert [(r.spend, r.requests) for r in daily] == [(0.75, 2)]
    finally:
        await _close([a, b], stores)


def test_sigterm_writes_every_answered_request(gateway_process: Any, write_config: Any, db_url: str,
                                               query_db: Any, master_key: str) -> None:
    config = write_config({
        "model_list": [{"model_name": "m", "litellm_params": {"model": "openai/m", "mock_response": "hi there",
                                                              "input_cost_per_token": 1e-3}}],
        "general_settings": {"master_key": master_key, "database_url": db_url},
        "sluicegate_settings": {"spend_flush_interval": 1.0}})
    gateway = gateway_process(config)
    answered = 0
    with httpx.Client(base_url=gateway.url, timeout=10) as client:
        key = client.post("/key/generate", json={}, headers={"authorization": f"Bearer {master_key}"}).json()["key"]
        for i in range(30):
            response = client.post("/v1/chat/completions", headers={"authorization": f"Bearer {key}"},
                                   json={"model": "m", "messages": [{"role": "user", "content": f"n {i}"}]})
            assert response.status_code == 200
            answered += 1
    gateway.proc.send_signal(signal.SIGTERM)
    # uvicorn shuts down gracefully (the lifespan's shutdown writes the spend), then re-raises the signal
    assert gateway.proc.wait(30) in (0, -signal.SIGTERM, 128 + signal.SIGTERM), gateway.stderr
    assert "Traceback" not in gateway.stderr, gateway.stderr
    rows = query_db(db_url, "SELECT SUM(requests) AS n, SUM(spend) AS usd FROM sg_daily_spend "
                            "WHERE entity_type = 'model'")
    assert rows[0]["n"] == answered
    key_rows = query_db(db_url, "SELECT spend FROM sg_keys")
    assert key_rows[0]["spend"] == pytest.approx(rows[0]["usd"]) and rows[0]["usd"] > 0


async def test_end_users_and_tags_longer_than_the_column_are_counted_under_their_prefix(db_url: str) -> None:
    (a, b), stores = await _ledgers(db_url, shared=False, namespace="unused")
    try:
        ctx = await _key(stores[0], max_budget=10.0)
        a.record(event(0.5, status="success", end_user="u" * 300, request_tags=["t" * 400, "short"]), ctx)
        await a.flush()  # PostgreSQL refuses a value longer than the column: the whole flush would fail
        assert a.flushes == 1
        tags = await stores[0].spend_report("tag", "2000-01-01", "2999-12-31")
        assert sorted(r.entity_id for r in tags) == ["short", "t" * 255]
        users = await stores[0].spend_report("end_user", "2000-01-01", "2999-12-31")
        assert [(r.entity_id, r.spend) for r in users] == [("u" * 255, 0.5)]
    finally:
        await _close([a, b], stores)


def test_budget_settings_are_checked_at_start_up() -> None:
    from sluicegate.config import ConfigError

    with pytest.raises(ConfigError) as refused:
        parse_settings({"litellm_settings": {"max_budget": -1, "budget_duration": "monthly"},
                        "sluicegate_settings": {"spend_flush_interval": 5}})
    problems = "\n".join(refused.value.problems)
    assert "litellm_settings.max_budget" in problems and "litellm_settings.budget_duration" in problems
    assert "sluicegate_settings.spend_flush_interval" in problems
    settings = parse_settings({"litellm_settings": {"max_budget": 10, "budget_duration": "30d"}})  # control
    assert settings.litellm_settings.max_budget == 10


async def test_migration_0003_goes_down_and_up_keeping_keys(db_url: str) -> None:
    from importlib.resources import files

    import sqlalchemy as sa
    from alembic import command
    from alembic.config import Config

    store = Store(db_url)
    try:
        await store.migrate()
        ctx = await _key(store, max_budget=3.0)
        cfg = Config()
        cfg.set_main_option("script_location", str(files("sluicegate.db") / "migrations"))

        def run(step: Any) -> None:
            def go(connection: sa.Connection) -> None:
                cfg.attributes["connection"] = connection
                step()
            return go

        async with store.engine.begin() as conn:
            await conn.run_sync(run(lambda: command.downgrade(cfg, "0002")))
            columns = await conn.run_sync(lambda c: [col["name"] for col in sa.inspect(c).get_columns("sg_keys")])
            assert "max_budget" not in columns and "spend" not in columns
            tables = await conn.run_sync(lambda c: sa.inspect(c).get_table_names())
            assert "sg_daily_spend" not in tables and "sg_end_users" not in tables
        await store.migrate()  # up again: the key is still there, with no budget and no spend
        record = await store.get_key(ctx.token_id)
        assert record is not None and record.max_budget is None and record.spend == 0.0
    finally:
        await store.aclose()


async def test_migration_0006_gives_users_a_budget_period_and_a_spend_of_0(db_url: str) -> None:
    from importlib.resources import files

    import sqlalchemy as sa
    from alembic import command
    from alembic.config import Config

    store = Store(db_url)
    try:
        await store.migrate()
        cfg = Config()
        cfg.set_main_option("script_location", str(files("sluicegate.db") / "migrations"))

        def run(step: Any) -> Any:
            def go(connection: sa.Connection) -> None:
                cfg.attributes["connection"] = connection
                step()
            return go

        def user_columns(connection: sa.Connection) -> dict[str, Any]:
            return {col["name"]: col for col in sa.inspect(connection).get_columns("sg_users")}

        async with store.engine.begin() as conn:
            await conn.run_sync(run(lambda: command.downgrade(cfg, "0005")))
            columns = await conn.run_sync(user_columns)
            assert "budget_reset_at" not in columns and columns["spend"]["nullable"]
            # a user as 0005 stored them: a budget with no spend written yet
            await conn.execute(sa.text("INSERT INTO sg_users (user_id, user_role, models, metadata, max_budget, "
                                       "budget_duration, spend) VALUES ('old', 'internal_user', '[]', '{}', 2.5, "
                                       "'1d', NULL)"))
        await store.migrate()  # up again
        async with store.engine.connect() as conn:
            columns = await conn.run_sync(user_columns)
            assert "budget_reset_at" in columns and not columns["spend"]["nullable"]
        user = await store.get_user("old")
        assert user is not None and user.spend == 0.0 and user.max_budget == 2.5 and user.budget_reset_at is None
        # the spend writer now keeps users' spend like keys': added in batches, period started on the next write
        await store.write_spend({}, {("user", "old"): 0.75}, 0.0, 1_900_000_000.0, lambda _: 86400.0)
        user = await store.get_user("old")
        assert user is not None and user.spend == 0.75
        assert user.budget_reset_at is not None and user.budget_reset_at.timestamp() == 1_900_000_000.0 + 86400
    finally:
        await store.aclose()


async def test_a_teams_daily_spend_adds_up_over_flushes_apart_from_every_teams(db_url: str) -> None:
    store = Store(db_url)
    try:
        await store.migrate()
        day = "2030-01-02"
        for _ in range(2):  # the second write meets the rows of the first: upserted, added
            await store.write_spend({(day, "model", "m", ""): [0.5, 1, 10, 2], (day, "model", "m", "red"): [0.25, 1, 5, 1],
                                     (day, "model", "m", "blue"): [0.25, 1, 5, 1]}, {}, 0.0, 1_900_000_000.0,
                                    lambda _: None)
        everyone = await store.spend_report("model", day, day)
        red = await store.spend_report("model", day, day, team_id="red")
        assert [(r.entity_id, r.spend, r.requests, r.prompt_tokens) for r in everyone] == [("m", 1.0, 2, 20)]
        assert [(r.entity_id, r.spend, r.requests, r.prompt_tokens) for r in red] == [("m", 0.5, 2, 10)]
        assert await store.spend_report("model", day, day, team_id="green") == []  # negative control
        assert await store.spend_report("model", "2030-01-03", "2030-01-09", team_id="red") == []
    finally:
        await store.aclose()
