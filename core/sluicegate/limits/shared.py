"""Budget counters shared by every process through Redis (the Redis of ``router_settings.redis_host`` /
``redis_url``, else of ``litellm_settings.cache_params`` with ``type: redis``).

Each process keeps its counters in memory (:class:`~sluicegate.limits.spend.SpendLedger`) and writes spend to the
database once per flush interval. What is spent between two flushes lives only in the process that spent it; Redis
holds exactly that part for everyone: a process adds each cost to its entity's Redis counter and takes it back out
once its flush has written it to the database. Every ``REFRESH`` seconds one pipelined round trip sends this
process's increments and reads the counters of the entities it checked (``MGET``); a budget check then reads memory
only: spend = the database's (as of this process's last flush) + what it spent since + what the others spent since
their own last flush, as of the last refresh. No request waits on Redis.

Redis down: the check uses this process's view alone (fail open, a warning at most once a minute); spend still
reaches the database, so nothing is lost, only the other processes' last second is not seen.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sluicegate.config import Settings
    from sluicegate.limits.budgets import BudgetCounter

__all__ = ("SharedSpend", "redis_settings_of")

log = logging.getLogger("sluicegate")
_TTL = 3600  # a process killed before taking its part back out leaves it for at most this long
REFRESH = 0.05
"""Seconds between a process's round trips to Redis (increments out, the checked counters in)."""


def redis_settings_of(settings: Settings) -> dict[str, Any] | None:
    """The Redis the budgets share, or None (the same Redis as the router's shared state)."""
    router = settings.router_settings
    if router.redis_host or router.redis_url:
        return {"host": router.redis_host, "port": router.redis_port, "password": router.redis_password,
                "url": router.redis_url}
    cache = settings.litellm_settings.cache_params or {}
    if settings.litellm_settings.cache and cache.get("type") == "redis":
        return {k: cache.get(k) for k in ("host", "port", "password", "url")}
    return None


class SharedSpend:
    """The unwritten spend of all processes, per entity and budget period, in Redis."""

    def __init__(self, redis_kwargs: dict[str, Any], *, namespace: str = "sluicegate:spend",
                 refresh: float = REFRESH) -> None:
        self._kwargs = redis_kwargs
        self.namespace = namespace
        self.refresh = refresh
        self._client: Any = None
        self._queue: dict[str, float] = {}  # increments not yet sent (negative: taken back out)
        self._mine: dict[str, float] = {}  # this process's spend per Redis counter, not yet written to the db
        self._sent: dict[str, float] = {}  # this process's part in each Redis counter as Redis holds it
        self._others: dict[str, float] = {}  # the other processes' part, as of the last refresh
        self._watched: set[str] = set()  # counters checked since the last refresh: read at the next one
        self._task: asyncio.Task[None] | None = None
        self._warned_at = -1e9
        self.failures = 0
        self.refreshes = 0

    def key_of(self, counter: BudgetCounter) -> str:
        return f"{self.namespace}:{counter.entity_type}:{counter.entity_id}:{int(counter.reset_at or 0)}"

    async def start(self) -> None:
        from redis.asyncio import Redis, from_url

        url = self._kwargs.get("url")
        common = {"socket_timeout": 1.0, "socket_connect_timeout": 1.0}
        self._client = from_url(url, **common) if url else Redis(
            host=self._kwargs.get("host") or "127.0.0.1", port=int(self._kwargs.get("port") or 6379),
            password=self._kwargs.get("password"), **common)
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except BaseException:  # cancelled: that is how it ends
                pass
            self._task = None
        self._watched.clear()
        await self._exchange()  # take back out what the last flush wrote
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def _failed(self, exc: BaseException) -> None:
        self.failures += 1
        now = time.monotonic()
        if now - self._warned_at >= 60:  # never the connection details: they may carry the password
            log.warning("budgets: Redis unavailable (%s); checking with this process's spend only", type(exc).__name__)
            self._warned_at = now

    # called by the ledger ----------------------------------------------------------------------------------------
    def others(self, counter: BudgetCounter) -> float:
        """What the other processes spent on ``counter``'s entity and have not written yet (as of the last refresh);
        the counter is read again at the next refresh."""
        key = self.key_of(counter)
        self._watched.add(key)
        return self._others.get(key, 0.0)

    def add(self, counters: list[BudgetCounter], cost: float) -> None:
        for counter in counters:
            key = self.key_of(counter)
            self._queue[key] = self._queue.get(key, 0.0) + cost
            self._mine[key] = self._mine.get(key, 0.0) + cost

    def rolled(self, counter: BudgetCounter) -> None:
        """A new period began: the counter's key changes with it (the old period's is no longer read)."""

    async def written(self, period: dict[tuple[str, str], float], proxy: float) -> None:
        """A flush wrote this process's spend to the database: take its part back out of Redis."""
        mine, self._mine = self._mine, {}
        for key, amount in mine.items():
            self._queue[key] = self._queue.get(key, 0.0) - amount

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.refresh)  # the refresh period, not synchronisation
            await self._exchange()

    async def _exchange(self) -> None:
        """One round trip: send the queued increments, read the watched counters."""
        if self._client is None or (not self._queue and not self._watched):
            return
        batch, self._queue = self._queue, {}
        watched = list(self._watched)
        self._watched.clear()
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for key, amount in batch.items():
                    pipe.incrbyfloat(key, amount)
                    pipe.expire(key, _TTL)
                if watched:
                    pipe.mget(watched)
                results = await pipe.execute()
        except Exception as exc:
            self._failed(exc)
            for key, amount in batch.items():  # sent with the next round trip
                self._queue[key] = self._queue.get(key, 0.0) + amount
            self._watched.update(watched)
            return
        self.refreshes += 1
        sent = self._sent
        for key, amount in batch.items():
            held = sent.get(key, 0.0) + amount
            if abs(held) < 1e-12:
                sent.pop(key, None)
            else:
                sent[key] = held
        if watched:
            for key, value in zip(watched, results[-1], strict=True):
                self._others[key] = max(0.0, float(value) - sent.get(key, 0.0)) if value is not None else 0.0
