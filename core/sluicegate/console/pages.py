"""The console's pages under ``/ui``: server-rendered HTML over the admin API's own functions.

Every change goes through the function the matching admin route calls (``api/teams.py``, ``api/keys.py``),
with a body decoded by the same code, so a form meets the same validation and shows the API's own error text
next to its field. Who may see and change what is decided in one place, :func:`allowed`.

Forms are protected three ways: the session cookie is ``SameSite=Strict``, every form carries the session's
CSRF token (the login form a token paired with a short-lived cookie), and pages forbid framing.
"""

from __future__ import annotations

import hmac
import json
import math
import re
import secrets
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import msgspec
from jinja2 import Environment, FileSystemLoader, select_autoescape
from litestar import Request, Response, Router, get, post
from litestar.response import Redirect
from litestar.static_files import create_static_files_router
from markupsafe import Markup, escape

from sluicegate.api import keys as key_api
from sluicegate.api import teams as team_api
from sluicegate.api.common import decode_json, gateway_of, page_of
from sluicegate.auth import AuthContext, check_usable, hash_key, is_master
from sluicegate.cache import _flag
from sluicegate.console.forms import read_vars_form, vars_form
from sluicegate.console.sessions import LoginFailures, Session, SessionStore
from sluicegate.errors import ApiError
from sluicegate.gateway import NO_MASTER_KEY
from sluicegate.permissions import (can_admin_read_team, can_read_all, can_read_team, can_write_team,
                                    readable_teams)
from sluicegate.redaction.policy import PolicyError
from sluicegate.sinks.base import MASK
from sluicegate.sinks.registry import UnknownCallbackName

if TYPE_CHECKING:
    from collections.abc import Mapping

    from sluicegate.gateway import Gateway

__all__ = ("allowed", "console_router", "visible_teams")

HERE = Path(__file__).parent
SESSION_COOKIE = "sg_console"
LOGIN_COOKIE = "sg_console_login"
LOGIN_FAILURES_PER_MINUTE = 10
KEYS_PER_PAGE = 100
AUDIT_PER_PAGE = 50
SPEND_DAYS = 30
SPEND_GROUPS = ("team", "key", "model")

_templates = Environment(loader=FileSystemLoader(HERE / "templates"), trim_blocks=True, lstrip_blocks=True,
                         autoescape=select_autoescape(default=True))
_SECURITY_HEADERS = {
    "content-security-policy": ("default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
                                "frame-ancestors 'none'; base-uri 'none'"),
    "x-content-type-options": "nosniff", "referrer-policy": "no-referrer", "x-frame-options": "DENY",
    "cache-control": "no-store",
}


# -- authorisation: the one place that decides ---------------------------------------------------------------
Action = Literal["enter", "read", "write", "audit"]


def allowed(ctx: AuthContext, action: Action, team_id: str | None = None) -> bool:
    """May ``ctx`` do ``action`` (``enter`` the console, ``read``, ``write``, or read the ``audit`` trail) on
    ``team_id`` (``None``: the gateway as a whole: creating teams, plugins, delivery, every audit row)? The same
    rules as the admin API (:mod:`sluicegate.permissions`): any user's key may enter; proxy viewers read
    everything; a team's members read it and its admins write it and read its audit rows (``GET /audit``); only
    proxy admins write gateway-wide."""
    if action == "enter":
        return ctx.is_admin or ctx.user is not None
    if team_id is None:
        return ctx.is_admin if action == "write" else can_read_all(ctx)
    if action == "audit":
        return can_admin_read_team(ctx, team_id)
    return can_write_team(ctx, team_id) if action == "write" else can_read_team(ctx, team_id)


def visible_teams(ctx: AuthContext, action: Literal["read", "audit"] = "read") -> frozenset[str] | None:
    """The teams ``ctx`` may list (``read``), or whose audit rows it may read (``audit``): ``None`` for all."""
    teams = readable_teams(ctx, "team_admin_viewer" if action == "audit" else "team_member")
    return None if teams is None else frozenset(teams)


# -- sessions and rendering ----------------------------------------------------------------------------------
class _Redirect(Exception):
    def __init__(self, path: str) -> None:
        self.path = path


class _Page(msgspec.Struct, kw_only=True):
    """The logged-in request: the gateway, the session and who it is."""

    gateway: Any
    session_id: str
    session: Session
    ctx: AuthContext


def _state(request: Request, name: str, make: Any) -> Any:
    state = request.app.state
    value = state.get(name)
    if value is None:
        value = state[name] = make()
    return value


def _sessions(request: Request) -> SessionStore:
    return _state(request, "console_sessions", SessionStore)


