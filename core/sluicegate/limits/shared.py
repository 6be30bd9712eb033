"""Budget counters shared by every process through Redis (the Redis of ``router_settings.redis_host`` /
``redis_url``, else of ``litellm_settings.cache_params`` with ``type: redis``).

Redis holds each budget's spend in the current period, one counter per entity and period (the period's end is in
the key: every process computes the same boundaries). A process starts a counter it is the first to need at its own
view (the row's ``spend`` plus what it spent since; ``SET NX``, so a counter already there is kept) and adds every
cost to it (one pipeline per event-loop turn, off the request path). The database stays the record: flushes write
spend there as without Redis, and a counter Redis lost is started again from it.

A check takes the larger of the process's own view and Redis's. Far from a budget (under ``NEAR`` of it) Redis's
value as of the last refresh (every ``REFRESH`` seconds, one ``MGET`` of the counters checked since) is enough and
the request does not wait on Redis; near it, the check reads the request's counters in one ``MGET`` round trip, so
everything every process has sent is counted.

Redis down: the check uses the process's own view (fail open, a warning at most once a minute); spend still
reaches the database, so nothing is lost, only the other processes' spend since their last flush is not seen.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sluicegate.config import Settings
    from sluicegate.limits.budgets import BudgetCounter

__all__ = ("NEAR", "REFRESH", "SharedSpend", "redis_settings_of")

log = logging.getLogger("sluicegate")
_TTL = 7 * 86400  # a counter lives this long after a process first touched it, then starts again from the database
REFRESH = 0.05
"""Seconds between the background reads of the counters checked (far from their budgets)."""
NEAR = 0.5
"""From this share of a budget on, a check reads the counters from Redis before admitting the request."""


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
    """Every process's spend per entity and budget period, in Redis."""

    def __init__(self, redis_kwargs: dict[str, Any], *, namespace: str = "sluicegate:spend",
                 refresh: float = REFRESH) -> None:
        self._kwargs = redis_kwargs
        self.namespace = namespace
        self.refresh = refresh
        self._client: Any = None
        self._starts: dict[str, tuple[float, bool]] = {}  # counters to start: key -> (value, replace)
        self._queue: dict[str, float] = {}  # increments not yet sent
        self._seen: dict[str, float | None] = {}  # Redis's value at the last read (None: no such counter)
        self._watched: set[str] = set()  # counters checked since the last refresh: read at the next one
        self._expiring: set[str] = set()  # counters this process gave a TTL
        self._task: asyncio.Task[None] | None = None
        self._sender: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
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
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._run())
        self._sender = loop.create_task(self._send_loop())

    async def aclose(self) -> None:
        for task in (self._task, self._sender):
            if task is not None:
                task.cancel()
                try:
                    await task
                except BaseException:  # cancelled: that is how it ends
                    pass
        self._task = self._sender = None
        self._watched.clear()
        await self._exchange()  # what is still queued
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
    def started(self, counter: BudgetCounter, *, replace: bool = False) -> None:
        """A counter this process now keeps: start Redis's at its value unless there is one (``replace``: an admin
        set the spend, so Redis's is replaced)."""
        key = self.key_of(counter)
        self._starts[key] = (counter.spend, replace)
        self._seen.pop(key, None)
        self._wake.set()

    def view(self, counter: BudgetCounter) -> float | None:
        """Redis's spend for the counter as of the last read, with this process's unsent part; None when unknown.
        The counter is read again at the next refresh."""
        key = self.key_of(counter)
        self._watched.add(key)
        seen = self._seen.get(key)
        return None if seen is None else seen + self._queue.get(key, 0.0)

    def peek(self, counter: BudgetCounter) -> float | None:
        """As :meth:`view`, without asking for the counter to be read again (for ``/metrics``)."""
        key = self.key_of(counter)
        seen = self._seen.get(key)
        return None if seen is None else seen + self._queue.get(key, 0.0)

    async def exact(self, counters: list[BudgetCounter]) -> list[float | None] | None:
        """Redis's spend for each counter, read now (one round trip), with this process's unsent part; None when
        Redis fails."""
        keys = [self.key_of(c) for c in counters]
        try:
            values = await self._client.mget(keys)
        except Exception as exc:
            self._failed(exc)
            return None
        found: list[float | None] = []
        for key, value in zip(keys, values, strict=True):
            seen = float(value) if value is not None else None
            self._seen[key] = seen
            found.append(None if seen is None else seen + self._queue.get(key, 0.0))
        return found

    def add(self, counters: list[BudgetCounter], cost: float) -> None:
        for counter in counters:
            key = self.key_of(counter)
            self._queue[key] = self._queue.get(key, 0.0) + cost
        self._wake.set()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.refresh)  # the refresh period, not synchronisation
            await self._exchange()

    async def _send_loop(self) -> None:
        """Increments go out as they come: one pipeline per loop turn with something to send."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            watched, self._watched = self._watched, set()
            try:
                await self._exchange()
            finally:
                self._watched |= watched  # read at the next refresh, not with every send

    async def _exchange(self) -> None:
        """One round trip: start counters, send the queued increments, read the watched counters."""
        if self._client is None or (not self._queue and not self._watched and not self._starts):
            return
        starts, self._starts = self._starts, {}
        batch, self._queue = self._queue, {}
        watched = list(self._watched)
        self._watched.clear()
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for key, (value, replace) in starts.items():
                    pipe.set(key, repr(value), ex=_TTL, nx=not replace)
                for key, amount in batch.items():
                    pipe.incrbyfloat(key, amount)
                    if key not in self._expiring:  # once per counter and process (a lost one is made again)
                        pipe.expire(key, _TTL)
                if watched:
                    pipe.mget(watched)
                results = await pipe.execute()
        except Exception as exc:
            self._failed(exc)
            for key, start in starts.items():  # sent with the next round trip
                self._starts.setdefault(key, start)
            for key, amount in batch.items():
                self._queue[key] = self._queue.get(key, 0.0) + amount
            self._watched.update(watched)
            return
        self.refreshes += 1
        self._expiring.update(batch)
        for key in batch:
            self._seen.pop(key, None)  # Redis moved on; known again at the next read
        if watched:
            for key, value in zip(watched, results[-1], strict=True):
                self._seen[key] = float(value) if value is not None else None
