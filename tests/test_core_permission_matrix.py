"""Every admin route × every role × own team / other team, over HTTP, on SQLite and PostgreSQL.

The routes and the role each needs come from ``sluicegate.permissions.ROUTES`` (the table docs/api.md carries);
what each role may do at each level is written out independently here (``ALLOWED``), so a change to the checks
that the table does not announce fails. The table must name every registered admin route, and every route in it
needs a sample request below: a new route without either fails.

Each case is a real request through Litestar's test client with a real key: the master key, the keys of users of
each role (made with ``/user/new``), and a team key without a user. "Own team" is a team the subject belongs to in
the role named (fresh teams per route); "other team" one it does not belong to.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sluicegate.permissions import LEVELS, PUBLIC_ROUTES, ROUTES, Route, route_table_markdown

ROOT = Path(__file__).resolve().parents[1]

# subject -> (user_role, role in its own team); None: not a user's key
SUBJECTS: dict[str, tuple[str, str | None] | None] = {
    "master": None,
    "proxy_admin": ("proxy_admin", None),
    "proxy_admin_viewer": ("proxy_admin_viewer", None),
    "team_admin": ("internal_user", "admin"),
    "team_admin_viewer": ("internal_user_viewer", "admin"),
    "member": ("internal_user", "user"),
    "outsider": ("internal_user", None),
    "service_key": None,  # a key of the own team, without a user
}

PROXY = {"master", "proxy_admin"}
VIEWERS = PROXY | {"proxy_admin_viewer"}
# The policy, stated independently of the code: level -> (allowed on the own team, allowed on the other team).
ALLOWED: dict[str, tuple[set[str], set[str]]] = {
    "proxy_admin": (PROXY, PROXY),
    "proxy_admin_viewer": (VIEWERS, VIEWERS),
    "team_admin": (PROXY | {"team_admin"}, PROXY),
    "team_admin_viewer": (VIEWERS | {"team_admin", "team_admin_viewer"}, VIEWERS),
    "team_member": (VIEWERS | {"team_admin", "team_admin_viewer", "member"}, VIEWERS),
    "any_user": (set(SUBJECTS) - {"service_key"}, set(SUBJECTS) - {"service_key"}),
    "any_key": (set(SUBJECTS), set(SUBJECTS)),
}


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


class Harness:
    """The gateway, the subjects' keys, and the master's helpers for setting up each route's teams."""

    def __init__(self, client: Any, master_key: str) -> None:
        self.client = client
        self.admin = {"authorization": f"Bearer {master_key}"}
        self.keys: dict[str, str] = {"master": master_key}
        self.user_ids: dict[str, str] = {}

    def ok(self, method: str, url: str, body: Any = None) -> Any:
        response = self.client.request(method, url, json=body, headers=self.admin)
        assert response.status_code == 200, (method, url, response.status_code, response.text)
        return response.json()

    def new_team(self) -> str:
        return self.ok("POST", "/team/new", {"team_id": uid("team")})["team_id"]

    def new_user(self) -> str:
        return self.ok("POST", "/user/new", {"user_id": uid("user"), "auto_create_key": False})["user_id"]

    def team_key(self, team_id: str) -> str:
        return self.ok("POST", "/key/generate", {"team_id": team_id, "key_alias": uid("k")})["token_id"]

    def add(self, team_id: str, user_id: str, role: str = "user") -> None:
        self.ok("POST", "/team/member_add", {"team_id": team_id, "member": {"role": role, "user_id": user_id}})


class Case:
    """One route's fixtures: an own and an other team, a team key and a plain member in each, an audit row of each."""

    def __init__(self, h: Harness) -> None:
        self.h = h
        self.teams = {"own": h.new_team(), "other": h.new_team()}
        members = [{"role": role, "user_id": h.user_ids[name]} for name, spec in SUBJECTS.items()
                   if spec is not None and (role := spec[1]) is not None]
        self.targets = {which: uid("target") for which in self.teams}
        h.ok("POST", "/team/member_add", {"team_id": self.teams["own"], "member": [
            *members, {"role": "user", "user_id": self.targets["own"]}]})
        h.add(self.teams["other"], self.targets["other"])
        h.ok("POST", "/key/update", {"key": h.keys["service_key"], "team_id": self.teams["own"]})
        self.keys = {which: h.team_key(team) for which, team in self.teams.items()}
        self.audit = {which: h.ok("GET", f"/audit?team_id={team}&page_size=1")["audit_logs"][0]["id"]
                      for which, team in self.teams.items()}


Sample = Callable[[Case, str, str], tuple[str, Any]]  # (case, "own"/"other", subject) -> (url, body)


def _fresh_team_for(case: Case, which: str, subject: str) -> str:
    team = case.h.new_team()
    spec = SUBJECTS[subject]
    if which == "own" and spec is not None and spec[1] is not None:
        case.h.add(team, case.h.user_ids[subject], spec[1])
    return team


def _fresh_member(case: Case, which: str) -> str:
    user = uid("leaving")
    case.h.add(case.teams[which], user)
    return user


