"""``/key/*``: virtual keys (LiteLLM's shapes).

Who may do what is :mod:`sluicegate.permissions`': a team's keys are its admins', a key without a team is its
owner's, the proxy admin's are all; ``/key/health`` and ``/key/info`` (without ``key``) are the calling key's own.
A team's admin gives the team's keys no more than the team has: ``max_budget``, ``rpm_limit`` and ``tpm_limit`` at
most the team's own (:func:`check_team_caps`); the proxy admin may set more.
"""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import msgspec
from litestar import Request, Response, get, post

from sluicegate.aio import bounded
from sluicegate.api.common import AdminRequest, Alias, TeamId, decode_body, gateway_of, json_response, page_of
from sluicegate.limits.budgets import budget_values
from sluicegate.auth import generate_key, hash_key, key_name
from sluicegate.db.store import KeyRecord, TeamRecord, UserRecord
from sluicegate.errors import ApiError
from sluicegate.permissions import (actor_of, can_read_all, can_write_key, readable_teams, require, require_key_read,
                                    require_key_write, require_some_key_write)
from sluicegate.limits.key_params import (Limit, ModelLimits, apply_key_defaults, enforce_upperbounds,
                                          take_model_limits)
from sluicegate.sinks.scrub import error_kind_of, public_error_kind

if TYPE_CHECKING:
    from sluicegate.auth import AuthContext
    from sluicegate.gateway import Gateway

__all__ = ("TEAM_CAPPED_FIELDS", "KeyDeleteRequest", "KeyGenerateRequest", "KeyUpdateRequest", "check_team_caps",
           "create_key", "delete_keys", "generate", "key_health", "key_info", "key_view", "list_keys", "regenerate_key", "remove_keys",
           "update", "update_key_values")

_UNSET: Any = msgspec.UNSET
_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw]|mo)\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "mo": 2592000}
_MAX_DURATION = 100 * 365 * 86400
TEAM_CAPPED_FIELDS = ("max_budget", "rpm_limit", "tpm_limit")
"""What a team's admin may give a key of the team at most as much of as the team itself has."""


class KeyGenerateRequest(AdminRequest, kw_only=True):
    team_id: TeamId | None = None
    user_id: Alias | None = None
    key_alias: Alias | None = None
    models: list[Alias] = msgspec.field(default_factory=list)
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    duration: str | None = None
    key: Alias | None = None
    blocked: bool = False
    max_budget: float | None = None
    soft_budget: float | None = None
    budget_duration: str | None = None
    spend: float = 0.0
    rpm_limit: Limit | None = None
    tpm_limit: Limit | None = None
    max_parallel_requests: Limit | None = None
    model_rpm_limit: ModelLimits | None = None
    model_tpm_limit: ModelLimits | None = None


class KeyUpdateRequest(AdminRequest, kw_only=True):
    key: str
    team_id: TeamId | None | msgspec.UnsetType = _UNSET
    user_id: Alias | None | msgspec.UnsetType = _UNSET
    key_alias: Alias | None | msgspec.UnsetType = _UNSET
    models: list[str] | msgspec.UnsetType = _UNSET
    metadata: dict[str, Any] | msgspec.UnsetType = _UNSET
    duration: str | None | msgspec.UnsetType = _UNSET
    blocked: bool | msgspec.UnsetType = _UNSET
    max_budget: float | None | msgspec.UnsetType = _UNSET
    soft_budget: float | None | msgspec.UnsetType = _UNSET
    budget_duration: str | None | msgspec.UnsetType = _UNSET
    spend: float | msgspec.UnsetType = _UNSET
    rpm_limit: Limit | None | msgspec.UnsetType = _UNSET
    tpm_limit: Limit | None | msgspec.UnsetType = _UNSET
    max_parallel_requests: Limit | None | msgspec.UnsetType = _UNSET
    model_rpm_limit: ModelLimits | None | msgspec.UnsetType = _UNSET
    model_tpm_limit: ModelLimits | None | msgspec.UnsetType = _UNSET


