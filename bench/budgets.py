"""CPU of the spend ledger in process (python -m bench.budgets): µs per request of ``check`` (before the upstream
call) + ``record`` (after), for a key in a team with an end user and two tags: no budgets (spend is recorded
anyway), budgets on the key, team, end user and proxy, and the same with the counters shared through Redis (whose
round trips run in the background, one per loop turn with spend to send, counted here: every request gets its
own loop turn, the worst case). Flushes are not counted (they run off the request
path); the database is a temp SQLite file."""

from __future__ import annotations

import asyncio
import tempfile
import time
import uuid
from pathlib import Path

from sluicegate.auth import AuthContext
from sluicegate.config import parse_settings
from sluicegate.db.store import EndUserRecord, KeyRecord, Store, TeamRecord
from sluicegate.events import LogEvent
from sluicegate.limits.shared import SharedSpend
from sluicegate.limits.spend import SpendLedger

N = 100_000
BUDGET = {"max_budget": 1e9, "soft_budget": 1e9, "budget_duration": "30d"}


async def one(label: str, budgets: bool, redis: bool, directory: Path) -> None:
    url = f"sqlite+aiosqlite:///{directory}/{uuid.uuid4().hex[:8]}.db"
    settings = parse_settings({"general_settings": {"database_url": url},
                               "litellm_settings": {"max_budget": 1e9} if budgets else {}})
    store = Store(url)
    await store.migrate()
    shared = SharedSpend({"host": "127.0.0.1", "port": 6379}, namespace=f"sgbench:{uuid.uuid4().hex[:8]}") \
        if redis else None
    ledger = SpendLedger(store, settings, shared=shared)
    await ledger.start()
    extra = BUDGET if budgets else {}
    key = KeyRecord(token_id="a" * 64, key_name="sk-...abcd", team_id="team-1", user_id="user-1", **extra)
    team = TeamRecord(team_id="team-1", **extra)
    end_user = EndUserRecord(user_id="alice", **extra) if budgets else None
    ctx = AuthContext(token_id=key.token_id, is_admin=False, key=key, team=team)
    event = LogEvent(id="e", trace_id="t", response_cost=1e-5, prompt_tokens=10, completion_tokens=5,
                     model_group="gpt", end_user="alice", request_tags=["blue", "green"])
    best = 1e9
    for _ in range(3):
        start = time.process_time()
        for _ in range(N):
            await ledger.check(ctx, end_user)
            ledger.record(event, ctx)
            await asyncio.sleep(0)  # one loop turn per request, as at concurrency 1: background sends run here
        best = min(best, (time.process_time() - start) / N)
        await ledger.flush()
    print(f"{label}: {best * 1e6:.2f} us CPU per request (check + record)", flush=True)
    await ledger.aclose()
    await store.aclose()


async def main() -> None:
    with tempfile.TemporaryDirectory() as directory:
        await one("no budgets (spend recorded)", False, False, Path(directory))
        await one("budgets on key, team, end user, proxy", True, False, Path(directory))
        await one("budgets, shared through Redis", True, True, Path(directory))


if __name__ == "__main__":
    asyncio.run(main())
