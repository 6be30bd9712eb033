"""The spend ledger: what each request cost, added up per key, team, user, end user, tag and model per day, and
the budget check made before a request goes upstream.

The request path only touches memory: :meth:`SpendLedger.record` adds the event's ``response_cost`` to a few dict
entries, :meth:`SpendLedger.check` compares in-memory counters with the budgets of the request's key, team, user,
end user and the proxy. A background task writes what accumulated to the database every
``sluicegate_settings.spend_flush_interval`` seconds (1 by default), in one transaction of batched upserts, and at
shutdown; then it reads back the period spend of every entity with a budget, so spend written by other processes
(sharing the database) reaches this one within one interval. With Redis configured, every process also counts each
budget's spend in Redis (:mod:`sluicegate.limits.shared`), so near a budget every process sees all of it at once.

What can be spent beyond a budget: a request is checked before it goes upstream and its cost is known only after,
so every request already in flight when the budget is reached still completes: the overshoot is at most the cost
of the requests in flight at that moment (across processes with Redis; across processes without Redis, plus what
the others spent within one flush interval).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import OrderedDict
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sluicegate.aio import cancel_and_wait
from sluicegate.errors import ApiError
from sluicegate.limits.budgets import BudgetCounter, budget_exceeded, duration_seconds, next_reset
from sluicegate.limits.shared import NEAR

if TYPE_CHECKING:
    from collections.abc import Callable

    from sluicegate.auth import AuthContext
    from sluicegate.config import Settings
    from sluicegate.db.store import BudgetFields, EndUserRecord, Store
    from sluicegate.events import LogEvent
    from sluicegate.limits.shared import SharedSpend

__all__ = ("ENTITY_TYPES", "SpendLedger")

log = logging.getLogger("sluicegate")

ENTITY_TYPES = ("key", "team", "user", "end_user", "tag", "model")
"""What spend is added up by (``/spend/report``'s ``group_by``)."""

_PERIOD_TYPES = frozenset({"key", "team", "user", "end_user"})  # rows with a budget's ``spend`` column
_END_USER_CACHE = 10_000
_MAX_ID = 255
_MISSING: Any = object()


class SpendLedger:
    """Spend and budgets for one gateway. ``clock`` (seconds since the epoch) decides days and budget periods:
    tests drive it instead of waiting."""

    def __init__(self, store: Store, settings: Settings, *, clock: Callable[[], float] = time.time,
                 shared: SharedSpend | None = None) -> None:
        self.store = store
        self.clock = clock
        self.shared = shared
        self.interval = min(settings.sluicegate_settings.spend_flush_interval, 1.0)
        litellm = settings.litellm_settings
        self.proxy_max_budget: float | None = litellm.max_budget
        self.proxy_seconds = duration_seconds(litellm.budget_duration)
        self.counters: dict[tuple[str, str], BudgetCounter] = {}
        # (day, entity type, id, team) -> [spend, requests, prompt tokens, completion tokens]; team "": all teams
        self._daily: dict[tuple[str, str, str, str], list[float]] = {}
        self._period: dict[tuple[str, str], float] = {}
        self._proxy = 0.0
        self._writing: tuple[dict[tuple[str, str, str, str], list[float]], dict[tuple[str, str], float], float] = (
            {}, {}, 0.0)
        self._day = ""
        self._day_ends = 0.0
        self._end_users: OrderedDict[str, EndUserRecord | None] = OrderedDict()
        self._replaced: set[tuple[str, str]] = set()
        self._end_users_limited: bool | None = None  # any end user blocked or with a budget (None: not known)
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self.flushes = 0
        self.flush_failures = 0
        self.soft_crossed: dict[str, int] = {}
        self.refused: dict[str, int] = {}

    # lifecycle ----------------------------------------------------------------------------------------------
    async def start(self) -> None:
        if self.proxy_max_budget is not None:
            spend, reset_at = await self.store.proxy_spend()
            counter = self._counter("proxy", "", spend, reset_at.timestamp() if reset_at else None)
            counter.max_budget, counter.seconds = self.proxy_max_budget, self.proxy_seconds
            if self.proxy_seconds and counter.reset_at is None:
                counter.reset_at = self.clock() + self.proxy_seconds
                await self.store.reset_proxy_spend(self._when(counter.reset_at))
                counter.spend = 0.0
        if self.shared is not None:
            await self.shared.start()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def aclose(self) -> None:
        """Stop the flusher and write everything recorded (SIGTERM ends here: nothing recorded is lost)."""
        if self._task is not None:
            await cancel_and_wait(self._task, "spend flusher", grace=5.0)
            self._task = None
        try:
            await self.flush()
        except Exception as exc:
            log.error("spend: the last flush failed, %d rows not written: %s: %s", len(self._daily),
                      type(exc).__name__, exc)
        if self.shared is not None:
            await self.shared.aclose()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.flush()
            except Exception as exc:  # kept in memory and written with the next flush
                self.flush_failures += 1
                log.warning("spend: flush failed (kept for the next one): %s: %s", type(exc).__name__, exc)

    def invalidate(self) -> None:
        """Forget cached end users (an admin changed something)."""
        self._end_users.clear()
        self._end_users_limited = None

    # the request path ---------------------------------------------------------------------------------------
    async def end_user(self, user_id: str | None) -> EndUserRecord | None:
        """The end user a request names, when any end user is blocked or has a budget (cached; None when unknown).
        Looking one up reads the database once per end user and change of admin data, never per request."""
        if not user_id:
            return None
        if self._end_users_limited is None:  # once per change of any admin data, not per request
            self._end_users_limited = await self.store.any_end_user_limited()
        if not self._end_users_limited:
            return None
        found = self._end_users.get(user_id, _MISSING)
        if found is _MISSING:
            found = await self.store.get_end_user(user_id) if len(user_id) <= 255 else None
            self._end_users[user_id] = found
            if len(self._end_users) > _END_USER_CACHE:
                self._end_users.popitem(last=False)
        return found

    async def check(self, ctx: AuthContext, end_user: EndUserRecord | None) -> None:
        """Refuse the request (LiteLLM's ``budget_exceeded``, 400) when its key, team, user, end user or the proxy
        has spent its ``max_budget`` in the current period. Memory only; with Redis, the other processes' part as of
        the last refresh, read again in one round trip when the spend is past ``NEAR`` of a budget
        (:mod:`sluicegate.limits.shared`)."""
        now = self.clock()
        due: list[BudgetCounter] = []
        key = ctx.key
        if key is not None:
            if key.max_budget is not None or key.soft_budget is not None:
                due.append(self._budget("key", ctx.token_id, key, now))
            team = ctx.team
            if team is not None and (team.max_budget is not None or team.soft_budget is not None):
                due.append(self._budget("team", team.team_id, team, now))
            user = ctx.user  # the key's owner, loaded and cached with the key
            if user is not None and (user.max_budget is not None or user.soft_budget is not None):
                due.append(self._budget("user", user.user_id, user, now))
        if end_user is not None:
            if end_user.blocked:
                raise ApiError(403, f"end user {end_user.user_id!r} is blocked", type="permission_error",
                               param="user", code="403")
            if end_user.max_budget is not None or end_user.soft_budget is not None:
                due.append(self._budget("end_user", end_user.user_id, end_user, now))
        if self.proxy_max_budget is not None:
            counter = self.counters[("proxy", "")]
            self._roll(counter, now)
            due.append(counter)
        shared = self.shared
        near: list[BudgetCounter] | None = None
        for counter in due:
            limit = counter.max_budget
            if limit is None:
                continue
            spend = counter.spend
            if shared is not None:
                seen = shared.view(counter)
                if seen is not None and seen > spend:
                    spend = seen
            if spend >= limit:
                self._refuse(counter, spend)
            if shared is not None and spend >= limit * NEAR:
                near = [*(near or ()), counter]
        if near:  # near a budget, Redis is read now: one round trip for all of the request's counters
            found = await shared.exact(near)  # type: ignore[union-attr]
            if found is not None:
                for counter, seen in zip(near, found, strict=True):
                    spend = max(counter.spend, seen) if seen is not None else counter.spend
                    if spend >= counter.max_budget:  # type: ignore[operator]
                        self._refuse(counter, spend)

    def _refuse(self, counter: BudgetCounter, spend: float) -> None:
        self.refused[counter.entity_type] = self.refused.get(counter.entity_type, 0) + 1
        raise budget_exceeded(counter.entity_type, counter.entity_id, round(spend, 10),
                              counter.max_budget)  # type: ignore[arg-type]

    def record(self, event: LogEvent, ctx: AuthContext) -> None:
        """Add one answered request to the day's spend of its key, team, user, end user, tags and model (and, for a
        team's key, to the same within the team: what its admins read), and to the budget counters. Memory only."""
        if event.status != "success":
            return
        cost = event.response_cost
        now = self.clock()
        if now >= self._day_ends:
            self._new_day(now)
        day = self._day
        usage = (cost, event.prompt_tokens, event.completion_tokens)
        key = ctx.key
        daily = self._daily
        team_id = key.team_id if key is not None else None
        entities: list[tuple[str, str]] = []
        if key is not None:
            entities.append(("key", ctx.token_id))
            if key.team_id:
                entities.append(("team", key.team_id))
            if key.user_id:
                entities.append(("user", key.user_id))
        if event.end_user:
            entities.append(("end_user", event.end_user))
        for tag in event.request_tags:
            entities.append(("tag", tag))
        entities.append(("model", event.model_group or event.model))
        for index, (kind, ident) in enumerate(entities):
            if len(ident) > _MAX_ID:  # the column's size: a longer end user or tag is counted under its prefix
                ident = ident[:_MAX_ID]
                entities[index] = (kind, ident)
            for team in ("", team_id) if team_id and kind != "team" else ("",):
                row = daily.get((day, kind, ident, team))
                if row is None:
                    daily[(day, kind, ident, team)] = [cost, 1, usage[1], usage[2]]
                else:
                    row[0] += cost
                    row[1] += 1
                    row[2] += usage[1]
                    row[3] += usage[2]
        if not cost:
            return
        period = self._period
        counters = self.counters
        touched: list[BudgetCounter] = []
        for entity in entities:
            if entity[0] in _PERIOD_TYPES:
                period[entity] = period.get(entity, 0.0) + cost
                counter = counters.get(entity)
                if counter is not None:
                    touched.append(counter)
        self._proxy += cost
        if self.proxy_max_budget is not None:
            touched.append(counters[("proxy", "")])
        for counter in touched:
            counter.spend += cost
            soft = counter.soft_budget
            if soft is not None and not counter.soft_crossed and counter.spend >= soft:
                counter.soft_crossed = True
                self.soft_crossed[counter.entity_type] = self.soft_crossed.get(counter.entity_type, 0) + 1
                log.warning("soft budget crossed: %s %s has spent %.6f USD of a soft budget of %s USD",
                            counter.entity_type, counter.entity_id or "(proxy)", counter.spend, soft)
        if self.shared is not None and touched:
            self.shared.add(touched, cost)

    def spend_of(self, entity_type: str, entity_id: str, stored: float, reset_at: datetime | None = None) -> float:
        """An entity's period spend for ``/key/info``, ``/team/info``, ``/user/info``: ``stored`` (its row's
        ``spend``; 0 when its period ended at ``reset_at``) and what this process spent since its last flush."""
        counter = self.counters.get((entity_type, entity_id))
        if counter is not None:
            return counter.spend
        if reset_at is not None and reset_at.timestamp() <= self.clock():
            stored = 0.0  # the period ended; the row is reset with the next write
        key = (entity_type, entity_id)
        return stored + self._period.get(key, 0.0) + self._writing[1].get(key, 0.0)

    def holding(self, spend_set: bool) -> contextlib.AbstractAsyncContextManager[Any]:
        """Around an admin's write of a row's ``spend`` (``spend_set``) and its :meth:`forget`: a flush under way
        finishes first and none starts until the write is done, so no spend counted before the write is added on
        top of it (an in-flight flush's ``spend = spend + x`` would otherwise land after the admin's value)."""
        return self._lock if spend_set else contextlib.nullcontext()

    def forget(self, entity_type: str, entity_id: str, *, spend_set: bool = False) -> None:
        """Drop an entity's counter (its budget changed through the API): the next check rebuilds it from the row.
        ``spend_set``: the admin wrote the row's ``spend``; what this process spent before is not added to it."""
        self.counters.pop((entity_type, entity_id), None)
        if spend_set:
            self._period.pop((entity_type, entity_id), None)
            self._replaced.add((entity_type, entity_id))  # Redis's counter takes the new value too

    # counters ------------------------------------------------------------------------------------------------
    def _counter(self, kind: str, ident: str, stored: float, reset_at: float | None) -> BudgetCounter:
        counter = BudgetCounter(kind, ident, stored + self._period.get((kind, ident), 0.0)
                                + self._writing[1].get((kind, ident), 0.0), reset_at)
        self.counters[(kind, ident)] = counter
        if self.shared is not None:
            self.shared.started(counter, replace=(kind, ident) in self._replaced)
            self._replaced.discard((kind, ident))
        return counter

    def _budget(self, kind: str, ident: str, record: BudgetFields, now: float) -> BudgetCounter:
        counter = self.counters.get((kind, ident))
        if counter is None:
            reset_at = record.budget_reset_at
            counter = self._counter(kind, ident, record.spend, reset_at.timestamp() if reset_at else None)
        counter.max_budget = record.max_budget
        counter.soft_budget = record.soft_budget
        counter.seconds = duration_seconds(record.budget_duration)
        counter.alias = getattr(record, "key_alias", None) or getattr(record, "team_alias", None) or ""
        self._roll(counter, now)
        return counter

    def _roll(self, counter: BudgetCounter, now: float) -> None:
        """Start a new budget period when the current one is over (the next flush writes the same to the row)."""
        if counter.seconds is None or counter.reset_at is None or now < counter.reset_at:
            return
        counter.spend = 0.0
        counter.soft_crossed = False
        counter.reset_at = next_reset(counter.reset_at, counter.seconds, now)
        if counter.entity_type == "proxy":
            self._proxy = 0.0
        else:
            self._period.pop((counter.entity_type, counter.entity_id), None)
        if self.shared is not None:  # the new period has its own counter in Redis
            self.shared.started(counter)

    def _new_day(self, now: float) -> None:
        moment = datetime.fromtimestamp(now, UTC)
        self._day = moment.strftime("%Y-%m-%d")
        start = datetime(moment.year, moment.month, moment.day, tzinfo=UTC)
        self._day_ends = (start + timedelta(days=1)).timestamp()

    @staticmethod
    def _when(seconds: float) -> datetime:
        return datetime.fromtimestamp(seconds, UTC)

    # the flusher ----------------------------------------------------------------------------------------------
    async def flush(self) -> None:
        """Write what accumulated (one transaction), end the budget periods that are over, and read back the
        period spend of every entity with a budget."""
        if not (self._daily or self._period or self._proxy or self.counters):
            if self._lock.locked():  # a flush under way holds what was pending: wait until it is written
                async with self._lock:
                    pass
            return  # an idle gateway without budgets in use asks the database nothing (periods end with the next write)
        async with self._lock:
            now = self.clock()
            for counter in list(self.counters.values()):
                self._roll(counter, now)
            daily, period, proxy = self._daily, self._period, self._proxy
            self._daily, self._period, self._proxy = {}, {}, 0.0
            self._writing = (daily, period, proxy)
            try:
                if self.proxy_max_budget is not None and self.proxy_seconds:
                    _, stored_reset = await self.store.proxy_spend()
                    if stored_reset is None or stored_reset.timestamp() <= now:
                        previous = stored_reset.timestamp() if stored_reset is not None else None
                        await self.store.reset_proxy_spend(self._when(next_reset(previous, self.proxy_seconds,
                                                                                 now)))
                reset = await self.store.write_spend(daily, period, proxy, now, duration_seconds)
            except BaseException:
                self._merge(daily, period, proxy)
                raise
            finally:
                self._writing = ({}, {}, 0.0)
            self.flushes += 1
            await self._reconcile(reset)

    def _merge(self, daily: dict[tuple[str, str, str, str], list[float]], period: dict[tuple[str, str], float],
               proxy: float) -> None:
        for k, values in daily.items():
            row = self._daily.get(k)
            if row is None:
                self._daily[k] = values
            else:
                for i, value in enumerate(values):
                    row[i] += value
        for k, amount in period.items():
            self._period[k] = self._period.get(k, 0.0) + amount
        self._proxy += proxy

    async def _reconcile(self, reset: list[tuple[str, str]]) -> None:
        """Counters := the database's period spend + what was recorded here since the write began."""
        by_type: dict[str, list[str]] = {}
        for kind, ident in self.counters:
            if kind != "proxy":
                by_type.setdefault(kind, []).append(ident)
        for kind, idents in by_type.items():
            stored = await self.store.read_spend(kind, idents)
            for ident, (spend, reset_at) in stored.items():
                counter = self.counters.get((kind, ident))
                if counter is None:
                    continue
                counter.spend = spend + self._period.get((kind, ident), 0.0)
                counter.reset_at = reset_at.timestamp() if reset_at else None
                if counter.soft_budget is None or counter.spend < counter.soft_budget:
                    counter.soft_crossed = False
        counter = self.counters.get(("proxy", ""))
        if counter is not None:
            spend, reset_at = await self.store.proxy_spend()
            counter.spend = spend + self._proxy
            counter.reset_at = reset_at.timestamp() if reset_at else None
        for entity in reset:
            log.info("budget period ended: %s %s starts again from 0", *entity)

    # metrics ---------------------------------------------------------------------------------------------------
    def gauges(self, limit: int) -> tuple[dict[str, list[tuple[tuple[str, ...], float]]], int]:
        """LiteLLM's budget gauges of every key, team and user with a budget that made a request here since this
        process started, computed now (``/metrics``): remaining = ``max_budget`` - spend of the period (negative
        past it; +Inf without ``max_budget``), spend as :meth:`check` sees it (with Redis, the larger of this
        process's count and Redis's as last read). At most ``limit`` samples per gauge, and the number left out."""
        names = {"key": ("litellm_remaining_api_key_budget_metric", "litellm_api_key_max_budget_metric"),
                 "team": ("litellm_remaining_team_budget_metric", "litellm_team_max_budget_metric"),
                 "user": ("litellm_remaining_user_budget_metric", "litellm_user_max_budget_metric")}
        found: dict[str, list[tuple[tuple[str, ...], float]]] = {n: [] for pair in names.values() for n in pair}
        lists = {kind: (found[remaining], found[maximum]) for kind, (remaining, maximum) in names.items()}
        shared = self.shared
        now = self.clock()
        omitted = 0
        for counter in list(self.counters.values()):
            pair = lists.get(counter.entity_type)
            if pair is None:
                continue
            remaining, maximum = pair
            most = counter.max_budget
            if len(remaining) >= limit:  # counted, not computed: 10,000 teams stay cheap
                omitted += 1 if most is None else 2
                continue
            spend = counter.spend
            if counter.reset_at is not None and counter.seconds is not None and now >= counter.reset_at:
                spend = 0.0  # the period is over: the next check or flush starts the new one
            elif shared is not None:
                seen = shared.peek(counter)
                if seen is not None and seen > spend:
                    spend = seen
            labels = (counter.entity_id,) if counter.entity_type == "user" else (counter.entity_id, counter.alias)
            if most is None:
                remaining.append((labels, math.inf))
            else:
                remaining.append((labels, most - spend))
                maximum.append((labels, most))
        return found, omitted

    def stats(self) -> dict[str, Any]:
        over_soft = [(c.entity_type, c.entity_id) for c in self.counters.values() if c.soft_crossed]
        return {"flushes": self.flushes, "flush_failures": self.flush_failures, "pending_rows": len(self._daily),
                "soft_crossed": dict(self.soft_crossed), "refused": dict(self.refused), "over_soft": over_soft}