def _login_failures(request: Request) -> LoginFailures:
    return _state(request, "console_login_failures", lambda: LoginFailures(LOGIN_FAILURES_PER_MINUTE, 60.0))


def _over_tls(request: Request) -> bool:
    """Served over TLS, directly or (``x-forwarded-proto``) behind a terminating proxy. Trusting the header
    only adds the ``Secure`` flag, which a client cannot turn against anyone but itself."""
    forwarded = request.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
    return request.url.scheme == "https" or forwarded == "https"


def _set_cookie(response: Response[Any], request: Request, name: str, value: str, *, path: str = "/ui",
                max_age: int | None = None) -> None:
    response.set_cookie(name, value, path=path, httponly=True, secure=_over_tls(request), samesite="strict",
                        max_age=max_age)


def _clear_cookie(response: Response[Any], request: Request, name: str, *, path: str = "/ui") -> None:
    response.set_cookie(name, "", path=path, httponly=True, secure=_over_tls(request), samesite="strict",
                        max_age=0, expires=0)


async def _context_of(gateway: Gateway, token_id: str) -> AuthContext | None:
    """Who a session's key is now: a key blocked, expired or deleted since login ends the session's powers,
    and a master session ends when the master key changes."""
    if gateway.master_key and hmac.compare_digest(token_id, hash_key(gateway.master_key)):
        return gateway.admin
    ctx = gateway.keys.get(token_id)
    try:
        if ctx is None:
            ctx = await gateway._load(token_id)
        assert ctx.key is not None
        check_usable(ctx.key)
    except ApiError:
        return None
    return ctx


async def _page(request: Request) -> _Page:
    gateway = gateway_of(request)
    session_id = request.cookies.get(SESSION_COOKIE)
    session = _sessions(request).get(session_id)
    if session is None or session_id is None:
        raise _Redirect("/ui/login")
    ctx = await _context_of(gateway, session.token_id)
    if ctx is None or not allowed(ctx, "enter"):
        _sessions(request).delete(session_id)
        raise _Redirect("/ui/login")
    return _Page(gateway=gateway, session_id=session_id, session=session, ctx=ctx)


class _Forbidden(Exception):
    pass


def _require(page: _Page, action: Action, team_id: str | None = None) -> None:
    if not allowed(page.ctx, action, team_id):
        raise _Forbidden


async def _form(request: Request, page: _Page) -> dict[str, str]:
    """The submitted form, after its CSRF token is checked against the session's."""
    form = await request.form()
    values = {k: v for k, v in form.items() if isinstance(v, str)}
    if not page.session.csrf_matches(values.get("csrf_token")):
        raise _CsrfRefused
    return values


class _CsrfRefused(Exception):
    pass


def _who(ctx: AuthContext) -> str:
    if ctx.is_admin:
        return "master key"
    return ctx.key.key_alias or ctx.key.key_name if ctx.key else "key"


def render(request: Request, template: str, *, page: _Page | None = None, status: int = 200,
           **values: Any) -> Response[bytes]:
    flash = None
    if page is not None and page.session.flash:
        flash, page.session.flash = page.session.flash, None
    html = _templates.get_template(template).render(
        page=page, who=_who(page.ctx) if page else None, csrf_token=page.session.csrf_token if page else None,
        flash=flash, path=request.url.path, mask=MASK, **values)
    return Response(content=html.encode(), status_code=status, media_type="text/html; charset=utf-8",
                    headers=dict(_SECURITY_HEADERS))


def _done(page: _Page, path: str, message: str) -> Response[Any]:
    """Post/redirect/get: the message is shown once on the page redirected to."""
    page.session.flash = message
    return Redirect(path, status_code=303, headers=dict(_SECURITY_HEADERS))


def _field_errors(exc: ApiError, fields: tuple[str, ...] = ()) -> dict[str, str]:
    """The API's error, placed next to the field it names (``""``: the form as a whole)."""
    found: dict[str, str] = {}
    for item in (exc.extra or {}).get("errors", ()):
        name = item.get("field", "")
        if name in fields:
            found[name] = f"callback_vars.{name}: {item.get('reason')}"
    if found:
        return found
    param = (exc.param or "").rsplit(".", 1)[-1]
    return {param if param in fields else "": exc.message}


def _decode(data: Mapping[str, Any], type_: Any) -> Any:
    """A form's values decoded exactly as the API decodes a JSON body (same errors, same texts)."""
    return decode_json(msgspec.json.encode(data), type_)


def _when(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, int | float):
        value = datetime.fromtimestamp(value, UTC)
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return str(value)


