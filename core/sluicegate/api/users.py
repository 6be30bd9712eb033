"""``/user/*``: users (LiteLLM's names and shapes). The proxy admin creates, changes and deletes them; proxy viewers
list them; a user reads themselves, and a team's admins read its members.

A user's limit fields (``max_budget``, ``soft_budget``, ``budget_duration``, ``spend``, ``rpm_limit``,
``tpm_limit``, ``max_parallel_requests``) apply to every request of a key the user owns, as a key's or a team's
do (:mod:`sluicegate.limits`): over ``max_budget`` in the current ``budget_duration`` period, LiteLLM's
``budget_exceeded`` (400) naming the user, before the upstream call.
LiteLLM fields Sluicegate does not implement are refused by name (422 ``unknown field``), never dropped.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Annotated, Any, Literal

import msgspec
from litestar import Request, Response, get, post

from sluicegate.api.common import AdminRequest, Alias, TeamId, decode_body, gateway_of, json_response, page_of
from sluicegate.api.keys import key_view, parse_duration
from sluicegate.auth import generate_key, hash_key, key_name
from sluicegate.db.store import KeyRecord, MemberRecord, UserRecord
from sluicegate.errors import ApiError
from sluicegate.limits.budgets import budget_values
from sluicegate.permissions import ROLES, actor_of, can_admin_read_team, can_read_all, can_read_key

if TYPE_CHECKING:
    from sluicegate.gateway import Gateway

__all__ = ("delete_users", "list_users", "new_user", "update_user", "user_info", "user_view")

UserRole = Literal["proxy_admin", "proxy_admin_viewer", "internal_user", "internal_user_viewer"]
NonNegative = Annotated[float, msgspec.Meta(ge=0)]
Count = Annotated[int, msgspec.Meta(ge=0)]
_UNSET: Any = msgspec.UNSET


class TeamMembership(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """An entry of ``teams`` on /user/new: a team id with the user's role there."""

    team_id: TeamId
    user_role: Literal["admin", "user"] = "user"


class UserNewRequest(AdminRequest, kw_only=True):
    user_id: Alias | None = None
    user_email: Alias | None = None
    user_alias: Alias | None = None
    user_role: UserRole = "internal_user"
    teams: list[TeamId | TeamMembership] = msgspec.field(default_factory=list)
    models: list[Alias] = msgspec.field(default_factory=list)
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    max_budget: NonNegative | None = None
    soft_budget: NonNegative | None = None
    budget_duration: str | None = None
    spend: NonNegative = 0.0
    rpm_limit: Count | None = None
    tpm_limit: Count | None = None
    max_parallel_requests: Count | None = None
    auto_create_key: bool = True
    key_alias: Alias | None = None
    duration: str | None = None
    send_invite_email: Literal[False] | None = None  # no mail is sent: true is refused


class UserUpdateRequest(AdminRequest, kw_only=True):
    user_id: Alias | None = None
    user_email: Alias | None | msgspec.UnsetType = _UNSET
    user_alias: Alias | None | msgspec.UnsetType = _UNSET
    user_role: UserRole | msgspec.UnsetType = _UNSET
    models: list[Alias] | msgspec.UnsetType = _UNSET
    metadata: dict[str, Any] | msgspec.UnsetType = _UNSET
    max_budget: NonNegative | None | msgspec.UnsetType = _UNSET
    soft_budget: NonNegative | None | msgspec.UnsetType = _UNSET
    budget_duration: str | None | msgspec.UnsetType = _UNSET
    spend: NonNegative | msgspec.UnsetType = _UNSET
    rpm_limit: Count | None | msgspec.UnsetType = _UNSET
    tpm_limit: Count | None | msgspec.UnsetType = _UNSET
    max_parallel_requests: Count | None | msgspec.UnsetType = _UNSET


class UserDeleteRequest(AdminRequest, kw_only=True):
    user_ids: list[Alias]