class KeyDeleteRequest(AdminRequest, kw_only=True):
    keys: list[Alias] | None = None
    key_aliases: list[Alias] | None = None


def parse_duration(value: str | None) -> datetime | None:
    if value is None:
        return None
    match = _DURATION.match(value)
    if not match or int(match.group(1)) <= 0:
        raise ApiError(422, f"duration: expected a positive number with a unit s, m, h, d, w or mo (e.g. '30d'), "
                       f"got {value[:40]!r}", param="duration")
    seconds = int(match.group(1)) * _UNITS[match.group(2)]
    if seconds > _MAX_DURATION:
        raise ApiError(422, "duration: at most 100 years; omit duration for a key that never expires",
                       param="duration")
    return datetime.now(UTC) + timedelta(seconds=seconds)


async def _check_owner(gateway: Gateway, ctx: AuthContext, user_id: str | None, team_id: str | None) -> bool:
    """A key's owner must exist, and a team key given to someone by a team admin must go to one of its members.

    True when the owner is new: the proxy admin naming a user that does not exist creates it with the key (role
    ``internal_user``), as LiteLLM does; anyone else gets a 404.
    """
    if user_id is None:
        return False
    if await gateway.store.get_user(user_id) is None:
        if ctx.is_admin:
            return True
        raise ApiError(404, f"user_id: no user {user_id!r}; create it with /user/new", type="not_found_error",
                       param="user_id")
    if team_id is not None and not ctx.is_admin:
        members = await gateway.store.memberships(team_id=team_id)
        if all(m.user_id != user_id for m in members):
            raise ApiError(422, f"user_id: user {user_id!r} is not a member of team {team_id!r}; add them with "
                           "/team/member_add first", param="user_id")
    return False


def token_id_of(value: str) -> str:
    """Accept the plaintext key or its sha256 hex (LiteLLM accepts both in ``key`` fields)."""
    if re.fullmatch(r"[0-9a-f]{64}", value):
        return value
    return hash_key(value)


def _check_metadata(gateway: Gateway, metadata: dict[str, Any]) -> dict[str, Any]:
    gateway.resolver.validate_redaction(metadata.get("redaction"), param="metadata.redaction")
    if "logging" in metadata:
        entries = gateway.resolver.validate_entries(metadata["logging"], param="metadata.logging")
        metadata = {**metadata, "logging": [msgspec.to_builtins(e) for e in entries]}
    return metadata


def key_view(gateway: Gateway, record: KeyRecord) -> dict[str, Any]:
    """A key as shown by the API: logging secrets masked, never the plaintext key."""
    metadata = dict(record.metadata)
    if isinstance(metadata.get("logging"), list):
        metadata["logging"] = [gateway.resolver.mask(e) for e in metadata["logging"]]
    return {"token_id": record.token_id, "token": record.token_id, "key_name": record.key_name,
            "key_alias": record.key_alias, "team_id": record.team_id, "user_id": record.user_id,
            "models": record.models,
            "metadata": metadata, "expires": record.expires.isoformat() if record.expires else None,
            "blocked": record.blocked, "user_id": record.user_id, "max_budget": record.max_budget,
            "soft_budget": record.soft_budget, "budget_duration": record.budget_duration,
            "budget_reset_at": record.budget_reset_at.isoformat() if record.budget_reset_at else None,
            "spend": gateway.spend.spend_of("key", record.token_id, record.spend, record.budget_reset_at),
            "rpm_limit": record.rpm_limit, "tpm_limit": record.tpm_limit,
            "max_parallel_requests": record.max_parallel_requests, "model_rpm_limit": record.model_rpm_limit,
            "model_tpm_limit": record.model_tpm_limit,
            "created_at": record.created_at.isoformat() if record.created_at else None,
            "updated_at": record.updated_at.isoformat() if record.updated_at else None}