_templates.filters["when"] = _when
_CODE_SPAN = re.compile(r"`([^`]+)`")


def _prose(text: str) -> Markup:
    """A docstring as HTML: escaped, then its `code spans` (Markdown's, as docs_gen writes them) as code."""
    return Markup(_CODE_SPAN.sub(r"<code>\1</code>", str(escape(text))))


_templates.filters["prose"] = _prose


# -- login ---------------------------------------------------------------------------------------------------
@get("/login")
async def login_form(request: Request) -> Response[bytes]:
    token = secrets.token_urlsafe(32)
    response = render(request, "login.html", login_token=token)
    _set_cookie(response, request, LOGIN_COOKIE, token, path="/ui/login", max_age=3600)
    return response


@post("/login")
async def login(request: Request) -> Response[Any]:
    gateway = gateway_of(request)
    form = await request.form()
    sent = form.get("csrf_token") or ""
    paired = request.cookies.get(LOGIN_COOKIE) or ""
    if not (sent and paired and hmac.compare_digest(str(sent).encode(), paired.encode())):
        return _csrf_page(request)
    key = str(form.get("key") or "").strip()
    client = request.client.host if request.client else "?"

    def refuse(status: int, message: str) -> Response[bytes]:
        if status in (401, 403):
            failures.failed(client)
        token = secrets.token_urlsafe(32)
        response = render(request, "login.html", status=status, login_token=token, error=message)
        _set_cookie(response, request, LOGIN_COOKIE, token, path="/ui/login", max_age=3600)
        return response

    failures = _login_failures(request)
    wait = failures.retry_after(client)
    if wait:
        return refuse(429, f"too many failed logins from this address; retry in {wait} s")
    if not key:
        return refuse(422, "key: enter the master key or a virtual key")
    if is_master(key, gateway.master_key):
        token_id, ctx = hash_key(key), gateway.admin
    else:
        ctx = await _context_of(gateway, hash_key(key)) if key.startswith("sk-") else None
        if ctx is None:
            return refuse(401, "invalid API key" + ("" if gateway.master_key else f"; {NO_MASTER_KEY}"))
        token_id = ctx.token_id
    if not allowed(ctx, "enter"):
        hint = "" if gateway.master_key else f" ({NO_MASTER_KEY})"
        return refuse(403, "this key may not use the console: today only the master key may" + hint)
    sessions = _sessions(request)
    sessions.delete(request.cookies.get(SESSION_COOKIE))  # rotated at login: a planted or old id dies here
    session_id, session = sessions.create(token_id)
    session.flash = "Logged in."
    response = Redirect("/ui/teams", status_code=303, headers=dict(_SECURITY_HEADERS))
    _set_cookie(response, request, SESSION_COOKIE, session_id)
    _clear_cookie(response, request, LOGIN_COOKIE, path="/ui/login")
    return response


@post("/logout")
async def logout(request: Request) -> Response[Any]:
    page = await _page(request)
    await _form(request, page)
    _sessions(request).delete(page.session_id)
    response = Redirect("/ui/login", status_code=303, headers=dict(_SECURITY_HEADERS))
    _clear_cookie(response, request, SESSION_COOKIE)
    return response


@get("/")
async def home(request: Request) -> Response[Any]:
    await _page(request)
    return Redirect("/ui/teams", status_code=303)


# -- teams ---------------------------------------------------------------------------------------------------
async def _teams_listing(page: _Page) -> list[Any]:
    store = page.gateway.store
    teams = await store.list_teams()
    visible = visible_teams(page.ctx)
    return [t for t in teams if visible is None or t.team_id in visible]


@get("/teams")
async def teams_page(request: Request) -> Response[bytes]:
    page = await _page(request)
    return render(request, "teams.html", page=page, teams=await _teams_listing(page),
                  may_create=allowed(page.ctx, "write"), errors={}, values={})


@post("/teams")
async def create_team(request: Request) -> Response[Any]:
    page = await _page(request)
    _require(page, "write")
    form = await _form(request, page)
    values = {name: form.get(name, "").strip() for name in ("team_id", "team_alias")}
    try:
        data = _decode({k: v for k, v in values.items() if v}, team_api.TeamNewRequest)
        team, _ = await team_api.create_team(page.gateway, page.ctx, data)
    except ApiError as exc:
        return render(request, "teams.html", page=page, status=exc.status, teams=await _teams_listing(page),
                      may_create=True, errors=_field_errors(exc, ("team_id", "team_alias")), values=values)
    return _done(page, f"/ui/teams/{_quote(team.team_id)}", f"Team {team.team_id} created.")