def _callback_present(case: Case, which: str) -> str:
    team = case.teams[which]
    case.h.client.post(f"/team/{team}/callback", headers=case.h.admin, json=LANGFUSE)  # 400 if already there
    return team


def _callback_absent(case: Case, which: str) -> str:
    team = case.teams[which]
    case.h.client.delete(f"/team/{team}/callback/langfuse", headers=case.h.admin)  # 404 if not there
    return team


def _end_user(case: Case) -> str:
    """A fresh end user (made with the master key) for a route that needs one to exist."""
    user = uid("eu")
    case.h.ok("POST", "/end_user/new", {"user_id": user})
    return user


LANGFUSE = {"callback_name": "langfuse", "callback_vars": {
    "langfuse_public_key": "pk-lf-matrix", "langfuse_secret": "sk-lf-matrix-secret",
    "langfuse_host": "http://127.0.0.1:9"}}

SAMPLES: dict[tuple[str, str], Sample] = {
    ("POST", "/key/generate"): lambda c, w, s: ("/key/generate", {"team_id": c.teams[w], "key_alias": uid("new")}),
    ("POST", "/key/update"): lambda c, w, s: ("/key/update", {"key": c.keys[w], "key_alias": uid("renamed")}),
    ("GET", "/key/info"): lambda c, w, s: (f"/key/info?key={c.keys[w]}", None),
    ("POST", "/key/delete"): lambda c, w, s: ("/key/delete", {"keys": [c.h.team_key(c.teams[w])]}),
    ("GET", "/key/list"): lambda c, w, s: (f"/key/list?team_id={c.teams[w]}", None),
    ("POST", "/key/health"): lambda c, w, s: ("/key/health", None),
    ("POST", "/team/new"): lambda c, w, s: ("/team/new", {"team_id": uid("created")}),
    ("GET", "/team/info"): lambda c, w, s: (f"/team/info?team_id={c.teams[w]}", None),
    ("GET", "/team/list"): lambda c, w, s: ("/team/list", None),
    ("POST", "/team/update"): lambda c, w, s: ("/team/update", {"team_id": c.teams[w], "metadata": {"cache": False}}),
    ("POST", "/team/delete"): lambda c, w, s: ("/team/delete", {"team_ids": [_fresh_team_for(c, w, s)]}),
    ("POST", "/team/member_add"): lambda c, w, s: ("/team/member_add", {
        "team_id": c.teams[w], "member": {"role": "user", "user_id": uid("joining")}}),
    ("POST", "/team/member_update"): lambda c, w, s: ("/team/member_update", {
        "team_id": c.teams[w], "user_id": c.targets[w], "role": "user"}),
    ("POST", "/team/member_delete"): lambda c, w, s: ("/team/member_delete", {
        "team_id": c.teams[w], "user_id": _fresh_member(c, w)}),
    ("POST", "/team/{team_id}/callback"): lambda c, w, s: (f"/team/{_callback_absent(c, w)}/callback", LANGFUSE),
    ("GET", "/team/{team_id}/callback"): lambda c, w, s: (f"/team/{c.teams[w]}/callback", None),
    ("DELETE", "/team/{team_id}/callback/{callback_name}"): lambda c, w, s: (
        f"/team/{_callback_present(c, w)}/callback/langfuse", None),
    ("POST", "/team/{team_id}/disable_logging"): lambda c, w, s: (f"/team/{c.teams[w]}/disable_logging", None),
    ("POST", "/team/{team_id}/enable_logging"): lambda c, w, s: (f"/team/{c.teams[w]}/enable_logging", None),
    ("POST", "/user/new"): lambda c, w, s: ("/user/new", {"user_id": uid("hired"), "auto_create_key": False}),
    ("GET", "/user/info"): lambda c, w, s: (f"/user/info?user_id={c.targets[w]}", None),
    ("POST", "/user/update"): lambda c, w, s: ("/user/update", {"user_id": c.targets[w], "user_alias": uid("a")}),
    ("POST", "/user/delete"): lambda c, w, s: ("/user/delete", {"user_ids": [c.h.new_user()]}),
    ("GET", "/user/list"): lambda c, w, s: ("/user/list", None),
    ("GET", "/audit"): lambda c, w, s: (f"/audit?team_id={c.teams[w]}", None),
    ("GET", "/audit/{audit_id}"): lambda c, w, s: (f"/audit/{c.audit[w]}", None),
    ("GET", "/-/plugins"): lambda c, w, s: ("/-/plugins", None),
    ("GET", "/-/sinks"): lambda c, w, s: ("/-/sinks", None),
    ("GET", "/metrics"): lambda c, w, s: ("/metrics", None),
    ("GET", "/health"): lambda c, w, s: ("/health", None),
    ("POST", "/config/reload"): lambda c, w, s: ("/config/reload", None),
    ("GET", "/spend/report"): lambda c, w, s: (
        f"/spend/report?team_id={c.teams[w]}&group_by=model&start_date=2026-01-01&end_date=2026-12-31", None),
    **{(method, f"/{prefix}/{action}"): sample for prefix in ("end_user", "customer") for method, action, sample in (
        ("POST", "new", lambda c, w, s: (f"/{prefix}/new", {"user_id": uid("eu")})),
        ("GET", "info", lambda c, w, s: (f"/{prefix}/info?end_user_id={_end_user(c)}", None)),
        ("POST", "update", lambda c, w, s: (f"/{prefix}/update", {"user_id": _end_user(c), "alias": uid("a")})),
        ("POST", "delete", lambda c, w, s: (f"/{prefix}/delete", {"user_ids": [_end_user(c)]})),
        ("GET", "list", lambda c, w, s: (f"/{prefix}/list", None)))},
    ("GET", "/model/info"): lambda c, w, s: ("/model/info", None),
    ("GET", "/v1/model/info"): lambda c, w, s: ("/v1/model/info", None),
}


