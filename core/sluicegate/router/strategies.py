"""Routing strategies: which deployment of a model group takes the next request (LiteLLM's names).

Each strategy is pure logic over the candidates it is given (deployments not cooling down) and the state it keeps
or reads; ``pick`` is on every request's path, so the common case is a few list operations.
"""

from __future__ import annotations

import bisect
import random
from collections import deque
from typing import TYPE_CHECKING

from sluicegate.errors import ApiError

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from sluicegate.config import RoutingStrategyArgs
    from sluicegate.providers.models import Deployment
    from sluicegate.router.state import RouterState

__all__ = ("LatencyBased", "LeastBusy", "SimpleShuffle", "Strategy", "UsageBasedV2", "make_strategy",
           "shuffle_weights")


def shuffle_weights(deployments: Sequence[Deployment]) -> list[float] | None:
    """simple-shuffle's weights: ``weight`` when any deployment sets one, else ``rpm``, else ``tpm``; None: equal."""
    for field in ("weight", "rpm", "tpm"):
        if any(getattr(d, field) is not None for d in deployments):
            return [float(getattr(d, field) or 0) for d in deployments]
    return None


class Strategy:
    """Picks one of ``candidates`` (never empty); told when an attempt starts and ends."""

    name = ""
    until_stream_ends = False
    """``ended`` comes when a stream ends rather than when it starts (least-busy counts streams in flight)."""

    def __init__(self, state: RouterState, rng: random.Random, clock: Callable[[], float]) -> None:
        self.state = state
        self.rng = rng
        self.clock = clock

    def pick(self, candidates: Sequence[Deployment], group: str, tokens: int) -> Deployment:
        raise NotImplementedError

    def prepare(self, group: str, deployments: Sequence[Deployment]) -> None:
        """Called once per group at start-up with its full list of deployments."""

    def started(self, deployment: Deployment) -> None:
        """An attempt on ``deployment`` begins."""

    def ended(self, deployment: Deployment, seconds: float, ok: bool) -> None:
        """An attempt on ``deployment`` ended after ``seconds`` (time to the answer, or to a stream's start)."""


class SimpleShuffle(Strategy):
    """Random, weighted by ``weight`` (else ``rpm``, else ``tpm``); equal when none is set."""

    name = "simple-shuffle"

    def __init__(self, state: RouterState, rng: random.Random, clock: Callable[[], float]) -> None:
        super().__init__(state, rng, clock)
        self._cumulative: dict[str, tuple[Sequence[Deployment], list[float] | None]] = {}

    @staticmethod
    def cumulative(candidates: Sequence[Deployment]) -> list[float] | None:
        weights = shuffle_weights(candidates)
        if weights is None:
            return None
        total = 0.0
        cumulative = []
        for weight in weights:
            total += weight
            cumulative.append(total)
        return cumulative if total > 0 else None

    def prepare(self, group: str, deployments: Sequence[Deployment]) -> None:
        """Weigh a group's full list once (the common pick uses it as it is)."""
        self._cumulative[group] = (deployments, self.cumulative(deployments))

    def pick(self, candidates: Sequence[Deployment], group: str, tokens: int) -> Deployment:
        if len(candidates) == 1:
            return candidates[0]
        cached = self._cumulative.get(group)
        # a filtered list (cooldowns, a retry avoiding a deployment) is weighed afresh
        cumulative = cached[1] if cached is not None and cached[0] is candidates else self.cumulative(candidates)
        if cumulative is None:
            return candidates[int(self.rng.random() * len(candidates))]
        return candidates[bisect.bisect_right(cumulative, self.rng.random() * cumulative[-1])]


class LeastBusy(Strategy):
    """The deployment with the fewest requests in flight from this process (ties broken at random)."""

    name = "least-busy"
    until_stream_ends = True

    def __init__(self, state: RouterState, rng: random.Random, clock: Callable[[], float]) -> None:
        super().__init__(state, rng, clock)
        self.in_flight: dict[str, int] = {}

    def pick(self, candidates: Sequence[Deployment], group: str, tokens: int) -> Deployment:
        busy = self.in_flight
        lowest = min(busy.get(d.model_id, 0) for d in candidates)
        best = [d for d in candidates if busy.get(d.model_id, 0) == lowest]
        return best[0] if len(best) == 1 else self.rng.choice(best)

    def started(self, deployment: Deployment) -> None:
        self.in_flight[deployment.model_id] = self.in_flight.get(deployment.model_id, 0) + 1

    def ended(self, deployment: Deployment, seconds: float, ok: bool) -> None:
        left = self.in_flight.get(deployment.model_id, 1) - 1
        if left > 0:
            self.in_flight[deployment.model_id] = left
        else:
            self.in_flight.pop(deployment.model_id, None)


