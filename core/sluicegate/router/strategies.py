"""Routing strategies: which deployment of a model group takes the next request (LiteLLM's names).

Each strategy is pure logic over the candidates it is given (deployments not cooling down) and the state it keeps
or reads; ``pick`` is on every request's path, so the common case is a few list operations.
"""

from __future__ import annotations

import bisect
import math
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


class _Samples:
    """One deployment's latency samples (when, seconds; in arrival order, at most ``max_latency_list_size``), their
    mean over those within ``ttl`` and when the oldest of those ages (``expires``), and the rankings it is in."""

    __slots__ = ("at", "expires", "mean", "rankings", "seconds")

    def __init__(self, size: int) -> None:
        self.at: deque[float] = deque(maxlen=size)
        self.seconds: deque[float] = deque(maxlen=size)
        self.mean = 0.0
        self.expires = math.inf
        self.rankings: list[tuple[_Ranking, int]] = []  # (ranking, this deployment's index there)


class _Ranking:
    """A group's latency ranking over its full list of deployments: each one's mean (``values``, in list order),
    the deployments within the buffer of the lowest (``best``, in list order; None: rank again), the ``lowest``
    mean and the buffer's ``limit``, a lower bound of the lowest mean outside ``best`` (``second``), and when the
    first counted sample ages (``expires``)."""

    __slots__ = ("best", "deployments", "expires", "limit", "lowest", "second", "values")

    def __init__(self, deployments: Sequence[Deployment]) -> None:
        self.deployments = deployments
        self.values = [0.0] * len(deployments)
        self.best: list[Deployment] | None = None
        self.lowest = 0.0
        self.limit = 0.0
        self.second = math.inf
        self.expires = math.inf


class LatencyBased(Strategy):
    """The deployment with the lowest mean latency over its last samples within ``ttl`` seconds; with
    ``lowest_latency_buffer`` b, a random one of those within (1 + b) × the lowest. A deployment without samples
    counts as fastest (so each gets tried). A failed attempt counts as the deployment's full timeout.

    Cheap per request: a sample updates its deployment's mean (a sum over at most ``max_latency_list_size``
    numbers) and its groups' rankings, and a pick over a group's full list reuses the ranking. A sample that leaves
    the set within the buffer as it was (the one best deployment staying clearly best; one within the buffer, not
    the lowest, staying within; one outside staying outside) changes nothing; any other ranks the group again on
    its next pick, from the kept means, as does a mean aging past ``ttl``."""

    name = "latency-based-routing"

    def __init__(self, state: RouterState, rng: random.Random, clock: Callable[[], float],
                 args: RoutingStrategyArgs) -> None:
        super().__init__(state, rng, clock)
        self.ttl = args.ttl
        self._buffer = args.lowest_latency_buffer
        self.size = args.max_latency_list_size
        self.samples: dict[str, _Samples] = {}
        self._rankings: dict[str, _Ranking] = {}
        self._last_at = -math.inf
        self._ordered = True  # samples have arrived in time order (the clock never went back)

    @property
    def buffer(self) -> float:
        return self._buffer

    @buffer.setter
    def buffer(self, value: float) -> None:
        self._buffer = value
        for ranking in self._rankings.values():
            ranking.best = None

    def _samples(self, model_id: str) -> _Samples:
        found = self.samples.get(model_id)
        if found is None:
            found = self.samples[model_id] = _Samples(self.size)
        return found

    def prepare(self, group: str, deployments: Sequence[Deployment]) -> None:
        ranking = self._rankings[group] = _Ranking(deployments)
        for index, deployment in enumerate(deployments):
            samples = self._samples(deployment.model_id)
            samples.rankings.append((ranking, index))
            ranking.values[index] = samples.mean
            ranking.expires = min(ranking.expires, samples.expires)

    def _recompute(self, samples: _Samples, now: float) -> None:
        at = samples.at
        ttl = self.ttl
        if at and self._ordered and now - at[0] < ttl:  # in time order with the oldest fresh: every one is
            seconds = samples.seconds
            samples.mean, samples.expires = sum(seconds) / len(seconds), at[0] + ttl
            return
        fresh = [(when, seconds) for when, seconds in zip(at, samples.seconds, strict=True) if now - when < ttl]
        if not fresh:
            samples.mean, samples.expires = 0.0, math.inf
        else:
            samples.mean, samples.expires = sum(s for _, s in fresh) / len(fresh), fresh[0][0] + ttl

    def latency(self, deployment: Deployment, now: float) -> float:
        samples = self.samples.get(deployment.model_id)
        if samples is None:
            return 0.0
        if now >= samples.expires:  # a sample aged past ttl: recount (rare; the mean is kept up to date otherwise)
            self._recompute(samples, now)
        return samples.mean

    def _best(self, candidates: Sequence[Deployment], latencies: list[float]) -> list[Deployment]:
        limit = min(latencies) * (1 + self._buffer)
        return [d for d, seconds in zip(candidates, latencies, strict=True) if seconds <= limit]

    def _rank(self, ranking: _Ranking, now: float) -> list[Deployment]:
        deployments = ranking.deployments
        if now >= ranking.expires:  # some mean aged: recount those, and when the next one does
            values = ranking.values = [self.latency(d, now) for d in deployments]
            samples = self.samples
            ranking.expires = min(samples[d.model_id].expires for d in deployments)
        else:
            values = ranking.values
        lowest = ranking.lowest = min(values)
        limit = ranking.limit = lowest * (1 + self._buffer)
        best = ranking.best = [d for d, seconds in zip(deployments, values, strict=True) if seconds <= limit]
        ranking.second = min((v for v in values if v > limit), default=math.inf) if len(best) == 1 else -math.inf
        return best

    def pick(self, candidates: Sequence[Deployment], group: str, tokens: int) -> Deployment:
        if len(candidates) == 1:
            return candidates[0]
        now = self.clock()
        ranking = self._rankings.get(group)
        if ranking is not None and ranking.deployments is candidates:
            best = ranking.best
            if best is None or now >= ranking.expires:
                best = self._rank(ranking, now)
        else:  # a filtered list (cooldowns, health, a retry avoiding a deployment) is ranked afresh
            best = self._best(candidates, [self.latency(d, now) for d in candidates])
        return best[0] if len(best) == 1 else self.rng.choice(best)

    def ended(self, deployment: Deployment, seconds: float, ok: bool) -> None:
        samples = self.samples.get(deployment.model_id)
        if samples is None:
            samples = self._samples(deployment.model_id)
        now = self.clock()
        if now < self._last_at:
            self._ordered = False
        self._last_at = now
        samples.at.append(now)
        samples.seconds.append(seconds if ok else max(seconds, deployment.timeout))
        self._recompute(samples, now)
        mean = samples.mean
        for ranking, index in samples.rankings:
            values = ranking.values
            old = values[index]
            values[index] = mean
            if samples.expires < ranking.expires:
                ranking.expires = samples.expires
            best = ranking.best
            if best is None or mean == old:
                continue
            limit = ranking.limit
            if old > limit:  # was outside the buffer
                if mean > limit:  # and stays outside: the lowest, the limit and the best are as they were
                    ranking.second = min(ranking.second, mean)
                    continue
            elif len(best) == 1:  # was the one best
                if mean * (1 + self._buffer) < ranking.second:  # and stays alone within the buffer of its own mean
                    ranking.lowest = mean
                    ranking.limit = mean * (1 + self._buffer)
                    continue
            elif ranking.lowest < old and ranking.lowest <= mean <= limit:  # within, above the lowest, stays within
                continue
            ranking.best = None


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