@pytest.fixture(scope="module")
def harness(module_db_url: str, make_settings: Any, master_key: str) -> Any:
    from litestar.testing import TestClient

    from sluicegate.app import create_app

    settings = make_settings(database_url=module_db_url, sluicegate_settings={"key_health_per_minute": 1000})
    with TestClient(create_app(settings), timeout=30) as client:
        h = Harness(client, master_key)
        for name, spec in SUBJECTS.items():
            if spec is not None:
                made = h.ok("POST", "/user/new", {"user_id": uid(name), "user_role": spec[0]})
                h.keys[name], h.user_ids[name] = made["key"], made["user_id"]
        h.keys["service_key"] = h.ok("POST", "/key/generate", {"team_id": h.new_team(), "key_alias": "svc"})["key"]
        yield h


def _registered(app: Any) -> set[tuple[str, str]]:
    found = set()
    for route in app.routes:
        path = re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path)
        for method in getattr(route, "methods", ()):
            if method not in ("HEAD", "OPTIONS"):
                found.add((method, path))
    return found


def test_the_route_table_names_every_registered_admin_route(make_settings: Any) -> None:
    from sluicegate.app import create_app

    registered = _registered(create_app(make_settings()))
    table = {(r.method, r.path) for r in ROUTES}
    admin = {(m, p) for m, p in registered if (m, p) not in PUBLIC_ROUTES and not p.startswith("/ui")}
    assert admin - table == set(), f"admin routes without a required role in permissions.ROUTES: {admin - table}"
    assert table - registered == set(), f"permissions.ROUTES names routes that do not exist: {table - registered}"
    assert len(table) == len(ROUTES), "a route is listed twice"
    # Negative control: a route added to the app without a table entry is found.
    assert ("GET", "/invented") not in table and ("GET", "/invented") not in PUBLIC_ROUTES


def test_every_route_in_the_table_has_a_sample_request_and_a_level_in_the_policy() -> None:
    assert set(SAMPLES) == {(r.method, r.path) for r in ROUTES}
    assert set(ALLOWED) == set(LEVELS)


def test_docs_api_md_carries_the_route_table() -> None:
    docs = (ROOT / "docs" / "api.md").read_text()
    assert route_table_markdown() in docs, "docs/api.md is out of date: paste permissions.route_table_markdown()"


def _names_what_is_missing(message: str, team_id: str) -> bool:
    """A team route's 403 names the team and the role it needs, or says what the caller lacks whatever the team
    (a user behind the key, a role that writes)."""
    return (team_id in message and ("admin" in message or "member" in message)) or "no user" in message or \
        "read-only" in message


def _expect(route: Route, which: str, subject: str) -> bool:
    own, other = ALLOWED[route.level]
    return subject in (own if which == "own" else other)


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: f"{r.method} {r.path}")
def test_matrix(harness: Harness, route: Route) -> None:
    h = harness
    case = Case(h)
    failures = []
    for subject in SUBJECTS:
        for which in ("own", "other"):
            url, body = SAMPLES[(route.method, route.path)](case, which, subject)
            response = h.client.request(route.method, url, json=body,
                                        headers={"authorization": f"Bearer {h.keys[subject]}"})
            allowed = _expect(route, which, subject)
            if allowed and response.status_code != 200:
                failures.append(f"{subject}/{which}: expected 200, got {response.status_code} {response.text[:200]}")
            elif not allowed:
                error = response.json().get("error", {}) if response.status_code == 403 else {}
                if response.status_code != 403 or error.get("type") != "permission_error":
                    failures.append(f"{subject}/{which}: expected 403, got {response.status_code} "
                                    f"{response.text[:200]}")
                elif route.level.startswith("team") and route.team != "user" and not _names_what_is_missing(
                        error["message"], case.teams[which]):
                    failures.append(f"{subject}/{which}: the 403 names neither the team nor the missing role: "
                                    f"{error['message']}")
            if allowed and route.path == "/team/list":  # a listing shows exactly the teams the subject may read
                listed = {t["team_id"] for t in response.json()}
                for team_which in ("own", "other"):
                    visible = subject in ALLOWED["team_member"][0 if team_which == "own" else 1]
                    if (case.teams[team_which] in listed) != visible:
                        failures.append(f"{subject}: team {team_which} listed={not visible}, expected {visible}")
    assert not failures, "\n".join(failures)