def _quote(value: str) -> str:
    from urllib.parse import quote

    return quote(value, safe="")


_templates.filters["seg"] = _quote


async def _team_page(request: Request, page: _Page, team_id: str, *, status: int = 200,
                     errors: Mapping[str, str] | None = None, values: Mapping[str, str] | None = None
                     ) -> Response[bytes]:
    gateway = page.gateway
    team = await team_api.find_team(gateway, team_id)
    callbacks = await team_api.team_callbacks(gateway, page.ctx, team_id)
    keys = await gateway.store.list_keys(team_id=team_id, limit=KEYS_PER_PAGE)
    members = await gateway.store.memberships(team_id=team_id)
    cache = _flag(team.metadata.get("cache")) if "cache" in team.metadata else None
    return render(request, "team.html", page=page, status=status, team=team, callbacks=callbacks,
                  redaction=_team_redaction(gateway, team), sinks=gateway.registry.names(), keys=keys, cache=cache,
                  members=members,
                  may_write=allowed(page.ctx, "write", team_id), errors=errors or {}, values=values or {})


def _team_redaction(gateway: Gateway, team: Any) -> dict[str, Any]:
    """A team's effective redaction, resolved as its keys' routes are (and as ``/key/health`` shows them): the
    team's policy and where it comes from, whether ``turn_off_message_logging`` is on, and each destination's own
    redaction (``redaction_view``: everything, a policy of its own or inherited, or none)."""
    resolver = gateway.resolver
    try:
        policy, source = resolver.policy_for(None, team, team.team_id)
    except PolicyError as exc:  # a stored policy whose redactor plugin has gone: the keys log nothing
        return {"problem": str(exc), "policy": None, "source": None, "off": False, "routes": []}
    routes = []
    for route in resolver.for_team(team).routes:
        view = key_api.redaction_view(route)
        if route.redaction is not None:
            view["rows"] = _policy_rows(route.redaction)
        routes.append(view)
    return {"problem": None, "policy": policy and {**policy.describe(), "rows": _policy_rows(policy)},
            "source": source, "off": resolver.redacts_by_default(team.team_id), "routes": routes}


def _policy_rows(policy: Any) -> list[dict[str, Any]]:
    """One row per redactor, in run order: name, options (regex patterns by name only) and what replaces a find."""
    rows = []
    for redactor in policy.redactors:
        described = redactor.describe()
        rows.append({"name": described["name"], "options": _compact(described.get("options")),
                     "placeholders": redactor.placeholders()})
    return rows


@get("/teams/{team_id:str}")
async def team_page(request: Request, team_id: str) -> Response[bytes]:
    page = await _page(request)
    _require(page, "read", team_id)
    return await _team_page(request, page, team_id)


@post("/teams/{team_id:str}/settings")
async def team_settings(request: Request, team_id: str) -> Response[Any]:
    """The alias and the cache switch (``metadata.cache``: on, off, or unset to follow the configuration)."""
    page = await _page(request)
    _require(page, "write", team_id)
    form = await _form(request, page)
    team = await team_api.find_team(page.gateway, team_id)
    metadata = {k: v for k, v in team.metadata.items() if k != "cache"}
    choice = form.get("cache", "")
    if choice in ("true", "false"):
        metadata["cache"] = choice == "true"
    alias = form.get("team_alias", "").strip()
    try:
        data = _decode({"team_id": team_id, "team_alias": alias or None, "metadata": metadata},
                       team_api.TeamUpdateRequest)
        await team_api.update_team_values(page.gateway, page.ctx, data)
    except ApiError as exc:
        return await _team_page(request, page, team_id, status=exc.status,
                                errors=_field_errors(exc, ("team_alias", "cache")), values=form)
    return _done(page, f"/ui/teams/{_quote(team_id)}", "Team settings saved.")


@post("/teams/{team_id:str}/logging")
async def team_logging(request: Request, team_id: str) -> Response[Any]:
    """The GDPR switch: send nothing for this team, or return it to its configured callbacks."""
    page = await _page(request)
    _require(page, "write", team_id)
    form = await _form(request, page)
    enabled = form.get("logging") == "enable"
    await team_api.set_team_logging(page.gateway, page.ctx, team_id, enabled=enabled)
    return _done(page, f"/ui/teams/{_quote(team_id)}",
                 "Logging enabled: the team's configured callbacks apply." if enabled else
                 "Logging disabled: nothing about this team's calls is sent to any sink.")


