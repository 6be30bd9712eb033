"""Auth, ``/key/*`` and ``/team/*`` through Litestar's test client, on SQLite and PostgreSQL.

One app per backend serves the whole module, so every test uses its own ids and keys.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest


@pytest.fixture(scope="module")
def client(module_db_url: str, make_settings: Any, mock_upstream: Any) -> Any:
    from litestar.testing import TestClient

    from sluicegate.app import create_app

    with TestClient(create_app(make_settings(database_url=module_db_url, upstream=mock_upstream.url)),
                    timeout=30) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def admin(master_key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {master_key}"}


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def assert_error(response: Any, status: int, *, type_: str | None = None, param: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) >= {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"]
    assert "Traceback" not in response.text
    if type_ is not None:
        assert error["type"] == type_, error
    if param is not None:
        assert error["param"] == param, error
    return error


def chat(client: Any, key: str) -> Any:
    return client.post("/v1/chat/completions", headers=bearer(key),
                       json={"model": "gpt-mock", "messages": [{"role": "user", "content": "hi"}]})


def generate(client: Any, admin: dict[str, str], **body: Any) -> dict[str, Any]:
    response = client.post("/key/generate", headers=admin, json=body)
    assert response.status_code == 200, response.text
    return response.json()


# ----------------------------------------------------------------------------------------------- auth
@pytest.mark.parametrize(("method", "path"), [("POST", "/v1/chat/completions"), ("GET", "/v1/models"),
                                              ("POST", "/key/generate"), ("GET", "/key/list"),
                                              ("GET", "/team/list"), ("POST", "/team/new")])
def test_missing_key_is_401(client: Any, admin: dict[str, str], method: str, path: str) -> None:
    body = {"model": "gpt-mock", "messages": [{"role": "user", "content": "x"}]} if "chat" in path else {}
    error = assert_error(client.request(method, path, json=body), 401, type_="authentication_error")
    assert "key" in error["message"].lower()
    # Negative control: the master key passes authentication on the same route.
    control_body = body if "chat" in path else ({"team_id": uid("t")} if path == "/team/new" else {})
    assert client.request(method, path, json=control_body, headers=admin).status_code == 200


@pytest.mark.parametrize("token", ["sk-" + "x" * 22, "not-even-sk", "Bearer", "sk-master-test-0123456789x"])
def test_unknown_key_is_401(client: Any, token: str) -> None:
    assert_error(chat(client, token), 401, type_="authentication_error")
    assert_error(client.get("/v1/models", headers=bearer(token)), 401, type_="authentication_error")


def test_malformed_authorization_header_is_401(client: Any) -> None:
    for header in ("Bearer", "Bearer    ", "Basic dXNlcjpwYXNz", ""):
        assert_error(client.get("/v1/models", headers={"authorization": header}), 401)


@pytest.mark.parametrize(("method", "path", "body"), [
    ("POST", "/key/generate", {}), ("POST", "/key/update", {"key": "sk-whatever-1234"}), ("GET", "/key/list", None),
    ("POST", "/key/delete", {"keys": ["sk-whatever-1234"]}), ("POST", "/team/new", {"team_id": "t-forbidden"}),
    ("GET", "/team/list", None), ("GET", "/team/info?team_id=t-any", None),
    ("POST", "/team/delete", {"team_ids": ["t-any"]}),
])
def test_virtual_key_on_admin_route_is_403(client: Any, admin: dict[str, str], method: str, path: str,
                                           body: Any) -> None:
    key = generate(client, admin, key_alias=uid("plain"))["key"]
    assert client.get("/v1/models", headers=bearer(key)).status_code == 200  # the key itself is valid
    assert_error(client.request(method, path, json=body, headers=bearer(key)), 403, type_="permission_error")


def test_expired_key_is_401(client: Any, admin: dict[str, str]) -> None:
    created = generate(client, admin, duration="2s")
    expires = datetime.fromisoformat(created["expires"])
    assert timedelta(0) < expires - datetime.now(UTC) <= timedelta(seconds=2)
    key = created["key"]
    first = chat(client, key)
    if datetime.now(UTC) < expires - timedelta(milliseconds=100):  # the control only means something in time
        assert first.status_code == 200, first.text
    deadline = time.monotonic() + 10
    while (response := chat(client, key)).status_code == 200:
        assert time.monotonic() < deadline, "key still accepted long after it expired"
        time.sleep(0.05)  # deliberate: polls a condition under a deadline
    assert datetime.now(UTC) >= expires
    error = assert_error(response, 401, type_="authentication_error")
    assert "expired" in error["message"]


def test_blocked_key_is_401_on_the_next_request_and_unblocking_restores_it(client: Any,
                                                                          admin: dict[str, str]) -> None:
    key = generate(client, admin)["key"]
    assert chat(client, key).status_code == 200  # cached now
    updated = client.post("/key/update", headers=admin, json={"key": key, "blocked": True})
    assert updated.status_code == 200 and updated.json()["blocked"] is True
    error = assert_error(chat(client, key), 401, type_="authentication_error")
    assert "blocked" in error["message"]
    assert_error(client.get("/v1/models", headers=bearer(key)), 401)
    assert client.post("/key/update", headers=admin, json={"key": key, "blocked": False}).status_code == 200
    assert chat(client, key).status_code == 200


def test_keys_are_stored_hashed(client: Any, admin: dict[str, str], module_db_url: str, query_db: Any) -> None:
    generated = generate(client, admin, key_alias=uid("hashed"), team_id=uid("team"))
    custom = generate(client, admin, key="sk-custom-plaintext-" + uuid.uuid4().hex)
    for created in (generated, custom):
        key = created["key"]
        token_id = hashlib.sha256(key.encode()).hexdigest()
        assert created["token_id"] == token_id
        rows = query_db(module_db_url, "SELECT * FROM sg_keys WHERE token_id = :t", t=token_id)
        assert len(rows) == 1 and rows[0]["key_name"] == f"sk-...{key[-4:]}"
        # The plaintext (or its secret part) appears nowhere in any table.
        for table in ("sg_keys", "sg_teams", "sg_state"):
            dump = json.dumps(query_db(module_db_url, f"SELECT * FROM {table}"), default=str)
            assert key not in dump and key[3:] not in dump, table
    # Negative control: the dump really contains what we look for when it is there.
    dump = json.dumps(query_db(module_db_url, "SELECT * FROM sg_keys"), default=str)
    assert generated["token_id"] in dump


def test_key_info_for_own_key_but_not_for_others(client: Any, admin: dict[str, str]) -> None:
    mine = generate(client, admin)
    other = generate(client, admin)
    own = client.get("/key/info", headers=bearer(mine["key"]))
    assert own.status_code == 200 and own.json()["key"] == mine["token_id"]
    assert_error(client.get("/key/info", params={"key": other["key"]}, headers=bearer(mine["key"])), 403,
                 type_="permission_error")


# ----------------------------------------------------------------------------------------------- keys
def test_key_generate_shape_and_team_auto_created(client: Any, admin: dict[str, str]) -> None:
    team_id = uid("auto-team")
    assert_error(client.get("/team/info", params={"team_id": team_id}, headers=admin), 404)
    alias = uid("alias")
    created = generate(client, admin, team_id=team_id, key_alias=alias, models=["gpt-mock"],
                       metadata={"owner": "alice"}, duration="30d")
    assert {"key", "token_id", "key_alias", "key_name", "team_id", "models", "metadata", "expires",
            "created_at"} <= set(created)
    key = created["key"]
    assert re.fullmatch(r"sk-[A-Za-z0-9_-]{22}", key), key
    assert created["token_id"] == hashlib.sha256(key.encode()).hexdigest()
    assert created["key_name"] == f"sk-...{key[-4:]}"
    assert created["key_alias"] == alias and created["team_id"] == team_id
    assert created["models"] == ["gpt-mock"] and created["metadata"] == {"owner": "alice"}
    expires = datetime.fromisoformat(created["expires"])
    assert abs(expires - (datetime.now(UTC) + timedelta(days=30))) < timedelta(minutes=5)
    assert created["created_at"]
    info = client.get("/team/info", params={"team_id": team_id}, headers=admin)
    assert info.status_code == 200, info.text
    assert created["token_id"] in [k["token_id"] for k in info.json()["keys"]]
    assert key not in info.text


def test_key_generate_minimal_and_keys_are_unique(client: Any, admin: dict[str, str]) -> None:
    first, second = generate(client, admin), generate(client, admin)
    assert first["key"] != second["key"]
    assert first["team_id"] is None and first["expires"] is None and first["models"] == []
    assert chat(client, first["key"]).status_code == 200


def test_key_generate_duplicate_custom_key_is_400(client: Any, admin: dict[str, str]) -> None:
    key = "sk-dup-" + uuid.uuid4().hex
    assert generate(client, admin, key=key)["key"] == key
    assert_error(client.post("/key/generate", headers=admin, json={"key": key}), 400, param="key")


def test_key_generate_refuses_keys_without_sk_prefix_and_the_master_key(client: Any, admin: dict[str, str],
                                                                       master_key: str) -> None:
    assert_error(client.post("/key/generate", headers=admin, json={"key": "pk-" + uuid.uuid4().hex}), 422,
                 param="key")
    assert_error(client.post("/key/generate", headers=admin, json={"key": master_key}), 422, param="key")


def test_key_update_changes_fields_and_creates_team(client: Any, admin: dict[str, str]) -> None:
    created = generate(client, admin, key_alias=uid("before"))
    team_id = uid("moved-to")
    alias = uid("after")
    response = client.post("/key/update", headers=admin, json={
        "key": created["key"], "key_alias": alias, "models": ["gpt-up"], "metadata": {"tier": "gold"},
        "team_id": team_id, "duration": "1h"})
    assert response.status_code == 200, response.text
    updated = response.json()
    assert updated["token_id"] == created["token_id"] and "key" not in updated
    assert (updated["key_alias"], updated["models"], updated["metadata"], updated["team_id"]) == (
        alias, ["gpt-up"], {"tier": "gold"}, team_id)
    assert updated["expires"] is not None
    info = client.get("/key/info", params={"key": created["key"]}, headers=admin).json()["info"]
    assert (info["key_alias"], info["models"], info["team_id"]) == (alias, ["gpt-up"], team_id)
    assert client.get("/team/info", params={"team_id": team_id}, headers=admin).status_code == 200
    # models now restricts the key on the very next request.
    assert_error(chat(client, created["key"]), 403, param="model")
    # An update naming only the key changes nothing; the token_id works as the key reference too.
    same = client.post("/key/update", headers=admin, json={"key": created["token_id"]})
    assert same.status_code == 200 and same.json()["key_alias"] == alias


def test_key_update_unknown_key_is_404(client: Any, admin: dict[str, str]) -> None:
    assert_error(client.post("/key/update", headers=admin, json={"key": "sk-" + uuid.uuid4().hex}), 404,
                 param="key")


def test_key_info(client: Any, admin: dict[str, str]) -> None:
    created = generate(client, admin, key_alias=uid("info"))
    for reference in (created["key"], created["token_id"]):
        response = client.get("/key/info", params={"key": reference}, headers=admin)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["key"] == created["token_id"]
        assert body["info"]["key_alias"] == created["key_alias"]
        assert body["info"]["key_name"] == created["key_name"]
        assert created["key"] not in response.text
    assert_error(client.get("/key/info", params={"key": "sk-" + uuid.uuid4().hex}, headers=admin), 404)


def test_key_delete(client: Any, admin: dict[str, str]) -> None:
    created = generate(client, admin)
    key = created["key"]
    assert chat(client, key).status_code == 200  # cached now
    response = client.post("/key/delete", headers=admin, json={"keys": [key]})
    assert response.status_code == 200, response.text
    assert response.json()["deleted_keys"] == [created["token_id"]]
    assert_error(chat(client, key), 401)  # the next request, same process
    assert_error(client.get("/key/info", params={"key": key}, headers=admin), 404)
    assert_error(client.post("/key/delete", headers=admin, json={"keys": [key]}), 404)


def test_key_delete_by_alias(client: Any, admin: dict[str, str]) -> None:
    alias = uid("bye")
    created = generate(client, admin, key_alias=alias)
    kept = generate(client, admin, key_alias=uid("kept"))
    response = client.post("/key/delete", headers=admin, json={"key_aliases": [alias]})
    assert response.status_code == 200 and response.json()["deleted_keys"] == [created["token_id"]]
    assert chat(client, kept["key"]).status_code == 200


def test_key_list(client: Any, admin: dict[str, str]) -> None:
    team_id = uid("listed")
    in_team = [generate(client, admin, team_id=team_id) for _ in range(2)]
    elsewhere = generate(client, admin)
    everything = client.get("/key/list", headers=admin).json()
    assert {k["token_id"] for k in in_team + [elsewhere]} <= set(everything["keys"])
    assert everything["total_count"] == len(everything["keys"])
    filtered = client.get("/key/list", params={"team_id": team_id}, headers=admin).json()
    assert sorted(filtered["keys"]) == sorted(k["token_id"] for k in in_team)
    full = client.get("/key/list", params={"team_id": team_id, "return_full_object": "true"}, headers=admin)
    assert full.status_code == 200
    assert sorted(k["token_id"] for k in full.json()["keys"]) == sorted(k["token_id"] for k in in_team)
    assert all(k["key_name"].startswith("sk-...") for k in full.json()["keys"])
    assert not any(k["key"] in full.text for k in in_team)


# ----------------------------------------------------------------------------------------------- teams
def test_team_new_info_list_delete(client: Any, admin: dict[str, str]) -> None:
    team_id = uid("team")
    response = client.post("/team/new", headers=admin, json={"team_id": team_id, "team_alias": "Team A",
                                                              "metadata": {"cost_center": 42}})
    assert response.status_code == 200, response.text
    team = response.json()
    assert (team["team_id"], team["team_alias"], team["metadata"]) == (team_id, "Team A", {"cost_center": 42})
    info = client.get("/team/info", params={"team_id": team_id}, headers=admin)
    assert info.status_code == 200
    assert info.json()["team_id"] == team_id and info.json()["team_info"]["team_alias"] == "Team A"
    assert info.json()["keys"] == []
    listed = client.get("/team/list", headers=admin)
    assert listed.status_code == 200 and team_id in [t["team_id"] for t in listed.json()]
    deleted = client.post("/team/delete", headers=admin, json={"team_ids": [team_id]})
    assert deleted.status_code == 200 and deleted.json()["deleted_teams"] == [team_id]
    assert_error(client.get("/team/info", params={"team_id": team_id}, headers=admin), 404)
    assert team_id not in [t["team_id"] for t in client.get("/team/list", headers=admin).json()]
    assert_error(client.post("/team/delete", headers=admin, json={"team_ids": [team_id]}), 404)


def test_team_new_duplicate_is_400(client: Any, admin: dict[str, str]) -> None:
    team_id = uid("dup")
    assert client.post("/team/new", headers=admin, json={"team_id": team_id}).status_code == 200
    assert_error(client.post("/team/new", headers=admin, json={"team_id": team_id, "team_alias": "again"}), 400,
                 param="team_id")
    # The original is untouched.
    info = client.get("/team/info", params={"team_id": team_id}, headers=admin).json()
    assert info["team_info"]["team_alias"] is None


def test_team_new_without_id_generates_one(client: Any, admin: dict[str, str]) -> None:
    first = client.post("/team/new", headers=admin, json={"team_alias": "anon"}).json()
    second = client.post("/team/new", headers=admin, json={}).json()
    assert first["team_id"] and second["team_id"] and first["team_id"] != second["team_id"]


def test_team_info_unknown_is_404(client: Any, admin: dict[str, str]) -> None:
    assert_error(client.get("/team/info", params={"team_id": uid("nobody")}, headers=admin), 404,
                 type_="not_found_error", param="team_id")
