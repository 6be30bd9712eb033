"""Bad input on every endpoint: a 4xx OpenAI-shaped JSON error naming the field, never a 500 or a traceback.

Runs against Litestar's test client on SQLite and PostgreSQL (PostgreSQL is stricter: string lengths, NUL
bytes), with the master key so that only the input is wrong.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

TEAM = "bad-input-team"
OVERSIZED = b'{"model": "gpt-mock", "pad": "' + b"x" * (8 * 1024 * 1024 + 16) + b'"}'

BODY_ENDPOINTS = ["/v1/chat/completions", "/chat/completions", "/key/generate", "/key/update", "/key/delete",
                  "/team/new", "/team/delete", f"/team/{TEAM}/callback"]

# Field → values of the wrong JSON type, per endpoint (each sent alone over an otherwise valid body).
WRONG_TYPES: dict[str, list[Any]] = {"str": [5, 1.5, True, [], {}], "list": ["x", 5, {}, True],
                                     "dict": ["x", 5, [], True], "bool": ["yes", 5, [], {}]}
# Strings that are valid JSON strings but hostile to storage: too long for a column, NUL bytes, empty.
HOSTILE_STRINGS = ["", "a" * 300, "x" * 5000, "nul\x00byte", " ", "\u202etxt", "🙂" * 100]


@pytest.fixture(scope="module")
def client(module_db_url: str, make_settings: Any, mock_upstream: Any) -> Any:
    from litestar.testing import TestClient

    from sluicegate.app import create_app

    with TestClient(create_app(make_settings(database_url=module_db_url, upstream=mock_upstream.url)),
                    timeout=60) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def admin(master_key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {master_key}"}


@pytest.fixture(scope="module")
def team(client: Any, admin: dict[str, str]) -> str:
    assert client.post("/team/new", headers=admin, json={"team_id": TEAM}).status_code == 200
    return TEAM


@pytest.fixture
def key(client: Any, admin: dict[str, str]) -> str:
    response = client.post("/key/generate", headers=admin, json={})
    assert response.status_code == 200
    return response.json()["key"]


def problem(response: Any, field: str | None = None) -> str | None:
    """Why ``response`` is not an acceptable answer to bad input (None when it is)."""
    if response.status_code >= 500:
        return f"{response.status_code}: {response.text[:300]}"
    if "traceback" in response.text.lower():
        return f"traceback in body: {response.text[:300]}"
    if response.status_code < 400:
        return None  # accepted: fine for a value that is merely odd (checked by callers where it is not)
    try:
        body = response.json()
    except ValueError:
        return f"{response.status_code} with a non-JSON body: {response.text[:200]!r}"
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict) or not {"message", "type", "param", "code"} <= set(error):
        return f"not an OpenAI-shaped error: {body!r}"
    if field is not None and not (str(error.get("param") or "").startswith(field) or field in error["message"]):
        return f"{response.status_code} error does not name {field!r}: {error!r}"
    return None


# ----------------------------------------------------------------------------------------------- whole bodies
MALFORMED_BODIES = {
    "malformed": b'{"model": ', "not utf-8": b"\xff\xfe\x00", "empty": b"", "whitespace": b"  \n",
    "array": b"[1, 2]", "string": b'"hello"', "number": b"42", "null": b"null", "form-encoded": b"team_id=x&key=y",
}


@pytest.mark.parametrize("path", BODY_ENDPOINTS)
def test_malformed_bodies_are_4xx_naming_the_body(client: Any, admin: dict[str, str], team: str,
                                                 path: str) -> None:
    failures = []
    for kind, content in MALFORMED_BODIES.items():
        response = client.post(path, headers={**admin, "content-type": "application/json"}, content=content)
        if not 400 <= response.status_code < 500:
            failures.append(f"{kind} {content[:20]!r}: {response.status_code} {response.text[:200]}")
        elif (reason := problem(response, "body")) is not None:
            failures.append(f"{kind} {content[:20]!r}: {reason}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("path", BODY_ENDPOINTS)
def test_trailing_garbage_after_json_is_4xx(client: Any, admin: dict[str, str], team: str, path: str) -> None:
    response = client.post(path, headers={**admin, "content-type": "application/json"}, content=b'{"a": 1} x')
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    assert problem(response) is None, problem(response)


@pytest.mark.parametrize("path", BODY_ENDPOINTS)
def test_oversized_body_is_413(client: Any, admin: dict[str, str], team: str, path: str) -> None:
    response = client.post(path, headers={**admin, "content-type": "application/json"}, content=OVERSIZED)
    assert response.status_code == 413, response.text[:300]
    assert problem(response, "body") is None, problem(response, "body")
    assert "8 MiB" in response.json()["error"]["message"]


@pytest.mark.parametrize(("path", "body", "field"), [
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}]}, "model"),
    ("/v1/chat/completions", {"model": "gpt-mock"}, "messages"),
    ("/v1/chat/completions", {"model": "gpt-mock", "messages": []}, "messages"),
    ("/key/update", {"blocked": True}, "key"),
    ("/key/delete", {}, "keys"),
    ("/key/delete", {"keys": []}, "keys"),
    ("/team/delete", {}, "team_ids"),
    ("/team/delete", {"team_ids": []}, "team_ids"),
    (f"/team/{TEAM}/callback", {"callback_vars": {}}, "callback_name"),
])
def test_missing_fields_are_4xx_naming_the_field(client: Any, admin: dict[str, str], team: str, path: str,
                                                 body: dict[str, Any], field: str) -> None:
    response = client.post(path, headers=admin, json=body)
    assert 400 <= response.status_code < 500, response.text
    assert problem(response, field) is None, problem(response, field)


# ----------------------------------------------------------------------------------------------- fields
FIELDS: dict[str, tuple[dict[str, Any], dict[str, str]]] = {
    # path: (a valid base body, field → kind)
    "/v1/chat/completions": ({"model": "gpt-mock", "messages": [{"role": "user", "content": "x"}]},
                             {"model": "str", "messages": "list", "stream": "bool"}),
    "/key/generate": ({}, {"team_id": "str", "key_alias": "str", "models": "list", "metadata": "dict",
                           "duration": "str", "key": "str", "blocked": "bool"}),
    "/key/update": ({"key": "<key>"}, {"key": "str", "team_id": "str", "key_alias": "str", "models": "list",
                                      "metadata": "dict", "duration": "str", "blocked": "bool"}),
    "/key/delete": ({}, {"keys": "list", "key_aliases": "list"}),
    "/team/new": ({}, {"team_id": "str", "team_alias": "str", "metadata": "dict"}),
    "/team/delete": ({"team_ids": ["nobody"]}, {"team_ids": "list"}),
    f"/team/{TEAM}/callback": ({"callback_name": "file"}, {"callback_name": "str", "callback_type": "str",
                                                           "callback_vars": "dict"}),
}


def _body(base: dict[str, Any], existing_key: str, change: dict[str, Any]) -> dict[str, Any]:
    return {**{k: (existing_key if v == "<key>" else v) for k, v in base.items()}, **change}


@pytest.mark.parametrize("path", list(FIELDS))
def test_wrong_types_are_4xx_naming_the_field(client: Any, admin: dict[str, str], team: str, key: str,
                                              path: str) -> None:
    base, fields = FIELDS[path]
    failures = []
    for field, kind in fields.items():
        for value in WRONG_TYPES[kind]:
            response = client.post(path, headers=admin, json=_body(base, key, {field: value}))
            if response.status_code < 400:
                failures.append(f"{field}={value!r}: accepted with {response.status_code}")
            elif (reason := problem(response, field)) is not None:
                failures.append(f"{field}={value!r}: {reason}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("path", list(FIELDS))
def test_hostile_strings_never_cause_a_500(client: Any, admin: dict[str, str], team: str, key: str,
                                           path: str) -> None:
    """Long, empty, NUL-containing strings in every string field: accepted or a 4xx naming the field."""
    base, fields = FIELDS[path]
    failures = []
    for field, kind in fields.items():
        values: list[Any] = [[s] for s in HOSTILE_STRINGS] if kind == "list" else HOSTILE_STRINGS
        if kind == "dict":
            values = [{s: s} for s in HOSTILE_STRINGS if s]
        if kind == "bool" or (path == "/key/update" and field == "key"):
            continue
        if path == "/team/delete" or (path == "/key/delete"):
            values = [v for v in values if v != [""]]
        for value in values:
            response = client.post(path, headers=admin, json=_body(base, key, {field: value}))
            if (reason := problem(response, field)) is not None:
                failures.append(f"{field}={str(value)[:40]!r}: {reason}")
    assert not failures, "\n".join(failures)


def test_absurd_durations_are_422_naming_duration(client: Any, admin: dict[str, str]) -> None:
    failures = []
    for duration in ["99999999999d", "10000000w", "1e9d", "0s", "-1d", "30 days", "", "5x"]:
        response = client.post("/key/generate", headers=admin, json={"duration": duration})
        if response.status_code != 422 or problem(response, "duration") is not None:
            failures.append(f"{duration!r}: {response.status_code} {response.text[:200]}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("path", ["/team/new", "/key/generate", "/key/update"])
def test_team_ids_are_validated_the_same_everywhere(client: Any, admin: dict[str, str], key: str, path: str) -> None:
    """A team id ``/team/new`` refuses must not be created implicitly through ``/key/generate`` or ``/key/update``."""
    failures = []
    for team_id in ["", "bad id with spaces!", "a" * 300, "-leading-dash", "nul\x00", "semi;colon"]:
        body = {"team_id": team_id, **({"key": key} if path == "/key/update" else {})}
        response = client.post(path, headers=admin, json=body)
        if path == "/team/new" and team_id == "" and response.status_code == 200:
            if not response.json()["team_id"]:
                failures.append("'': created a team with an empty id")
            continue  # an empty id on /team/new may also mean "generate one"
        if response.status_code != 422 or problem(response, "team_id") is not None:
            failures.append(f"{team_id[:40]!r}: {response.status_code} {response.text[:160]}")
    assert not failures, "\n".join(failures)


# ----------------------------------------------------------------------------------------------- queries, routes
@pytest.mark.parametrize(("path", "params", "field", "status"), [
    ("/team/info", {}, "team_id", 400),
    ("/key/info", {}, "key", 400),
    ("/key/list", {"return_full_object": "maybe"}, "return_full_object", 400),
    ("/key/list", {"team_id": "x" * 5000}, None, 200),
    ("/team/info", {"team_id": "x" * 5000}, "team_id", 404),
    ("/key/info", {"key": "x" * 5000}, "key", 404),
])
def test_bad_query_parameters(client: Any, admin: dict[str, str], path: str, params: dict[str, str],
                              field: str | None, status: int) -> None:
    response = client.get(path, headers=admin, params=params)
    assert response.status_code // 100 == status // 100, (response.status_code, response.text)
    assert problem(response, field) is None, problem(response, field)


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/no/such/route"), ("GET", "/v1/chat/completions"), ("DELETE", "/key/generate"),
    ("PUT", "/team/new"), ("POST", "/health/liveliness"),
    ("POST", "/team/no-such-team/disable_logging"), ("GET", "/team/no-such-team/callback"),
    ("DELETE", f"/team/{TEAM}/callback/no-such-callback"),
])
def test_unknown_routes_methods_and_teams_answer_json(client: Any, admin: dict[str, str], team: str, method: str,
                                                      path: str) -> None:
    response = client.request(method, path, headers=admin)
    assert response.status_code in (404, 405), (response.status_code, response.text)
    assert problem(response) is None, problem(response)


def test_bodies_of_routes_without_a_body_are_ignored(client: Any, admin: dict[str, str], key: str) -> None:
    response = client.post("/key/health", headers={"authorization": f"Bearer {key}"}, content=b"{not json")
    assert response.status_code == 200, response.text
    assert response.json()["key"] == "healthy"


def test_chat_with_odd_messages_is_relayed_not_a_500(client: Any, admin: dict[str, str], mock_upstream: Any) -> None:
    """The gateway does not validate message contents (the upstream does); it must still never fail itself."""
    request_id = "odd-" + uuid.uuid4().hex
    for messages in ([1, 2], [None], [{"role": 5}], [{"content": {"nested": [1]}}]):
        response = client.post("/v1/chat/completions", headers={**admin, "x-request-id": request_id},
                               json={"model": "gpt-up", "messages": messages})
        assert response.status_code < 500, response.text
        assert json.loads(mock_upstream.find(request_id)["raw"])["messages"] == messages
