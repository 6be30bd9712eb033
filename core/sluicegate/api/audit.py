"""``GET /audit`` and ``GET /audit/{id}``: the audit trail (LiteLLM's ``AuditLogResponse`` names).

Every change to teams, keys, users, memberships and logging destinations is a row, written by the store in the
transaction of the change: who (user id, or key alias / display name; the key's hash, never the key), when,
``action``, ``table_name``, ``object_id``, and the object before and after (``before_value``, ``updated_values``)
with secrets masked as the API masks them. Proxy viewers read every row; a team's admins read their team's rows.
For GDPR, a team's ``logging_disabled`` row is the record that its logging was switched off, when, and by whom.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from litestar import Request, Response, get

from sluicegate.api.common import gateway_of, json_response, page_of
from sluicegate.errors import ApiError
from sluicegate.permissions import can_read_all, readable_teams, require

if TYPE_CHECKING:
    from sluicegate.db.store import AuditRecord

__all__ = ("audit_entry", "audit_list", "audit_view")


def audit_view(record: AuditRecord) -> dict[str, Any]:
    return {"id": str(record.id), "updated_at": record.updated_at.isoformat(), "changed_by": record.changed_by,
            "changed_by_api_key": record.changed_by_api_key, "on_behalf_of": record.on_behalf_of,
            "action": record.action,
            "table_name": record.table_name, "object_id": record.object_id, "team_id": record.team_id,
            "before_value": record.before_value, "updated_values": record.updated_values}


@get("/audit")
async def audit_list(request: Request, team_id: str | None = None, object_id: str | None = None,
                     table_name: str | None = None, action: str | None = None, changed_by: str | None = None,
                     page: str | None = None, page_size: str | None = None) -> Response[bytes]:
    """Newest first, a page at a time (``page`` from 1, ``page_size`` default 50, at most 1,000; the total also in
    ``x-total-count``), filtered by any of ``team_id``, ``object_id``, ``table_name``, ``action``, ``changed_by``."""
    gateway = gateway_of(request)
    ctx = await gateway.authorize(request)
    chosen = page_of(page, page_size, default_size=50)
    if team_id is not None:
        require(ctx, "team_admin_viewer", team_id)
        teams: list[str] | None = [team_id]
    else:
        teams = readable_teams(ctx, "team_admin_viewer")
        if teams == []:
            raise ApiError(403, "the audit trail needs role proxy_admin or proxy_admin_viewer, or admin of a team "
                           "(for that team's rows)", type="permission_error", code="403")
    filters = {"object_id": object_id, "table_name": table_name, "action": action, "changed_by": changed_by}
    rows = await gateway.store.list_audit(team_ids=teams, offset=chosen.offset, limit=chosen.size, **filters)
    total = await gateway.store.count_audit(team_ids=teams, **filters)
    return json_response({"audit_logs": [audit_view(r) for r in rows], "total": total, "page": chosen.page,
                          "page_size": chosen.size, "total_pages": chosen.total_pages(total)},
                         headers={"x-total-count": str(total), "x-page": str(chosen.page),
                                  "x-total-pages": str(chosen.total_pages(total))})


@get("/audit/{audit_id:str}")
async def audit_entry(request: Request, audit_id: str) -> Response[bytes]:
    """One row by id: proxy viewers, or an admin of the row's team."""
    gateway = gateway_of(request)
    ctx = await gateway.authorize(request)
    if not audit_id.isdigit() or len(audit_id) > 18:
        raise ApiError(422, f"audit_id: expected a whole number, got {audit_id[:40]!r}", param="audit_id")
    record = await gateway.store.get_audit(int(audit_id))
    if record is None or record.team_id is None:
        if not can_read_all(ctx):
            raise ApiError(403, "this audit row needs role proxy_admin or proxy_admin_viewer",
                           type="permission_error", param="audit_id", code="403")
        if record is None:
            raise ApiError(404, f"audit_id: no audit row {audit_id}", type="not_found_error", param="audit_id")
    else:
        require(ctx, "team_admin_viewer", record.team_id, param="audit_id")
    return json_response(audit_view(record))