def check_team_caps(ctx: AuthContext, team: TeamRecord | None, values: dict[str, Any], fields: Any) -> None:
    """Refuse (400 naming the field and the team's limit) a key of ``team`` whose ``max_budget``, ``rpm_limit`` or
    ``tpm_limit`` (of ``fields``, the ones being set; ``values`` the key's as it would be) is above the team's own,
    unless the caller is the proxy admin. A key without a limit of its own (None) is bounded by the team's at
    request time, so None passes; so does a field of a team without that limit."""
    if ctx.is_admin or team is None:
        return
    for field in TEAM_CAPPED_FIELDS:
        ceiling = getattr(team, field)
        value = values.get(field)
        if field not in fields or ceiling is None or value is None or value <= ceiling:
            continue
        raise ApiError(400, f"{field}: {value} is above team {team.team_id!r}'s {field} of {ceiling}; a team admin "
                       f"may give the team's keys at most the team's limit (the proxy admin may set more)",
                       param=field)


@post("/key/generate", status_code=200)
async def generate(request: Request) -> Response[bytes]:
    gateway = gateway_of(request)
    ctx = await gateway.authorize(request)  # the team is in the body: checked in create_key
    key, created = await create_key(gateway, ctx, await decode_body(request, KeyGenerateRequest), request)
    return json_response({"key": key, **key_view(gateway, created)})


# The routes' logic, callable without a request (the console calls these too, so both answer the same errors and
# make the same permission checks).
async def create_key(gateway: Gateway, ctx: AuthContext, data: KeyGenerateRequest,
                     request: Request | None = None) -> tuple[str, KeyRecord]:
    """A new key: its plaintext (shown once, never stored) and its record."""
    require_some_key_write(ctx, "team_id")
    litellm = gateway.settings.litellm_settings
    apply_key_defaults(data, litellm.default_key_generate_params)
    enforce_upperbounds(data, litellm.upperbound_key_generate_params, fill=True)
    take_model_limits(data, lambda model: gateway.router.resolve(model) is not None)
    user_id = data.user_id
    if user_id is None and data.team_id is None and not ctx.is_admin and ctx.user is not None:
        user_id = ctx.user.user_id  # an internal user's key of their own
    require_key_write(ctx, data.team_id, user_id, what="a new key",
                      param="team_id" if data.team_id is not None else "user_id")
    new_owner = await _check_owner(gateway, ctx, user_id, data.team_id)
    key = data.key or generate_key()
    if not key.startswith("sk-") or len(key) < 8:
        raise ApiError(422, "key: a virtual key must start with 'sk-' and be at least 8 characters", param="key")
    if gateway.master_key and key == gateway.master_key:
        raise ApiError(422, "key: must differ from the master key", param="key")
    metadata = _check_metadata(gateway, data.metadata)
    if data.team_id is not None and not ctx.is_admin:
        check_team_caps(ctx, await gateway.store.get_team(data.team_id),
                        {field: getattr(data, field) for field in TEAM_CAPPED_FIELDS}, TEAM_CAPPED_FIELDS)
    if data.team_id is not None:
        await gateway.store.ensure_team(data.team_id, actor=actor_of(ctx, request))
    budget = budget_values(data, gateway.spend.clock())
    record = KeyRecord(token_id=hash_key(key), key_name=key_name(key), key_alias=data.key_alias,
                       team_id=data.team_id, user_id=user_id, models=data.models, metadata=metadata,
                       expires=parse_duration(data.duration), blocked=data.blocked, rpm_limit=data.rpm_limit,
                       tpm_limit=data.tpm_limit, max_parallel_requests=data.max_parallel_requests,
                       model_rpm_limit=data.model_rpm_limit, model_tpm_limit=data.model_tpm_limit, **budget)
    if await gateway.store.get_key(record.token_id) is not None:
        raise ApiError(400, "key: this key already exists", param="key")
    if new_owner and user_id is not None:  # the user and the key, in one transaction
        await gateway.store.create_user(UserRecord(user_id=user_id), key=record, actor=actor_of(ctx, request))
        created = await gateway.store.get_key(record.token_id)
        assert created is not None
    else:
        created = await gateway.store.create_key(record, actor=actor_of(ctx, request))
    gateway.invalidate()
    return key, created