@post("/teams/{team_id:str}/delete")
async def team_delete(request: Request, team_id: str) -> Response[Any]:
    page = await _page(request)
    _require(page, "write", team_id)
    await _form(request, page)
    deleted, deleted_keys = await team_api.remove_teams(page.gateway, page.ctx,
                                                        team_api.TeamDeleteRequest(team_ids=[team_id]))
    return _done(page, "/ui/teams", f"Team {deleted[0]} deleted with its {deleted_keys} key(s).")


# -- a team's sinks: the form generated from the sink's Vars -------------------------------------------------
def _sink_form_page(request: Request, page: _Page, team_id: str, callback_name: str, *, status: int = 200,
                    errors: Mapping[str, str] | None = None, values: Mapping[str, str] | None = None
                    ) -> Response[bytes]:
    sink_class = page.gateway.registry.get(callback_name)
    module = sys.modules.get(sink_class.__module__)
    doc = (sink_class.__doc__ or (module.__doc__ if module else "") or "").strip().split("\n\n")[0]
    doc = doc.replace("``", "`")
    return render(request, "sink_form.html", page=page, status=status, team_id=team_id,
                  callback_name=callback_name, fields=vars_form(sink_class.Vars),
                  owner=page.gateway.registry.owner(callback_name), doc=" ".join(doc.split()),
                  errors=errors or {}, values=values or {})


@get("/teams/{team_id:str}/sinks/new")
async def sink_form(request: Request, team_id: str, callback_name: str | None = None) -> Response[Any]:
    page = await _page(request)
    _require(page, "write", team_id)
    await team_api.find_team(page.gateway, team_id)
    if not callback_name:
        return _done(page, f"/ui/teams/{_quote(team_id)}", "Choose a sink to add.")
    return _sink_form_page(request, page, team_id, callback_name)


@post("/teams/{team_id:str}/sinks")
async def sink_add(request: Request, team_id: str) -> Response[Any]:
    page = await _page(request)
    _require(page, "write", team_id)
    form = await _form(request, page)
    callback_name = form.get("callback_name", "")
    sink_class = page.gateway.registry.get(callback_name)
    fields = vars_form(sink_class.Vars)
    shown = {k: v for k, v in form.items() if k != "csrf_token" and not _is_secret_input(fields, k)}
    callback_vars, errors = read_vars_form(fields, form)
    if errors:
        return _sink_form_page(request, page, team_id, callback_name, status=422, errors=errors, values=shown)
    body = {"callback_name": callback_name,
            "callback_type": form.get("callback_type") or "success_and_failure",
            "callback_vars": callback_vars}
    try:
        await team_api.add_team_callback(page.gateway, page.ctx, team_id, _decode(body, team_api.AddCallbackRequest))
    except ApiError as exc:
        names = tuple(f.name for f in fields) + ("callback_type",)
        return _sink_form_page(request, page, team_id, callback_name, status=exc.status,
                               errors=_field_errors(exc, names), values=shown)
    return _done(page, f"/ui/teams/{_quote(team_id)}", f"{callback_name} added to team {team_id}.")


def _is_secret_input(fields: tuple[Any, ...], input_name: str) -> bool:
    """Secrets are write-only: a refused form comes back without them."""
    return any(f.secret and f.input_name == input_name for f in fields)


@post("/teams/{team_id:str}/sinks/{callback_name:str}/delete")
async def sink_delete(request: Request, team_id: str, callback_name: str) -> Response[Any]:
    page = await _page(request)
    _require(page, "write", team_id)
    await _form(request, page)
    await team_api.remove_team_callback(page.gateway, page.ctx, team_id, callback_name)
    return _done(page, f"/ui/teams/{_quote(team_id)}", f"{callback_name} removed from team {team_id}.")


# -- keys ----------------------------------------------------------------------------------------------------
async def _keys_page(request: Request, page: _Page, *, status: int = 200,
                     errors: Mapping[str, str] | None = None, values: Mapping[str, str] | None = None,
                     new_key: str | None = None, new_record: Any = None) -> Response[bytes]:
    store = page.gateway.store
    team_id = request.query_params.get("team_id") or None
    number = request.query_params.get("page") or "1"
    chosen = max(1, int(number)) if number.isdigit() else 1
    records = await store.list_keys(team_id=team_id, offset=(chosen - 1) * KEYS_PER_PAGE, limit=KEYS_PER_PAGE)
    total = await store.count_keys(team_id=team_id)
    visible = visible_teams(page.ctx)
    records = [r for r in records if visible is None or r.team_id in visible]
    return render(request, "keys.html", page=page, status=status, keys=records, team_filter=team_id,
                  current_page=chosen, total_pages=max(1, math.ceil(total / KEYS_PER_PAGE)), total=total,
                  teams=await _teams_listing(page), may_write=allowed(page.ctx, "write"), errors=errors or {},
                  values=values or {}, new_key=new_key, new_record=new_record)


