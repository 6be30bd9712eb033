"""``/team/*``: teams, and their logging callbacks set at run time (LiteLLM's shapes). Admin only."""

from __future__ import annotations

import re
import uuid
from typing import TYPE_CHECKING, Any, Literal

import msgspec
from litestar import Request, Response, delete, get, post

from sluicegate.api.common import (TEAM_ID_PATTERN, Alias, TeamId, decode_body, gateway_of, json_response,
                                   page_of)
from sluicegate.errors import ApiError
from sluicegate.limits.key_params import Limit
from sluicegate.routing import LoggingEntry, parse_entries

if TYPE_CHECKING:
    from sluicegate.db.store import TeamRecord
    from sluicegate.gateway import Gateway

__all__ = ("add_callback", "delete_callback", "delete_teams", "disable_logging", "enable_logging", "get_callbacks",
           "new_team", "team_info", "team_list", "update_team")

_TEAM_ID = re.compile(TEAM_ID_PATTERN)


class TeamNewRequest(msgspec.Struct, kw_only=True):
    team_id: TeamId | None = None
    team_alias: Alias | None = None
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    rpm_limit: Limit | None = None
    tpm_limit: Limit | None = None
    max_parallel_requests: Limit | None = None


class TeamDeleteRequest(msgspec.Struct, kw_only=True):
    team_ids: list[TeamId]


class TeamUpdateRequest(msgspec.Struct, kw_only=True):
    team_id: TeamId
    team_alias: Alias | None | msgspec.UnsetType = msgspec.UNSET
    metadata: dict[str, Any] | msgspec.UnsetType = msgspec.UNSET
    rpm_limit: Limit | None | msgspec.UnsetType = msgspec.UNSET
    tpm_limit: Limit | None | msgspec.UnsetType = msgspec.UNSET
    max_parallel_requests: Limit | None | msgspec.UnsetType = msgspec.UNSET


_TEAM_LIMITS = ("rpm_limit", "tpm_limit", "max_parallel_requests")


class AddCallbackRequest(msgspec.Struct, kw_only=True):
    callback_name: str
    callback_type: Literal["success", "failure", "success_and_failure"] = "success_and_failure"
    callback_vars: dict[str, Any] = msgspec.field(default_factory=dict)


def team_view(gateway: Gateway, team: TeamRecord) -> dict[str, Any]:
    logging = None if team.logging is None else [gateway.resolver.mask(e) for e in team.logging]
    return {"team_id": team.team_id, "team_alias": team.team_alias, "metadata": team.metadata,
            "logging": logging, "logging_disabled": team.logging == [], "rpm_limit": team.rpm_limit,
            "tpm_limit": team.tpm_limit, "max_parallel_requests": team.max_parallel_requests,
            "created_at": team.created_at.isoformat() if team.created_at else None,
            "updated_at": team.updated_at.isoformat() if team.updated_at else None}


def _check_team_id(team_id: str) -> None:
    if not _TEAM_ID.match(team_id):
        raise ApiError(422, "team_id: 1-255 characters: letters, digits and _ . : @ - (starting with a letter or "
                       "digit)", param="team_id")


async def _team(gateway: Gateway, team_id: str) -> TeamRecord:
    """The team's row; a team known only from ``default_team_settings`` gets one on first use."""
    _check_team_id(team_id)
    team = await gateway.store.get_team(team_id)
    if team is None and gateway.resolver.settings_for_team(team_id) is not None:
        await gateway.store.ensure_team(team_id)
        team = await gateway.store.get_team(team_id)
    if team is None:
        raise ApiError(404, f"team {team_id!r} does not exist", type="not_found_error", param="team_id")
    return team


@post("/team/new", status_code=200)
async def new_team(request: Request) -> Response[bytes]:
    gateway = gateway_of(request)
    await gateway.admin_only(request)
    data = await decode_body(request, TeamNewRequest)
    team_id = data.team_id or uuid.uuid4().hex
    _check_team_id(team_id)
    if await gateway.store.get_team(team_id) is not None:
        raise ApiError(400, f"team_id: team {team_id!r} already exists", param="team_id")
    team = await gateway.store.create_team(team_id, team_alias=data.team_alias, metadata=data.metadata,
                                           **{name: getattr(data, name) for name in _TEAM_LIMITS})
    gateway.invalidate()
    return json_response(team_view(gateway, team))


