"""``GET /spend/report``: spend per day grouped by team, key, user, end user, tag or model, as JSON or CSV.

Reads ``sg_daily_spend`` (every team's) or, for one team, ``sg_team_daily_spend`` (what the team's keys spent),
both written by :mod:`sluicegate.limits.spend` in batches; the route first writes what this process has not yet, so
a report includes every request answered here before it. Proxy admins and viewers read any report; a team's admin
reads their team's, and only that.
"""

from __future__ import annotations

import csv
import io
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

from litestar import Request, Response, get

from sluicegate.api.common import gateway_of, json_response
from sluicegate.errors import ApiError
from sluicegate.limits.spend import ENTITY_TYPES
from sluicegate.permissions import can_read_all, describe, readable_teams, require

if TYPE_CHECKING:
    from sluicegate.auth import AuthContext
    from sluicegate.gateway import Gateway

__all__ = ("spend_report",)

_COLUMNS = ("date", "spend", "requests", "prompt_tokens", "completion_tokens")
_DEFAULT_DAYS = 30


def _date(value: str | None, name: str, default: date) -> str:
    if value is None or value == "":
        return default.isoformat()
    try:
        return date.fromisoformat(value[:10]).isoformat()
    except ValueError:
        raise ApiError(422, f"{name}: expected a date YYYY-MM-DD, got {value[:40]!r}", param=name) from None


async def report_scope(gateway: Gateway, request: Request, team_id: str | None) -> tuple[AuthContext, str | None]:
    """Who may read which report: proxy admins and viewers any (``team_id`` narrows it to one team); a team's admin
    (viewer roles included) their team's only: ``team_id`` is forced to it (required when they admin several
    teams), another team's is a 403."""
    ctx = await gateway.authorize(request)
    if can_read_all(ctx):
        return ctx, team_id
    if team_id is not None:
        require(ctx, "team_admin_viewer", team_id)
        return ctx, team_id
    teams = readable_teams(ctx, "team_admin_viewer") or []
    if len(teams) == 1:
        return ctx, teams[0]
    if not teams:
        raise ApiError(403, "this route needs role proxy_admin or proxy_admin_viewer, or role admin of a team "
                       f"(for that team's report); {describe(ctx)} has none of them", type="permission_error",
                       code="403")
    raise ApiError(422, f"team_id: required, naming one of the teams you are admin of: {', '.join(teams)}",
                   param="team_id")


@get("/spend/report")
async def spend_report(request: Request, start_date: str | None = None, end_date: str | None = None,
                       group_by: str = "team", team_id: str | None = None,
                       format: str | None = None) -> Response[Any]:  # noqa: A002 - the query parameter's name
    """Spend per day and ``group_by`` (team | key | user | end_user | tag | model) from ``start_date`` to
    ``end_date`` (inclusive, UTC days; default the last 30 days). ``format=csv`` (or ``accept: text/csv``) for
    CSV. ``team_id`` narrows the report to one team: what its keys spent, by ``group_by``; a team's admin always
    reads their team's."""
    gateway = gateway_of(request)
    _, team = await report_scope(gateway, request, team_id)
    if group_by not in ENTITY_TYPES:
        raise ApiError(422, f"group_by: one of {', '.join(ENTITY_TYPES)}; got {group_by[:40]!r}", param="group_by")
    wants_csv = format == "csv" or (format is None and "text/csv" in (request.headers.get("accept") or ""))
    if format not in (None, "json", "csv"):
        raise ApiError(422, f"format: 'json' or 'csv', got {format[:40]!r}", param="format")
    today = datetime.now(UTC).date()
    start = _date(start_date, "start_date", today - timedelta(days=_DEFAULT_DAYS - 1))
    end = _date(end_date, "end_date", today)
    if start > end:
        raise ApiError(422, f"start_date: {start} is after end_date {end}", param="start_date")
    await gateway.spend.flush()
    if team is None:
        rows = await gateway.store.spend_report(group_by, start, end)
    elif group_by == "team":
        rows = await gateway.store.spend_report("team", start, end, [team])
    else:
        rows = await gateway.store.spend_report(group_by, start, end, team_id=team)
    if wants_csv:
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["date", group_by, *_COLUMNS[1:]])
        for row in rows:
            writer.writerow([row.day, row.entity_id, repr(row.spend), row.requests, row.prompt_tokens,
                             row.completion_tokens])
        return Response(content=out.getvalue(), media_type="text/csv; charset=utf-8",
                        headers={"content-disposition": f'attachment; filename="spend-{group_by}-{start}-{end}.csv"'})
    totals: dict[str, float] = {}
    for row in rows:
        totals[row.entity_id] = totals.get(row.entity_id, 0.0) + row.spend
    return json_response({
        "start_date": start, "end_date": end, "group_by": group_by,
        "total_spend": sum(row.spend for row in rows),
        "totals": [{group_by: ident, "spend": spend} for ident, spend in sorted(totals.items())],
        "data": [{"date": row.day, group_by: row.entity_id, "spend": row.spend, "requests": row.requests,
                  "prompt_tokens": row.prompt_tokens, "completion_tokens": row.completion_tokens} for row in rows]})
