"""The router's shared state behind one small interface: cooldowns, failure counts and per-minute usage.

:class:`LocalRouterState` keeps it in this process. :class:`RedisRouterState` shares it among replicas: writes go
to Redis when they happen (failures are already the slow path), and a background task reads every deployment's
cooldown and usage back a few times a second, so the request path only reads local dictionaries and a cooldown
set by one replica reaches the others within :data:`POLL_INTERVAL`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ("POLL_INTERVAL", "LocalRouterState", "RedisRouterState", "RouterState")

log = logging.getLogger("sluicegate.router")

POLL_INTERVAL = 0.2
WINDOW = 60.0  # failures and usage are counted per minute (LiteLLM's window)


class RouterState:
    """Cooldowns, failure counts and usage per deployment id. ``clock`` gives wall-clock seconds (injectable)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.cooldowns: dict[str, float] = {}
        """deployment id → when its cooldown ends (a wall-clock timestamp); read on every pick."""
        self._fails: dict[str, tuple[float, dict[str, int]]] = {}
        self._usage: dict[str, list[float]] = {}  # id -> [minute, requests, tokens]

    # cooldowns ------------------------------------------------------------------------------------------
    def cooling_until(self, model_id: str) -> float | None:
        """When the cooldown of ``model_id`` ends, or None if it takes requests."""
        until = self.cooldowns.get(model_id)
        if until is None:
            return None
        if until <= self.clock():
            self.cooldowns.pop(model_id, None)
            return None
        return until

    def _count_failure(self, model_id: str, bucket: str) -> int:
        now = self.clock()
        start, counts = self._fails.get(model_id, (now, {}))
        if now - start >= WINDOW:
            start, counts = now, {}
        counts[bucket] = counts.get(bucket, 0) + 1
        self._fails[model_id] = (start, counts)
        return counts[bucket]

    async def record_failure(self, model_id: str, error: str, allowed: int, cooldown_time: float,
                             per_class: bool) -> float | None:
        """Count a failure; once a deployment has more than ``allowed`` this minute (in ``error``'s class when
        ``per_class``), it cools down for ``cooldown_time``: returns when that ends, else None."""
        count = self._count_failure(model_id, error if per_class else "all")
        if count <= allowed:
            return None
        return await self.cool_down(model_id, cooldown_time)

    async def cool_down(self, model_id: str, cooldown_time: float) -> float:
        until = self.clock() + cooldown_time
        self.cooldowns[model_id] = until
        self._fails.pop(model_id, None)
        return until

    # usage (usage-based-routing-v2) --------------------------------------------------------------------
    def _slot(self, model_id: str) -> list[float]:
        minute = self.clock() // WINDOW
        slot = self._usage.get(model_id)
        if slot is None or slot[0] != minute:
            slot = self._usage[model_id] = [minute, 0.0, 0.0]
        return slot

    def add_usage(self, model_id: str, requests: int = 0, tokens: int = 0) -> None:
        slot = self._slot(model_id)
        slot[1] += requests
        slot[2] += tokens

    def usage(self, model_id: str) -> tuple[float, float]:
        """Requests and tokens of ``model_id`` in the current minute."""
        slot = self._slot(model_id)
        return slot[1], slot[2]

    # lifecycle ------------------------------------------------------------------------------------------
    async def start(self, model_ids: Iterable[str]) -> None:
        """Called once when the gateway starts."""

    async def aclose(self) -> None:
        """Called once when the gateway stops."""


class LocalRouterState(RouterState):
    """Router state in this process only."""