class LatencyBased(Strategy):
    """The deployment with the lowest mean latency over its last samples within ``ttl`` seconds; with
    ``lowest_latency_buffer`` b, a random one of those within (1 + b) × the lowest. A deployment without samples
    counts as fastest (so each gets tried). A failed attempt counts as the deployment's full timeout."""

    name = "latency-based-routing"

    def __init__(self, state: RouterState, rng: random.Random, clock: Callable[[], float],
                 args: RoutingStrategyArgs) -> None:
        super().__init__(state, rng, clock)
        self.ttl = args.ttl
        self.buffer = args.lowest_latency_buffer
        self.size = args.max_latency_list_size
        self.samples: dict[str, deque[tuple[float, float]]] = {}
        self._means: dict[str, tuple[float, float]] = {}  # id -> (mean, when its oldest counted sample expires)

    def _recompute(self, model_id: str, now: float) -> tuple[float, float]:
        fresh = [(at, seconds) for at, seconds in self.samples.get(model_id, ()) if now - at < self.ttl]
        if not fresh:
            mean = (0.0, float("inf"))
        else:
            mean = (sum(seconds for _, seconds in fresh) / len(fresh), fresh[0][0] + self.ttl)
        self._means[model_id] = mean
        return mean

    def latency(self, deployment: Deployment, now: float) -> float:
        mean = self._means.get(deployment.model_id)
        if mean is None:
            return 0.0
        if now >= mean[1]:  # a sample aged past ttl: recount (rare; the mean is kept up to date otherwise)
            mean = self._recompute(deployment.model_id, now)
        return mean[0]

    def pick(self, candidates: Sequence[Deployment], group: str, tokens: int) -> Deployment:
        if len(candidates) == 1:
            return candidates[0]
        now = self.clock()
        latencies = [self.latency(d, now) for d in candidates]
        lowest = min(latencies)
        limit = lowest * (1 + self.buffer)
        best = [d for d, seconds in zip(candidates, latencies, strict=True) if seconds <= limit]
        return best[0] if len(best) == 1 else self.rng.choice(best)

    def ended(self, deployment: Deployment, seconds: float, ok: bool) -> None:
        samples = self.samples.get(deployment.model_id)
        if samples is None:
            samples = self.samples[deployment.model_id] = deque(maxlen=self.size)
        now = self.clock()
        samples.append((now, seconds if ok else max(seconds, deployment.timeout)))
        self._recompute(deployment.model_id, now)


class UsageBasedV2(Strategy):
    """The deployment with the most headroom: among those whose ``rpm`` / ``tpm`` this minute (shared through
    Redis when configured) still fit one more request of ``tokens``, the one with the fewest tokens used; none fit:
    429 naming the group."""

    name = "usage-based-routing-v2"

    def pick(self, candidates: Sequence[Deployment], group: str, tokens: int) -> Deployment:
        fitting: list[tuple[float, Deployment]] = []
        for deployment in candidates:
            requests, used = self.state.usage(deployment.model_id)
            if deployment.rpm is not None and requests + 1 > deployment.rpm:
                continue
            if deployment.tpm is not None and used + tokens > deployment.tpm:
                continue
            fitting.append((used, deployment))
        if not fitting:
            raise ApiError(429, f"every deployment of model group {group!r} has used its rpm/tpm for this minute",
                           type="rate_limit_error", param="model", code="429", headers={"retry-after": "60"})
        lowest = min(used for used, _ in fitting)
        best = [d for used, d in fitting if used == lowest]
        chosen = best[0] if len(best) == 1 else self.rng.choice(best)
        self.state.add_usage(chosen.model_id, requests=1)
        return chosen


def make_strategy(name: str, args: RoutingStrategyArgs, state: RouterState, rng: random.Random,
                  clock: Callable[[], float]) -> Strategy:
    if name == "least-busy":
        return LeastBusy(state, rng, clock)
    if name == "latency-based-routing":
        return LatencyBased(state, rng, clock, args)
    if name == "usage-based-routing-v2":
        return UsageBasedV2(state, rng, clock)
    return SimpleShuffle(state, rng, clock)