def user_view(gateway: Gateway, user: UserRecord) -> dict[str, Any]:
    """A user as the API shows them: ``spend`` is the current budget period's, including what this process spent
    since its last write."""
    data = msgspec.to_builtins(user)
    data["spend"] = gateway.spend.spend_of("user", user.user_id, user.spend, user.budget_reset_at)
    data["created_at"] = user.created_at.isoformat() if user.created_at else None
    data["updated_at"] = user.updated_at.isoformat() if user.updated_at else None
    return data


async def _resolve(gateway: Gateway, user_id: str | None, user_email: str | None) -> UserRecord:
    if user_id is not None:
        user = await gateway.store.get_user(user_id)
        param, name = "user_id", user_id
    elif user_email is not None:
        user = await gateway.store.get_user_by_email(user_email)
        param, name = "user_email", user_email
    else:
        raise ApiError(422, "user_id: give user_id or user_email", param="user_id")
    if user is None:
        raise ApiError(404, f"{param}: no user {name!r}", type="not_found_error", param=param)
    return user


@post("/user/new", status_code=200)
async def new_user(request: Request) -> Response[bytes]:
    """Create a user, its team memberships and (``auto_create_key``, default true) its first key, together."""
    gateway = gateway_of(request)
    ctx = await gateway.authorize(request, "proxy_admin")
    data = await decode_body(request, UserNewRequest)
    budget = budget_values(data, gateway.spend.clock())
    user_id = data.user_id or uuid.uuid4().hex
    if await gateway.store.get_user(user_id) is not None:
        raise ApiError(400, f"user_id: user {user_id!r} already exists", param="user_id")
    if data.user_email is not None and await gateway.store.get_user_by_email(data.user_email) is not None:
        raise ApiError(400, f"user_email: a user with email {data.user_email!r} already exists", param="user_email")
    memberships = []
    for index, entry in enumerate(data.teams):
        team_id, role = (entry, "user") if isinstance(entry, str) else (entry.team_id, entry.user_role)
        if await gateway.store.get_team(team_id) is None:
            raise ApiError(404, f"teams[{index}]: team {team_id!r} does not exist", type="not_found_error",
                           param=f"teams[{index}]")
        memberships.append(MemberRecord(team_id=team_id, user_id=user_id, role=role))
    user = UserRecord(user_id=user_id, user_email=data.user_email, user_alias=data.user_alias,
                      user_role=data.user_role, models=data.models, metadata=data.metadata,
                      rpm_limit=data.rpm_limit, tpm_limit=data.tpm_limit,
                      max_parallel_requests=data.max_parallel_requests, **budget)
    key = key_record = None
    if data.auto_create_key:
        key = generate_key()
        key_record = KeyRecord(token_id=hash_key(key), key_name=key_name(key), key_alias=data.key_alias,
                               user_id=user_id, models=data.models, expires=parse_duration(data.duration))
    created = await gateway.store.create_user(user, memberships=memberships, key=key_record, actor=actor_of(ctx, request))
    gateway.invalidate()
    answer = {**user_view(gateway, created), "teams": [m.team_id for m in memberships]}
    if key is not None and key_record is not None:
        answer.update(key=key, token_id=key_record.token_id, key_name=key_record.key_name,
                      key_alias=key_record.key_alias,
                      expires=key_record.expires.isoformat() if key_record.expires else None)
    return json_response(answer)


@get("/user/info")
async def user_info(request: Request, user_id: str | None = None) -> Response[bytes]:
    """A user with their keys and teams: the caller themselves without ``user_id``; others for proxy viewers and
    for the admins of a team the user belongs to (who see the keys they may read)."""
    gateway = gateway_of(request)
    ctx = await gateway.authorize(request)
    if user_id is None:
        if ctx.user is None:
            raise ApiError(400, "user_id: required (this key has no user)", param="user_id")
        user_id = ctx.user.user_id
    user = await gateway.store.get_user(user_id)
    teams = await gateway.store.memberships(user_id=user_id) if user is not None else []
    allowed = (can_read_all(ctx) or user_id == ctx.user_id
               or any(can_admin_read_team(ctx, m.team_id) for m in teams))
    if not allowed:
        raise ApiError(403, f"user_id: reading user {user_id!r} needs to be them, role admin of one of their teams, "
                       "or proxy_admin / proxy_admin_viewer", type="permission_error", param="user_id", code="403")
    if user is None:
        raise ApiError(404, f"user_id: no user {user_id!r}", type="not_found_error", param="user_id")
    keys = [k for k in await gateway.store.list_keys(user_id=user_id) if can_read_key(ctx, k)]
    return json_response({"user_id": user_id, "user_info": user_view(gateway, user),
                          "keys": [key_view(gateway, k) for k in keys],
                          "teams": [{"team_id": m.team_id, "role": m.role} for m in teams]})