@get("/keys")
async def keys_page(request: Request) -> Response[bytes]:
    page = await _page(request)
    return await _keys_page(request, page)


_KEY_FIELDS = ("team_id", "key_alias", "models", "duration", "metadata")


@post("/keys")
async def key_create(request: Request) -> Response[bytes]:
    page = await _page(request)
    form = await _form(request, page)
    team_id = form.get("team_id", "").strip() or None
    _require(page, "write", team_id)
    values = {name: form.get(name, "").strip() for name in _KEY_FIELDS}
    body: dict[str, Any] = {k: values[k] for k in ("team_id", "key_alias", "duration") if values[k]}
    if values["models"]:
        body["models"] = [m.strip() for m in values["models"].split(",") if m.strip()]
    if values["metadata"]:
        try:
            body["metadata"] = json.loads(values["metadata"])
        except ValueError as exc:
            return await _keys_page(request, page, status=422, values=values,
                                    errors={"metadata": f"metadata: not valid JSON ({exc})"})
    try:
        key, record = await key_api.create_key(page.gateway, page.ctx, _decode(body, key_api.KeyGenerateRequest))
    except ApiError as exc:
        return await _keys_page(request, page, status=exc.status, values=values,
                                errors=_field_errors(exc, _KEY_FIELDS))
    return await _keys_page(request, page, new_key=key, new_record=record)


async def _key_record(page: _Page, token_id: str, action: Action) -> Any:
    record = await page.gateway.store.get_key(token_id)
    if record is None:
        raise ApiError(404, "key: no such key", type="not_found_error", param="key")
    _require(page, action, record.team_id)
    return record


@post("/keys/{token_id:str}/rotate")
async def key_rotate(request: Request, token_id: str) -> Response[bytes]:
    page = await _page(request)
    await _form(request, page)
    await _key_record(page, token_id, "write")
    key, record = await key_api.regenerate_key(page.gateway, page.ctx, token_id)
    return await _keys_page(request, page, new_key=key, new_record=record)


@post("/keys/{token_id:str}/block")
async def key_block(request: Request, token_id: str) -> Response[Any]:
    page = await _page(request)
    form = await _form(request, page)
    await _key_record(page, token_id, "write")
    blocked = form.get("blocked") == "true"
    data = key_api.KeyUpdateRequest(key=token_id, blocked=blocked)
    record = await key_api.update_key_values(page.gateway, page.ctx, data)
    return _done(page, "/ui/keys", f"Key {record.key_name} {'blocked' if blocked else 'unblocked'}.")


@post("/keys/{token_id:str}/delete")
async def key_delete(request: Request, token_id: str) -> Response[Any]:
    page = await _page(request)
    await _form(request, page)
    record = await _key_record(page, token_id, "write")
    await key_api.remove_keys(page.gateway, page.ctx, key_api.KeyDeleteRequest(keys=[token_id]))
    return _done(page, "/ui/keys", f"Key {record.key_name} revoked (deleted).")


# -- delivery, plugins ----------------------------------------------------------------------------------------
@get("/delivery")
async def delivery_page(request: Request) -> Response[bytes]:
    page = await _page(request)
    _require(page, "read")
    dispatcher = page.gateway.dispatcher
    return render(request, "delivery.html", page=page, stats=dispatcher.stats(), pending=dispatcher.pending(),
                  submitted=dispatcher.submitted)


@get("/plugins")
async def plugins_page(request: Request) -> Response[bytes]:
    page = await _page(request)
    _require(page, "read")
    gateway = page.gateway
    described = gateway.pm.describe(gateway.registry.by_plugin(), gateway.providers.by_plugin())
    return render(request, "plugins.html", page=page, plugins=described)


# -- the audit trail ----------------------------------------------------------------------------------------
def _compact(value: Any) -> str:
    """A stored object as one line of JSON, to be escaped when rendered (its secrets were masked when the row was
    written, as the API masks them)."""
    if value is None:
        return ""
    return json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False, default=str)


_templates.filters["compact"] = _compact


def _changed(record: Any) -> tuple[Any, Any]:
    """Before and after as the page shows them: of an update, only the fields that changed (the object is named
    in its own column); of a creation or deletion, the whole object."""
    before, after = record.before_value, record.updated_values
    if isinstance(before, dict) and isinstance(after, dict):
        keys = [k for k in sorted(set(before) | set(after))
                if k not in before or k not in after or before[k] != after[k]]
        return {k: before[k] for k in keys if k in before}, {k: after[k] for k in keys if k in after}
    return before, after


