"""Who may do what: the roles (LiteLLM's names), the route → role table, and the checks every admin route calls.

Plain functions of an :class:`~sluicegate.auth.AuthContext`, so the API and the console decide alike:

- proxy-wide roles (``sg_users.user_role``): ``proxy_admin`` (everything; the master key is one),
  ``proxy_admin_viewer`` (reads everything, writes nothing), ``internal_user`` (manages their own keys; more where
  they are a team's admin), ``internal_user_viewer`` (reads their own keys and teams, writes nothing);
- team roles (``sg_team_members.role``): ``admin`` manages the team (its callbacks, logging switch, cache switch,
  keys and members), ``user`` reads the team;
- a key without a user calls models, reads its own ``/key/info`` and probes its own sinks; nothing else.

A viewer role wins over a team role: an ``internal_user_viewer`` who is a team's admin reads what the admin reads
and writes nothing. Checks come before existence checks, so a caller learns nothing about teams they cannot see
(an unknown team is a 404 for whoever could read it, a 403 for everyone else).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import msgspec

from sluicegate.db.store import Actor
from sluicegate.errors import ApiError

if TYPE_CHECKING:
    from litestar import Request

    from sluicegate.auth import AuthContext
    from sluicegate.db.store import KeyRecord

__all__ = ("LEVELS", "MEMBER_ROLES", "PUBLIC_ROUTES", "ROLES", "ROUTES", "Level", "Route", "actor_of",
           "can_admin_read_team", "can_read_all", "can_read_key", "can_read_team", "can_write_key", "can_write_some_key",
           "can_write_team", "describe", "readable_teams", "require", "require_key_read", "require_key_write",
           "require_some_key_write", "route_table_markdown")

ROLES = ("proxy_admin", "proxy_admin_viewer", "internal_user", "internal_user_viewer")
VIEWER_ROLES = frozenset({"proxy_admin_viewer", "internal_user_viewer"})
MEMBER_ROLES = ("admin", "user")

Level = Literal["proxy_admin", "proxy_admin_viewer", "team_admin", "team_admin_viewer", "team_member", "any_user",
                "any_key"]
LEVELS: dict[str, str] = {
    "proxy_admin": "`proxy_admin` (the master key, or the key of a user with that role)",
    "proxy_admin_viewer": "`proxy_admin` or `proxy_admin_viewer`",
    "team_admin": "`admin` of the team (not with a viewer role), or `proxy_admin`",
    "team_admin_viewer": "`admin` of the team (viewer roles included), `proxy_admin` or `proxy_admin_viewer`",
    "team_member": "any member of the team, `proxy_admin` or `proxy_admin_viewer`",
    "any_user": "any user's key (a key without a user is refused)",
    "any_key": "any valid key",
}


class Route(msgspec.Struct, frozen=True):
    """One admin route and the role it needs.

    ``team`` says where the team the check concerns comes from: ``path``, ``query`` or ``body`` (its
    ``team_id``), ``key`` (the team of the key(s) named), ``user`` (the teams of the user named), or None (no
    team: the level applies proxy-wide, and team admins see only their teams' rows in a listing).
    """

    method: str
    path: str
    level: Level
    team: Literal["path", "query", "body", "key", "user"] | None = None
    note: str = ""


ROUTES: tuple[Route, ...] = (
    # keys
    Route("POST", "/key/generate", "team_admin", "body",
          "without `team_id`: an `internal_user` creates a key of their own"),
    Route("POST", "/key/update", "team_admin", "key", "the owner of a key without a team may update it too; "
          "moving a key needs the role on both teams"),
    Route("GET", "/key/info", "team_admin_viewer", "key", "the key itself and its owner may read it too"),
    Route("POST", "/key/delete", "team_admin", "key", "the owner of a key without a team may delete it too"),
    Route("GET", "/key/list", "team_admin_viewer", "query",
          "without `team_id`: proxy viewers list every key, others their own and their admin teams' keys"),
    Route("POST", "/key/health", "any_key", None, "probes the calling key's own sinks"),
    # teams
    Route("POST", "/team/new", "proxy_admin"),
    Route("GET", "/team/info", "team_member", "query"),
    Route("GET", "/team/list", "any_user", None, "each caller sees the teams it may read"),
    Route("POST", "/team/update", "team_admin", "body",
          "a team admin may change `team_alias` and `metadata` (e.g. the cache switch); other fields need "
          "`proxy_admin`"),
    Route("POST", "/team/delete", "proxy_admin"),
    Route("POST", "/team/member_add", "team_admin", "body"),
    Route("POST", "/team/member_update", "team_admin", "body"),
    Route("POST", "/team/member_delete", "team_admin", "body"),
    Route("POST", "/team/{team_id}/callback", "team_admin", "path"),
    Route("GET", "/team/{team_id}/callback", "team_member", "path", "secrets masked"),
    Route("DELETE", "/team/{team_id}/callback/{callback_name}", "team_admin", "path"),
    Route("POST", "/team/{team_id}/disable_logging", "team_admin", "path"),
    Route("POST", "/team/{team_id}/enable_logging", "team_admin", "path"),
    # users
    Route("POST", "/user/new", "proxy_admin"),
    Route("GET", "/user/info", "team_admin_viewer", "user", "a user may read themselves"),
    Route("POST", "/user/update", "proxy_admin"),
    Route("POST", "/user/delete", "proxy_admin"),
    Route("GET", "/user/list", "proxy_admin_viewer"),
    # audit
    Route("GET", "/audit", "team_admin_viewer", "query",
          "without `team_id`: proxy viewers read every row, team admins their teams' rows"),
    Route("GET", "/audit/{audit_id}", "team_admin_viewer", "path", "the team of the row"),
    # operations
    Route("GET", "/-/plugins", "proxy_admin_viewer"),
    Route("GET", "/-/sinks", "proxy_admin_viewer"),
    Route("GET", "/metrics", "proxy_admin_viewer", None,
          "no auth at all with litellm_settings.require_auth_for_metrics_endpoint: false"),
    Route("GET", "/health", "proxy_admin", None, "it calls every deployment"),
    Route("POST", "/config/reload", "proxy_admin", None, "re-reads config.yaml"),
    # spend and end users (LiteLLM's customers); each end-user route also under /customer/
    Route("GET", "/spend/report", "team_admin_viewer", "query",
          "without `team_id`: proxy viewers read every team's spend; a team's admin reads their team's (what its "
          "keys spent, by any `group_by`), naming `team_id` if they are admin of several"),
    *(Route(method, f"/{prefix}/{action}", "proxy_admin_viewer" if method == "GET" else "proxy_admin")
      for prefix in ("end_user", "customer")
      for method, action in (("POST", "new"), ("GET", "info"), ("POST", "update"), ("POST", "delete"),
                             ("GET", "list"))),
    Route("GET", "/model/info", "proxy_admin_viewer"),
    Route("GET", "/v1/model/info", "proxy_admin_viewer"),
)


# Not admin routes: model calls with any valid key (the key's own models), and the probes that take no key.
# (The console's pages under /ui are checked by the console, through these same functions.)
PUBLIC_ROUTES = frozenset({
    ("POST", "/v1/chat/completions"), ("POST", "/chat/completions"), ("GET", "/v1/models"), ("GET", "/models"),
    ("GET", "/v1/models/{model}"), ("GET", "/models/{model}"), ("POST", "/v1/embeddings"), ("POST", "/embeddings"),
    ("POST", "/v1/messages"), ("POST", "/messages"), ("POST", "/v1/messages/count_tokens"),
    ("POST", "/messages/count_tokens"),
    *((method, prefix + path) for prefix in ("/v1", "") for method, path in (
        ("POST", "/completions"), ("POST", "/responses"), ("GET", "/responses/{response_id}"),
        ("DELETE", "/responses/{response_id}"), ("GET", "/responses/{response_id}/input_items"),
        ("POST", "/images/generations"), ("POST", "/audio/transcriptions"), ("POST", "/audio/speech"),
        ("POST", "/moderations"))),
    ("GET", "/health/liveliness"), ("GET", "/health/liveness"), ("GET", "/health/readiness"),
})


def route_table_markdown() -> str:
    """The table docs/api.md carries (a test checks it is there, word for word)."""
    lines = ["| method | path | required role | team from | notes |", "|---|---|---|---|---|"]
    for route in ROUTES:
        lines.append(f"| {route.method} | `{route.path}` | {LEVELS[route.level]} | {route.team or '—'} | "
                     f"{route.note or ''} |")
    return "\n".join(lines) + "\n"


# the checks ----------------------------------------------------------------------------------------------
def is_viewer(ctx: AuthContext) -> bool:
    return ctx.role in VIEWER_ROLES


def can_read_all(ctx: AuthContext) -> bool:
    return ctx.is_admin or ctx.role == "proxy_admin_viewer"


def team_role(ctx: AuthContext, team_id: str | None) -> str | None:
    if team_id is None or ctx.user is None:
        return None
    return ctx.team_roles.get(team_id)


def can_write_team(ctx: AuthContext, team_id: str) -> bool:
    return ctx.is_admin or (team_role(ctx, team_id) == "admin" and not is_viewer(ctx))


def can_admin_read_team(ctx: AuthContext, team_id: str) -> bool:
    return can_read_all(ctx) or team_role(ctx, team_id) == "admin"


def can_read_team(ctx: AuthContext, team_id: str) -> bool:
    return can_read_all(ctx) or team_role(ctx, team_id) is not None


_CHECKS = {"team_admin": can_write_team, "team_admin_viewer": can_admin_read_team, "team_member": can_read_team}


def readable_teams(ctx: AuthContext, level: Level = "team_member") -> list[str] | None:
    """The teams whose rows a listing may show at ``level``: None for all (proxy viewers), else the caller's."""
    if can_read_all(ctx):
        return None
    check = _CHECKS[level]
    return sorted(t for t in ctx.team_roles if check(ctx, t)) if ctx.user else []


def can_read_key(ctx: AuthContext, key: KeyRecord) -> bool:
    if can_read_all(ctx) or key.token_id == ctx.token_id:
        return True
    if ctx.user is not None and key.user_id == ctx.user.user_id:
        return True
    return key.team_id is not None and can_admin_read_team(ctx, key.team_id)


def can_write_key(ctx: AuthContext, team_id: str | None, user_id: str | None) -> bool:
    """May the caller create, change or delete a key of ``team_id`` owned by ``user_id``?

    A team's keys are its admins' (a member could otherwise set their key's own logging and step out of the
    team's, which the team's admin chose). A key without a team is its owner's.
    """
    if ctx.is_admin:
        return True
    if ctx.user is None or is_viewer(ctx):
        return False
    if team_id is not None:
        return team_role(ctx, team_id) == "admin"
    return user_id == ctx.user.user_id


def can_write_some_key(ctx: AuthContext) -> bool:
    """Could the caller write any key at all? (Checked before looking a key up, so that a key without a user or a
    viewer is refused alike whether the key it names exists or not.)"""
    return ctx.is_admin or (ctx.user is not None and not is_viewer(ctx))


def describe(ctx: AuthContext) -> str:
    """The caller as an error message names them: never the key itself."""
    if ctx.key is None:
        return "the master key"
    if ctx.user is not None:
        return f"user {ctx.user.user_id!r} (role {ctx.user.user_role})"
    return f"key {ctx.key.key_alias or ctx.key.key_name!r} (no user)"


def actor_of(ctx: AuthContext, request: Request | None = None) -> Actor:
    """The audit trail's "who": the user, else the key's alias or display name; the key's hash alongside.

    LiteLLM's ``litellm-changed-by`` header (a tool acting for a person) is kept beside it as ``on_behalf_of``; it
    never replaces who authenticated, since any caller can write it.
    """
    on_behalf_of = None
    if request is not None and (header := request.headers.get("litellm-changed-by")):
        on_behalf_of = "".join(c for c in header if c.isprintable())[:255] or None
    if ctx.key is None:
        return Actor(changed_by="master_key" if ctx.is_admin else "system", on_behalf_of=on_behalf_of)
    if ctx.user is not None:
        return Actor(changed_by=ctx.user.user_id, changed_by_api_key=ctx.token_id, on_behalf_of=on_behalf_of)
    return Actor(changed_by=ctx.key.key_alias or ctx.key.key_name, changed_by_api_key=ctx.token_id,
                 on_behalf_of=on_behalf_of)


def _denied(message: str, param: str | None = None) -> ApiError:
    return ApiError(403, message, type="permission_error", param=param, code="403")


def _team_standing(ctx: AuthContext, team_id: str) -> str:
    role = team_role(ctx, team_id)
    if ctx.user is None:
        return "a key without a user has no team role"
    if role is None:
        return f"is not a member of team {team_id!r}"
    if is_viewer(ctx):
        return f"is {role!r} of team {team_id!r} but has the read-only role {ctx.user.user_role}"
    return f"is {role!r} of team {team_id!r}"


def require(ctx: AuthContext, level: Level, team_id: str | None = None, *, param: str | None = "team_id") -> None:
    """Raise a 403 (LiteLLM/OpenAI error shape) unless the caller holds ``level`` (for ``team_id``, if the level
    is a team's); the message names the role needed and the caller's."""
    if level == "any_key":
        return
    if level == "any_user":
        if not ctx.is_admin and ctx.user is None:
            raise _denied(f"this route needs a user's key; {describe(ctx)} has no user", None)
        return
    if level == "proxy_admin":
        if not ctx.is_admin:
            raise _denied(f"this route needs role proxy_admin; {describe(ctx)} does not have it", None)
        return
    if level == "proxy_admin_viewer":
        if not can_read_all(ctx):
            raise _denied(f"this route needs role proxy_admin or proxy_admin_viewer; {describe(ctx)} has neither",
                          None)
        return
    if team_id is None:
        raise ValueError(f"level {level!r} needs a team_id")
    if not _CHECKS[level](ctx, team_id):
        needed = {"team_admin": f"role admin of team {team_id!r} (or proxy_admin)",
                  "team_admin_viewer": f"role admin of team {team_id!r} (or proxy_admin / proxy_admin_viewer)",
                  "team_member": f"membership of team {team_id!r} (or proxy_admin / proxy_admin_viewer)"}[level]
        raise _denied(f"team {team_id!r}: this needs {needed}; {describe(ctx)} {_team_standing(ctx, team_id)}"
                      if ctx.user is not None else
                      f"team {team_id!r}: this needs {needed}; {describe(ctx)}: {_team_standing(ctx, team_id)}",
                      param)


def require_key_read(ctx: AuthContext, key: KeyRecord, *, param: str = "key") -> None:
    if not can_read_key(ctx, key):
        where = f"team {key.team_id!r}" if key.team_id else "no team"
        raise _denied(f"key {key.key_alias or key.key_name!r} ({where}): reading it needs its owner, role admin of "
                      f"its team, or proxy_admin / proxy_admin_viewer; {describe(ctx)} is none of them", param)


def require_some_key_write(ctx: AuthContext, param: str = "key") -> None:
    if not can_write_some_key(ctx):
        raise _denied(f"writing keys needs a user's key with a role that writes; {describe(ctx)} "
                      + ("is read-only" if ctx.user is not None else "has no user"), param)


def require_key_write(ctx: AuthContext, team_id: str | None, user_id: str | None, *, what: str,
                      param: str = "key") -> None:
    """403 unless the caller may write a key of ``team_id`` owned by ``user_id``; ``what`` names the key."""
    if can_write_key(ctx, team_id, user_id):
        return
    if team_id is not None:
        raise _denied(f"{what} (team {team_id!r}): this needs role admin of team {team_id!r} (or proxy_admin); "
                      f"{describe(ctx)} {_team_standing(ctx, team_id)}" if ctx.user is not None else
                      f"{what} (team {team_id!r}): this needs role admin of team {team_id!r} (or proxy_admin); "
                      f"{describe(ctx)}: {_team_standing(ctx, team_id)}", param)
    if ctx.user is not None and is_viewer(ctx):
        raise _denied(f"{what}: {describe(ctx)} is read-only", param)
    raise _denied(f"{what} (no team): only its owner (user {user_id!r}) or proxy_admin may write it; "
                  f"{describe(ctx)} is neither" if user_id else
                  f"{what} (no team, no owner): only proxy_admin may write it; {describe(ctx)} is not", param)
