"""``/key/*``: virtual keys (LiteLLM's shapes). Admin only, except ``/key/health`` for the key itself."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import msgspec
from litestar import Request, Response, get, post

from sluicegate.aio import bounded
from sluicegate.api.common import Alias, TeamId, decode_body, gateway_of, json_response, page_of
from sluicegate.auth import generate_key, hash_key, key_name
from sluicegate.db.store import KeyRecord
from sluicegate.errors import ApiError
from sluicegate.limits.key_params import (Limit, ModelLimits, apply_key_defaults, enforce_upperbounds,
                                          take_model_limits)
from sluicegate.sinks.scrub import error_kind_of, public_error_kind

if TYPE_CHECKING:
    from sluicegate.gateway import Gateway

__all__ = ("delete_keys", "generate", "key_health", "key_info", "list_keys", "update")

_UNSET: Any = msgspec.UNSET
_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw]|mo)\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "mo": 2592000}
_MAX_DURATION = 100 * 365 * 86400


class KeyGenerateRequest(msgspec.Struct, kw_only=True):
    team_id: TeamId | None = None
    key_alias: Alias | None = None
    models: list[Alias] = msgspec.field(default_factory=list)
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    duration: str | None = None
    key: Alias | None = None
    blocked: bool = False
    rpm_limit: Limit | None = None
    tpm_limit: Limit | None = None
    max_parallel_requests: Limit | None = None
    model_rpm_limit: ModelLimits | None = None
    model_tpm_limit: ModelLimits | None = None


class KeyUpdateRequest(msgspec.Struct, kw_only=True):
    key: str
    team_id: TeamId | None | msgspec.UnsetType = _UNSET
    key_alias: Alias | None | msgspec.UnsetType = _UNSET
    models: list[str] | msgspec.UnsetType = _UNSET
    metadata: dict[str, Any] | msgspec.UnsetType = _UNSET
    duration: str | None | msgspec.UnsetType = _UNSET
    blocked: bool | msgspec.UnsetType = _UNSET
    rpm_limit: Limit | None | msgspec.UnsetType = _UNSET
    tpm_limit: Limit | None | msgspec.UnsetType = _UNSET
    max_parallel_requests: Limit | None | msgspec.UnsetType = _UNSET
    model_rpm_limit: ModelLimits | None | msgspec.UnsetType = _UNSET
    model_tpm_limit: ModelLimits | None | msgspec.UnsetType = _UNSET


class KeyDeleteRequest(msgspec.Struct, kw_only=True):
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


def token_id_of(value: str) -> str:
    """Accept the plaintext key or its sha256 hex (LiteLLM accepts both in ``key`` fields)."""
    if re.fullmatch(r"[0-9a-f]{64}", value):
        return value
    return hash_key(value)


def _check_metadata(gateway: Gateway, metadata: dict[str, Any]) -> dict[str, Any]:
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
            "key_alias": record.key_alias, "team_id": record.team_id, "models": record.models,
            "metadata": metadata, "expires": record.expires.isoformat() if record.expires else None,
            "blocked": record.blocked, "rpm_limit": record.rpm_limit, "tpm_limit": record.tpm_limit,
            "max_parallel_requests": record.max_parallel_requests, "model_rpm_limit": record.model_rpm_limit,
            "model_tpm_limit": record.model_tpm_limit,
            "created_at": record.created_at.isoformat() if record.created_at else None,
            "updated_at": record.updated_at.isoformat() if record.updated_at else None}


@post("/key/generate", status_code=200)
async def generate(request: Request) -> Response[bytes]:
    gateway = gateway_of(request)
    await gateway.admin_only(request)
    data = await decode_body(request, KeyGenerateRequest)
    litellm = gateway.settings.litellm_settings
    apply_key_defaults(data, litellm.default_key_generate_params)
    enforce_upperbounds(data, litellm.upperbound_key_generate_params, fill=True)
    take_model_limits(data, lambda model: gateway.router.resolve(model) is not None)
    key = data.key or generate_key()
    if not key.startswith("sk-") or len(key) < 8:
        raise ApiError(422, "key: a virtual key must start with 'sk-' and be at least 8 characters", param="key")
    if gateway.master_key and key == gateway.master_key:
        raise ApiError(422, "key: must differ from the master key", param="key")
    metadata = _check_metadata(gateway, data.metadata)
    if data.team_id is not None:
        await gateway.store.ensure_team(data.team_id)
    record = KeyRecord(token_id=hash_key(key), key_name=key_name(key), key_alias=data.key_alias,
                       team_id=data.team_id, models=data.models, metadata=metadata,
                       expires=parse_duration(data.duration), blocked=data.blocked, rpm_limit=data.rpm_limit,
                       tpm_limit=data.tpm_limit, max_parallel_requests=data.max_parallel_requests,
                       model_rpm_limit=data.model_rpm_limit, model_tpm_limit=data.model_tpm_limit)
    if await gateway.store.get_key(record.token_id) is not None:
        raise ApiError(400, "key: this key already exists", param="key")
    created = await gateway.store.create_key(record)
    gateway.invalidate()
    return json_response({"key": key, **key_view(gateway, created)})


@post("/key/update", status_code=200)
async def update(request: Request) -> Response[bytes]:
    gateway = gateway_of(request)
    await gateway.admin_only(request)
    data = await decode_body(request, KeyUpdateRequest)
    enforce_upperbounds(data, gateway.settings.litellm_settings.upperbound_key_generate_params, fill=False)
    take_model_limits(data, lambda model: gateway.router.resolve(model) is not None)
    token_id = token_id_of(data.key)
    if await gateway.store.get_key(token_id) is None:
        raise ApiError(404, "key: no such key", type="not_found_error", param="key")
    values: dict[str, Any] = {}
    for name in ("team_id", "key_alias", "models", "blocked", "rpm_limit", "tpm_limit", "max_parallel_requests",
                 "model_rpm_limit", "model_tpm_limit"):
        value = getattr(data, name)
        if value is not _UNSET:
            values[name] = value
    if data.metadata is not _UNSET:
        values["metadata"] = _check_metadata(gateway, data.metadata)
    if data.duration is not _UNSET:
        values["expires"] = parse_duration(data.duration)
    if values.get("team_id"):
        await gateway.store.ensure_team(values["team_id"])
    record = await gateway.store.update_key(token_id, **values)
    gateway.invalidate()
    assert record is not None
    return json_response(key_view(gateway, record))


@get("/key/info")
async def key_info(request: Request, key: str | None = None) -> Response[bytes]:
    gateway = gateway_of(request)
    ctx = await gateway.authenticate(request)
    if key is None:
        if ctx.key is None:
            raise ApiError(400, "key: required query parameter", param="key")
        record = ctx.key
    else:
        if not ctx.is_admin and token_id_of(key) != ctx.token_id:
            raise ApiError(403, "a key may only read its own info", type="permission_error", code="403")
        record = await gateway.store.get_key(token_id_of(key))  # type: ignore[assignment]
        if record is None:
            raise ApiError(404, "key: no such key", type="not_found_error", param="key")
    return json_response({"key": record.token_id, "info": key_view(gateway, record)})


@post("/key/delete", status_code=200)
async def delete_keys(request: Request) -> Response[bytes]:
    gateway = gateway_of(request)
    await gateway.admin_only(request)
    data = await decode_body(request, KeyDeleteRequest)
    token_ids = [token_id_of(k) for k in data.keys or ()]
    if data.key_aliases:
        token_ids += [r.token_id for r in await gateway.store.list_keys(key_aliases=data.key_aliases)]
    if not token_ids:
        raise ApiError(422, "keys: give at least one key (or key_aliases)", param="keys")
    deleted = await gateway.store.delete_keys(token_ids)
    gateway.invalidate()
    if not deleted:
        raise ApiError(404, "keys: none of these keys exist", type="not_found_error", param="keys")
    return json_response({"deleted_keys": deleted})


@get("/key/list")
async def list_keys(request: Request, team_id: str | None = None, return_full_object: bool = False,
                    page: str | None = None, page_size: str | None = None, size: str | None = None
                    ) -> Response[bytes]:
    """A page of keys (``page`` from 1; ``page_size``, or LiteLLM's ``size``: default 100, at most 1,000)."""
    gateway = gateway_of(request)
    await gateway.admin_only(request)
    chosen = page_of(page, page_size if page_size is not None else size, default_size=100,
                     size_name="page_size" if page_size is not None or size is None else "size")
    records = await gateway.store.list_keys(team_id=team_id, offset=chosen.offset, limit=chosen.size)
    total = await gateway.store.count_keys(team_id=team_id)
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
        "callbacks": names, "status": status, "details": details, "source": callbacks.source}})
