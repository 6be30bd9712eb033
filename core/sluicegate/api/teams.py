"""``/team/*``: teams, and their logging callbacks set at run time (LiteLLM's shapes).

A team's admins manage it (callbacks, logging switch, cache switch in ``metadata``); its members read it; creating
and deleting teams is the proxy admin's (see :mod:`sluicegate.permissions`).
"""

from __future__ import annotations

import re
import uuid
from typing import TYPE_CHECKING, Any, Literal

import msgspec
from litestar import Request, Response, delete, get, post

from sluicegate.api.common import (TEAM_ID_PATTERN, AdminRequest, Alias, TeamId, decode_body, gateway_of,
                                   json_response, page_of)
from sluicegate.db.store import MemberRecord, UserRecord
from sluicegate.limits.budgets import budget_values
from sluicegate.errors import ApiError
from sluicegate.permissions import actor_of, readable_teams, require
from sluicegate.limits.key_params import Limit
from sluicegate.routing import LoggingEntry, parse_entries

if TYPE_CHECKING:
    from sluicegate.auth import AuthContext
    from sluicegate.db.store import TeamRecord
    from sluicegate.gateway import Gateway

__all__ = ("TEAM_ADMIN_FIELDS", "AddCallbackRequest", "Member", "MemberRole", "TeamDeleteRequest", "TeamNewRequest",
           "TeamUpdateRequest", "add_callback", "add_team_callback", "create_team", "delete_callback", "delete_teams",
           "disable_logging", "enable_logging", "existing_user", "find_team", "get_callbacks", "members_view",
           "new_team", "remove_team_callback", "remove_teams", "resolve_members", "set_team_logging",
           "team_callbacks", "team_info", "team_list", "team_view", "update_team", "update_team_values")

_TEAM_ID = re.compile(TEAM_ID_PATTERN)


MemberRole = Literal["admin", "user"]