async def regenerate_key(gateway: Gateway, ctx: AuthContext, token_id: str,
                         request: Request | None = None) -> tuple[str, KeyRecord]:
    """Rotate a key: a new plaintext with the old key's team, owner, alias, models, metadata, expiry, block, limits
    and budget, and the old key deleted, so a leaked key stops working while its settings carry over."""
    require_some_key_write(ctx)
    old = await gateway.store.get_key(token_id)
    if old is None:
        raise ApiError(404, "key: no such key", type="not_found_error", param="key")
    require_key_write(ctx, old.team_id, old.user_id, what=f"key {old.key_alias or old.key_name!r}")
    key = generate_key()
    # everything carries over (owner, limits, budget and its period's spend) but the key itself
    record = msgspec.structs.replace(old, token_id=hash_key(key), key_name=key_name(key), created_at=None,
                                     updated_at=None)
    actor = actor_of(ctx, request)
    created = await gateway.store.create_key(record, actor=actor)
    await gateway.store.delete_keys([token_id], actor=actor)
    gateway.invalidate()
    return key, created


@post("/key/update", status_code=200)
async def update(request: Request) -> Response[bytes]:
    gateway = gateway_of(request)
    ctx = await gateway.authorize(request)  # the team is the key's: checked in update_key_values
    record = await update_key_values(gateway, ctx, await decode_body(request, KeyUpdateRequest), request)
    return json_response(key_view(gateway, record))


async def update_key_values(gateway: Gateway, ctx: AuthContext, data: KeyUpdateRequest,
                            request: Request | None = None) -> KeyRecord:
    require_some_key_write(ctx)
    enforce_upperbounds(data, gateway.settings.litellm_settings.upperbound_key_generate_params, fill=False)
    take_model_limits(data, lambda model: gateway.router.resolve(model) is not None)
    token_id = token_id_of(data.key)
    current = await gateway.store.get_key(token_id)
    if current is None:
        raise ApiError(404, "key: no such key", type="not_found_error", param="key")
    what = f"key {current.key_alias or current.key_name!r}"
    require_key_write(ctx, current.team_id, current.user_id, what=what)
    values: dict[str, Any] = {}
    for name in ("team_id", "user_id", "key_alias", "models", "blocked", "rpm_limit", "tpm_limit",
                 "max_parallel_requests", "model_rpm_limit", "model_tpm_limit"):
        value = getattr(data, name)
        if value is not _UNSET:
            values[name] = value
    budget = budget_values(data, gateway.spend.clock())
    values.update(budget)
    if data.metadata is not _UNSET:
        values["metadata"] = _check_metadata(gateway, data.metadata)
    if data.duration is not _UNSET:
        values["expires"] = parse_duration(data.duration)
    if "team_id" in values or "user_id" in values:  # the key as it would be must be the caller's to write, too
        team_id, user_id = values.get("team_id", current.team_id), values.get("user_id", current.user_id)
        require_key_write(ctx, team_id, user_id, what=what, param="team_id" if "team_id" in values else "user_id")
        if await _check_owner(gateway, ctx, user_id, team_id):
            raise ApiError(404, f"user_id: no user {user_id!r}; create it with /user/new", type="not_found_error",
                           param="user_id")
    team_id = values.get("team_id", current.team_id)
    if team_id and not ctx.is_admin:  # a key moved into a team brings its limits along: checked too
        changed = TEAM_CAPPED_FIELDS if "team_id" in values else values.keys()
        check_team_caps(ctx, await gateway.store.get_team(team_id),
                        {field: values.get(field, getattr(current, field)) for field in TEAM_CAPPED_FIELDS}, changed)
    if values.get("team_id"):
        await gateway.store.ensure_team(values["team_id"], actor=actor_of(ctx, request))
    async with gateway.spend.holding("spend" in budget):
        record = await gateway.store.update_key(token_id, actor=actor_of(ctx, request), **values)
        if budget:  # the counter starts again from the row (a new limit, period or spend applies at once)
            gateway.spend.forget("key", token_id, spend_set="spend" in budget)
    gateway.invalidate()
    assert record is not None
    return record


