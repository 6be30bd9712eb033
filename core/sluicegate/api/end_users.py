"""``/end_user/*`` and ``/customer/*`` (LiteLLM's two names for the same routes): end users, the ``user`` a request
names, with their budgets. Admin only."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec
from litestar import Request, Response, get, post

from sluicegate.api.common import AdminRequest, Alias, decode_body, gateway_of, json_response, page_of
from sluicegate.errors import ApiError
from sluicegate.limits.budgets import budget_values

if TYPE_CHECKING:
    from sluicegate.db.store import EndUserRecord
    from sluicegate.gateway import Gateway

__all__ = ("EndUserDeleteRequest", "EndUserNewRequest", "EndUserUpdateRequest", "delete_end_users",
           "end_user_info", "end_user_list", "new_end_user", "update_end_user")

EndUserId = Alias


class EndUserNewRequest(AdminRequest, kw_only=True):
    user_id: EndUserId
    alias: Alias | None = None
    blocked: bool = False
    max_budget: float | None = None
    soft_budget: float | None = None
    budget_duration: str | None = None
    spend: float = 0.0


class EndUserUpdateRequest(AdminRequest, kw_only=True):
    user_id: EndUserId
    alias: Alias | None | msgspec.UnsetType = msgspec.UNSET
    blocked: bool | msgspec.UnsetType = msgspec.UNSET
    max_budget: float | None | msgspec.UnsetType = msgspec.UNSET
    soft_budget: float | None | msgspec.UnsetType = msgspec.UNSET
    budget_duration: str | None | msgspec.UnsetType = msgspec.UNSET
    spend: float | msgspec.UnsetType = msgspec.UNSET


class EndUserDeleteRequest(AdminRequest, kw_only=True):
    user_ids: list[EndUserId]


def end_user_view(gateway: Gateway, record: EndUserRecord) -> dict[str, Any]:
    """An end user as LiteLLM shows a customer (``litellm_budget_table`` holds the budget), the budget also at the
    top level."""
    budget = {"max_budget": record.max_budget, "soft_budget": record.soft_budget,
              "budget_duration": record.budget_duration,
              "budget_reset_at": record.budget_reset_at.isoformat() if record.budget_reset_at else None}
    return {"user_id": record.user_id, "alias": record.alias, "blocked": record.blocked,
            "spend": gateway.spend.spend_of("end_user", record.user_id, record.spend, record.budget_reset_at), **budget,
            "litellm_budget_table": budget,
            "created_at": record.created_at.isoformat() if record.created_at else None,
            "updated_at": record.updated_at.isoformat() if record.updated_at else None}


def _check_id(user_id: str) -> None:
    if not user_id:
        raise ApiError(422, "user_id: required (the `user` requests name)", param="user_id")


async def _new(request: Request) -> Response[bytes]:
    gateway = gateway_of(request)
    await gateway.admin_only(request)
    data = await decode_body(request, EndUserNewRequest)
    _check_id(data.user_id)
    if await gateway.store.get_end_user(data.user_id) is not None:
        raise ApiError(400, f"user_id: end user {data.user_id!r} already exists", param="user_id")
    record = await gateway.store.create_end_user(data.user_id, alias=data.alias, blocked=data.blocked,
                                                 **budget_values(data, gateway.spend.clock()))
    gateway.invalidate()
    return json_response(end_user_view(gateway, record))


async def _info(request: Request, end_user_id: str | None) -> Response[bytes]:
    gateway = gateway_of(request)
    await gateway.authorize(request, "proxy_admin_viewer")
    if not end_user_id:
        raise ApiError(400, "end_user_id: required query parameter", param="end_user_id")
    record = await gateway.store.get_end_user(end_user_id)
    if record is None:
        raise ApiError(404, f"end_user_id: end user {end_user_id!r} does not exist", type="not_found_error",
                       param="end_user_id")
    return json_response(end_user_view(gateway, record))


async def _update(request: Request) -> Response[bytes]:
    gateway = gateway_of(request)
    await gateway.admin_only(request)
    data = await decode_body(request, EndUserUpdateRequest)
    if await gateway.store.get_end_user(data.user_id) is None:
        raise ApiError(404, f"user_id: end user {data.user_id!r} does not exist", type="not_found_error",
                       param="user_id")
    values = {name: getattr(data, name) for name in ("alias", "blocked") if getattr(data, name) is not msgspec.UNSET}
    budget = budget_values(data, gateway.spend.clock())
    async with gateway.spend.holding("spend" in budget):
        record = await gateway.store.update_end_user(data.user_id, **values, **budget)
        if budget:
            gateway.spend.forget("end_user", data.user_id, spend_set="spend" in budget)
    gateway.invalidate()
    assert record is not None
    return json_response(end_user_view(gateway, record))


async def _delete(request: Request) -> Response[bytes]:
    gateway = gateway_of(request)
    await gateway.admin_only(request)
    data = await decode_body(request, EndUserDeleteRequest)
    if not data.user_ids:
        raise ApiError(422, "user_ids: give at least one end user id", param="user_ids")
    deleted = await gateway.store.delete_end_users(data.user_ids)
    for user_id in deleted:
        gateway.spend.forget("end_user", user_id)
    gateway.invalidate()
    if not deleted:
        raise ApiError(404, "user_ids: none of these end users exist", type="not_found_error", param="user_ids")
    return json_response({"deleted_end_users": deleted})


async def _list(request: Request, page: str | None, page_size: str | None) -> Response[bytes]:
    """End users in creation order (LiteLLM answers a list); ``page``/``page_size`` as ``/team/list``."""
    gateway = gateway_of(request)
    await gateway.authorize(request, "proxy_admin_viewer")
    chosen = page_of(page, page_size, default_size=1000)
    records = await gateway.store.list_end_users(offset=chosen.offset, limit=chosen.size)
    return json_response([end_user_view(gateway, r) for r in records])


@post(["/end_user/new", "/customer/new"], status_code=200)
async def new_end_user(request: Request) -> Response[bytes]:
    return await _new(request)


@get(["/end_user/info", "/customer/info"])
async def end_user_info(request: Request, end_user_id: str | None = None) -> Response[bytes]:
    return await _info(request, end_user_id)


@post(["/end_user/update", "/customer/update"], status_code=200)
async def update_end_user(request: Request) -> Response[bytes]:
    return await _update(request)


@post(["/end_user/delete", "/customer/delete"], status_code=200)
async def delete_end_users(request: Request) -> Response[bytes]:
    return await _delete(request)


@get(["/end_user/list", "/customer/list"])
async def end_user_list(request: Request, page: str | None = None, page_size: str | None = None) -> Response[bytes]:
    return await _list(request, page, page_size)
