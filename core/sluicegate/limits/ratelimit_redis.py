"""Rate-limit counts in Redis, shared by every process and replica.

One round trip per checked request: :data:`CHECK` reads every scope's counts, and only when all are under their
limits counts the request in all of them, atomically (a request refused by its team's limit takes nothing from its
key's). The window is taken from Redis's clock, so replicas whose clocks differ still agree on it.

What happens after the call never holds the request up: :meth:`RedisStore.finish` queues the tokens to add and the
parallel slot to release, and they leave with the next batch of checks (or alone, at once, when no check is
waiting): one pipeline carries everything the gateway asks Redis at one moment. Parallel slots are leases in a sorted set: a process that dies holding some loses
them within :data:`LEASE_TTL` seconds, and a live process renews its leases every third of that.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from typing import TYPE_CHECKING, Any

from sluicegate.limits.ratelimit import Outcome

if TYPE_CHECKING:
    from sluicegate.config import Settings
    from sluicegate.limits.ratelimit import Scope

__all__ = ("APPLY", "CHECK", "LEASE_TTL", "RedisStore", "shared_redis")

log = logging.getLogger("sluicegate.limits")

LEASE_TTL = 60.0
"""Seconds a parallel slot outlives the process holding it (renewed while it lives)."""
RETRY_AFTER = 1.0
"""Seconds Redis is left alone after a failure, so a dead server does not add a timeout to every request."""
NAMESPACE = "sluicegate:rl:"

# KEYS: one per scope (its hash tag). ARGV: window ms, lease id, lease ttl ms, then rpm, tpm, parallel per scope
# (-1: none). Returns admitted (1/0), ms to the window's end, failed scope (1-based, 0: none), failed kind (1
# requests, 2 tokens, 3 parallel), then requests, tokens, in flight per scope as they were before this request.
CHECK = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local win = tonumber(ARGV[1])
local idx = math.floor(now / win)
local suffix = ':' .. idx
local out = {0, (idx + 1) * win - now, 0, 0}
for i = 1, #KEYS do
  local a = 3 + (i - 1) * 3
  local rpm, tpm, par = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  local r, tk, p = 0, 0, 0
  if rpm >= 0 or tpm >= 0 then
    local v = redis.call('HMGET', KEYS[i] .. suffix, 'r', 't')
    r = tonumber(v[1]) or 0
    tk = tonumber(v[2]) or 0
  end
  if par >= 0 then
    local pk = KEYS[i] .. ':p'
    redis.call('ZREMRANGEBYSCORE', pk, '-inf', now)
    p = redis.call('ZCARD', pk)
  end
  out[#out + 1] = r
  out[#out + 1] = tk
  out[#out + 1] = p
  if out[3] == 0 then
    if rpm >= 0 and r >= rpm then out[3] = i; out[4] = 1
    elseif tpm >= 0 and tk >= tpm then out[3] = i; out[4] = 2
    elseif par >= 0 and p >= par then out[3] = i; out[4] = 3 end
  end
end
if out[3] ~= 0 then return out end
out[1] = 1
local ttl = tonumber(ARGV[3])
for i = 1, #KEYS do
  local a = 3 + (i - 1) * 3
  if tonumber(ARGV[a + 1]) >= 0 or tonumber(ARGV[a + 2]) >= 0 then
    local wk = KEYS[i] .. suffix
    redis.call('HINCRBY', wk, 'r', 1)
    redis.call('PEXPIRE', wk, 2 * win)
  end
  if tonumber(ARGV[a + 3]) >= 0 then
    local pk = KEYS[i] .. ':p'
    redis.call('ZADD', pk, now + ttl, ARGV[2])
    redis.call('PEXPIRE', pk, 2 * ttl)
  end
end
return out
"""

