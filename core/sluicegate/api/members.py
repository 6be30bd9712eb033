"""``/team/member_add``, ``/team/member_update``, ``/team/member_delete``: who belongs to a team, as ``admin`` or
``user`` (LiteLLM's shapes). The team's admins and the proxy admin manage them.

A member is named by ``user_id`` or ``user_email``. Adding a user who does not exist yet creates them (role
``internal_user``, no key), as LiteLLM does, in the same transaction as the membership.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec
from litestar import Request, Response, post

from sluicegate.api.common import AdminRequest, Alias, TeamId, decode_body, gateway_of, json_response
from sluicegate.api.teams import Member, MemberRole, existing_user, find_team, members_view, resolve_members
from sluicegate.db.store import UserRecord
from sluicegate.errors import ApiError
from sluicegate.permissions import actor_of, require

if TYPE_CHECKING:
    from sluicegate.gateway import Gateway

__all__ = ("member_add", "member_delete", "member_update")

_PER_MEMBER_LIMITS = ("max_budget_in_team", "rpm_limit", "tpm_limit")


class MemberAddRequest(AdminRequest, kw_only=True):
    team_id: TeamId
    member: Member | list[Member]
    max_budget_in_team: float | None = None


class MemberUpdateRequest(AdminRequest, kw_only=True):
    team_id: TeamId
    user_id: Alias | None = None
    user_email: Alias | None = None
    role: MemberRole | None = None
    max_budget_in_team: float | None = None
    rpm_limit: int | None = None
    tpm_limit: int | None = None


class MemberDeleteRequest(AdminRequest, kw_only=True):
    team_id: TeamId
    user_id: Alias | None = None
    user_email: Alias | None = None


def _refuse_limits(data: Any) -> None:
    for name in _PER_MEMBER_LIMITS:
        if getattr(data, name, None) is not None:
            raise ApiError(400, f"{name}: per-member limits are not supported; set limits on the user (/user/update) "
                           "or the key", param=name)


async def _member_of(gateway: Gateway, team_id: str, user_id: str | None, user_email: str | None) -> UserRecord:
    """The user named, who must be a member of ``team_id`` (404 otherwise, naming the field)."""
    user = await existing_user(gateway, user_id, user_email, "user_id")
    param = "user_id" if user_id is not None else "user_email"
    if user is not None:
        members = await gateway.store.memberships(team_id=team_id, user_id=user.user_id)
        if members:
            return user
    raise ApiError(404, f"{param}: {user_id or user_email!r} is not a member of team {team_id!r}",
                   type="not_found_error", param=param)


@post("/team/member_add", status_code=200)
async def member_add(request: Request) -> Response[bytes]:
    gateway = gateway_of(request)
    ctx = await gateway.authorize(request)  # the team is in the body: checked below
    data = await decode_body(request, MemberAddRequest)
    require(ctx, "team_admin", data.team_id)
    _refuse_limits(data)
    await find_team(gateway, data.team_id)
    wanted = data.member if isinstance(data.member, list) else [data.member]
    if not wanted:
        raise ApiError(422, "member: give at least one member", param="member")
    current = {m.user_id for m in await gateway.store.memberships(team_id=data.team_id)}
    members, new_users, users = await resolve_members(gateway, data.team_id, wanted, current,
                                                      listed=isinstance(data.member, list), name="member")
    await gateway.store.add_members(members, new_users=new_users, actor=actor_of(ctx, request))
    gateway.invalidate()
    everyone = await gateway.store.memberships(team_id=data.team_id)
    return json_response({
        "team_id": data.team_id, "members_with_roles": members_view(everyone),
        "updated_users": [{"user_id": u.user_id, "user_email": u.user_email, "user_role": u.user_role}
                          for u in users],
        "updated_team_memberships": [{"team_id": m.team_id, "user_id": m.user_id, "role": m.role}
                                     for m in members]})


@post("/team/member_update", status_code=200)
async def member_update(request: Request) -> Response[bytes]:
    gateway = gateway_of(request)
    ctx = await gateway.authorize(request)
    data = await decode_body(request, MemberUpdateRequest)
    require(ctx, "team_admin", data.team_id)
    _refuse_limits(data)
    if data.role is None:
        raise ApiError(422, "role: required ('admin' or 'user'); a member's role is what this route changes",
                       param="role")
    await find_team(gateway, data.team_id)
    user = await _member_of(gateway, data.team_id, data.user_id, data.user_email)
    updated = await gateway.store.update_member(data.team_id, user.user_id, data.role, actor=actor_of(ctx, request))
    gateway.invalidate()
    if updated is None:  # removed meanwhile
        raise ApiError(404, f"user_id: {user.user_id!r} is not a member of team {data.team_id!r}",
                       type="not_found_error", param="user_id")
    return json_response({"team_id": data.team_id, "user_id": user.user_id, "user_email": user.user_email,
                          "role": updated.role, "max_budget_in_team": None})


@post("/team/member_delete", status_code=200)
async def member_delete(request: Request) -> Response[bytes]:
    """Remove a member; their keys of this team go with them (in the same transaction)."""
    gateway = gateway_of(request)
    ctx = await gateway.authorize(request)
    data = await decode_body(request, MemberDeleteRequest)
    require(ctx, "team_admin", data.team_id)
    await find_team(gateway, data.team_id)
    user = await _member_of(gateway, data.team_id, data.user_id, data.user_email)
    removed, deleted_keys = await gateway.store.delete_member(data.team_id, user.user_id, actor=actor_of(ctx, request))
    gateway.invalidate()
    if not removed:
        raise ApiError(404, f"user_id: {user.user_id!r} is not a member of team {data.team_id!r}",
                       type="not_found_error", param="user_id")
    everyone = await gateway.store.memberships(team_id=data.team_id)
    return json_response({"team_id": data.team_id, "user_id": user.user_id, "deleted_keys": deleted_keys,
                          "members_with_roles": members_view(everyone)})