_templates.filters["changed"] = _changed


@get("/audit")
async def audit_page(request: Request) -> Response[bytes]:
    """``GET /audit``'s rows from the same store query and under the same rule: proxy viewers read every row, a
    team's admins their teams' rows; newest first, a page at a time, optionally of one team."""
    page = await _page(request)
    team_id = request.query_params.get("team_id") or None
    chosen = page_of(request.query_params.get("page"), None, default_size=AUDIT_PER_PAGE)
    visible = visible_teams(page.ctx, "audit")
    if team_id is not None:
        _require(page, "audit", team_id)
        teams: list[str] | None = [team_id]
    elif visible is not None and not visible:
        raise ApiError(403, "the audit trail needs role proxy_admin or proxy_admin_viewer, or admin of a team "
                       "(for that team's rows)", type="permission_error")
    else:
        teams = None if visible is None else sorted(visible)
    store = page.gateway.store
    records = await store.list_audit(team_ids=teams, offset=chosen.offset, limit=chosen.size)
    total = await store.count_audit(team_ids=teams)
    choices = [t.team_id for t in await store.list_teams() if visible is None or t.team_id in visible]
    if team_id is not None and team_id not in choices:
        choices.append(team_id)  # a deleted team's rows stay readable
    return render(request, "audit.html", page=page, records=records, total=total, team_filter=team_id,
                  team_choices=choices, current_page=chosen.page, total_pages=chosen.total_pages(total),
                  readable=lambda team: team is not None and allowed(page.ctx, "read", team))


# -- spend ---------------------------------------------------------------------------------------------------
CHART_HEIGHT = 160
CHART_BAR = 18
CHART_GAP = 4
CHART_LEFT = 8
CHART_TOP = 8
CHART_BOTTOM = 22
CHART_COLOURS = 6  # the biggest five entities get a colour each, the rest share the sixth


def _money(value: float) -> str:
    return f"{value:.6f}"


_templates.filters["money"] = _money


def _spend_chart(rows: list[Any], start: date, end: date, order: list[str]) -> dict[str, Any]:
    """Stacked bars, one per day from ``start`` to ``end`` (days without spend stay empty), as coordinates the
    template draws as SVG: no script, nothing fetched."""
    days = [(start + timedelta(days=i)).isoformat() for i in range((end - start).days + 1)]
    by_day: dict[str, list[Any]] = {}
    for row in rows:
        by_day.setdefault(row.day, []).append(row)
    totals = {day: sum(r.spend for r in by_day.get(day, ())) for day in days}
    top = max(totals.values(), default=0.0)
    colour = {entity: min(i, CHART_COLOURS - 1) for i, entity in enumerate(order)}
    base = CHART_TOP + CHART_HEIGHT
    bars = []
    for i, day in enumerate(days):
        y = float(base)
        segments = []
        for row in sorted(by_day.get(day, ()), key=lambda r: colour[r.entity_id]):
            height = CHART_HEIGHT * row.spend / top if top > 0 else 0.0
            y -= height
            segments.append({"entity": row.entity_id, "spend": row.spend, "y": round(y, 2),
                             "height": round(height, 2), "colour": colour[row.entity_id]})
        bars.append({"day": day, "x": CHART_LEFT + i * (CHART_BAR + CHART_GAP), "total": totals[day],
                     "segments": segments})
    busiest = max(days, key=lambda d: totals[d]) if days else None
    return {"bars": bars, "top": top, "base": base, "bar": CHART_BAR, "busiest": busiest,
            "width": CHART_LEFT * 2 + len(days) * (CHART_BAR + CHART_GAP),
            "height": base + CHART_BOTTOM, "first": days[0], "last": days[-1]}


async def _spend_names(page: _Page, group_by: str, ids: list[str]) -> dict[str, str]:
    """What to show beside an id: a team's alias, a key's alias or display name (its id is the key's hash; looked
    up one by one, so for the biggest ``KEYS_PER_PAGE`` keys only: the rest show their hash alone)."""
    store = page.gateway.store
    if group_by == "team":
        return {t.team_id: t.team_alias for t in await store.list_teams() if t.team_id in ids and t.team_alias}
    if group_by == "key":
        names = {}
        for token_id in ids[:KEYS_PER_PAGE]:
            record = await store.get_key(token_id)
            names[token_id] = (record.key_alias or record.key_name) if record else "(deleted key)"
        return names
    return {}


