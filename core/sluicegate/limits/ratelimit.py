"""Rate limits: ``rpm_limit``, ``tpm_limit`` and ``max_parallel_requests`` of keys, teams and users, and a key's
``model_rpm_limit`` / ``model_tpm_limit``, checked once before the upstream call and settled once after it.

Counting (LiteLLM's descriptors and their names: ``api_key``, ``team``, ``user``, ``model_per_key``):

- requests: a request counts in the window it starts in when it is admitted; one that would be the
  ``rpm_limit + 1``-th of its window is refused. A refused request counts nowhere.
- tokens: a request is admitted while its window's tokens are under ``tpm_limit``; its ``total_tokens`` are added
  when it ends (the upstream's usage, else an estimate for a stream that reported none). The overshoot is bounded
  by what the requests already in flight use.
- parallel: a request holds one slot of each scope with ``max_parallel_requests`` from its admission to its end,
  whichever way it ends (answer, error, client gone, cancellation): :meth:`Ticket.finish` is idempotent and a
  ticket that is dropped unfinished releases itself.

Windows are ``sluicegate_settings.rate_limit_window`` seconds (60: one minute) aligned to the clock, so at most
``rpm_limit`` requests start in each window; a client timing a burst on both sides of a boundary can start up to
twice that in a rolling window of the same length.

Where the counts live: :class:`LocalStore` (this process) or, with Redis configured, the Redis store
(:mod:`.ratelimit_redis`): shared by every process and replica, one script call per checked request at most (far
from the limits, requests are admitted from blocks a check reserved for its process). A key, team
and user without limits costs one dictionary lookup per request and nothing else.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from sluicegate.errors import ApiError

if TYPE_CHECKING:
    from sluicegate.auth import AuthContext
    from sluicegate.config import Settings
    from sluicegate.limits.ratelimit_redis import RedisStore

__all__ = ("LimitSource", "LocalStore", "Outcome", "RateLimiter", "Scope", "Ticket", "estimate_tokens",
           "limit_scopes")

log = logging.getLogger("sluicegate.limits")

REQUESTS, TOKENS, PARALLEL = 1, 2, 3
_TYPE_NAMES = {REQUESTS: "requests", TOKENS: "tokens", PARALLEL: "max_parallel_requests"}
WARN_EVERY = 60.0
_MAX_PLANS = 100_000
_MAX_MODELS_PER_PLAN = 64

FAIL_CLOSED_MESSAGE = (
    "Rate limit enforcement unavailable: the request counters could not be verified against Redis, and "
    "sluicegate_settings.rate_limit_fail_closed is on, so the request was refused rather than risk exceeding the "
    "configured rate limits. Retry shortly.")


class LimitSource(Protocol):
    """What a scope's limits are read from: a key, team or user record (None: no limit)."""

    rpm_limit: int | None
    tpm_limit: int | None
    max_parallel_requests: int | None


class Scope:
    """One thing requests are counted against: a key, a team, a user, or a key's use of one model.

    ``kind`` and ``ident`` are LiteLLM's descriptor key and value (they appear in the 429's message and the
    ``x-ratelimit-<kind>-...`` headers); ``key`` names its counters (a Redis hash tag: one slot per scope).
    """

    __slots__ = ("counts_tokens", "headers", "ident", "key", "kind", "parallel", "rpm", "tpm", "windowed")

    def __init__(self, kind: str, ident: str, rpm: int | None, tpm: int | None, parallel: int | None) -> None:
        self.kind = kind
        self.ident = ident
        self.rpm = rpm
        self.tpm = tpm
        self.parallel = parallel
        self.key = f"{{{kind}:{ident}}}"
        self.windowed = rpm is not None or tpm is not None
        self.counts_tokens = tpm is not None
        prefix = f"x-ratelimit-{kind}"
        self.headers = {kind_: (f"{prefix}-remaining-{name}", f"{prefix}-limit-{name}")
                        for kind_, name in _TYPE_NAMES.items()}

    def limit(self, kind: int) -> int | None:
        return self.rpm if kind == REQUESTS else self.tpm if kind == TOKENS else self.parallel


def _scope(kind: str, ident: str, source: Any) -> Scope | None:
    rpm = getattr(source, "rpm_limit", None)
    tpm = getattr(source, "tpm_limit", None)
    parallel = getattr(source, "max_parallel_requests", None)
    if rpm is None and tpm is None and parallel is None:
        return None
    return Scope(kind, ident, rpm, tpm, parallel)


