"""The console over plain HTTP: its defences (Litestar's test client on a real app and SQLite database): CSRF
tokens, session fixation, cookie flags, session expiry and logout, escaping of every user-written value, and
that a form's refusal is the admin API's own refusal, word for word.

No browser here: these are properties of the HTTP answers. tests/console/test_console_browser.py drives
the pages in chromium.
"""

from __future__ import annotations

import html
import re
import uuid
from collections.abc import Iterator
from typing import Any

import markupsafe
import pytest

from sluicegate.console.sessions import SessionStore

CSRF = re.compile(r'name="csrf_token" value="([^"]*)"')
ERROR = re.compile(r'class="error"[^>]*>([^<]*)<')


@pytest.fixture(scope="module")
def client(make_settings: Any, mock_upstream: Any) -> Iterator[Any]:
    from litestar.testing import TestClient

    from sluicegate.app import create_app

    with TestClient(create_app(make_settings(upstream=mock_upstream.url)), timeout=30) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def admin(master_key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {master_key}"}


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def csrf_of(text: str) -> str:
    found = CSRF.search(text)
    assert found, text[:500]
    return found.group(1)


def log_in(client: Any, key: str, **headers: str) -> Any:
    """Log in through the form (login token and its cookie first); the answer to the POST."""
    form = client.get("/ui/login", headers=headers)
    assert form.status_code == 200
    if headers:  # httpx sends no Secure cookie (TLS announced by a proxy) back over the test's plain HTTP
        paired = form.headers["set-cookie"].split(";")[0]
        headers = {**headers, "cookie": paired}
    return client.post("/ui/login", data={"csrf_token": csrf_of(form.text), "key": key}, headers=headers,
                       follow_redirects=False)


@pytest.fixture
def session(client: Any, master_key: str) -> Iterator[str]:
    """A logged-in master session on ``client``; yields the page token. Cookies are cleared afterwards."""
    client.cookies.clear()
    assert log_in(client, master_key).status_code == 303
    yield csrf_of(client.get("/ui/teams").text)
    client.cookies.clear()


def errors_in(text: str) -> list[str]:
    return [html.unescape(e) for e in ERROR.findall(text)]


# ---------------------------------------------------------------------------------------------- cookies
def set_cookies(response: Any) -> dict[str, str]:
    return {header.split("=", 1)[0]: header for header in response.headers.get_list("set-cookie")}


def test_session_cookie_is_httponly_strict_and_secure_only_over_tls(client: Any, master_key: str) -> None:
    client.cookies.clear()
    plain = set_cookies(log_in(client, master_key))["sg_console"]
    assert "HttpOnly" in plain and "Path=/ui" in plain
    assert "SameSite=strict" in plain.replace("Strict", "strict")
    assert "Secure" not in plain  # served over plain HTTP: a Secure cookie would never come back
    client.cookies.clear()
    tls = set_cookies(log_in(client, master_key, **{"x-forwarded-proto": "https"}))["sg_console"]
    assert "Secure" in tls and "HttpOnly" in tls and "SameSite=strict" in tls.replace("Strict", "strict")
    client.cookies.clear()


def test_pages_forbid_framing_and_outside_sources(client: Any, session: str) -> None:
    response = client.get("/ui/teams")
    policy = response.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in policy and "default-src 'none'" in policy
    assert "form-action 'self'" in policy
    assert response.headers["cache-control"] == "no-store"
    assert "http://" not in response.text and "https://" not in response.text  # nothing from elsewhere
    assert client.get("/ui/static/console.css").status_code == 200


# ------------------------------------------------------------------------------------------------- CSRF
def test_a_form_without_its_token_is_refused_and_changes_nothing(client: Any, session: str,
                                                                  admin: dict[str, str]) -> None:
    team_id = uid("csrf")
    for data in ({"team_id": team_id}, {"team_id": team_id, "csrf_token": "forged"},
                 {"team_id": team_id, "csrf_token": ""}):
        refused = client.post("/ui/teams", data=data, follow_redirects=False)
        assert refused.status_code == 403, refused.text
        assert "security token" in refused.text
    assert client.get("/team/info", params={"team_id": team_id}, headers=admin).status_code == 404
    # Positive control: the same form with the session's token is accepted.
    accepted = client.post("/ui/teams", data={"team_id": team_id, "csrf_token": session},
                           follow_redirects=False)
    assert accepted.status_code == 303
    assert client.get("/team/info", params={"team_id": team_id}, headers=admin).status_code == 200


def test_logging_switch_and_logout_need_the_token_too(client: Any, session: str,
                                                      admin: dict[str, str]) -> None:
    team_id = uid("gdpr")
    assert client.post("/team/new", json={"team_id": team_id}, headers=admin).status_code == 200
    assert client.post(f"/ui/teams/{team_id}/logging", data={"logging": "disable"}).status_code == 403
    state = client.get(f"/team/{team_id}/callback", headers=admin).json()["data"]
    assert state["logging_disabled"] is False
    assert client.post("/ui/logout", data={}, follow_redirects=False).status_code == 403
    assert client.get("/ui/teams", follow_redirects=False).status_code == 200  # still logged in
    assert client.post(f"/ui/teams/{team_id}/logging", data={"logging": "disable", "csrf_token": session},
                       follow_redirects=False).status_code == 303
    assert client.get(f"/team/{team_id}/callback", headers=admin).json()["data"]["logging_disabled"] is True


def test_the_login_form_needs_its_paired_token(client: Any, master_key: str) -> None:
    client.cookies.clear()
    form = client.get("/ui/login")
    token = csrf_of(form.text)
    client.cookies.clear()  # a cross-site post carries no login cookie
    refused = client.post("/ui/login", data={"csrf_token": token, "key": master_key}, follow_redirects=False)
    assert refused.status_code == 403 and "sg_console" not in set_cookies(refused)
    assert log_in(client, master_key).status_code == 303  # control: token and cookie together
    client.cookies.clear()


def test_a_token_of_another_session_is_refused(client: Any, master_key: str) -> None:
    client.cookies.clear()
    log_in(client, master_key)
    other = csrf_of(client.get("/ui/teams").text)
    client.cookies.clear()
    log_in(client, master_key)
    mine = csrf_of(client.get("/ui/teams").text)
    assert other != mine
    assert client.post("/ui/teams", data={"csrf_token": other, "team_id": uid("x")}).status_code == 403
    client.cookies.clear()


# ------------------------------------------------------------------------------------------------ sessions
def test_login_issues_a_new_session_id_whatever_the_client_brought(client: Any, master_key: str) -> None:
    client.cookies.clear()
    planted = "attacker-chosen-session-id-0123456789"
    client.cookies.set("sg_console", planted, path="/ui")
    assert client.get("/ui/teams", follow_redirects=False).headers["location"] == "/ui/login"
    issued = set_cookies(log_in(client, master_key))["sg_console"].split(";")[0].split("=", 1)[1]
    assert issued and issued != planted
    # The planted id gives nothing; the issued one is a session.
    client.cookies.clear()
    client.cookies.set("sg_console", planted, path="/ui")
    assert client.get("/ui/teams", follow_redirects=False).status_code == 303
    client.cookies.clear()
    client.cookies.set("sg_console", issued, path="/ui")
    assert client.get("/ui/teams", follow_redirects=False).status_code == 200
    # Logging in again from a live session rotates it: the old id stops working.
    again = set_cookies(log_in(client, master_key))["sg_console"].split(";")[0].split("=", 1)[1]
    assert again != issued
    client.cookies.clear()
    client.cookies.set("sg_console", issued, path="/ui")
    assert client.get("/ui/teams", follow_redirects=False).status_code == 303
    client.cookies.clear()


def test_logout_ends_the_session_on_the_server(client: Any, master_key: str) -> None:
    client.cookies.clear()
    log_in(client, master_key)
    session_id = client.cookies.get("sg_console")
    token = csrf_of(client.get("/ui/teams").text)
    assert client.post("/ui/logout", data={"csrf_token": token}, follow_redirects=False).status_code == 303
    client.cookies.clear()
    client.cookies.set("sg_console", session_id, path="/ui")  # a copy of the cookie kept by someone
    assert client.get("/ui/teams", follow_redirects=False).headers["location"] == "/ui/login"
    client.cookies.clear()


def test_sessions_expire_after_their_lifetime_and_when_idle() -> None:
    now = [1000.0]
    store = SessionStore(lifetime=100.0, idle_timeout=30.0, clock=lambda: now[0])
    session_id, _ = store.create("token")
    now[0] += 29
    assert store.get(session_id) is not None  # used within the idle timeout: alive, idle clock restarted
    now[0] += 29
    assert store.get(session_id) is not None
    now[0] += 30
    assert store.get(session_id) is None  # idle for 30 s
    busy, _ = store.create("token")
    for _ in range(3):
        now[0] += 25
        assert store.get(busy) is not None
    now[0] += 26  # 101 s after login, never idle for long
    assert store.get(busy) is None
    assert len(store) == 0


def test_sessions_are_kept_by_hash_and_bounded() -> None:
    store = SessionStore(max_sessions=3)
    ids = [store.create("token")[0] for _ in range(5)]
    assert len(store) == 3
    assert store.get(ids[0]) is None and store.get(ids[-1]) is not None
    assert not any(i in repr(store._sessions) for i in ids)  # the cookie values are not what is stored


def test_a_key_other_than_the_master_key_may_not_enter_yet(client: Any, admin: dict[str, str]) -> None:
    key = client.post("/key/generate", json={"key_alias": uid("k")}, headers=admin).json()["key"]
    client.cookies.clear()
    refused = log_in(client, key)
    assert refused.status_code == 403 and "sg_console" not in set_cookies(refused)
    wrong = log_in(client, "sk-not-a-key-at-all")
    assert wrong.status_code == 401 and "invalid API key" in wrong.text
    client.cookies.clear()


def test_pages_redirect_to_login_without_a_session(client: Any) -> None:
    client.cookies.clear()
    for path in ("/ui", "/ui/teams", "/ui/keys", "/ui/delivery", "/ui/plugins", "/ui/audit", "/ui/teams/x"):
        response = client.get(path, follow_redirects=False)
        assert response.status_code == 303 and response.headers["location"] == "/ui/login", path
    assert client.get("/ui/login").status_code == 200


# --------------------------------------------------------------------------------------------------- XSS
XSS = ['<script>alert("x")</script>', '"><img src=x onerror=alert(1)>', "' onmouseover='alert(1)"]


@pytest.mark.parametrize("payload", XSS)
def test_user_written_values_are_rendered_escaped(client: Any, session: str, admin: dict[str, str],
                                                  payload: str) -> None:
    team_id = uid("xss")
    created = client.post("/team/new", json={"team_id": team_id, "team_alias": payload}, headers=admin)
    assert created.status_code == 200
    callback_vars = {"langfuse_public_key": payload, "langfuse_secret_key": "sk-x",
                     "langfuse_host": "https://lf.example.com"}
    assert client.post(f"/team/{team_id}/callback", headers=admin, json={
        "callback_name": "langfuse", "callback_vars": callback_vars}).status_code == 200
    assert client.post("/key/generate", json={"team_id": team_id, "key_alias": payload},
                       headers=admin).status_code == 200
    for path in ("/ui/teams", f"/ui/teams/{team_id}", f"/ui/keys?team_id={team_id}"):
        text = client.get(path).text
        assert payload not in text, path
        assert str(markupsafe.escape(payload)) in text, path  # shown, as text
    # A refused form echoes what was typed: escaped as well, in the field and in the error.
    refused = client.post("/ui/teams", data={"csrf_token": session, "team_id": payload,
                                             "team_alias": payload})
    assert refused.status_code == 422
    assert payload not in refused.text and "<script>alert" not in refused.text


def test_a_team_id_in_a_url_is_escaped_in_links(client: Any, session: str, admin: dict[str, str]) -> None:
    team_id = uid("a@b:c.d")
    assert client.post("/team/new", json={"team_id": team_id}, headers=admin).status_code == 200
    text = client.get("/ui/teams").text
    assert f'href="/ui/teams/{team_id.replace("@", "%40").replace(":", "%3A")}"' in text
    assert client.get(f"/ui/teams/{team_id}").status_code == 200


# -------------------------------------------------------------------------------- same texts as the API
def api_message(client: Any, admin: dict[str, str], method: str, path: str, body: dict[str, Any]) -> str:
    response = client.request(method, path, json=body, headers=admin)
    assert 400 <= response.status_code < 500, response.text
    return response.json()["error"]["message"]


def test_a_refused_form_shows_the_apis_own_words(client: Any, session: str, admin: dict[str, str]) -> None:
    cases = [
        ("/ui/teams", {"team_id": "-bad id"}, "POST", "/team/new", {"team_id": "-bad id"}),
        ("/ui/teams", {"team_alias": "x" * 300}, "POST", "/team/new", {"team_alias": "x" * 300}),
        ("/ui/keys", {"duration": "3 fortnights"}, "POST", "/key/generate", {"duration": "3 fortnights"}),
        ("/ui/keys", {"models": "gpt-4", "team_id": "bad team"}, "POST", "/key/generate",
         {"models": ["gpt-4"], "team_id": "bad team"}),
    ]
    for ui_path, form, method, api_path, body in cases:
        response = client.post(ui_path, data={"csrf_token": session, **form})
        expected = api_message(client, admin, method, api_path, body)
        assert response.status_code == 422, response.text
        assert expected in errors_in(response.text), (expected, errors_in(response.text))


def test_a_sink_form_refusal_is_the_callback_routes_refusal(client: Any, session: str,
                                                            admin: dict[str, str]) -> None:
    team_id = uid("sinkerr")
    assert client.post("/team/new", json={"team_id": team_id}, headers=admin).status_code == 200
    bad = {"langfuse_public_key": "pk", "langfuse_secret_key": "sk-lf-typed-secret",
           "langfuse_host": "ftp://x"}
    expected = api_message(client, admin, "POST", f"/team/{team_id}/callback",
                           {"callback_name": "langfuse", "callback_vars": bad})
    response = client.post(f"/ui/teams/{team_id}/sinks", data={
        "csrf_token": session, "callback_name": "langfuse", **{f"var.{k}": v for k, v in bad.items()}})
    assert response.status_code == 422
    assert expected in errors_in(response.text)
    assert 'id="var-langfuse_host-error"' in response.text  # next to its field
    assert "sk-lf-typed-secret" not in response.text  # a secret is never sent back, even to its author
    assert 'value="pk"' in response.text  # the other fields are kept
    missing = client.post(f"/ui/teams/{team_id}/sinks",
                          data={"csrf_token": session, "callback_name": "langfuse"})
    expected = api_message(client, admin, "POST", f"/team/{team_id}/callback",
                           {"callback_name": "langfuse", "callback_vars": {}})
    assert missing.status_code == 422 and expected in errors_in(missing.text)


def test_without_the_acme_plugin_its_sink_is_not_offered(client: Any, session: str,
                                                         admin: dict[str, str]) -> None:
    """The negative control of the browser test where the installed acme sink gets its form."""
    team_id = uid("noacme")
    assert client.post("/team/new", json={"team_id": team_id}, headers=admin).status_code == 200
    text = client.get(f"/ui/teams/{team_id}").text
    assert '<option value="langfuse">' in text and '<option value="acme">' not in text
    unknown = client.get(f"/ui/teams/{team_id}/sinks/new", params={"callback_name": "acme"})
    assert unknown.status_code == 400 and "unknown callback_name 'acme'" in html.unescape(unknown.text)


# ------------------------------------------------------------------------------------------------ pages
def test_team_settings_set_the_alias_and_the_cache_switch(client: Any, session: str,
                                                          admin: dict[str, str]) -> None:
    team_id = uid("settings")
    assert client.post("/team/new", json={"team_id": team_id, "metadata": {"owner": "research"}},
                       headers=admin).status_code == 200

    def info() -> dict[str, Any]:
        return client.get("/team/info", params={"team_id": team_id}, headers=admin).json()["team_info"]

    for choice, expected in (("true", True), ("false", False)):
        saved = client.post(f"/ui/teams/{team_id}/settings", follow_redirects=False, data={
            "csrf_token": session, "team_alias": "Research", "cache": choice})
        assert saved.status_code == 303
        assert info()["metadata"] == {"owner": "research", "cache": expected}  # other metadata kept
        assert info()["team_alias"] == "Research"
        page = client.get(f"/ui/teams/{team_id}").text
        assert f'<option value="{choice}" selected>' in page
    client.post(f"/ui/teams/{team_id}/settings", data={"csrf_token": session, "team_alias": "", "cache": ""})
    assert info()["metadata"] == {"owner": "research"} and info()["team_alias"] is None  # as configured
    long_alias = "x" * 256
    refused = client.post(f"/ui/teams/{team_id}/settings", data={"csrf_token": session, "team_alias": long_alias})
    expected = api_message(client, admin, "POST", "/team/update", {"team_id": team_id, "team_alias": long_alias})
    assert refused.status_code == 422 and expected in errors_in(refused.text)
    assert 'id="team_alias-error"' in refused.text


def test_errors_are_pages_not_json(client: Any, session: str) -> None:
    missing = client.get("/ui/teams/no-such-team-here")
    assert missing.status_code == 404 and missing.headers["content-type"].startswith("text/html")
    assert "team &#39;no-such-team-here&#39; does not exist" in missing.text
    assert client.get("/ui/no-such-page").status_code == 404
    gone = client.post("/ui/keys/" + "0" * 64 + "/delete", data={"csrf_token": session})
    assert gone.status_code == 404 and "key: no such key" in gone.text
    choose = client.get("/ui/teams/no-such-team-here/sinks/new", follow_redirects=False)
    assert choose.status_code == 404


def test_deleting_a_team_through_the_console_deletes_its_keys(client: Any, session: str,
                                                               admin: dict[str, str]) -> None:
    team_id = uid("gone")
    assert client.post("/team/new", json={"team_id": team_id}, headers=admin).status_code == 200
    key = client.post("/key/generate", json={"team_id": team_id}, headers=admin).json()["key"]
    assert client.get("/v1/models", headers={"authorization": f"Bearer {key}"}).status_code == 200
    done = client.post(f"/ui/teams/{team_id}/delete", data={"csrf_token": session}, follow_redirects=False)
    assert done.status_code == 303 and done.headers["location"] == "/ui/teams"
    assert client.get("/team/info", params={"team_id": team_id}, headers=admin).status_code == 404
    assert client.get("/v1/models", headers={"authorization": f"Bearer {key}"}).status_code == 401


def test_without_a_master_key_the_login_says_why(make_settings: Any, mock_upstream: Any) -> None:
    from litestar.testing import TestClient

    from sluicegate.app import create_app

    settings = make_settings(upstream=mock_upstream.url, master_key=None)
    with TestClient(create_app(settings), timeout=30) as bare:
        refused = log_in(bare, "sk-anything-at-all")
        assert refused.status_code == 401
        assert "no master key is configured (general_settings.master_key)" in html.unescape(refused.text)


# ------------------------------------------------------------------------------------------- team admins
def test_a_team_admin_sees_and_manages_only_their_own_team(client: Any, admin: dict[str, str]) -> None:
    """A user who is ``admin`` of one team logs in with their own key: the teams list shows that team only, its page
    offers the write forms and its GDPR switch works, and another team's page is a 403 page that changes nothing.
    Negative control: a key without a user cannot enter the console at all."""
    own, other = uid("own"), uid("other")
    for team in (own, other):
        assert client.post("/team/new", json={"team_id": team}, headers=admin).status_code == 200
    made = client.post("/user/new", json={"user_id": uid("alice"), "user_role": "internal_user",
                                          "teams": [{"team_id": own, "user_role": "admin"}]}, headers=admin)
    assert made.status_code == 200, made.text
    client.cookies.clear()
    assert log_in(client, made.json()["key"]).status_code == 303
    listing = client.get("/ui/teams")
    assert listing.status_code == 200 and own in listing.text and other not in listing.text
    page = client.get(f"/ui/teams/{own}")
    assert page.status_code == 200 and f"/ui/teams/{own}/logging" in page.text
    alice = made.json()["user_id"]
    assert f"<code>{alice}</code></th><td>admin</td>" in page.text  # the members table, with each role
    switched = client.post(f"/ui/teams/{own}/logging", data={"csrf_token": csrf_of(page.text), "enabled": "false"},
                           follow_redirects=False)
    assert switched.status_code in (200, 303)
    assert client.get(f"/team/{own}/callback", headers=admin).json()["data"]["logging_disabled"] is True
    refused = client.get(f"/ui/teams/{other}")
    assert refused.status_code == 403 and "text/html" in refused.headers["content-type"]
    attempt = client.post(f"/ui/teams/{other}/logging", data={"csrf_token": csrf_of(page.text), "enabled": "false"},
                          follow_redirects=False)
    assert attempt.status_code == 403
    assert client.get(f"/team/{other}/callback", headers=admin).json()["data"]["logging_disabled"] is False
    client.cookies.clear()
    plain = client.post("/key/generate", json={"team_id": own}, headers=admin).json()["key"]
    assert log_in(client, plain).status_code != 303
    client.cookies.clear()


# ---------------------------------------------------------------------------------------------- redaction
def test_a_teams_page_shows_its_effective_redaction_escaped(client: Any, session: str,
                                                             admin: dict[str, str]) -> None:
    """The team's policy (its redactors, options, placeholders and fields, and where it comes from), a
    destination's own policy, and a destination with turn_off_message_logging; placeholders are text, not tags."""
    team_id = uid("redact")
    policy = {"redactors": ["email", {"regex": {"patterns": {"employee_id": r"E\d{6}"}}}],
              "fields": ["messages", "response"]}
    assert client.post("/team/new", json={"team_id": team_id, "metadata": {"redaction": policy}},
                       headers=admin).status_code == 200
    langfuse = {"langfuse_public_key": "pk-x", "langfuse_secret_key": "sk-x", "langfuse_host": "https://lf.example.com",
                "redaction": {"redactors": ["card"], "fields": {"messages": "scan", "metadata": "drop"}}}
    for entry in ({"callback_name": "langfuse", "callback_vars": langfuse},
                  {"callback_name": "datadog", "callback_vars": {"dd_api_key": "k" * 32,
                                                                 "turn_off_message_logging": True}}):
        assert client.post(f"/team/{team_id}/callback", headers=admin, json=entry).status_code == 200
    page = client.get(f"/ui/teams/{team_id}")
    assert page.status_code == 200
    text = page.text
    section = text[text.index('id="redaction"'):text.index('id="settings"')]
    shown = html.unescape(re.sub(r"<[^>]+>", " ", section))
    shown = re.sub(r"\s+", " ", shown)
    assert "Effective policy, from this team's metadata.redaction (set through the API)" in shown
    assert "Fields: messages scanned, response scanned." in shown
    assert "email defaults <EMAIL>" in shown
    assert 'regex {"patterns":["employee_id"]} <EMPLOYEE_ID>' in shown
    assert r"E\d{6}" not in shown  # a pattern is shown by its name only
    assert "langfuse its own policy. Fields: messages scanned, metadata dropped." in shown
    assert 'card {"check_issuer":true} <CARD>' in shown
    assert "datadog messages and responses not logged ( turn_off_message_logging , which wins over any policy)" in shown
    # placeholders and options are escaped text, never markup
    for raw in ("<EMAIL>", "<EMPLOYEE_ID>", "<CARD>", '{"patterns"'):
        assert raw not in text
    assert "&lt;EMAIL&gt;" in section and "&lt;EMPLOYEE_ID&gt;" in section and "&lt;CARD&gt;" in section

    # With logging disabled (GDPR) no policy runs, and the page says so instead of listing one.
    assert client.post(f"/team/{team_id}/disable_logging", headers=admin).status_code == 200
    off = client.get(f"/ui/teams/{team_id}").text
    off_section = off[off.index('id="redaction"'):off.index('id="settings"')]
    assert "Logging is disabled for this team: nothing is sent, so no policy runs." in off_section
    assert "&lt;EMAIL&gt;" not in off_section

    # Negative control: a team with no policy anywhere (no global one here) says so and lists no redactor.
    plain = uid("redact")
    assert client.post("/team/new", json={"team_id": plain}, headers=admin).status_code == 200
    plain_text = client.get(f"/ui/teams/{plain}").text
    plain_section = plain_text[plain_text.index('id="redaction"'):plain_text.index('id="settings"')]
    assert "No redaction policy applies to this team" in plain_section
    assert "&lt;EMAIL&gt;" not in plain_section and "Effective policy" not in plain_section


def test_a_teams_page_shows_the_global_policy_and_turn_off_message_logging(make_settings: Any,
                                                                           mock_upstream: Any) -> None:
    """Without a policy of its own a team shows the global one; turn_off_message_logging is said to win."""
    from litestar.testing import TestClient

    from sluicegate.app import create_app

    settings = make_settings(upstream=mock_upstream.url, litellm_settings={
        "redaction": {"redactors": ["phone", "ip"]}, "turn_off_message_logging": True})
    with TestClient(create_app(settings), timeout=30) as other:
        master = settings.general_settings.master_key
        assert log_in(other, master).status_code == 303
        team_id = uid("redact")
        assert other.post("/team/new", json={"team_id": team_id},
                          headers={"authorization": f"Bearer {master}"}).status_code == 200
        text = other.get(f"/ui/teams/{team_id}").text
    section = text[text.index('id="redaction"'):text.index('id="settings"')]
    shown = re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", section)))
    assert "Effective policy, from litellm_settings.redaction (the gateway's global policy)" in shown
    assert "phone defaults <PHONE>" in shown and re.search(r" ip \{[^}]*\} <IP> ", shown), shown
    assert "turn_off_message_logging is on for this team: messages and responses are not logged at all" in shown
