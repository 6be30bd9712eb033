"""Budgets: ``max_budget`` (hard: refused before the upstream call), ``soft_budget`` (logged once and counted in
``/metrics``) and ``budget_duration`` (the period after which ``spend`` starts again from 0), on keys, teams, users,
end users and the proxy (``litellm_settings.max_budget``)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from sluicegate.errors import ApiError

__all__ = ("ENTITY_LABELS", "BudgetCounter", "budget_exceeded", "budget_values", "check_budget_value",
           "duration_seconds", "next_reset", "parse_budget_duration")

_DURATION = re.compile(r"^\s*(\d+)\s*(s|m|h|d|w|mo)\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "mo": 2592000}
_MAX_SECONDS = 100 * 365 * 86400

ENTITY_LABELS = {"key": "Key", "team": "Team", "user": "User", "end_user": "End User", "proxy": "Proxy"}
"""How the ``budget_exceeded`` message names each kind of entity (LiteLLM's words)."""


def duration_seconds(value: str | None) -> float | None:
    """Seconds of a budget duration (``30s``, ``1h``, ``1d``, ``7d``, ``30d``, ``2w``, ``1mo``); None for None or a
    value that is not one (stored values were checked when written)."""
    if value is None:
        return None
    match = _DURATION.match(value)
    if not match or int(match.group(1)) <= 0:
        return None
    return float(int(match.group(1)) * _UNITS[match.group(2)])


def next_reset(previous: float | None, seconds: float, now: float) -> float:
    """The end of the budget period that contains ``now``, periods of ``seconds`` following ``previous`` (the end
    of an earlier one); ``now + seconds`` without one. Every process computes the same boundaries."""
    import math

    if previous is None or seconds <= 0:
        return now + seconds
    if now < previous:
        return previous
    return previous + seconds * (math.floor((now - previous) / seconds) + 1)


def parse_budget_duration(value: str | None, param: str = "budget_duration") -> str | None:
    """Check a ``budget_duration`` from the API or config (422 naming ``param``); the value as given, trimmed."""
    if value is None:
        return None
    seconds = duration_seconds(value)
    if seconds is None:
        raise ApiError(422, f"{param}: expected a positive number with a unit s, m, h, d, w or mo (e.g. '30s', '1h', "
                       f"'30d'), got {value[:40]!r}", param=param)
    if seconds > _MAX_SECONDS:
        raise ApiError(422, f"{param}: at most 100 years", param=param)
    return value.strip()


def check_budget_value(value: Any, param: str) -> None:
    """A budget is a finite number of USD, 0 or more (422 naming ``param``)."""
    if value is not None and not (value >= 0 and value != float("inf")):  # NaN fails both
        raise ApiError(422, f"{param}: expected a number of USD, 0 or more", param=param)


def budget_exceeded(entity_type: str, entity_id: str, spend: float, max_budget: float) -> ApiError:
    """LiteLLM's answer to a request over a budget: 400, ``type: budget_exceeded``, the entity named."""
    label = ENTITY_LABELS.get(entity_type, entity_type)
    who = label if entity_type == "proxy" else f"{label}={entity_id}"
    return ApiError(400, f"Budget has been exceeded! {who} Current cost: {spend}, Max budget: {max_budget}",
                    type="budget_exceeded", code="400")


class BudgetCounter:
    """One entity's spend in its current budget period, as this process knows it: the database's value at the last
    flush plus what was spent here since (with Redis, the check also takes Redis's count of every process's spend).

    ``max_budget`` / ``soft_budget`` / ``seconds`` are refreshed from the entity's record at every check, so an
    admin's change applies to the next request. ``reset_at`` is when the period ends (seconds since the epoch)."""

    __slots__ = ("alias", "entity_id", "entity_type", "max_budget", "reset_at", "seconds", "soft_budget",
                 "soft_crossed", "spend")

    def __init__(self, entity_type: str, entity_id: str, spend: float, reset_at: float | None) -> None:
        self.entity_type = entity_type
        self.entity_id = entity_id
        self.spend = spend
        self.reset_at = reset_at
        self.max_budget: float | None = None
        self.soft_budget: float | None = None
        self.seconds: float | None = None
        self.soft_crossed = False
        self.alias = ""  # a key's key_alias, a team's team_alias: labels of the budget gauges on /metrics


_BUDGET_FIELDS = ("max_budget", "soft_budget", "budget_duration", "spend")


def budget_values(data: Any, now: float) -> dict[str, Any]:
    """The budget columns an admin request sets (``max_budget``, ``soft_budget``, ``budget_duration``, ``spend``;
    absent or UNSET fields are left alone), checked (422 naming the field). Setting ``budget_duration`` starts a
    period now: ``budget_reset_at`` = now + the duration (None without one)."""
    import msgspec

    values: dict[str, Any] = {}
    for name in _BUDGET_FIELDS:
        value = getattr(data, name, msgspec.UNSET)
        if value is msgspec.UNSET:
            continue
        if name == "budget_duration":
            value = parse_budget_duration(value)
            seconds = duration_seconds(value)
            values["budget_reset_at"] = (datetime.fromtimestamp(now + seconds, UTC) if seconds is not None
                                         else None)
        else:
            check_budget_value(value, name)
        values[name] = value
    return values
