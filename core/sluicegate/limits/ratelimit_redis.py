"""Rate-limit counts in Redis, shared by every process and replica.

At most one round trip per checked request: :data:`CHECK` reads every scope's counts, and only when all are under
their limits counts the request in all of them, atomically (a request refused by its team's limit takes nothing
from its key's). The window is taken from Redis's clock, so replicas whose clocks differ still agree on it.

Far from its limits a request does not wait on Redis at all:

- **Request credits.** An admitting check also reserves a block of the scopes' requests for this process, and
  the next requests of the same scopes are admitted from it in process until it is used up or the window ends.
  Only a check that finds no other check of its scopes on its way asks for a block (requests coming one after
  another; the checks of a burst ask for themselves alone, so a burst leaves no credit behind). The block starts
  at one request beyond the check's own and doubles each time the process uses one up, to 64 (:data:`BLOCK_MAX`);
  it is never more than a sixteenth of what is left of the tightest ``rpm_limit`` (:data:`BLOCK_SHARE`), and
  nothing when a ``tpm_limit`` has less than a sixteenth left. Redis counts a block when it is reserved, so the
  processes together never admit more than the limit; a check Redis refuses is admitted from its process's block
  when one is left.
  A block a process does not use before the window ends is lost to the others: the processes under-admit by at
  most that (a sixteenth of what was left when it was taken, one request near the limit).
- **Pooled slots.** A finished request's ``max_parallel_requests`` slot stays with the process for
  :data:`POOL_IDLE` seconds (still counted, still renewed) and the next request of the same scopes takes it without
  asking Redis; a slot nobody took is given back then. Other processes see the slot as held meanwhile.
- **Tokens.** Between checks a process adds its own requests' tokens to the counts it last read; a check near a
  ``tpm_limit`` always asks Redis.

What happens after the call never holds the request up: :meth:`RedisStore.finish` queues the tokens to add and the
parallel slot to release, and they leave with the next batch of checks, or alone after :data:`UPDATE_DELAY` (5 ms)
when none comes: one write carries everything the gateway asks Redis at one moment, and a request that follows
another through the same process finds its slot already given back.

Parallel slots are leases in a sorted set: a process that dies holding some loses them within :data:`LEASE_TTL`
seconds, and a live process renews its leases every third of that.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from typing import TYPE_CHECKING, Any

from sluicegate.limits.ratelimit import REQUESTS, Outcome
from sluicegate.limits.resp import RedisError, RespClient, ServerError, bulk, pack

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
UPDATE_DELAY = 0.005
"""Seconds a finished request's update (tokens, a freed slot) waits for a batch of checks to ride with."""
BLOCK_MAX = 64
"""The most requests one check reserves for its process (see the module's docstring)."""
BLOCK_SHARE = 16
"""A check reserves at most 1/BLOCK_SHARE of what is left of the tightest ``rpm_limit``."""
POOL_IDLE = 0.05
"""Seconds a freed parallel slot waits in its process for the next request of the same scopes."""