def limit_scopes(ctx: AuthContext) -> tuple[list[Scope], dict[str, Scope]]:
    """The scopes a caller's requests count against: (for every model, per model name).

    The key's limits, its team's, and its user's: ``ctx.user`` when the caller has one (any record with
    ``user_id`` and the three limit fields, see :class:`LimitSource`) is counted exactly as a team is.
    """
    key = ctx.key
    scopes: list[Scope] = []
    per_model: dict[str, Scope] = {}
    if key is None:  # the master key: the admin is not limited
        return scopes, per_model
    for kind, ident, source in (("api_key", ctx.token_id, key),
                                ("team", getattr(ctx.team, "team_id", None), ctx.team),
                                ("user", getattr(getattr(ctx, "user", None), "user_id", None),
                                 getattr(ctx, "user", None))):
        if source is not None and ident is not None:
            scope = _scope(kind, str(ident), source)
            if scope is not None:
                scopes.append(scope)
    rpm = key.model_rpm_limit or {}
    tpm = key.model_tpm_limit or {}
    for model in dict.fromkeys([*rpm, *tpm]):
        per_model[model] = Scope("model_per_key", f"{ctx.token_id}:{model}", rpm.get(model), tpm.get(model), None)
    return scopes, per_model


class _Plan:
    """A caller's scopes, built once per :class:`AuthContext` (a changed key or team gets a new context)."""

    __slots__ = ("base", "by_model", "ctx", "per_model")

    def __init__(self, ctx: AuthContext) -> None:
        self.ctx = ctx
        base, self.per_model = limit_scopes(ctx)
        self.base = tuple(base)
        self.by_model: dict[str, tuple[tuple[Scope, ...], bool]] = {}

    def for_model(self, model: str) -> tuple[tuple[Scope, ...], bool]:
        """The scopes a request for ``model`` counts against, and whether any limits requests in flight."""
        found = self.by_model.get(model)
        if found is None:
            extra = self.per_model.get(model)
            scopes = (*self.base, extra) if extra is not None else self.base
            found = (scopes, any(s.parallel is not None for s in scopes))
            if len(self.by_model) < _MAX_MODELS_PER_PLAN:
                self.by_model[model] = found
        return found


class Outcome:
    """What a store answered: admitted or not, the counts each scope had before this request, and the time to the
    end of the window.

    ``counts`` holds three numbers per scope, in scope order: requests and tokens in the window, requests in
    flight. ``failed`` is the 1-based index of the first scope over a limit (0: admitted), ``failed_kind`` which
    limit (``REQUESTS``, ``TOKENS``, ``PARALLEL``).
    """

    __slots__ = ("counts", "failed", "failed_kind", "lease", "reset")

    def __init__(self, counts: list[int], reset: float, failed: int = 0, failed_kind: int = 0) -> None:
        self.counts = counts
        self.reset = reset
        self.failed = failed
        self.failed_kind = failed_kind
        self.lease: str | None = None
        """The parallel slot the store gave instead of the one asked for (a pooled one), or None."""


class Store(Protocol):
    def finish(self, scopes: tuple[Scope, ...], lease: str | None, tokens: int) -> None: ...


class Ticket:
    """An admitted request's hold on its scopes. :meth:`finish` records its tokens and releases its parallel slots
    once; a ticket dropped unfinished (an exception nobody foresaw) finishes itself when it is freed."""

    __slots__ = ("counts", "done", "lease", "reset", "scopes", "store")

    def __init__(self, store: Store, scopes: tuple[Scope, ...], lease: str | None, outcome: Outcome) -> None:
        self.store = store
        self.scopes = scopes
        self.lease = lease
        self.counts = outcome.counts
        self.reset = outcome.reset
        self.done = False

    @property
    def counts_tokens(self) -> bool:
        return any(s.counts_tokens for s in self.scopes)

    def finish(self, tokens: int = 0) -> None:
        if self.done:
            return
        self.done = True
        self.store.finish(self.scopes, self.lease, tokens)

    def __del__(self) -> None:
        if not self.done:
            try:
                self.finish(0)
            except Exception:  # noqa: S110 - finalizers must not raise; the Redis lease expires anyway
                pass

    def headers(self) -> dict[str, str]:
        """The remaining/limit headers of a successful answer: ``x-ratelimit-remaining-requests`` / ``-tokens`` and
        ``x-ratelimit-limit-requests`` / ``-tokens`` of the scope with the least left (OpenAI's names, LiteLLM's
        for a key's limits). The per-scope ``x-ratelimit-<scope>-...`` ones come with a 429 only: a response header
        costs the server a few µs each, and a limited key's answers would carry up to twelve."""
        return _headers(self.scopes, self.counts, admitted=True, per_scope=False)