# KEYS: one per operation (a scope's hash tag, repeated as needed). ARGV: window ms, lease ttl ms, then per
# operation: tokens to add to the current window, lease to release ('' none), lease to renew ('' none).
APPLY = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local win = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
local suffix = ':' .. math.floor(now / win)
for i = 1, #KEYS do
  local a = 2 + (i - 1) * 3
  local tokens = tonumber(ARGV[a + 1])
  if tokens > 0 then
    local wk = KEYS[i] .. suffix
    redis.call('HINCRBY', wk, 't', tokens)
    redis.call('PEXPIRE', wk, 2 * win)
  end
  if ARGV[a + 2] ~= '' then redis.call('ZREM', KEYS[i] .. ':p', ARGV[a + 2]) end
  if ARGV[a + 3] ~= '' then redis.call('ZADD', KEYS[i] .. ':p', 'XX', now + ttl, ARGV[a + 3]) end
end
return #KEYS
"""


def shared_redis(settings: Settings) -> dict[str, Any] | None:
    """The Redis the gateway's processes share, as the router finds it: ``router_settings.redis_*``, else the
    response cache's (``litellm_settings.cache_params`` with ``type: redis``); None: none configured."""
    router = settings.router_settings
    if router.redis_host or router.redis_url:
        return {"host": router.redis_host, "port": router.redis_port, "password": router.redis_password,
                "url": router.redis_url}
    cache = settings.litellm_settings.cache_params or {}
    if settings.litellm_settings.cache and cache.get("type") == "redis":
        return {k: cache.get(k) for k in ("host", "port", "password", "url", "username", "db")}
    return None