# KEYS: one per scope (its hash tag). ARGV: window ms, lease id, requests wanted (this one and a block for the
# process), lease ttl ms, then rpm, tpm, parallel per scope (-1: none). Returns, as one comma-separated string (one
# bulk reply is the cheapest to read): admitted (1/0), ms to the window's end, failed scope (1-based, 0: none),
# failed kind (1 requests, 2 tokens, 3 parallel), the requests counted (this one and the block reserved with it),
# then requests, tokens, in flight per scope as they were before this request.
CHECK = f"""
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local win = tonumber(ARGV[1])
local idx = math.floor(now / win)
local suffix = ':' .. idx
local out = {{0, (idx + 1) * win - now, 0, 0, 0}}
local block = tonumber(ARGV[3])
for i = 1, #KEYS do
  local a = 4 + (i - 1) * 3
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
    if redis.call('ZSCORE', pk, ARGV[2]) then p = p - 1 end  -- a slot its process holds already, asked again
  end
  out[#out + 1] = r
  out[#out + 1] = tk
  out[#out + 1] = p
  if out[3] == 0 then
    if rpm >= 0 and r >= rpm then out[3] = i; out[4] = 1
    elseif tpm >= 0 and tk >= tpm then out[3] = i; out[4] = 2
    elseif par >= 0 and p >= par then out[3] = i; out[4] = 3 end
  end
  if rpm >= 0 then block = math.min(block, math.floor((rpm - r) / {BLOCK_SHARE})) end
  if tpm >= 0 and (tpm - tk) * {BLOCK_SHARE} < tpm then block = 1 end
end
if out[3] ~= 0 then return table.concat(out, ',') end
block = math.max(block, 1)
out[1] = 1
out[5] = block
local ttl = tonumber(ARGV[4])
for i = 1, #KEYS do
  local a = 4 + (i - 1) * 3
  if tonumber(ARGV[a + 1]) >= 0 or tonumber(ARGV[a + 2]) >= 0 then
    local wk = KEYS[i] .. suffix
    redis.call('HINCRBY', wk, 'r', block)
    redis.call('PEXPIRE', wk, 2 * win)
  end
  if tonumber(ARGV[a + 3]) >= 0 then
    local pk = KEYS[i] .. ':p'
    redis.call('ZADD', pk, now + ttl, ARGV[2])
    redis.call('PEXPIRE', pk, 2 * ttl)
  end
end
return table.concat(out, ',')
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
  if ARGV[a + 3] ~= '' then
    redis.call('ZADD', KEYS[i] .. ':p', 'XX', now + ttl, ARGV[a + 3])
    redis.call('PEXPIRE', KEYS[i] .. ':p', 2 * ttl)
  end
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


class _Reserve:
    """What one process holds of a scope set between checks: request credits of the current window, the counts
    Redis last answered (for the headers and the token checks), and pooled parallel slots."""

    __slots__ = ("checking", "counts", "deadline", "free", "left", "tokens_at", "used", "want", "windowed")

    def __init__(self, windowed: bool) -> None:
        self.windowed = windowed
        """Whether the scopes count requests or tokens (else only parallel slots: no credits needed)."""
        self.want = 2
        """The requests the next check asks for: doubled each time a block is used up here, back to 2 in a new
        window."""
        self.checking = 0  # checks of these scopes on their way to Redis
        self.left = 0
        self.deadline = 0.0  # time.monotonic() at the end of the credits' window
        self.counts: list[int] = []
        self.used = 0  # requests admitted here since ``counts`` was read (the check's own included)
        self.tokens_at: list[int] = []  # this process's token totals per scope when ``counts`` was read
        self.free: list[tuple[str, float]] = []  # pooled slots (lease ids) and when each was freed


class RedisStore:
    """Counts in Redis. Raises on any Redis failure; the limiter decides what that means (fail open or closed).

    Every script call goes through one sender: what the requests of one moment ask (their checks, and the updates
    finished requests left) leaves in one write on one connection (:mod:`.resp`), and the next batch gathers while
    it is out. A burst of requests is then a few round trips, not a connection each.
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
        self._checks: list[tuple[bytes, list[str], list[Any], asyncio.Future[Any]]] = []
        self._pending: list[tuple[bytes, bytes]] = []  # APPLY operations, packed: (key, its three arguments)
        self._sender: asyncio.Task[None] | None = None
        self._busy = False  # a batch is on its way (sent by a request itself, or by the sender task)
        self._renewing: asyncio.Task[None] | None = None
        self._live: dict[str, tuple[str, ...]] = {}  # lease -> the scope keys it holds a slot of
        self._down_until = 0.0
        self._keys: dict[str, str] = {}
        self._commands: dict[tuple[Scope, ...], tuple[bytes, bytes, list[str], list[Any]]] = {}
        self._flush_timer: asyncio.TimerHandle | None = None
        self._reserves: dict[tuple[Scope, ...], _Reserve] = {}
        self._pooled: set[tuple[Scope, ...]] = set()  # the scope sets with pooled slots
        self._pool_timer: asyncio.TimerHandle | None = None
        self._tokens: dict[str, int] = {}  # scope key -> tokens this process added (a running total)
        self.round_trips = 0
        """Batches sent to Redis (for tests and benchmarks)."""

    def start(self) -> None:
        """Make the client (it connects on first use: a Redis that is down does not stop start-up)."""
        self._client = RespClient.from_settings(self._kwargs, self.timeout)
        self._renewing = asyncio.get_running_loop().create_task(self._renew())

    async def aclose(self) -> None:
        if self._pool_timer is not None:
            self._pool_timer.cancel()
            self._pool_timer = None
        self._give_back(math.inf)  # pooled slots go back with the last batch
        if self._pending and self._client is not None:
            self._wake()
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
            self._client.close()
            self._client = None

    def usable(self) -> bool:
        return self._client is not None and time.monotonic() >= self._down_until

    def failed(self, exc: BaseException) -> None:
        self._down_until = time.monotonic() + RETRY_AFTER

    async def window_counts(self, scope_keys: list[str]) -> dict[str, tuple[int, int]]:
        """Requests and tokens of each scope in Redis's current window (Redis's clock, as :data:`CHECK` takes it):
        two round trips, whatever the number of scopes. For ``/metrics``; raises :class:`RedisError`."""
        client = self._client
        if client is None:
            raise RedisError("the rate-limit store is not started")
        (now,) = await client.execute([pack("TIME")])
        index = (int(now[0]) * 1000 + int(now[1]) // 1000) // self.window_ms
        replies = await client.execute([pack("HMGET", f"{self._key(k)}:{index}", "r", "t") for k in scope_keys])
        counts = {}
        for key, reply in zip(scope_keys, replies, strict=True):
            if isinstance(reply, list):
                counts[key] = (int(reply[0] or 0), int(reply[1] or 0))
        return counts

    def _op(self, key: str, tokens: int, release: str, renew: str) -> None:
        """Queue one APPLY operation: ``tokens`` for ``key``'s window, a lease to release, a lease to renew."""
        self._pending.append((bulk(key), bulk(tokens) + bulk(release) + bulk(renew)))

    def _key(self, scope_key: str) -> str:
        key = self._keys.get(scope_key)
        if key is None:
            if len(self._keys) > 100_000:
                self._keys.clear()
            key = self._keys[scope_key] = self.namespace + scope_key
        return key

    def _packed(self, scopes: tuple[Scope, ...]) -> tuple[bytes, bytes, list[str], list[Any]]:
        """A scope set's CHECK command in two parts around the lease id and the block wanted (packed once per set:
        the sets are the limiter's cached tuples), with its keys and arguments (for :meth:`_orphaned` and a NOSCRIPT
        redo)."""
        packed = self._commands.get(scopes)
        if packed is None:
            keys = [self._key(s.key) for s in scopes]
            limits: list[Any] = []
            for scope in scopes:
                limits += (-1 if scope.rpm is None else scope.rpm, -1 if scope.tpm is None else scope.tpm,
                           -1 if scope.parallel is None else scope.parallel)
            count = 3 + len(keys) + 4 + len(limits)
            before = pack("EVALSHA", self._shas[CHECK], len(keys), *keys, self.window_ms)
            before = b"*%d" % count + before[before.index(b"\r\n"):]
            after = pack(self._ttl_ms, *limits)
            after = after[after.index(b"\r\n") + 2:]
            packed = (before, after, keys, limits)
            if len(self._commands) > 100_000:
                self._commands.clear()
            self._commands[scopes] = packed
        return packed

    async def acquire(self, scopes: tuple[Scope, ...], lease: str | None) -> Outcome:
        reserve = self._reserves.get(scopes)
        if reserve is not None and (reserve.left > 0 or (reserve.free and not reserve.windowed)):
            outcome = self._reserved(scopes, reserve, lease is not None)
            if outcome is not None:
                return outcome
        if reserve is None:
            reserve = self._reserve_of(scopes)
        pooled = None
        if lease is not None and reserve.free:  # ask with a slot held here: Redis counts it once, not twice
            lease = pooled = self._unpool(scopes, reserve)
        before, after, keys, limits = self._packed(scopes)
        lease_id = (lease or "").encode()
        # A block only for requests that come one after another: one that finds another check of its scopes on
        # its way (a burst) asks for itself alone, so a burst leaves no credit behind for other processes to miss.
        want = 1
        if reserve.checking == 0:
            if time.monotonic() < reserve.deadline:
                want = reserve.want
            else:
                reserve.want = 2
        reserve.checking += 1
        command = b"%s$%d\r\n%s\r\n%s%s" % (before, len(lease_id), lease_id, bulk(want), after)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._checks.append((command, keys, [self.window_ms, lease or "", want, self._ttl_ms, *limits], future))
        if not self._busy:  # nothing on its way: this request sends the batch itself (no task, no extra wake-up)
            self._busy = True
            try:
                await self._batch()
            finally:
                self._busy = False
                if self._checks:  # asked meanwhile: the next batch leaves at once
                    self._wake()
        try:
            reply = await future
        except BaseException:
            if pooled is not None:  # whatever Redis did with it, the slot is not this process's to reuse now
                self._release(pooled)
            raise
        finally:
            reserve.checking -= 1
        outcome = Outcome(reply[5:], reply[1] / 1000, reply[2], reply[3])
        if outcome.failed == 0:
            if lease is not None:
                self._live[lease] = tuple(k for k, s in zip(keys, scopes, strict=True) if s.parallel is not None)
            self._reserve(reserve, scopes, reply[4], outcome)
            outcome.lease = pooled
            return outcome
        if pooled is not None:  # refused: the slot is still held here, for the next request
            self._pool(scopes, reserve, pooled, time.monotonic())
        if outcome.failed_kind == REQUESTS and reserve.left > 0:  # Redis's count is used up, part of it here
            return self._reserved(scopes, reserve, lease is not None) or outcome
        return outcome

    def _unpool(self, scopes: tuple[Scope, ...], reserve: _Reserve) -> str:
        lease = reserve.free.pop()[0]
        if not reserve.free:
            self._pooled.discard(scopes)
        return lease

    def _pool(self, scopes: tuple[Scope, ...], reserve: _Reserve, lease: str, freed: float) -> None:
        reserve.free.append((lease, freed))
        self._pooled.add(scopes)
        if self._pool_timer is None:
            self._pool_later()

    def _reserve_of(self, scopes: tuple[Scope, ...]) -> _Reserve:
        reserve = self._reserves.get(scopes)
        if reserve is None:
            if len(self._reserves) > 100_000:
                self._reserves = {s: r for s, r in self._reserves.items() if r.free or r.checking}
            reserve = self._reserves[scopes] = _Reserve(any(s.windowed for s in scopes))
        return reserve

    def _reserve(self, reserve: _Reserve, scopes: tuple[Scope, ...], block: int, outcome: Outcome) -> None:
        """Keep the credits an admitting check reserved beyond its own request, and the counts it read."""
        deadline = time.monotonic() + outcome.reset
        if abs(deadline - reserve.deadline) > 0.5:  # another window: what was left of the last one is gone
            reserve.left = 0
        reserve.deadline = deadline
        reserve.left += block - 1
        reserve.counts = outcome.counts
        reserve.used = 1
        tokens = self._tokens
        reserve.tokens_at = [tokens.get(s.key, 0) for s in scopes]

    def _reserved(self, scopes: tuple[Scope, ...], reserve: _Reserve, parallel: bool) -> Outcome | None:
        """Admit a request from ``reserve`` without asking Redis, or None when it must ask: no credit left in
        this window, a ``tpm_limit`` that may be reached, or (``parallel``) no pooled slot."""
        now = time.monotonic()
        if now >= reserve.deadline and reserve.windowed:
            reserve.left = 0
            return None
        counts = reserve.counts.copy()
        tokens = self._tokens
        for i, scope in enumerate(scopes):
            if scope.counts_tokens:
                used = counts[3 * i + 1] + tokens.get(scope.key, 0) - reserve.tokens_at[i]
                if used >= scope.tpm:  # type: ignore[operator]
                    return None
                counts[3 * i + 1] = used
            counts[3 * i] += reserve.used
        lease = None
        if parallel:
            if not reserve.free:
                return None
            lease = self._unpool(scopes, reserve)
        if reserve.windowed:
            reserve.left -= 1
            reserve.used += 1
            if reserve.left == 0:
                reserve.want = min(BLOCK_MAX, reserve.want * 2)
        outcome = Outcome(counts, max(0.0, reserve.deadline - now))
        outcome.lease = lease
        return outcome

    def finish(self, scopes: tuple[Scope, ...], lease: str | None, tokens: int) -> None:
        if lease is not None and lease in self._live:  # the slot stays here a moment for the next request
            reserve = self._reserves.get(scopes)
            if reserve is None or self._client is None:
                self._release(lease)
            else:
                self._pool(scopes, reserve, lease, time.monotonic())
        if tokens:
            for scope in scopes:
                if scope.counts_tokens:
                    self._tokens[scope.key] = self._tokens.get(scope.key, 0) + tokens
                    self._op(self._key(scope.key), tokens, "", "")
        if self._pending and self._flush_timer is None and not self._busy:
            self._later()

    def _release(self, lease: str) -> None:
        for key in self._live.pop(lease, ()):
            self._op(key, 0, lease, "")

    def _pool_later(self) -> None:
        try:
            self._pool_timer = asyncio.get_running_loop().call_later(POOL_IDLE, self._pool_due)
        except RuntimeError:  # no loop (a ticket freed at interpreter exit): leases expire on their own
            pass

    def _pool_due(self) -> None:
        self._pool_timer = None
        self._give_back(time.monotonic() - POOL_IDLE)
        if self._pooled:
            self._pool_later()
        if self._pending and self._flush_timer is None and not self._busy:
            self._later()

    def _give_back(self, freed_before: float) -> None:
        """Release the pooled slots freed before ``freed_before`` (``math.inf``: all)."""
        for scopes in list(self._pooled):
            reserve = self._reserves.get(scopes)
            if reserve is None:
                self._pooled.discard(scopes)
                continue
            keep = []
            for lease, freed in reserve.free:
                if freed < freed_before:
                    self._release(lease)
                else:
                    keep.append((lease, freed))
            reserve.free = keep
            if not keep:
                self._pooled.discard(scopes)

    def _later(self) -> None:
        """Send queued updates within :data:`UPDATE_DELAY`, or earlier with the next batch of checks."""
        try:
            self._flush_timer = asyncio.get_running_loop().call_later(UPDATE_DELAY, self._flush_due)
        except RuntimeError:  # no loop (a ticket freed at interpreter exit): leases expire on their own
            pass

    def _flush_due(self) -> None:
        self._flush_timer = None
        if self._pending:
            self._wake()

    @property
    def idle(self) -> bool:
        """Nothing queued or on its way to Redis (for tests: the updates of finished requests have landed)."""
        return not self._busy and not self._pending and not self._checks and not self._pooled

    def _wake(self) -> None:
        if not self._busy:
            try:
                self._sender = asyncio.get_running_loop().create_task(self._send())
            except RuntimeError:  # no loop (a ticket freed at interpreter exit): leases expire on their own
                return
            self._busy = True

    async def _send(self) -> None:
        try:
            while (self._checks or self._pending) and self._client is not None:
                await self._batch()
        finally:
            self._busy = False
            self._sender = None
            if self._client is None:  # closed: nobody is left waiting
                for *_, future in self._checks:
                    if not future.done():
                        future.set_exception(RedisError("rate limits: Redis store closed"))
                self._checks.clear()
            elif self._pending and self._flush_timer is None:
                self._later()

    async def _batch(self) -> None:
        """One round trip: every queued update and check. A failure fails the batch's checks and drops its updates
        (counts stay low, leases expire: the fail-open direction)."""
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        checks, self._checks = self._checks, []
        ops, self._pending = self._pending, []
        try:
            replies = await self._round_trip(checks, ops)
        except BaseException as exc:
            if isinstance(exc, Exception):
                self.failed(exc)
            cause = exc if isinstance(exc, Exception) else RedisError("rate-limit check cancelled")
            for *_, future in checks:
                if not future.done():
                    future.set_exception(cause)
            if not isinstance(exc, Exception):
                raise  # the sending request itself was cancelled
            return
        for (_, keys, args, future), reply in zip(checks, replies, strict=False):
            if future.done():  # its request was cancelled while the check was out: give back its slots
                self._orphaned(keys, args, reply)
                continue
            if isinstance(reply, Exception):
                future.set_exception(reply)
            else:
                future.set_result(reply)

    def _orphaned(self, keys: list[str], args: list[Any], reply: Any) -> None:
        if isinstance(reply, Exception) or reply[0] != 1 or not args[1]:
            return
        for i, key in enumerate(keys):
            if int(args[6 + 3 * i]) >= 0:  # the scope's parallel limit (ARGV layout of CHECK)
                self._op(key, 0, args[1], "")

    async def _round_trip(self, checks: list[tuple[bytes, list[str], list[Any], asyncio.Future[Any]]],
                          ops: list[tuple[bytes, bytes]]) -> list[Any]:
        """The checks' replies (parsed: a list of ints each, or the error). Updates go first, so a slot freed by a
        finished request is free for the checks in the same batch."""
        packed: list[bytes] = []
        if ops:
            packed.append(b"*%d\r\n$7\r\nEVALSHA\r\n%s%s%s%s%s%s" % (
                5 + 4 * len(ops), bulk(self._shas[APPLY]), bulk(len(ops)), b"".join(op[0] for op in ops),
                bulk(self.window_ms), bulk(self._ttl_ms), b"".join(op[1] for op in ops)))
        packed += [check[0] for check in checks]
        self.round_trips += 1
        replies = await self._client.execute(packed)
        again = [i for i, r in enumerate(replies) if isinstance(r, ServerError) and str(r).startswith("NOSCRIPT")]
        if again:  # first use, or Redis restarted: load the scripts and send those again
            loaded = await self._client.execute([pack("SCRIPT", "LOAD", CHECK), pack("SCRIPT", "LOAD", APPLY)])
            if any(isinstance(r, ServerError) for r in loaded):
                raise RedisError(f"Redis refused the rate-limit scripts: {loaded}")
            for i, reply in zip(again, await self._client.execute([packed[i] for i in again]), strict=True):
                replies[i] = reply
        if ops:
            del replies[0]
        return [r if isinstance(r, Exception) else [int(v) for v in r.split(b",")] for r in replies]

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(self.lease_ttl / 3)  # the renewal period, not synchronisation
            if self._live:
                for lease, keys in self._live.items():
                    for key in keys:
                        self._op(key, 0, "", lease)
                self._wake()