class RedisRouterState(RouterState):
    """Router state shared through Redis (``router_settings.redis_host`` / ``redis_port`` / ``redis_password``)."""

    def __init__(self, redis_kwargs: dict[str, Any], *, namespace: str = "sluicegate:router",
                 clock: Callable[[], float] = time.time, share_usage: bool = False,
                 poll_interval: float = POLL_INTERVAL) -> None:
        super().__init__(clock)
        self._kwargs = redis_kwargs
        self.namespace = namespace
        self.share_usage = share_usage
        self.poll_interval = poll_interval
        self._client: Any = None
        self._ids: list[str] = []
        self._task: asyncio.Task[None] | None = None
        self._pending: dict[str, list[float]] = {}  # usage not yet pushed: id -> [minute, requests, tokens]
        self._shared_usage: dict[str, tuple[float, float, float]] = {}
        self._warned = False

    def _key(self, kind: str, model_id: str, *rest: Any) -> str:
        return ":".join([self.namespace, kind, model_id, *map(str, rest)])

    async def start(self, model_ids: Iterable[str]) -> None:
        from redis.asyncio import Redis, from_url

        url = self._kwargs.get("url")
        common = {"socket_timeout": 1.0, "socket_connect_timeout": 1.0}
        self._client = from_url(url, **common) if url else Redis(
            host=self._kwargs.get("host") or "127.0.0.1", port=int(self._kwargs.get("port") or 6379),
            password=self._kwargs.get("password"), **common)
        self._ids = list(dict.fromkeys(model_ids))
        await self._poll_once()
        self._task = asyncio.get_running_loop().create_task(self._poll())

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except BaseException:  # cancelled: that is how it ends
                pass
            self._task = None
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def _redis_failed(self, exc: BaseException) -> None:
        if not self._warned:  # never the connection details: they may carry the password
            log.warning("router state: Redis unavailable (%s); using this process's view", type(exc).__name__)
            self._warned = True

    async def record_failure(self, model_id: str, error: str, allowed: int, cooldown_time: float,
                             per_class: bool) -> float | None:
        if self._client is None:
            return await super().record_failure(model_id, error, allowed, cooldown_time, per_class)
        key = self._key("fails", model_id, error if per_class else "all")
        try:
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.incr(key)
                pipe.expire(key, int(WINDOW), nx=True)
                count, _ = await pipe.execute()
        except Exception as exc:
            self._redis_failed(exc)
            return await super().record_failure(model_id, error, allowed, cooldown_time, per_class)
        if int(count) <= allowed:
            return None
        return await self.cool_down(model_id, cooldown_time)

    async def cool_down(self, model_id: str, cooldown_time: float) -> float:
        until = await super().cool_down(model_id, cooldown_time)
        if self._client is not None and cooldown_time > 0:
            try:
                async with self._client.pipeline(transaction=True) as pipe:
                    pipe.set(self._key("cooldown", model_id), repr(until), px=max(1, int(cooldown_time * 1000)))
                    pipe.delete(self._key("fails", model_id, "all"))
                    await pipe.execute()
            except Exception as exc:
                self._redis_failed(exc)
        return until

    def add_usage(self, model_id: str, requests: int = 0, tokens: int = 0) -> None:
        super().add_usage(model_id, requests, tokens)
        if self.share_usage:
            minute = self.clock() // WINDOW
            pending = self._pending.get(model_id)
            if pending is None or pending[0] != minute:
                pending = self._pending[model_id] = [minute, 0.0, 0.0]
            pending[1] += requests
            pending[2] += tokens

    def usage(self, model_id: str) -> tuple[float, float]:
        local = super().usage(model_id)
        shared = self._shared_usage.get(model_id)
        if not self.share_usage or shared is None or shared[0] != self.clock() // WINDOW:
            return local
        pending = self._pending.get(model_id)
        extra = (pending[1], pending[2]) if pending is not None and pending[0] == shared[0] else (0.0, 0.0)
        return shared[1] + extra[0], shared[2] + extra[1]

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval)  # the polling period, not synchronisation
            await self._poll_once()

    async def _poll_once(self) -> None:
        if self._client is None or not self._ids:
            return
        try:
            values = await self._client.mget([self._key("cooldown", i) for i in self._ids])
            for model_id, value in zip(self._ids, values, strict=True):
                if value is not None:
                    until = float(value)
                    if until > self.cooldowns.get(model_id, 0.0):
                        self.cooldowns[model_id] = until
            if self.share_usage:
                await self._sync_usage()
        except Exception as exc:
            self._redis_failed(exc)

    async def _sync_usage(self) -> None:
        minute = self.clock() // WINDOW
        pending, self._pending = self._pending, {}
        async with self._client.pipeline(transaction=False) as pipe:
            for model_id, (slot_minute, requests, tokens) in pending.items():
                for kind, amount in (("req", requests), ("tok", tokens)):
                    if amount:
                        key = self._key("usage", model_id, int(slot_minute), kind)
                        pipe.incrbyfloat(key, amount)
                        pipe.expire(key, int(2 * WINDOW))
            for model_id in self._ids:
                pipe.get(self._key("usage", model_id, int(minute), "req"))
                pipe.get(self._key("usage", model_id, int(minute), "tok"))
            results = await pipe.execute()
        totals = results[len(results) - 2 * len(self._ids):]
        for index, model_id in enumerate(self._ids):
            requests, tokens = totals[2 * index], totals[2 * index + 1]
            self._shared_usage[model_id] = (minute, float(requests or 0), float(tokens or 0))