def _headers(scopes: tuple[Scope, ...], counts: list[int], *, admitted: bool,
             per_scope: bool = True) -> dict[str, str]:
    headers: dict[str, str] = {}
    least: dict[int, tuple[int, int]] = {}
    for i, scope in enumerate(scopes):
        requests, tokens, inflight = counts[3 * i], counts[3 * i + 1], counts[3 * i + 2]
        for kind, limit, used in ((REQUESTS, scope.rpm, requests + admitted), (TOKENS, scope.tpm, tokens),
                                  (PARALLEL, scope.parallel, inflight + admitted)):
            if limit is None:
                continue
            remaining = max(0, limit - used)
            if per_scope:
                names = scope.headers[kind]
                headers[names[0]] = str(remaining)
                headers[names[1]] = str(limit)
            if kind != PARALLEL and (kind not in least or remaining < least[kind][0]):
                least[kind] = (remaining, limit)
    for kind, (remaining, limit) in least.items():
        name = _TYPE_NAMES[kind]
        headers[f"x-ratelimit-remaining-{name}"] = str(remaining)
        headers[f"x-ratelimit-limit-{name}"] = str(limit)
    return headers


def over_limit(scopes: tuple[Scope, ...], outcome: Outcome) -> ApiError:
    """The 429 for a refused request: LiteLLM's message and headers, plus the remaining/limit headers."""
    scope = scopes[outcome.failed - 1]
    kind = outcome.failed_kind
    limit = scope.limit(kind) or 0
    i = outcome.failed - 1
    used = outcome.counts[3 * i + {REQUESTS: 0, TOKENS: 1, PARALLEL: 2}[kind]]
    wait = 1 if kind == PARALLEL else max(1, math.ceil(outcome.reset))
    reset_at = datetime.fromtimestamp(time.time() + (1 if kind == PARALLEL else outcome.reset), UTC)
    reset_text = reset_at.strftime("%Y-%m-%d %H:%M:%S UTC")
    name = _TYPE_NAMES[kind]
    message = (f"Rate limit exceeded for {scope.kind}: {scope.ident}. Limit type: {name}. "
               f"Current limit: {limit}, Remaining: {max(0, limit - used)}. Limit resets at: {reset_text}")
    headers = {"retry-after": str(wait), "rate_limit_type": name, "reset_at": reset_text,
               **_headers(scopes, outcome.counts, admitted=False)}
    return ApiError(429, message, type="rate_limit_error", code="429", headers=headers)