@get("/key/info")
async def key_info(request: Request, key: str | None = None) -> Response[bytes]:
    gateway = gateway_of(request)
    ctx = await gateway.authorize(request)
    if key is None:
        if ctx.key is None:
            raise ApiError(400, "key: required query parameter", param="key")
        record = ctx.key
    else:
        token_id = token_id_of(key)
        if token_id != ctx.token_id and not can_read_all(ctx) and ctx.user is None:
            raise ApiError(403, "a key with no user may only read its own info", type="permission_error",
                           param="key", code="403")
        record = await gateway.store.get_key(token_id)  # type: ignore[assignment]
        if record is None:
            raise ApiError(404, "key: no such key", type="not_found_error", param="key")
        require_key_read(ctx, record)
    return json_response({"key": record.token_id, "info": key_view(gateway, record)})


@post("/key/delete", status_code=200)
async def delete_keys(request: Request) -> Response[bytes]:
    gateway = gateway_of(request)
    ctx = await gateway.authorize(request)  # the teams are the keys': checked in remove_keys
    deleted = await remove_keys(gateway, ctx, await decode_body(request, KeyDeleteRequest), request)
    return json_response({"deleted_keys": deleted})


async def remove_keys(gateway: Gateway, ctx: AuthContext, data: KeyDeleteRequest,
                      request: Request | None = None) -> list[str]:
    require_some_key_write(ctx, "keys")
    token_ids = [token_id_of(k) for k in data.keys or ()]
    if not token_ids and not data.key_aliases:
        raise ApiError(422, "keys: give at least one key (or key_aliases)", param="keys")
    for token_id in token_ids:  # every key named must be the caller's to delete
        record = await gateway.store.get_key(token_id)
        if record is not None:
            require_key_write(ctx, record.team_id, record.user_id,
                              what=f"key {record.key_alias or record.key_name!r}", param="keys")
    if data.key_aliases:  # an alias names the caller's keys of that alias (aliases repeat across teams)
        token_ids += [r.token_id for r in await gateway.store.list_keys(key_aliases=data.key_aliases)
                      if can_write_key(ctx, r.team_id, r.user_id)]
    deleted = await gateway.store.delete_keys(token_ids, actor=actor_of(ctx, request)) if token_ids else []
    gateway.invalidate()
    if not deleted:
        raise ApiError(404, "keys: none of these keys exist", type="not_found_error", param="keys")
    return deleted