class RedisStore:
    """Counts in Redis. Raises on any Redis failure; the limiter decides what that means (fail open or closed).

    Every script call goes through one sender: what the requests of one moment ask (their checks, and the updates
    finished requests left) leaves in one pipeline on one connection, and the next batch gathers while it is out.
    A burst of requests is then a few round trips, not a connection each.
    """

    def __init__(self, redis: dict[str, Any], *, window: float, timeout: float, namespace: str = NAMESPACE,
                 lease_ttl: float = LEASE_TTL) -> None:
        self._kwargs = redis
        self.timeout = timeout
        self.namespace = namespace
        self.window_ms = max(1, round(window * 1000))
        self.lease_ttl = lease_ttl
        self._ttl_ms = str(max(1, round(lease_ttl * 1000)))
        self._client: Any = None
        self._shas = {CHECK: hashlib.sha1(CHECK.encode()).hexdigest(), APPLY: hashlib.sha1(APPLY.encode()).hexdigest()}
        self._checks: list[tuple[list[str], list[Any], asyncio.Future[Any]]] = []
        self._pending: list[tuple[str, int, str, str]] = []
        self._sender: asyncio.Task[None] | None = None
        self._renewing: asyncio.Task[None] | None = None
        self._live: dict[str, tuple[str, ...]] = {}  # lease -> the scope keys it holds a slot of
        self._down_until = 0.0
        self._keys: dict[str, str] = {}

    def start(self) -> None:
        """Make the client (it connects on first use: a Redis that is down does not stop start-up)."""
        from redis.asyncio import Redis, from_url
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        kwargs = self._kwargs
        common: dict[str, Any] = {"socket_timeout": self.timeout, "socket_connect_timeout": self.timeout,
                                  "retry": Retry(NoBackoff(), 0), "max_connections": 16}
        url = kwargs.get("url")
        self._client = from_url(url, **common) if url else Redis(
            host=kwargs.get("host") or "127.0.0.1", port=int(kwargs.get("port") or 6379),
            password=kwargs.get("password") or None, username=kwargs.get("username") or None,
            db=int(kwargs.get("db") or 0), **common)
        self._renewing = asyncio.get_running_loop().create_task(self._renew())

    async def aclose(self) -> None:
        if self._renewing is not None:
            self._renewing.cancel()
            try:
                await self._renewing
            except BaseException:  # noqa: S110 - cancelled: that is how it ends
                pass
            self._renewing = None
        if self._sender is not None:  # what is queued goes out before the client closes
            try:
                await asyncio.wait_for(asyncio.shield(self._sender), self.timeout * 4)
            except BaseException:  # noqa: S110 - Redis gone at shutdown: leases expire, counts stay low
                pass
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def usable(self) -> bool:
        return self._client is not None and time.monotonic() >= self._down_until

    def failed(self, exc: BaseException) -> None:
        self._down_until = time.monotonic() + RETRY_AFTER

    def _key(self, scope_key: str) -> str:
        key = self._keys.get(scope_key)
        if key is None:
            if len(self._keys) > 100_000:
                self._keys.clear()
            key = self._keys[scope_key] = self.namespace + scope_key
        return key

    async def acquire(self, scopes: tuple[Scope, ...], lease: str | None) -> Outcome:
        keys = [self._key(s.key) for s in scopes]
        args: list[Any] = [self.window_ms, lease or "", self._ttl_ms]
        for scope in scopes:
            args += (-1 if scope.rpm is None else scope.rpm, -1 if scope.tpm is None else scope.tpm,
                     -1 if scope.parallel is None else scope.parallel)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._checks.append((keys, args, future))
        self._wake()
        reply = await future
        outcome = Outcome([int(v) for v in reply[4:]], int(reply[1]) / 1000, int(reply[2]), int(reply[3]))
        if lease is not None and not outcome.failed:
            self._live[lease] = tuple(k for k, s in zip(keys, scopes, strict=True) if s.parallel is not None)
        return outcome

    def finish(self, scopes: tuple[Scope, ...], lease: str | None, tokens: int) -> None:
        held = self._live.pop(lease, None) if lease is not None else None
        for scope in scopes:
            release = lease if held is not None and scope.parallel is not None else ""
            add = tokens if scope.counts_tokens else 0
            if add or release:
                self._pending.append((self._key(scope.key), add, release or "", ""))
        if self._pending:
            self._wake()

    @property
    def idle(self) -> bool:
        """Nothing queued or on its way to Redis (for tests: the updates of finished requests have landed)."""
        return self._sender is None and not self._pending and not self._checks

    def _wake(self) -> None:
        if self._sender is None:
            try:
                self._sender = asyncio.get_running_loop().create_task(self._send())
            except RuntimeError:  # no loop (a ticket freed at interpreter exit): leases expire on their own
                pass

    async def _send(self) -> None:
        try:
            while (self._checks or self._pending) and self._client is not None:
                checks, self._checks = self._checks, []
                ops, self._pending = self._pending, []
                try:
                    replies = await self._round_trip(checks, ops)
                except Exception as exc:  # every check of the batch fails; updates are dropped (counts stay low,
                    self.failed(exc)      # leases expire): the fail-open direction
                    for _, _, future in checks:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (_, _, future), reply in zip(checks, replies, strict=False):
                    if future.done():
                        continue
                    if isinstance(reply, Exception):
                        future.set_exception(reply)
                    else:
                        future.set_result(reply)
        finally:
            self._sender = None
            for _, _, future in self._checks:  # cancelled at shutdown: nobody is left waiting
                if not future.done():
                    future.set_exception(ConnectionError("rate limits: Redis store closed"))
            self._checks.clear()

    async def _round_trip(self, checks: list[tuple[list[str], list[Any], asyncio.Future[Any]]],
                          ops: list[tuple[str, int, str, str]]) -> list[Any]:
        from redis.exceptions import NoScriptError

        commands: list[tuple[str, list[str], list[Any]]] = [(CHECK, keys, args) for keys, args, _ in checks]
        if ops:
            args: list[Any] = [self.window_ms, self._ttl_ms]
            for _, tokens, release, renew in ops:
                args += (tokens, release, renew)
            commands.append((APPLY, [op[0] for op in ops], args))
        replies = await self._pipeline(commands)
        if any(isinstance(r, NoScriptError) for r in replies):  # first use, or Redis restarted: load and redo those
            for script in (CHECK, APPLY):
                await self._client.script_load(script)
            again = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
            for i, reply in zip(again, await self._pipeline([commands[i] for i in again]), strict=True):
                replies[i] = reply
        return replies

    async def _pipeline(self, commands: list[tuple[str, list[str], list[Any]]]) -> list[Any]:
        async with self._client.pipeline(transaction=False) as pipe:
            for script, keys, args in commands:
                pipe.evalsha(self._shas[script], len(keys), *keys, *args)
            return await pipe.execute(raise_on_error=False)

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(self.lease_ttl / 3)  # the renewal period, not synchronisation
            if self._live:
                self._pending += [(key, 0, "", lease) for lease, keys in self._live.items() for key in keys]
                self._wake()