class LocalStore:
    """Counts in this process: exact for one process; with several, each counts on its own."""

    __slots__ = ("_index", "_inflight", "_windows", "clock", "window")

    def __init__(self, window: float, clock: Callable[[], float] = time.time) -> None:
        self.window = window
        self.clock = clock
        self._windows: dict[str, list[int]] = {}  # scope key -> [window index, requests, tokens]
        self._inflight: dict[str, int] = {}
        self._index = -1

    def _now(self) -> tuple[int, float]:
        now = self.clock()
        index = int(now // self.window)
        if index != self._index:  # once per window: forget the scopes idle since the last one
            self._index = index
            self._windows = {k: w for k, w in self._windows.items() if w[0] >= index - 1}
        return index, (index + 1) * self.window - now

    def acquire(self, scopes: tuple[Scope, ...]) -> Outcome:
        index, reset = self._now()
        windows = self._windows
        inflight = self._inflight
        counts: list[int] = []
        failed = failed_kind = 0
        for i, scope in enumerate(scopes, 1):
            window = windows.get(scope.key)
            requests, tokens = (window[1], window[2]) if window is not None and window[0] == index else (0, 0)
            held = inflight.get(scope.key, 0)
            counts += (requests, tokens, held)
            if failed:
                continue
            if scope.rpm is not None and requests >= scope.rpm:
                failed, failed_kind = i, REQUESTS
            elif scope.tpm is not None and tokens >= scope.tpm:
                failed, failed_kind = i, TOKENS
            elif scope.parallel is not None and held >= scope.parallel:
                failed, failed_kind = i, PARALLEL
        if failed:
            return Outcome(counts, reset, failed, failed_kind)
        for scope in scopes:
            if scope.windowed:
                window = windows.get(scope.key)
                if window is None or window[0] != index:
                    windows[scope.key] = [index, 1, 0]
                else:
                    window[1] += 1
            if scope.parallel is not None:
                inflight[scope.key] = inflight.get(scope.key, 0) + 1
        return Outcome(counts, reset)

    def finish(self, scopes: tuple[Scope, ...], lease: str | None, tokens: int) -> None:
        index = None
        for scope in scopes:
            if scope.parallel is not None:
                held = self._inflight.get(scope.key, 0) - 1
                if held > 0:
                    self._inflight[scope.key] = held
                else:
                    self._inflight.pop(scope.key, None)
            if tokens and scope.counts_tokens:
                if index is None:
                    index = self._now()[0]
                window = self._windows.get(scope.key)
                if window is None or window[0] != index:
                    self._windows[scope.key] = [index, 0, tokens]
                else:
                    window[2] += tokens

    def window_counts(self, scope_key: str) -> tuple[int, int]:
        """Requests and tokens counted for ``scope_key`` in the current window (for metrics)."""
        index = int(self.clock() // self.window)
        window = self._windows.get(scope_key)
        return (window[1], window[2]) if window is not None and window[0] == index else (0, 0)

    def inflight(self, scope_key: str) -> int:
        """Requests holding a slot of ``scope_key`` (for tests and metrics)."""
        return self._inflight.get(scope_key, 0)


class RateLimiter:
    """The one object the call path talks to: :meth:`check` before the upstream, :meth:`Ticket.finish` after."""

    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.time) -> None:
        gateway = settings.sluicegate_settings
        self.window = gateway.rate_limit_window
        self.fail_closed = (gateway.rate_limit_fail_closed
                            or settings.general_settings.fail_closed_rate_limit_enforcement)
        self.local = LocalStore(self.window, clock)
        self.redis: RedisStore | None = None
        from sluicegate.limits.ratelimit_redis import RedisStore, shared_redis

        redis = shared_redis(settings)
        if redis is not None:
            self.redis = RedisStore(redis, window=self.window, timeout=gateway.rate_limit_redis_timeout)
        self._plans: dict[str, _Plan] = {}
        self._gauge_cap = settings.sluicegate_settings.metrics.max_series
        self._redis_counts: dict[str, tuple[int, int]] | None = None  # per-model windows as last read from Redis
        self._leases = itertools.count()
        self._lease_prefix = f"{os.getpid()}.{os.urandom(4).hex()}."
        self._last_warning = -math.inf
        self._unwarned = 0

    @property
    def mode(self) -> str:
        return "redis" if self.redis is not None else "local"

    async def start(self) -> None:
        if self.redis is not None:
            self.redis.start()

    async def aclose(self) -> None:
        if self.redis is not None:
            await self.redis.aclose()

    def _plan(self, ctx: AuthContext) -> _Plan:
        plan = self._plans.get(ctx.token_id)
        if plan is None or plan.ctx is not ctx:
            if len(self._plans) >= _MAX_PLANS:
                self._plans.clear()
            plan = self._plans[ctx.token_id] = _Plan(ctx)
        return plan

    async def check(self, ctx: AuthContext, model: str) -> Ticket | None:
        """Admit one request of ``ctx`` for ``model`` (the name the client sent) or raise the 429 (or, Redis down
        and failing closed, the 503). None: nothing limits this caller."""
        scopes, parallel = self._plan(ctx).for_model(model)
        if not scopes:
            return None
        lease = f"{self._lease_prefix}{next(self._leases)}" if parallel else None
        store: Any = self.local
        redis = self.redis
        if redis is not None and redis.usable():
            try:
                outcome = await redis.acquire(scopes, lease)
                store = redis
            except Exception as exc:  # Redis down, slow or refusing: the documented choice applies
                redis.failed(exc)
                outcome = self._without_redis(scopes, exc)
        elif redis is not None:
            outcome = self._without_redis(scopes, None)
        else:
            outcome = self.local.acquire(scopes)
        if outcome.failed:
            raise over_limit(scopes, outcome)
        return Ticket(store, scopes, outcome.lease or lease, outcome)

    def _model_scopes(self, limit: int) -> tuple[list[tuple[_Plan, str, Scope]], int]:
        """The per-model scopes of the keys that made a request here (at most ``limit``), and how many more."""
        found: list[tuple[_Plan, str, Scope]] = []
        more = 0
        for plan in list(self._plans.values()):
            if plan.per_model:
                for model, scope in plan.per_model.items():
                    if len(found) >= limit:
                        more += 1
                    else:
                        found.append((plan, model, scope))
        return found, more

    async def refresh_gauges(self) -> None:
        """With Redis: read the current window of every per-model scope :meth:`gauges` reports (two round trips;
        called before a scrape and before a worker publishes its metrics). Redis failing: those gauges are left out
        until it answers again."""
        redis = self.redis
        if redis is None:
            return
        keys = [scope.key for _, _, scope in self._model_scopes(self._gauge_cap)[0]]
        if not keys:
            self._redis_counts = {}
            return
        if not redis.usable():
            self._redis_counts = None
            return
        try:
            self._redis_counts = await redis.window_counts(keys)
        except Exception as exc:
            redis.failed(exc)
            self._redis_counts = None
            log.debug("rate limits: the per-model gauges could not be read from Redis: %s: %s", type(exc).__name__,
                      exc)

    def gauges(self, limit: int) -> tuple[dict[str, list[tuple[tuple[str, ...], float]]], int]:
        """LiteLLM's ``litellm_remaining_api_key_requests_for_model`` / ``..._tokens_for_model``: what each key with a
        ``model_rpm_limit`` / ``model_tpm_limit`` that made a request here has left in the current window, from
        this process's counts, or with Redis from Redis's as :meth:`refresh_gauges` last read them. At most
        ``limit`` keys and models, and the number of samples left out."""
        requests: list[tuple[tuple[str, ...], float]] = []
        tokens: list[tuple[tuple[str, ...], float]] = []
        found = {"litellm_remaining_api_key_requests_for_model": requests,
                 "litellm_remaining_api_key_tokens_for_model": tokens}
        remote = self._redis_counts
        if self.redis is not None and remote is None:
            return found, 0  # not read yet, or Redis failing: unknown, not "all left"
        scopes, more = self._model_scopes(limit)
        for plan, model, scope in scopes:
            if self.redis is not None:
                used = remote.get(scope.key)  # type: ignore[union-attr]
                if used is None:  # a key that arrived since the last read
                    continue
            else:
                used = self.local.window_counts(scope.key)
            labels = (plan.ctx.token_id, getattr(plan.ctx.key, "key_alias", None) or "", model)
            if scope.rpm is not None:
                requests.append((labels, max(0, scope.rpm - used[0])))
            if scope.tpm is not None:
                tokens.append((labels, max(0, scope.tpm - used[1])))
        return found, more

    def _without_redis(self, scopes: tuple[Scope, ...], exc: BaseException | None) -> Outcome:
        """Redis is down: refuse (fail closed) or count in this process alone (fail open), warning once a minute."""
        self._warn(exc)
        if self.fail_closed:
            raise ApiError(503, FAIL_CLOSED_MESSAGE, type="service_unavailable", code="503",
                           headers={"retry-after": "1"})
        return self.local.acquire(scopes)

    def _warn(self, exc: BaseException | None) -> None:
        now = time.monotonic()
        if now - self._last_warning < WARN_EVERY:
            self._unwarned += 1
            return
        reason = type(exc).__name__ if exc is not None else "down at the last attempt"
        what = ("refusing requests of limited keys (rate_limit_fail_closed)" if self.fail_closed else
                "counting in this process only until it is back (each process allows the full limits)")
        more = f"; {self._unwarned} more since the last warning" if self._unwarned else ""
        log.warning("rate limits: Redis unavailable (%s); %s%s", reason, what, more)
        self._last_warning = now
        self._unwarned = 0


def _text_length(value: Any) -> int:
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict):
        return sum(_text_length(v) for k, v in value.items() if k in ("content", "text", "arguments", "input"))
    if isinstance(value, list):
        return sum(_text_length(v) for v in value)
    return 0


def estimate_tokens(messages: Any, response: Any) -> int:
    """Tokens of a call whose upstream reported no usage (a stream without ``include_usage``), for ``tpm_limit``:
    a quarter of the characters of the prompt and the answer, at least 1."""
    answer = 0
    if isinstance(response, dict):
        for choice in response.get("choices") or ():
            if isinstance(choice, dict):
                answer += _text_length(choice.get("message"))
    return max(1, (_text_length(messages) + answer) // 4)