@get("/key/list")
async def list_keys(request: Request, team_id: str | None = None, user_id: str | None = None,
                    return_full_object: bool = False, page: str | None = None, page_size: str | None = None,
                    size: str | None = None) -> Response[bytes]:
    """A page of keys (``page`` from 1; ``page_size``, or LiteLLM's ``size``: default 100, at most 1,000).

    With ``team_id``: that team's keys (its admins, proxy viewers). Without: every key for proxy viewers; a
    user's own keys and the keys of the teams they are admin of for anyone else."""
    gateway = gateway_of(request)
    ctx = await gateway.authorize(request)
    chosen = page_of(page, page_size if page_size is not None else size, default_size=100,
                     size_name="page_size" if page_size is not None or size is None else "size")
    scope: dict[str, Any] = {"team_id": team_id}
    if team_id is not None:
        require(ctx, "team_admin_viewer", team_id)
    if user_id is not None and not can_read_all(ctx) and user_id != ctx.user_id:
        raise ApiError(403, f"user_id: listing another user's keys needs role proxy_admin or proxy_admin_viewer",
                       type="permission_error", param="user_id", code="403")
    if user_id is not None:
        scope["user_id"] = user_id
    elif team_id is None and not can_read_all(ctx):
        if ctx.user is None:
            raise ApiError(403, "a key without a user lists no keys; read this key with /key/info",
                           type="permission_error", code="403")
        scope.update(user_id=ctx.user.user_id, team_ids=readable_teams(ctx, "team_admin_viewer"))
    records = await gateway.store.list_keys(**scope, offset=chosen.offset, limit=chosen.size)
    total = await gateway.store.count_keys(**scope)
    keys: list[Any] = [key_view(gateway, r) for r in records] if return_full_object else [r.token_id for r in records]
    return json_response({"keys": keys, "total_count": total, "current_page": chosen.page,
                          "total_pages": chosen.total_pages(total)})


@post("/key/health", status_code=200)
async def key_health(request: Request) -> Response[bytes]:
    """Probe every sink of the calling key's effective routing, concurrently, each under a timeout."""
    gateway = gateway_of(request)
    ctx = await gateway.authenticate(request)
    gateway.key_health_throttle.check(ctx.token_id, "/key/health")  # each call makes a request per sink
    callbacks = ctx.callbacks
    if callbacks is None or not callbacks.routes:
        return json_response({"key": "healthy", "logging_callbacks": None})
    timeout = gateway.settings.sluicegate_settings.delivery.health_timeout
    routes = callbacks.routes

    async def probe(route: Any) -> tuple[bool, str]:
        # An admin reads the failure (scrubbed of the instance's secrets); a key holder reads only its kind: the
        # destination's words may quote what it was sent, and the sink's own may name hosts and paths.
        name = route.callback_name
        slot = gateway.dispatcher.slot_for(route)
        try:
            result = await bounded(slot.sink.health_check(), timeout, f"{name}: health check")
        except TimeoutError:
            return False, f"{name}: timeout" + (f": no answer within {timeout:g}s" if ctx.is_admin else "")
        except Exception as exc:
            if not ctx.is_admin:
                return False, f"{name}: {error_kind_of(exc)}"
            return False, slot.scrub(f"{name}: {type(exc).__name__}: {exc}", 300)
        if result.healthy:
            return True, ""
        if not ctx.is_admin:
            return False, f"{name}: {public_error_kind(result.error_kind)}"
        return False, slot.scrub(f"{name}: {result.error_kind or 'unhealthy'}: {result.details}", 300)

    results = await asyncio.gather(*(probe(r) for r in routes))
    names = callbacks.callback_names
    healthy = all(ok for ok, _ in results)
    if healthy:
        details = (f"No logger exceptions triggered, system is healthy. Manually check if logs were sent to "
                   f"{names}")
    else:
        details = "; ".join(message for ok, message in results if not ok)
    status = "healthy" if healthy else "unhealthy"
    return json_response({"key": status, "logging_callbacks": {
        "callbacks": names, "status": status, "details": details, "source": callbacks.source,
        "redaction": [redaction_view(r) for r in routes]}})


def redaction_view(route: Any) -> dict[str, Any]:
    """How one route's events are redacted: everything (``turn_off_message_logging``), by a policy (its redactors
    and fields, and the layer it came from), or not at all."""
    if route.redact:
        return {"callback_name": route.callback_name, "mode": "turn_off_message_logging"}
    if route.redaction is None:
        return {"callback_name": route.callback_name, "mode": "none"}
    return {"callback_name": route.callback_name, "mode": "policy", "source": route.redaction_source,
            **route.redaction.describe()}
