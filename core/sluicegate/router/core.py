"""The router: which deployment answers a request for a model group, and what happens when one fails.

Pure logic over the deployments of :class:`~sluicegate.providers.models.ModelRouter` and a
:class:`~sluicegate.router.state.RouterState` (in process or Redis). The chat route hands it an ``attempt``
coroutine (one upstream call on one deployment); the router picks a deployment with the configured strategy,
retries what is retryable (preferring another deployment), falls back to other model groups, cools down
deployments that keep failing, and returns the answer with the history of its attempts.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from sluicegate.config import model_name_matches
from sluicegate.errors import ApiError
from sluicegate.providers.base import UpstreamError
from sluicegate.providers.models import for_wildcard
from sluicegate.router.errors import COOLDOWN_CLASSES, RETRYABLE_CLASSES, error_class, policy_field
from sluicegate.router.health import HealthChecker
from sluicegate.router.state import LocalRouterState, RedisRouterState, RouterState
from sluicegate.router.strategies import Strategy, make_strategy

if TYPE_CHECKING:
    from sluicegate.config import Settings
    from sluicegate.providers.base import ProviderClients
    from sluicegate.providers.models import Deployment, ModelRouter

__all__ = ("Attempt", "Group", "Outcome", "RequestOptions", "Router", "RouterFailure")

T = TypeVar("T")
DEFAULT_NUM_RETRIES = 2  # LiteLLM's default (openai.DEFAULT_MAX_RETRIES)
MAX_WILDCARD_MODELS = 1024


class Group:
    """A model group as the client named it: ``name`` (the group's own name) and its deployments."""

    __slots__ = ("deployments", "name")

    def __init__(self, name: str, deployments: list[Deployment]) -> None:
        self.name = name
        self.deployments = deployments


class Attempt:
    """One upstream call of a request: for the log event's ``attempts``."""

    __slots__ = ("duration", "error_class", "model_group", "model_id", "status_code")

    def __init__(self, model_id: str, model_group: str, status_code: int, error_class: str | None,
                 duration: float) -> None:
        self.model_id = model_id
        self.model_group = model_group
        self.status_code = status_code
        self.error_class = error_class
        self.duration = duration

    def as_dict(self) -> dict[str, Any]:
        return {"model_id": self.model_id, "model_group": self.model_group, "status_code": self.status_code,
                "error_class": self.error_class, "duration": round(self.duration, 6)}


class Outcome(Generic[T]):
    """The answer of the attempt that succeeded, its deployment, and every attempt made."""

    __slots__ = ("_router", "attempts", "deployment", "result", "stream")

    def __init__(self, router: Router, result: T, deployment: Deployment, attempts: list[Attempt],
                 stream: bool) -> None:
        self._router = router
        self.result = result
        self.deployment = deployment
        self.attempts = attempts
        self.stream = stream

    def finish(self, tokens: int = 0) -> None:
        """The answer is complete (for a stream: it ended): counts its tokens; a stream frees its deployment for
        least-busy."""
        self._router.finished(self.deployment, tokens, self.stream)


class RouterFailure(Exception):
    """The request failed as a whole: ``error`` is answered to the client; ``deployment`` was tried last."""

    def __init__(self, error: ApiError, attempts: list[Attempt], deployment: Deployment | None) -> None:
        super().__init__(error.message)
        self.error = error
        self.attempts = attempts
        self.deployment = deployment


class RequestOptions:
    """Per-request router controls from the body (LiteLLM's ``num_retries`` and ``fallbacks``)."""

    __slots__ = ("fallbacks", "num_retries")

    def __init__(self, num_retries: int | None = None, fallbacks: list[str] | None = None) -> None:
        self.num_retries = num_retries
        self.fallbacks = fallbacks


def _fallback_map(entries: Sequence[Mapping[str, list[str]]] | None) -> dict[str, list[str]]:
    result: dict[str, list[str]] = {}
    for entry in entries or ():
        for group, targets in entry.items():
            result.setdefault(group, []).extend(targets)
    return result


class Router:
    """Routes requests for model groups over their deployments (see the module docstring)."""

    def __init__(self, models: ModelRouter, settings: Settings, *, state: RouterState | None = None,
                 clock: Callable[[], float] = time.time, rng: random.Random | None = None,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        router = settings.router_settings
        litellm = settings.litellm_settings
        self.models = models
        self.clock = clock
        self.sleep = sleep
        self.rng = rng or random.Random()
        self.state = state or self._state_for(settings, clock)
        self.strategy: Strategy = make_strategy(router.routing_strategy, router.routing_strategy_args, self.state,
                                                self.rng, clock)
        self.groups: dict[str, Group] = {name: Group(name, deps) for name, deps in models.groups.items()}
        self.wildcards = sorted((g for g in self.groups.values() if "*" in g.name),
                                key=lambda g: -len(g.name.replace("*", "")))
        for group in self.groups.values():
            self.strategy.prepare(group.name, group.deployments)
        self.aliases: dict[str, str] = {}
        self.hidden: set[str] = set()
        for alias, target in router.model_group_alias.items():
            self.aliases[alias] = target["model"] if isinstance(target, Mapping) else target
            if isinstance(target, Mapping) and target.get("hidden"):
                self.hidden.add(alias)
        self.num_retries = next((n for n in (router.num_retries, litellm.num_retries) if n is not None),
                                DEFAULT_NUM_RETRIES)
        self.retry_after = router.retry_after
        self.retry_policy = router.retry_policy
        self.allowed_fails = router.allowed_fails
        self.allowed_fails_policy = router.allowed_fails_policy
        self.cooldown_time = router.cooldown_time
        self.cooldowns_on = not router.disable_cooldowns and router.cooldown_time > 0
        self.max_fallbacks = router.max_fallbacks
        self.fallbacks = _fallback_map(router.fallbacks if router.fallbacks is not None else litellm.fallbacks)
        self.context_window_fallbacks = _fallback_map(
            router.context_window_fallbacks if router.context_window_fallbacks is not None
            else litellm.context_window_fallbacks)
        self.content_policy_fallbacks = _fallback_map(
            router.content_policy_fallbacks if router.content_policy_fallbacks is not None
            else litellm.content_policy_fallbacks)
        self.default_fallbacks = list(router.default_fallbacks if router.default_fallbacks is not None
                                      else litellm.default_fallbacks or ())
        self._clients: ProviderClients | None = None
        self._concrete: dict[str, Group] = {}
        self.unhealthy: frozenset[str] = frozenset()
        """Ids of the deployments the last background health check found unhealthy (skipped unless every
        candidate is)."""
        self.health = HealthChecker(self, settings.general_settings)

    @property
    def clients(self) -> ProviderClients | None:
        """What the providers were started with (None before :meth:`start`)."""
        return self._clients

    @staticmethod
    def _state_for(settings: Settings, clock: Callable[[], float]) -> RouterState:
        router = settings.router_settings
        redis: dict[str, Any] | None = None
        if router.redis_host or router.redis_url:
            redis = {"host": router.redis_host, "port": router.redis_port, "password": router.redis_password,
                     "url": router.redis_url}
        else:
            cache = settings.litellm_settings.cache_params or {}
            if settings.litellm_settings.cache and cache.get("type") == "redis":
                redis = {k: cache.get(k) for k in ("host", "port", "password", "url")}
        if redis is None:
            return LocalRouterState(clock)
        return RedisRouterState(redis, clock=clock, share_usage=router.routing_strategy == "usage-based-routing-v2")

    # lifecycle ----------------------------------------------------------------------------------------
    async def start(self, clients: ProviderClients) -> None:
        self._clients = clients
        await self.state.start(d.model_id for d in self.models.all)
        self.health.start()

    async def aclose(self) -> None:
        await self.health.aclose()
        for group in self._concrete.values():
            for deployment in group.deployments:
                await deployment.provider.aclose()
        self._concrete.clear()
        await self.state.aclose()

    # names --------------------------------------------------------------------------------------------
    def listed(self) -> list[str]:
        """The names ``/v1/models`` shows: every group once, then the aliases not marked hidden."""
        return [*self.groups, *(a for a in self.aliases if a not in self.hidden and a not in self.groups)]

    def resolve(self, name: str) -> Group | None:
        """The group a client's model name stands for: a group, an alias of one, or a wildcard group's match
        (most specific pattern first)."""
        group = self.groups.get(name)
        if group is not None:
            return group
        target = self.aliases.get(name)
        if target is not None:
            return self.groups.get(target) or self._wildcard(target)
        return self._wildcard(name)

    def _wildcard(self, name: str) -> Group | None:
        concrete = self._concrete.get(name)
        if concrete is not None:
            return concrete
        for pattern in self.wildcards:
            matched = model_name_matches(pattern.name, name)
            if matched is None:
                continue
            group = Group(name, [for_wildcard(d, name, matched) for d in pattern.deployments])
            if len(self._concrete) < MAX_WILDCARD_MODELS:  # beyond: built per request (bounded memory)
                self._concrete[name] = group
                self.strategy.prepare(name, group.deployments)
            return group
        return None

    async def ready(self, group: Group) -> None:
        """Start the providers of a wildcard group made for this name (once)."""
        if self._clients is None:
            return
        for deployment in group.deployments:
            if deployment.provider.http is None:  # a wildcard's concrete deployment, new
                await deployment.provider.start(self._clients)

    def estimate_tokens(self, messages: Any) -> int:
        """A request's prompt tokens as usage-based-routing-v2 counts them before the answer (about 4 characters a
        token); 0 for the other strategies, which do not need it."""
        if self.strategy.name != "usage-based-routing-v2" or not isinstance(messages, list):
            return 0
        return sum(len(str(m.get("content") or "")) for m in messages if isinstance(m, dict)) // 4 + 1

    # picking ------------------------------------------------------------------------------------------
    def pick(self, group: Group, avoid: Sequence[str] = (), tokens: int = 0) -> Deployment:
        """A deployment of ``group`` by the strategy, skipping those cooling down and, when others remain, those the
        background health check found unhealthy and those in ``avoid`` (already tried by this request). Every
        deployment cooling down: a 429 naming the group and when it reopens."""
        candidates = group.deployments
        cooldowns = self.state.cooldowns
        if cooldowns:
            cooling = self.state.cooling_until
            usable = [d for d in candidates if cooling(d.model_id) is None]
            if not usable:
                self._all_cooling(group)
            if len(usable) != len(candidates):
                candidates = usable
        unhealthy = self.unhealthy
        if unhealthy:
            healthy = [d for d in candidates if d.model_id not in unhealthy]
            if healthy and len(healthy) != len(candidates):
                candidates = healthy
        if avoid:
            fresh = [d for d in candidates if d.model_id not in avoid]
            if fresh:
                candidates = fresh
        return self.strategy.pick(candidates, group.name, tokens)

    def _all_cooling(self, group: Group) -> None:
        reopens = min(self.state.cooldowns.get(d.model_id, 0.0) for d in group.deployments)
        wait = max(0.0, reopens - self.clock())
        at = datetime.fromtimestamp(reopens, UTC).isoformat(timespec="seconds")
        raise ApiError(429, f"every deployment of model group {group.name!r} is cooling down after failures; "
                            f"it reopens in {wait:.1f} s (at {at})", type="rate_limit_error", param="model",
                       code="model_group_cooling_down", headers={"retry-after": str(max(1, math.ceil(wait)))})

    # running a request --------------------------------------------------------------------------------
    def retries_for(self, error: str, num_retries: int) -> int:
        """How many retries a failure of class ``error`` allows."""
        policy = self.retry_policy
        if policy is not None:
            field = policy_field(error, "Retries")
            value = getattr(policy, field, None) if field else None
            if value is not None:
                return value
        return num_retries if error in RETRYABLE_CLASSES else 0

    def _allowed_fails(self, error: str) -> tuple[int, bool]:
        policy = self.allowed_fails_policy
        if policy is not None:
            field = policy_field(error, "AllowedFails")
            value = getattr(policy, field, None) if field else None
            if value is not None:
                return value, True
        return self.allowed_fails, False

    def fallbacks_for(self, group: str, error: str, options: RequestOptions | None) -> list[str]:
        """The model groups to try after ``group`` failed with ``error`` (LiteLLM's order: the request's own list,
        then the error's special list, then ``fallbacks`` for the group or ``*``, then ``default_fallbacks``)."""
        if options is not None and options.fallbacks is not None:
            return list(options.fallbacks)
        special = {"ContextWindowExceededError": self.context_window_fallbacks,
                   "ContentPolicyViolationError": self.content_policy_fallbacks}.get(error)
        if special is not None and group in special:
            return list(special[group])
        if error == "BadRequestError":
            return []  # the request itself is wrong: another model will not take it either
        return list(self.fallbacks.get(group) or self.fallbacks.get("*") or self.default_fallbacks)

    def finished(self, deployment: Deployment, tokens: int, stream: bool) -> None:
        if stream and self.strategy.until_stream_ends:
            self.strategy.ended(deployment, 0.0, True)
        if tokens:
            self.state.add_usage(deployment.model_id, tokens=tokens)

    async def call(self, group: Group, attempt: Callable[[Deployment], Awaitable[T]], *,
                   options: RequestOptions | None = None, stream: bool = False, tokens: int = 0) -> Outcome[T]:
        """Answer with ``attempt(deployment)`` from ``group``, retrying and falling back as configured; raises
        :class:`RouterFailure` when the request fails as a whole."""
        attempts: list[Attempt] = []
        num_retries = options.num_retries if options is not None and options.num_retries is not None \
            else self.num_retries
        error: ApiError | None = None
        last: Deployment | None = None
        chain: list[str] | None = None
        current: Group | None = group
        used_fallbacks = 0
        while True:
            assert current is not None
            try:
                result, deployment = await self._in_group(current, attempt, attempts, num_retries, stream, tokens)
                return Outcome(self, result, deployment, attempts, stream)
            except _GroupFailed as failed:
                error, last = failed.error, failed.deployment or last
            if chain is None:
                chain = [g for g in self.fallbacks_for(group.name, error_class(error), options) if g != group.name]
            current = None
            while chain and current is None and used_fallbacks < self.max_fallbacks:
                current = self.resolve(chain.pop(0))
                used_fallbacks += 1
            if current is None:
                raise RouterFailure(error, attempts, last)
            await self.ready(current)

    async def _in_group(self, group: Group, attempt: Callable[[Deployment], Awaitable[T]], attempts: list[Attempt],
                        num_retries: int, stream: bool, tokens: int) -> tuple[T, Deployment]:
        tried: list[str] = []
        retry = 0
        deployment: Deployment | None = None
        while True:
            try:
                deployment = self.pick(group, tried, tokens)
            except ApiError as exc:  # all cooling down, or no rpm/tpm headroom
                raise _GroupFailed(exc, deployment) from None
            strategy = self.strategy
            strategy.started(deployment)
            began = time.perf_counter()
            try:
                if stream and deployment.stream_timeout:
                    try:
                        async with asyncio.timeout(deployment.stream_timeout):
                            result = await attempt(deployment)
                    except TimeoutError:
                        raise UpstreamError(504, f"upstream {deployment.custom_llm_provider} did not start "
                                                 f"streaming within {deployment.stream_timeout:g}s",
                                            type="timeout", code="504") from None
                else:
                    result = await attempt(deployment)
            except ApiError as exc:
                seconds = time.perf_counter() - began
                strategy.ended(deployment, seconds, False)
                kind = error_class(exc)
                attempts.append(Attempt(deployment.model_id, group.name, exc.status, kind, seconds))
                await self._failed(group, deployment, kind)
                if retry >= self.retries_for(kind, num_retries):
                    raise _GroupFailed(exc, deployment) from None
                retry += 1
                tried.append(deployment.model_id)
                if self.retry_after > 0:
                    await self.sleep(self.retry_after)
                continue
            seconds = time.perf_counter() - began
            if not (stream and strategy.until_stream_ends):  # latency counts a stream's time to start
                strategy.ended(deployment, seconds, True)
            attempts.append(Attempt(deployment.model_id, group.name, 200, None, seconds))
            return result, deployment

    async def _failed(self, group: Group, deployment: Deployment, kind: str) -> None:
        # A group of one deployment never cools down (LiteLLM's rule): there is nowhere else to send its
        # requests, and a cooldown would only turn its errors into 429s.
        if not self.cooldowns_on or kind not in COOLDOWN_CLASSES or len(group.deployments) < 2:
            return
        allowed, per_class = self._allowed_fails(kind)
        await self.state.record_failure(deployment.model_id, kind, allowed, self.cooldown_time, per_class)


class _GroupFailed(Exception):
    def __init__(self, error: ApiError, deployment: Deployment | None) -> None:
        self.error = error
        self.deployment = deployment