class Member(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A team member in LiteLLM's shape: a role and the user, by ``user_id`` or ``user_email``."""

    role: MemberRole
    user_id: Alias | None = None
    user_email: Alias | None = None


class TeamNewRequest(AdminRequest, kw_only=True):
    team_id: TeamId | None = None
    team_alias: Alias | None = None
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    members_with_roles: list[Member] = msgspec.field(default_factory=list)
    max_budget: float | None = None
    soft_budget: float | None = None
    budget_duration: str | None = None
    rpm_limit: Limit | None = None
    tpm_limit: Limit | None = None
    max_parallel_requests: Limit | None = None


class TeamDeleteRequest(AdminRequest, kw_only=True):
    team_ids: list[TeamId]


class TeamUpdateRequest(AdminRequest, kw_only=True):
    team_id: TeamId
    team_alias: Alias | None | msgspec.UnsetType = msgspec.UNSET
    metadata: dict[str, Any] | msgspec.UnsetType = msgspec.UNSET
    max_budget: float | None | msgspec.UnsetType = msgspec.UNSET
    soft_budget: float | None | msgspec.UnsetType = msgspec.UNSET
    budget_duration: str | None | msgspec.UnsetType = msgspec.UNSET
    rpm_limit: Limit | None | msgspec.UnsetType = msgspec.UNSET
    tpm_limit: Limit | None | msgspec.UnsetType = msgspec.UNSET
    max_parallel_requests: Limit | None | msgspec.UnsetType = msgspec.UNSET


_TEAM_LIMITS = ("rpm_limit", "tpm_limit", "max_parallel_requests")


# What a team's own admin may change with /team/update; any other field (budgets, limits) is the proxy admin's.
TEAM_ADMIN_FIELDS = frozenset({"team_alias", "metadata"})


class AddCallbackRequest(AdminRequest, kw_only=True):
    callback_name: str
    callback_type: Literal["success", "failure", "success_and_failure"] = "success_and_failure"
    callback_vars: dict[str, Any] = msgspec.field(default_factory=dict)


def team_view(gateway: Gateway, team: TeamRecord) -> dict[str, Any]:
    logging = None if team.logging is None else [gateway.resolver.mask(e) for e in team.logging]
    return {"team_id": team.team_id, "team_alias": team.team_alias, "metadata": team.metadata,
            "logging": logging, "logging_disabled": team.logging == [], "max_budget": team.max_budget,
            "soft_budget": team.soft_budget, "budget_duration": team.budget_duration,
            "budget_reset_at": team.budget_reset_at.isoformat() if team.budget_reset_at else None,
            "spend": gateway.spend.spend_of("team", team.team_id, team.spend, team.budget_reset_at),
            "rpm_limit": team.rpm_limit, "tpm_limit": team.tpm_limit,
            "max_parallel_requests": team.max_parallel_requests,
            "created_at": team.created_at.isoformat() if team.created_at else None,
            "updated_at": team.updated_at.isoformat() if team.updated_at else None}


def _check_team_id(team_id: str) -> None:
    if not _TEAM_ID.match(team_id):
        raise ApiError(422, "team_id: 1-255 characters: letters, digits and _ . : @ - (starting with a letter or "
                       "digit)", param="team_id")


async def find_team(gateway: Gateway, team_id: str) -> TeamRecord:
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
    ctx = await gateway.authorize(request, "proxy_admin")
    team, members = await create_team(gateway, ctx, await decode_body(request, TeamNewRequest), request)
    return json_response({**team_view(gateway, team), "members_with_roles": members_view(members)})


# The routes' logic, callable without a request (the console calls these too, so both answer the same errors and
# make the same permission checks; ``request`` only adds LiteLLM's litellm-changed-by header to the audit row).
async def create_team(gateway: Gateway, ctx: AuthContext, data: TeamNewRequest,
                      request: Request | None = None) -> tuple[TeamRecord, list[MemberRecord]]:
    require(ctx, "proxy_admin")
    team_id = data.team_id or uuid.uuid4().hex
    _check_team_id(team_id)
    gateway.resolver.validate_redaction(data.metadata.get("redaction"), param="metadata.redaction")
    if await gateway.store.get_team(team_id) is not None:
        raise ApiError(400, f"team_id: team {team_id!r} already exists", param="team_id")
    members, new_users, _ = await resolve_members(gateway, team_id, data.members_with_roles, set(), listed=True,
                                                  name="members_with_roles")
    budget = budget_values(data, gateway.spend.clock())
    team = await gateway.store.create_team(team_id, team_alias=data.team_alias, metadata=data.metadata,
                                           members=members, new_users=new_users, actor=actor_of(ctx, request),
                                           **budget, **{name: getattr(data, name) for name in _TEAM_LIMITS})
    gateway.invalidate()
    return team, members


async def existing_user(gateway: Gateway, user_id: str | None, user_email: str | None,
                        param: str) -> UserRecord | None:
    """The user named by id (else by email), or None; a 422 naming ``param`` when neither is given."""
    if user_id is None and user_email is None:
        raise ApiError(422, f"{param}: give user_id or user_email", param=param)
    if user_id is not None:
        return await gateway.store.get_user(user_id)
    return await gateway.store.get_user_by_email(user_email)  # type: ignore[arg-type]


async def resolve_members(gateway: Gateway, team_id: str, wanted: list[Member], current: set[str], *, listed: bool,
                          name: str) -> tuple[list[MemberRecord], list[UserRecord], list[UserRecord]]:
    """(memberships to add, users to create first, every user named) for ``wanted``; a user not known yet is made
    (role ``internal_user``, no key), as LiteLLM does. A 400 naming the entry for someone already a member."""
    members: list[MemberRecord] = []
    new_users: list[UserRecord] = []
    users: list[UserRecord] = []
    for index, member in enumerate(wanted):
        param = f"{name}[{index}]" if listed else name
        user = await existing_user(gateway, member.user_id, member.user_email, f"{param}.user_id")
        if user is None:
            user = UserRecord(user_id=member.user_id or uuid.uuid4().hex, user_email=member.user_email)
            new_users.append(user)
        if user.user_id in current or any(m.user_id == user.user_id for m in members):
            raise ApiError(400, f"{param}: user {user.user_id!r} is already a member of team {team_id!r}; "
                           "change their role with /team/member_update", param=param)
        members.append(MemberRecord(team_id=team_id, user_id=user.user_id, role=member.role))
        users.append(user)
    return members, new_users, users


@get("/team/info")
async def team_info(request: Request, team_id: str) -> Response[bytes]:
    gateway = gateway_of(request)
    await gateway.authorize(request, "team_member", team_id)
    team = await find_team(gateway, team_id)
    keys = await gateway.store.list_keys(team_id=team_id)
    members = await gateway.store.memberships(team_id=team_id)
    return json_response({"team_id": team_id,
                          "team_info": {**team_view(gateway, team), "members_with_roles": members_view(members)},
                          "keys": [{"token_id": k.token_id, "key_name": k.key_name, "key_alias": k.key_alias,
                                    "user_id": k.user_id} for k in keys]})


def members_view(members: list[Any]) -> list[dict[str, Any]]:
    """LiteLLM's ``members_with_roles``: ``[{"user_id", "role"}]``."""
    return [{"user_id": m.user_id, "role": m.role} for m in members]


@get("/team/list")
async def team_list(request: Request, page: str | None = None, page_size: str | None = None) -> Response[bytes]:
    """Teams in creation order, as LiteLLM's list; ``page``/``page_size`` (default 1 and 1,000, at most 1,000) page
    through more, with the total in the ``x-total-count`` header. Proxy viewers see every team, anyone else the teams
    they are a member of."""
    gateway = gateway_of(request)
    ctx = await gateway.authorize(request, "any_user")
    chosen = page_of(page, page_size, default_size=1000)
    visible = readable_teams(ctx)
    teams = await gateway.store.list_teams(offset=chosen.offset, limit=chosen.size, team_ids=visible)
    total = await gateway.store.count_teams(team_ids=visible)
    return json_response([team_view(gateway, t) for t in teams], headers={
        "x-total-count": str(total), "x-page": str(chosen.page), "x-total-pages": str(chosen.total_pages(total))})


@post("/team/update", status_code=200)
async def update_team(request: Request) -> Response[bytes]:
    """Change a team's alias, metadata (e.g. ``metadata.cache``) or budget; logging goes through
    /team/{id}/callback."""
    gateway = gateway_of(request)
    ctx = await gateway.authorize(request)  # the team is in the body: checked in update_team_values
    team = await update_team_values(gateway, ctx, await decode_body(request, TeamUpdateRequest), request)
    return json_response(team_view(gateway, team))


async def update_team_values(gateway: Gateway, ctx: AuthContext, data: TeamUpdateRequest,
                             request: Request | None = None) -> TeamRecord:
    require(ctx, "team_admin", data.team_id)
    await find_team(gateway, data.team_id)
    values = {name: getattr(data, name) for name in data.__struct_fields__
              if name != "team_id" and getattr(data, name) is not msgspec.UNSET}
    refused = [] if ctx.is_admin else sorted(set(values) - TEAM_ADMIN_FIELDS)
    if refused:
        raise ApiError(403, f"{refused[0]}: only proxy_admin may change a team's {refused[0]}; a team admin may "
                       f"change {', '.join(sorted(TEAM_ADMIN_FIELDS))}", type="permission_error", param=refused[0],
                       code="403")
    if "metadata" in values and "logging" in values["metadata"]:
        raise ApiError(422, "metadata.logging: a team's logging is set with POST /team/{team_id}/callback",
                       param="metadata.logging")
    if "metadata" in values:
        gateway.resolver.validate_redaction(values["metadata"].get("redaction"), param="metadata.redaction")
    budget = budget_values(data, gateway.spend.clock())
    values.update(budget)
    team = await gateway.store.update_team(data.team_id, actor=actor_of(ctx, request), **values)
    if budget:  # the counter starts again from the row: a new limit or period applies at once
        gateway.spend.forget("team", data.team_id)
    gateway.invalidate()
    assert team is not None
    return team


@post("/team/delete", status_code=200)
async def delete_teams(request: Request) -> Response[bytes]:
    gateway = gateway_of(request)
    ctx = await gateway.authorize(request, "proxy_admin")
    deleted, deleted_keys = await remove_teams(gateway, ctx, await decode_body(request, TeamDeleteRequest), request)
    return json_response({"deleted_teams": deleted, "deleted_keys": deleted_keys})


async def remove_teams(gateway: Gateway, ctx: AuthContext, data: TeamDeleteRequest,
                       request: Request | None = None) -> tuple[list[str], int]:
    """Delete the teams (and their keys): the ids deleted and the number of keys."""
    require(ctx, "proxy_admin")
    if not data.team_ids:
        raise ApiError(422, "team_ids: give at least one team id", param="team_ids")
    deleted, deleted_keys = await gateway.store.delete_teams(data.team_ids, actor=actor_of(ctx, request))
    gateway.invalidate()
    if not deleted:
        raise ApiError(404, "team_ids: none of these teams exist", type="not_found_error", param="team_ids")
    return deleted, deleted_keys


# callbacks ---------------------------------------------------------------------------------------------------
@post("/team/{team_id:str}/callback", status_code=200)
async def add_callback(request: Request, team_id: str) -> Response[bytes]:
    gateway = gateway_of(request)
    ctx = await gateway.authorize(request, "team_admin", team_id)
    updated = await add_team_callback(gateway, ctx, team_id, await decode_body(request, AddCallbackRequest), request)
    return json_response({"status": "success", "data": team_view(gateway, updated)})


async def add_team_callback(gateway: Gateway, ctx: AuthContext, team_id: str, data: AddCallbackRequest,
                            request: Request | None = None) -> TeamRecord:
    require(ctx, "team_admin", team_id)
    team = await find_team(gateway, team_id)
    entry = gateway.resolver.validate_entries(msgspec.to_builtins(data), param="callback_vars")[0]
    current = parse_entries(team.logging or [])
    for existing in current:
        if existing.callback_name == entry.callback_name and existing.callback_type == entry.callback_type:
            raise ApiError(400, f"callback_name: team {team_id!r} already has a {entry.callback_name!r} callback of "
                           f"type {entry.callback_type!r}; DELETE /team/{team_id}/callback/{entry.callback_name} "
                           "first to replace it", param="callback_name")
    updated = await gateway.store.update_team(team_id, actor=actor_of(ctx, request), action="callback_added",
                                              logging=[*(msgspec.to_builtins(e) for e in current),
                                                       msgspec.to_builtins(entry)])
    gateway.invalidate()
    assert updated is not None
    return updated


@get("/team/{team_id:str}/callback")
async def get_callbacks(request: Request, team_id: str) -> Response[bytes]:
    """The team's effective callbacks, from whichever layer applies (API, config, global), secrets masked."""
    gateway = gateway_of(request)
    ctx = await gateway.authorize(request, "team_member", team_id)
    return json_response({"status": "success", "data": await team_callbacks(gateway, ctx, team_id)})


async def team_callbacks(gateway: Gateway, ctx: AuthContext, team_id: str) -> dict[str, Any]:
    require(ctx, "team_member", team_id)
    team = await find_team(gateway, team_id)
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
    return {"team_id": team_id,
            "success_callbacks": [e.callback_name for e in entries if e.callback_type != "failure"],
            "failure_callbacks": [e.callback_name for e in entries if e.callback_type != "success"],
            "callback_vars": merged,
            "callbacks": shown,
            "source": source,
            "logging_disabled": team.logging == []}


def _mask_secret(obj: Any) -> Any:
    from sluicegate.sinks.base import MASK, SecretStr

    if isinstance(obj, SecretStr):
        return MASK
    raise NotImplementedError


@delete("/team/{team_id:str}/callback/{callback_name:str}", status_code=200)
async def delete_callback(request: Request, team_id: str, callback_name: str) -> Response[bytes]:
    gateway = gateway_of(request)
    ctx = await gateway.authorize(request, "team_admin", team_id)
    updated = await remove_team_callback(gateway, ctx, team_id, callback_name, request)
    return json_response({"status": "success", "data": team_view(gateway, updated)})


async def remove_team_callback(gateway: Gateway, ctx: AuthContext, team_id: str, callback_name: str,
                               request: Request | None = None) -> TeamRecord:
    require(ctx, "team_admin", team_id)
    team = await find_team(gateway, team_id)
    current = parse_entries(team.logging or [])
    kept = [e for e in current if e.callback_name != callback_name]
    if len(kept) == len(current):
        raise ApiError(404, f"callback_name: team {team_id!r} has no {callback_name!r} callback set through the API",
                       type="not_found_error", param="callback_name")
    # Removing the last API callback returns the team to its config/global callbacks; use disable_logging to
    # send nothing.
    updated = await gateway.store.update_team(team_id, actor=actor_of(ctx, request), action="callback_deleted",
                                              logging=[msgspec.to_builtins(e) for e in kept] or None)
    gateway.invalidate()
    assert updated is not None
    return updated


@post("/team/{team_id:str}/disable_logging", status_code=200)
async def disable_logging(request: Request, team_id: str) -> Response[bytes]:
    """Send nothing anywhere for the team. The audit trail's ``logging_disabled`` row is the record (GDPR) that it
    was switched off, when and by whom."""
    gateway = gateway_of(request)
    ctx = await gateway.authorize(request, "team_admin", team_id)
    await set_team_logging(gateway, ctx, team_id, enabled=False, request=request)
    return json_response({"status": "success", "message": f"Logging disabled for team {team_id}",
                          "data": {"team_id": team_id, "success_callbacks": [], "failure_callbacks": []}})


@post("/team/{team_id:str}/enable_logging", status_code=200)
async def enable_logging(request: Request, team_id: str) -> Response[bytes]:
    gateway = gateway_of(request)
    ctx = await gateway.authorize(request, "team_admin", team_id)
    await set_team_logging(gateway, ctx, team_id, enabled=True, request=request)
    callbacks = gateway.resolver.team_config.get(team_id) or gateway.resolver.global_set
    return json_response({"status": "success", "message": f"Logging enabled for team {team_id}",
                          "data": {"team_id": team_id,
                                   "success_callbacks": [r.callback_name for r in callbacks.routes if r.on_success],
                                   "failure_callbacks": [r.callback_name for r in callbacks.routes
                                                         if r.on_failure]}})


async def set_team_logging(gateway: Gateway, ctx: AuthContext, team_id: str, *, enabled: bool,
                           request: Request | None = None) -> None:
    """The GDPR switch: ``enabled=False`` sends nothing for the team (``logging = []``); ``True`` returns it to
    its config/global callbacks (the API callbacks set before the switch are dropped, as LiteLLM does). The audit
    trail's ``logging_disabled`` row is the record that it was switched off, when and by whom."""
    require(ctx, "team_admin", team_id)
    await find_team(gateway, team_id)
    await gateway.store.update_team(team_id, actor=actor_of(ctx, request),
                                    action="logging_enabled" if enabled else "logging_disabled",
                                    logging=None if enabled else [])
    gateway.invalidate()