@get("/spend")
async def spend_page(request: Request) -> Response[bytes]:
    """Spend per day over the last 30 days, by team, key or model, from the store query behind
    ``GET /spend/report`` (after writing what this process has not yet, as the route does). Proxy viewers see
    everything; anyone else sees spend per team, of the teams they may read, and nothing per key or model (those
    rows do not say which team they belong to)."""
    page = await _page(request)
    group_by = request.query_params.get("group_by") or "team"
    if group_by not in SPEND_GROUPS:
        raise ApiError(422, f"group_by: one of {', '.join(SPEND_GROUPS)}; got {group_by[:40]!r}", param="group_by")
    visible = visible_teams(page.ctx)
    if visible is not None and group_by != "team":
        raise ApiError(403, f"group_by={group_by}: spend per key or model needs role proxy_admin or "
                       "proxy_admin_viewer (as GET /spend/report); your key reads spend per team, of its own "
                       "teams", type="permission_error")
    end = datetime.now(UTC).date()
    start = end - timedelta(days=SPEND_DAYS - 1)
    gateway = page.gateway
    await gateway.spend.flush()
    ids = None if visible is None else sorted(visible)
    rows = await gateway.store.spend_report(group_by, start.isoformat(), end.isoformat(), ids) if ids != [] else []
    totals: dict[str, dict[str, Any]] = {}
    for row in rows:
        total = totals.setdefault(row.entity_id, {"spend": 0.0, "requests": 0, "prompt_tokens": 0,
                                                  "completion_tokens": 0})
        for name in total:
            total[name] += getattr(row, name)
    order = sorted(totals, key=lambda entity: (-totals[entity]["spend"], entity))
    return render(request, "spend.html", page=page, group_by=group_by,
                  groups=SPEND_GROUPS if visible is None else ("team",), start=start.isoformat(),
                  end=end.isoformat(), rows=rows, totals=totals, order=order,
                  names=await _spend_names(page, group_by, order), chart=_spend_chart(rows, start, end, order),
                  grand_total=sum(t["spend"] for t in totals.values()), colours=CHART_COLOURS)


# -- what is not built yet -----------------------------------------------------------------------------------
_NOT_YET = {
    "users": ("Users", "Users, their roles and team membership appear here; until then use the API's "
              "/user/* routes."),
}


@get("/{section:str}")
async def not_yet(request: Request, section: str) -> Response[bytes]:
    page = await _page(request)
    if section not in _NOT_YET:
        return render(request, "error.html", page=page, status=404, title="Not found",
                      message=f"There is no console page {section!r}.")
    title, message = _NOT_YET[section]
    return render(request, "not_yet.html", page=page, title=title, message=message)


# -- errors as pages -----------------------------------------------------------------------------------------
def _csrf_page(request: Request) -> Response[bytes]:
    return render(request, "error.html", status=403, title="Form refused",
                  message="This form's security token is missing or out of date (it may have come from "
                          "another site). Go back, reload the page and submit it again.")


def _on_redirect(_: Request, exc: _Redirect) -> Response[Any]:
    return Redirect(exc.path, status_code=303, headers=dict(_SECURITY_HEADERS))


def _on_forbidden(request: Request, _: _Forbidden) -> Response[bytes]:
    return render(request, "error.html", status=403, title="Not allowed",
                  message="Your key may not see or change this.")


def _on_csrf(request: Request, _: _CsrfRefused) -> Response[bytes]:
    return _csrf_page(request)


def _on_api_error(request: Request, exc: ApiError) -> Response[bytes]:
    titles = {404: "Not found", 403: "Not allowed", 429: "Too many requests"}
    return render(request, "error.html", status=exc.status, title=titles.get(exc.status, "Refused"),
                  message=exc.message)


def _on_unknown_sink(request: Request, exc: UnknownCallbackName) -> Response[bytes]:
    return render(request, "error.html", status=400, title="Unknown sink", message=str(exc))


def console_router() -> Router:
    """``/ui``: the pages, and ``/ui/static`` for the stylesheet shipped in this package."""
    static = create_static_files_router(path="/static", directories=[HERE / "static"], name="console_static",
                                        include_in_schema=False)
    return Router(path="/ui", route_handlers=[
        login_form, login, logout, home, teams_page, create_team, team_page, team_settings, team_logging,
        team_delete, sink_form, sink_add, sink_delete, keys_page, key_create, key_rotate, key_block,
        key_delete, delivery_page, plugins_page, audit_page, spend_page, not_yet, static,
    ], exception_handlers={_Redirect: _on_redirect, _Forbidden: _on_forbidden, _CsrfRefused: _on_csrf,
                           ApiError: _on_api_error, UnknownCallbackName: _on_unknown_sink})