@get("/team/info")
async def team_info(request: Request, team_id: str) -> Response[bytes]:
    gateway = gateway_of(request)
    await gateway.admin_only(request)
    team = await _team(gateway, team_id)
    keys = await gateway.store.list_keys(team_id=team_id)
    return json_response({"team_id": team_id, "team_info": team_view(gateway, team),
                          "keys": [{"token_id": k.token_id, "key_name": k.key_name, "key_alias": k.key_alias}
                                   for k in keys]})


@get("/team/list")
async def team_list(request: Request, page: str | None = None, page_size: str | None = None) -> Response[bytes]:
    """Teams in creation order, as LiteLLM's list; ``page``/``page_size`` (default 1 and 1,000, at most 1,000) page
    through more, with the total in the ``x-total-count`` header."""
    gateway = gateway_of(request)
    await gateway.admin_only(request)
    chosen = page_of(page, page_size, default_size=1000)
    teams = await gateway.store.list_teams(offset=chosen.offset, limit=chosen.size)
    total = await gateway.store.count_teams()
    return json_response([team_view(gateway, t) for t in teams], headers={
        "x-total-count": str(total), "x-page": str(chosen.page), "x-total-pages": str(chosen.total_pages(total))})


@post("/team/update", status_code=200)
async def update_team(request: Request) -> Response[bytes]:
    """Change a team's alias, metadata (e.g. ``metadata.cache``) or rate limits; logging goes through
    /team/{id}/callback."""
    gateway = gateway_of(request)
    await gateway.admin_only(request)
    data = await decode_body(request, TeamUpdateRequest)
    await _team(gateway, data.team_id)
    values = {name: getattr(data, name) for name in ("team_alias", "metadata", *_TEAM_LIMITS)
              if getattr(data, name) is not msgspec.UNSET}
    if "metadata" in values and "logging" in values["metadata"]:
        raise ApiError(422, "metadata.logging: a team's logging is set with POST /team/{team_id}/callback",
                       param="metadata.logging")
    team = await gateway.store.update_team(data.team_id, **values)
    gateway.invalidate()
    assert team is not None
    return json_response(team_view(gateway, team))


@post("/team/delete", status_code=200)
async def delete_teams(request: Request) -> Response[bytes]:
    gateway = gateway_of(request)
    await gateway.admin_only(request)
    data = await decode_body(request, TeamDeleteRequest)
    if not data.team_ids:
        raise ApiError(422, "team_ids: give at least one team id", param="team_ids")
    deleted, deleted_keys = await gateway.store.delete_teams(data.team_ids)
    gateway.invalidate()
    if not deleted:
        raise ApiError(404, "team_ids: none of these teams exist", type="not_found_error", param="team_ids")
    return json_response({"deleted_teams": deleted, "deleted_keys": deleted_keys})


# callbacks ---------------------------------------------------------------------------------------------------
@post("/team/{team_id:str}/callback", status_code=200)
async def add_callback(request: Request, team_id: str) -> Response[bytes]:
    gateway = gateway_of(request)
    await gateway.admin_only(request)
    data = await decode_body(request, AddCallbackRequest)
    team = await _team(gateway, team_id)
    entry = gateway.resolver.validate_entries(msgspec.to_builtins(data), param="callback_vars")[0]
    current = parse_entries(team.logging or [])
    for existing in current:
        if existing.callback_name == entry.callback_name and existing.callback_type == entry.callback_type:
            raise ApiError(400, f"callback_name: team {team_id!r} already has a {entry.callback_name!r} callback of "
                           f"type {entry.callback_type!r}; DELETE /team/{team_id}/callback/{entry.callback_name} "
                           "first to replace it", param="callback_name")
    updated = await gateway.store.update_team(team_id, logging=[*(msgspec.to_builtins(e) for e in current),
                                                                msgspec.to_builtins(entry)])
    gateway.invalidate()
    assert updated is not None
    return json_response({"status": "success", "data": team_view(gateway, updated)})