@post("/user/update", status_code=200)
async def update_user(request: Request) -> Response[bytes]:
    gateway = gateway_of(request)
    ctx = await gateway.authorize(request, "proxy_admin")
    data = await decode_body(request, UserUpdateRequest)
    email = None if data.user_email is _UNSET else data.user_email
    user = await _resolve(gateway, data.user_id, email if data.user_id is None else None)
    budget = budget_values(data, gateway.spend.clock())
    values = {name: getattr(data, name) for name in data.__struct_fields__
              if name != "user_id" and getattr(data, name) is not _UNSET}
    values.update(budget)
    if values.get("user_email") and values["user_email"] != user.user_email:
        other = await gateway.store.get_user_by_email(values["user_email"])
        if other is not None and other.user_id != user.user_id:
            raise ApiError(400, f"user_email: a user with email {values['user_email']!r} already exists",
                           param="user_email")
    async with gateway.spend.holding("spend" in budget):
        updated = await gateway.store.update_user(user.user_id, actor=actor_of(ctx, request), **values)
        if budget:  # the counter starts again from the row (a new limit, period or spend applies at once)
            gateway.spend.forget("user", user.user_id, spend_set="spend" in budget)
    gateway.invalidate()
    if updated is None:
        raise ApiError(404, f"user_id: no user {user.user_id!r}", type="not_found_error", param="user_id")
    return json_response({"user_id": updated.user_id, "data": user_view(gateway, updated)})


@post("/user/delete", status_code=200)
async def delete_users(request: Request) -> Response[bytes]:
    """Delete users, their memberships and their keys (one transaction)."""
    gateway = gateway_of(request)
    ctx = await gateway.authorize(request, "proxy_admin")
    data = await decode_body(request, UserDeleteRequest)
    if not data.user_ids:
        raise ApiError(422, "user_ids: give at least one user id", param="user_ids")
    deleted, deleted_keys = await gateway.store.delete_users(data.user_ids, actor=actor_of(ctx, request))
    gateway.invalidate()
    if not deleted:
        raise ApiError(404, "user_ids: none of these users exist", type="not_found_error", param="user_ids")
    return json_response({"deleted_users": deleted, "deleted_keys": deleted_keys})


@get("/user/list")
async def list_users(request: Request, role: str | None = None, user_ids: str | None = None,
                     team: str | None = None, user_email: str | None = None, page: str | None = None,
                     page_size: str | None = None) -> Response[bytes]:
    """A page of users (LiteLLM's ``UserListResponse``): ``page`` from 1, ``page_size`` default 25, at most 1,000;
    filters ``role``, ``user_ids`` (comma-separated), ``team``, ``user_email`` (part of the address)."""
    gateway = gateway_of(request)
    await gateway.authorize(request, "proxy_admin_viewer")
    chosen = page_of(page, page_size, default_size=25)
    if role is not None and role not in ROLES:
        raise ApiError(422, f"role: expected one of {', '.join(ROLES)}, got {role[:40]!r}", param="role")
    filters: dict[str, Any] = {"role": role, "team_id": team, "user_email": user_email,
                               "user_ids": [u for u in user_ids.split(",") if u] if user_ids else None}
    users = await gateway.store.list_users(offset=chosen.offset, limit=chosen.size, **filters)
    total = await gateway.store.count_users(**filters)
    return json_response({"users": [user_view(gateway, u) for u in users], "total": total, "page": chosen.page,
                          "page_size": chosen.size, "total_pages": chosen.total_pages(total)})
