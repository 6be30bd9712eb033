"""``litellm_settings.default_key_generate_params`` and ``upperbound_key_generate_params`` (LiteLLM's semantics).

Defaults fill the fields a ``/key/generate`` request leaves out (``None``; for ``models`` an empty list, for
``metadata`` an empty object). Ceilings cap what ``/key/generate`` and ``/key/update`` may set: a value over one is
a 400 naming the field, in LiteLLM's words; a new key that leaves a capped field out gets the ceiling. Both are
checked when config.yaml loads, so a key this gateway does not apply stops start-up instead of being ignored.

This module imports nothing of the gateway's but :mod:`sluicegate.errors`: ``config.py`` checks the settings
with it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any

import msgspec

from sluicegate.errors import ApiError

if TYPE_CHECKING:
    from sluicegate.config import Settings

__all__ = ("DEFAULT_FIELDS", "MODEL_LIMIT_FIELDS", "UPPERBOUND_FIELDS", "Limit", "ModelLimits", "apply_key_defaults",
           "enforce_upperbounds", "key_params_problems", "take_model_limits")

LIMIT_FIELDS = ("rpm_limit", "tpm_limit", "max_parallel_requests")
DEFAULT_FIELDS = (*LIMIT_FIELDS, "duration", "team_id", "models", "metadata", "max_budget", "budget_duration",
                  "user_id")
"""What ``default_key_generate_params`` may set (LiteLLM's list). A field a request struct does not have (the
budget and user fields, where this gateway does not store them) is not applied."""
UPPERBOUND_FIELDS = (*LIMIT_FIELDS, "duration", "max_budget", "budget_duration")
"""What ``upperbound_key_generate_params`` may cap (LiteLLM's ``LiteLLM_UpperboundKeyGenerateParams``)."""
_DURATIONS = ("duration", "budget_duration")
_DURATION = re.compile(r"^\s*(\d+)\s*(s|m|h|d|w|mo)\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "mo": 2592000}


def duration_seconds(value: Any) -> float | None:
    """Seconds of a LiteLLM duration (``30s``, ``1h``, ``30d``, ``1mo``); ``-1`` or None: no end. Raises ValueError."""
    if value is None or value == "-1":
        return math.inf
    match = _DURATION.match(value) if isinstance(value, str) else None
    if match is None:
        raise ValueError(f"expected a duration such as '30s', '1h', '30d' or '1mo', got {str(value)[:40]!r}")
    return int(match.group(1)) * _UNITS[match.group(2)]


def _value_problem(field: str, value: Any) -> str | None:
    if field in LIMIT_FIELDS:
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_LIMIT:
            return "expected a whole number from 0 to 10**15"
    elif field == "max_budget":
        if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
            return "expected a number, 0 or more"
    elif field in _DURATIONS:
        try:
            duration_seconds(value)
        except ValueError as exc:
            return str(exc)
    elif field == "models":
        if not isinstance(value, list) or not all(isinstance(m, str) for m in value):
            return "expected a list of model names"
    elif field == "metadata":
        if not isinstance(value, dict):
            return "expected a mapping"
    elif field in ("team_id", "user_id") and not isinstance(value, str):
        return "expected a string"
    return None


def key_params_problems(settings: Settings) -> list[str]:
    """Problems (``path: reason``) in the two settings; each stops start-up."""
    problems: list[str] = []
    litellm = settings.litellm_settings
    for name, allowed in (("default_key_generate_params", DEFAULT_FIELDS),
                          ("upperbound_key_generate_params", UPPERBOUND_FIELDS)):
        params = getattr(litellm, name)
        for field, value in (params or {}).items():
            here = f"litellm_settings.{name}.{field}"
            if field not in allowed:
                problems.append(f"{here}: not applied by this gateway; accepted: {', '.join(allowed)}")
                continue
            if value is None:
                continue
            problem = _value_problem(field, value)
            if problem is not None:
                problems.append(f"{here}: {problem}")
    return problems


def apply_key_defaults(data: msgspec.Struct, defaults: dict[str, Any] | None) -> None:
    """Fill the fields of a ``/key/generate`` request that it left out, in place."""
    if not defaults:
        return
    fields = data.__struct_fields__
    for field, value in defaults.items():
        if field not in fields or value is None:
            continue
        current = getattr(data, field)
        if current is None or current is msgspec.UNSET or (field == "models" and current == []) or (
                field == "metadata" and current == {}):
            setattr(data, field, value)


def enforce_upperbounds(data: msgspec.Struct, ceilings: dict[str, Any] | None, *, fill: bool) -> None:
    """Refuse a field over its ceiling (400 naming it); with ``fill`` (a new key) give a left-out field the ceiling.

    On ``/key/update`` (``fill`` False) a field not sent is not checked; one sent as null (no limit, never
    expires) is over any ceiling.
    """
    if not ceilings:
        return
    fields = data.__struct_fields__
    for field, ceiling in ceilings.items():
        if field not in fields or ceiling is None:
            continue
        value = getattr(data, field)
        if value is msgspec.UNSET:
            continue
        if value is None and fill:
            setattr(data, field, ceiling)
            continue
        if field in _DURATIONS:
            try:
                over = duration_seconds(value) > duration_seconds(ceiling)
            except ValueError:
                continue  # the field's own check names the problem
            shown = "null (no end)" if value is None else value
        elif value is None:  # no limit at all (an update sending null): over any ceiling
            over, shown = True, "null (no limit)"
        else:
            over, shown = value > ceiling, value
        if over:
            raise ApiError(400, f"{field} is over max limit set in config - user_value={shown}; "
                           f"max_value={ceiling}", param=field)


MAX_LIMIT = 10**15
Limit = Annotated[int, msgspec.Meta(ge=0, le=MAX_LIMIT, description="a whole number from 0 (refuses every request) "
                                                                    "to 10**15")]
"""An ``rpm_limit``, ``tpm_limit`` or ``max_parallel_requests`` as the admin API takes it (None: no limit)."""
ModelLimits = dict[str, Limit]
"""``model_rpm_limit`` / ``model_tpm_limit``: model name (as clients send it) to its limit."""
MODEL_LIMIT_FIELDS = ("model_rpm_limit", "model_tpm_limit")


def take_model_limits(data: msgspec.Struct, known: Callable[[str], bool]) -> None:
    """Check a request's ``model_rpm_limit`` / ``model_tpm_limit`` (each model must be one ``known`` accepts), taking
    them from ``metadata`` where LiteLLM's clients put them when the top-level field is not sent."""
    metadata = getattr(data, "metadata", None)
    for field in MODEL_LIMIT_FIELDS:
        value = getattr(data, field)
        if isinstance(metadata, dict) and field in metadata:
            moved = metadata.pop(field)
            if value is None or value is msgspec.UNSET:
                try:
                    value = msgspec.convert(moved, ModelLimits | None)
                except msgspec.ValidationError as exc:
                    raise ApiError(422, f"metadata.{field}: {exc}", param=f"metadata.{field}") from None
                setattr(data, field, value)
        if isinstance(value, dict):
            for model in value:
                if not known(model):
                    raise ApiError(400, f"{field}.{model}: model {model!r} is not configured", param=field,
                                   code="model_not_found")