@get("/team/{team_id:str}/callback")
async def get_callbacks(request: Request, team_id: str) -> Response[bytes]:
    """The team's effective callbacks, from whichever layer applies (API, config, global), secrets masked."""
    gateway = gateway_of(request)
    await gateway.admin_only(request)
    team = await _team(gateway, team_id)
    resolver = gateway.resolver
    if team.logging is not None:
        entries, source = parse_entries(team.logging), "team"
    else:
        config = resolver.team_config.get(team_id)
        callbacks = config if config is not None else resolver.global_set
        source = "team_config" if config is not None else "global"
        entries = [LoggingEntry(callback_name=r.callback_name,
                                callback_type="success_and_failure" if r.on_success and r.on_failure else
                                ("success" if r.on_success else "failure"),
                                callback_vars=msgspec.to_builtins(r.callback_vars, enc_hook=_mask_secret))
                   for r in callbacks.routes]
    shown = [resolver.mask(e) for e in entries]
    merged: dict[str, Any] = {}
    for entry in shown:
        merged.update(entry["callback_vars"])
    return json_response({"status": "success", "data": {
        "team_id": team_id,
        "success_callbacks": [e.callback_name for e in entries if e.callback_type != "failure"],
        "failure_callbacks": [e.callback_name for e in entries if e.callback_type != "success"],
        "callback_vars": merged,
        "callbacks": shown,
        "source": source,
        "logging_disabled": team.logging == []}})


def _mask_secret(obj: Any) -> Any:
    from sluicegate.sinks.base import MASK, SecretStr

    if isinstance(obj, SecretStr):
        return MASK
    raise NotImplementedError


@delete("/team/{team_id:str}/callback/{callback_name:str}", status_code=200)
async def delete_callback(request: Request, team_id: str, callback_name: str) -> Response[bytes]:
    gateway = gateway_of(request)
    await gateway.admin_only(request)
    team = await _team(gateway, team_id)
    current = parse_entries(team.logging or [])
    kept = [e for e in current if e.callback_name != callback_name]
    if len(kept) == len(current):
        raise ApiError(404, f"callback_name: team {team_id!r} has no {callback_name!r} callback set through the API",
                       type="not_found_error", param="callback_name")
    # Removing the last API callback returns the team to its config/global callbacks; use disable_logging to
    # send nothing.
    updated = await gateway.store.update_team(team_id, logging=[msgspec.to_builtins(e) for e in kept] or None)
    gateway.invalidate()
    assert updated is not None
    return json_response({"status": "success", "data": team_view(gateway, updated)})


@post("/team/{team_id:str}/disable_logging", status_code=200)
async def disable_logging(request: Request, team_id: str) -> Response[bytes]:
    gateway = gateway_of(request)
    await gateway.admin_only(request)
    await _team(gateway, team_id)
    await gateway.store.update_team(team_id, logging=[])
    gateway.invalidate()
    return json_response({"status": "success", "message": f"Logging disabled for team {team_id}",
                          "data": {"team_id": team_id, "success_callbacks": [], "failure_callbacks": []}})


@post("/team/{team_id:str}/enable_logging", status_code=200)
async def enable_logging(request: Request, team_id: str) -> Response[bytes]:
    gateway = gateway_of(request)
    await gateway.admin_only(request)
    await _team(gateway, team_id)
    await gateway.store.update_team(team_id, logging=None)
    gateway.invalidate()
    callbacks = gateway.resolver.team_config.get(team_id) or gateway.resolver.global_set
    return json_response({"status": "success", "message": f"Logging enabled for team {team_id}",
                          "data": {"team_id": team_id,
                                   "success_callbacks": [r.callback_name for r in callbacks.routes if r.on_success],
                                   "failure_callbacks": [r.callback_name for r in callbacks.routes
                                                         if r.on_failure]}})


