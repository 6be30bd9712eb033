"""Users, team membership, team self-service and the audit trail, over HTTP (Litestar's test client) on SQLite and
PostgreSQL, with the stored rows read straight from the database where the claim is about storage.

One app per backend serves the module; every test uses its own ids.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

LANGFUSE_SECRET = "sk-lf-team-secret-0123456789"


@pytest.fixture(scope="module")
def client(module_db_url: str, make_settings: Any) -> Any:
    from litestar.testing import TestClient

    from sluicegate.app import create_app

    with TestClient(create_app(make_settings(database_url=module_db_url)), timeout=30) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def admin(master_key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {master_key}"}


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def ok(response: Any) -> Any:
    assert response.status_code == 200, (response.status_code, response.text)
    return response.json()


def error_of(response: Any, status: int, param: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, (response.status_code, response.text)
    error = response.json()["error"]
    assert set(error) >= {"message", "type", "param", "code"}
    if param is not None:
        assert error["param"] == param, error
    return error


def new_user(client: Any, admin: dict[str, str], role: str = "internal_user", **extra: Any) -> dict[str, Any]:
    return ok(client.post("/user/new", headers=admin, json={"user_id": uid("u"), "user_role": role, **extra}))


def new_team(client: Any, admin: dict[str, str]) -> str:
    return ok(client.post("/team/new", headers=admin, json={"team_id": uid("team")}))["team_id"]


def team_admin(client: Any, admin: dict[str, str], team_id: str, role: str = "internal_user") -> dict[str, Any]:
    """A user who is ``admin`` of ``team_id``, with their key."""
    user = new_user(client, admin, role)
    ok(client.post("/team/member_add", headers=admin,
                   json={"team_id": team_id, "member": {"role": "admin", "user_id": user["user_id"]}}))
    return user


def langfuse(secret: str = LANGFUSE_SECRET) -> dict[str, Any]:
    return {"callback_name": "langfuse", "callback_vars": {
        "langfuse_public_key": "pk-lf-team", "langfuse_secret": secret, "langfuse_host": "http://127.0.0.1:9"}}


def chat(client: Any, key: str) -> Any:
    return client.post("/v1/chat/completions", headers=bearer(key),
                       json={"model": "gpt-mock", "messages": [{"role": "user", "content": "hi"}]})


# ------------------------------------------------------------------------------------------------- users
def test_user_new_stores_limits_returns_its_key_once_and_the_key_calls_models(client: Any, admin: dict) -> None:
    limits = {"max_budget": 12.5, "soft_budget": 10.0, "budget_duration": "30d", "spend": 0.0, "rpm_limit": 60,
              "tpm_limit": 6000, "max_parallel_requests": 4}
    made = new_user(client, admin, user_email=f"{uid('a')}@example.com", user_alias="Ada", **limits)
    assert made["key"].startswith("sk-") and made["token_id"] == hashlib.sha256(made["key"].encode()).hexdigest()
    assert {k: made[k] for k in limits} == limits and made["user_role"] == "internal_user"
    assert chat(client, made["key"]).status_code == 200
    info = ok(client.get(f"/user/info?user_id={made['user_id']}", headers=admin))
    assert {k: info["user_info"][k] for k in limits} == limits
    assert [k["token_id"] for k in info["keys"]] == [made["token_id"]]
    assert made["key"] not in json.dumps(info)  # the key is shown once, by /user/new
    # The user reads themselves without naming themselves.
    assert ok(client.get("/user/info", headers=bearer(made["key"])))["user_id"] == made["user_id"]
    # Negative control: auto_create_key false makes no key.
    bare = new_user(client, admin, auto_create_key=False)
    assert "key" not in bare
    assert ok(client.get(f"/user/info?user_id={bare['user_id']}", headers=admin))["keys"] == []


@pytest.mark.parametrize(("body", "status", "param"), [
    ({"user_role": "team"}, 422, "user_role"),                 # LiteLLM's other roles are not ours
    ({"aliases": {"a": "b"}}, 400, "aliases"),                  # LiteLLM fields we do not implement: by name
    ({"max_budget": -1}, 422, "max_budget"),
    ({"rpm_limit": 1.5}, 422, "rpm_limit"),
    ({"budget_duration": "soon"}, 422, "budget_duration"),
    ({"send_invite_email": True}, 422, "send_invite_email"),
    ({"teams": ["no-such-team-x"]}, 404, "teams[0]"),
])
def test_user_new_refuses_bad_input_naming_the_field(client: Any, admin: dict, body: dict, status: int,
                                                     param: str) -> None:
    error_of(client.post("/user/new", headers=admin, json={"user_id": uid("bad"), **body}), status, param)


def test_user_new_refuses_a_duplicate_id_or_email(client: Any, admin: dict) -> None:
    email = f"{uid('dup')}@example.com"
    made = new_user(client, admin, user_email=email)
    error_of(client.post("/user/new", headers=admin, json={"user_id": made["user_id"]}), 400, "user_id")
    error_of(client.post("/user/new", headers=admin, json={"user_id": uid("x"), "user_email": email}), 400,
             "user_email")


def test_user_update_changes_powers_at_the_next_request(client: Any, admin: dict) -> None:
    user = new_user(client, admin, "internal_user_viewer")
    error_of(client.post("/team/new", headers=bearer(user["key"]), json={"team_id": uid("t")}), 403)
    error_of(client.get("/user/list", headers=bearer(user["key"])), 403)
    ok(client.post("/user/update", headers=admin, json={"user_id": user["user_id"], "user_role": "proxy_admin",
                                                         "rpm_limit": 5}))
    assert ok(client.post("/team/new", headers=bearer(user["key"]), json={"team_id": uid("t")}))
    info = ok(client.get(f"/user/info?user_id={user['user_id']}", headers=admin))["user_info"]
    assert info["user_role"] == "proxy_admin" and info["rpm_limit"] == 5
    error_of(client.post("/user/update", headers=admin, json={"user_id": "nobody-" + uid("n")}), 404, "user_id")


def test_user_list_pages_and_filters(client: Any, admin: dict) -> None:
    team = new_team(client, admin)
    made = [new_user(client, admin, teams=[team], auto_create_key=False) for _ in range(3)]
    first = ok(client.get(f"/user/list?team={team}&page_size=2", headers=admin))
    assert (first["total"], first["page"], first["page_size"], first["total_pages"]) == (3, 1, 2, 2)
    second = ok(client.get(f"/user/list?team={team}&page_size=2&page=2", headers=admin))
    assert {u["user_id"] for u in first["users"] + second["users"]} == {m["user_id"] for m in made}
    ids = ",".join(m["user_id"] for m in made[:2])
    assert ok(client.get(f"/user/list?user_ids={ids}", headers=admin))["total"] == 2
    error_of(client.get("/user/list?role=admin", headers=admin), 422, "role")
    error_of(client.get("/user/list?page_size=0", headers=admin), 422, "page_size")


def test_user_delete_deletes_their_keys_and_memberships(client: Any, admin: dict) -> None:
    team = new_team(client, admin)
    leaving, staying = new_user(client, admin, teams=[team]), new_user(client, admin, teams=[team])
    answer = ok(client.post("/user/delete", headers=admin, json={"user_ids": [leaving["user_id"]]}))
    assert answer == {"deleted_users": [leaving["user_id"]], "deleted_keys": 1}
    error_of(chat(client, leaving["key"]), 401)
    assert chat(client, staying["key"]).status_code == 200  # negative control
    members = ok(client.get(f"/team/info?team_id={team}", headers=admin))["team_info"]["members_with_roles"]
    assert members == [{"user_id": staying["user_id"], "role": "user"}]
    error_of(client.post("/user/delete", headers=admin, json={"user_ids": [leaving["user_id"]]}), 404, "user_ids")


# ---------------------------------------------------------------------------------------------- members
def test_member_add_takes_an_object_or_a_list_and_creates_users_by_email(client: Any, admin: dict) -> None:
    team = new_team(client, admin)
    known = new_user(client, admin, auto_create_key=False)
    email = f"{uid('new')}@example.com"
    answer = ok(client.post("/team/member_add", headers=admin, json={"team_id": team, "member": [
        {"role": "admin", "user_id": known["user_id"]}, {"role": "user", "user_email": email}]}))
    created = next(u for u in answer["updated_users"] if u["user_email"] == email)
    assert created["user_role"] == "internal_user"
    assert sorted(answer["members_with_roles"], key=lambda m: m["role"]) == [
        {"user_id": known["user_id"], "role": "admin"}, {"user_id": created["user_id"], "role": "user"}]
    single = ok(client.post("/team/member_add", headers=admin, json={
        "team_id": team, "member": {"role": "user", "user_id": uid("solo")}}))
    assert len(single["members_with_roles"]) == 3
    error_of(client.post("/team/member_add", headers=admin, json={
        "team_id": team, "member": {"role": "user", "user_id": known["user_id"]}}), 400, "member")
    error_of(client.post("/team/member_add", headers=admin, json={
        "team_id": team, "member": {"role": "owner", "user_id": uid("x")}}), 422)
    error_of(client.post("/team/member_add", headers=admin, json={
        "team_id": team, "member": {"role": "user"}}), 422, "member.user_id")
    error_of(client.post("/team/member_add", headers=admin, json={
        "team_id": team, "member": {"role": "user", "user_id": uid("b")}, "max_budget_in_team": 5}), 400,
        "max_budget_in_team")


def test_member_update_and_delete(client: Any, admin: dict) -> None:
    team = new_team(client, admin)
    user = new_user(client, admin, teams=[team], auto_create_key=False)
    key = ok(client.post("/key/generate", headers=admin, json={"team_id": team, "user_id": user["user_id"]}))
    assert ok(client.post("/team/member_update", headers=admin, json={
        "team_id": team, "user_email": None, "user_id": user["user_id"], "role": "admin"}))["role"] == "admin"
    # Now an admin of the team, the user's key manages it.
    ok(client.post(f"/team/{team}/disable_logging", headers=bearer(key["key"])))
    error_of(client.post("/team/member_update", headers=admin, json={"team_id": team, "user_id": user["user_id"]}),
             422, "role")
    answer = ok(client.post("/team/member_delete", headers=admin, json={"team_id": team,
                                                                        "user_id": user["user_id"]}))
    assert answer["deleted_keys"] == 1 and answer["members_with_roles"] == []
    error_of(chat(client, key["key"]), 401)  # their key of the team went with them
    error_of(client.post("/team/member_delete", headers=admin, json={"team_id": team,
                                                                     "user_id": user["user_id"]}), 404, "user_id")


# ------------------------------------------------------------------------------------------ self-service
def test_team_admin_sets_its_own_teams_langfuse_callback_and_gets_403_for_another(client: Any, admin: dict) -> None:
    own, other = new_team(client, admin), new_team(client, admin)
    boss = team_admin(client, admin, own)
    added = ok(client.post(f"/team/{own}/callback", headers=bearer(boss["key"]), json=langfuse()))
    assert added["status"] == "success"
    shown = ok(client.get(f"/team/{own}/callback", headers=bearer(boss["key"])))["data"]
    assert shown["success_callbacks"] == ["langfuse"] and shown["callback_vars"]["langfuse_secret"] == "***REDACTED***"
    assert LANGFUSE_SECRET not in json.dumps(shown)
    # A team key of the own team now logs to that Langfuse project (the team's own choice took effect).
    team_key = ok(client.post("/key/generate", headers=bearer(boss["key"]), json={"team_id": own}))
    health = ok(client.post("/key/health", headers=bearer(team_key["key"])))
    assert health["logging_callbacks"]["callbacks"] == ["langfuse"]
    assert health["logging_callbacks"]["source"] == "team"
    # Another team: refused, naming the team and the role, and nothing changed there.
    error = error_of(client.post(f"/team/{other}/callback", headers=bearer(boss["key"]), json=langfuse()), 403,
                     "team_id")
    assert error["type"] == "permission_error" and other in error["message"] and "admin" in error["message"]
    error_of(client.post(f"/team/{other}/disable_logging", headers=bearer(boss["key"])), 403, "team_id")
    error_of(client.get(f"/team/{other}/callback", headers=bearer(boss["key"])), 403, "team_id")
    error_of(client.post("/key/generate", headers=bearer(boss["key"]), json={"team_id": other}), 403, "team_id")
    other_view = ok(client.get(f"/team/{other}/callback", headers=admin))["data"]
    assert other_view["source"] != "team" and not other_view["logging_disabled"]
    # Negative control: the master key sets the other team's callback.
    ok(client.post(f"/team/{other}/callback", headers=admin, json=langfuse()))
    # A team that does not exist: 404 for the admin, 403 (nothing learnt) for the team admin.
    error_of(client.post("/team/no-such-team-zz/callback", headers=admin, json=langfuse()), 404, "team_id")
    error_of(client.post("/team/no-such-team-zz/callback", headers=bearer(boss["key"]), json=langfuse()), 403)


def test_team_admin_switches_its_teams_cache_and_manages_members_but_not_budget_fields(client: Any,
                                                                                       admin: dict) -> None:
    team = new_team(client, admin)
    boss = team_admin(client, admin, team)
    updated = ok(client.post("/team/update", headers=bearer(boss["key"]),
                             json={"team_id": team, "metadata": {"cache": False}}))
    assert updated["metadata"] == {"cache": False}
    added = ok(client.post("/team/member_add", headers=bearer(boss["key"]), json={
        "team_id": team, "member": {"role": "user", "user_id": uid("hire")}}))
    assert len(added["members_with_roles"]) == 2
    error_of(client.post("/team/delete", headers=bearer(boss["key"]), json={"team_ids": [team]}), 403)
    error_of(client.post("/user/new", headers=bearer(boss["key"]), json={"user_id": uid("x")}), 403)


def test_viewers_read_and_never_write(client: Any, admin: dict) -> None:
    team = new_team(client, admin)
    proxy_viewer = new_user(client, admin, "proxy_admin_viewer")
    team_viewer = team_admin(client, admin, team, role="internal_user_viewer")
    for viewer in (proxy_viewer, team_viewer):
        key = bearer(viewer["key"])
        assert ok(client.get(f"/team/info?team_id={team}", headers=key))["team_id"] == team
        assert ok(client.get(f"/team/{team}/callback", headers=key))["data"]["team_id"] == team
        assert ok(client.get(f"/audit?team_id={team}", headers=key))["total"] >= 1
        for method, path, body in [("POST", f"/team/{team}/callback", langfuse()),
                                   ("POST", f"/team/{team}/disable_logging", None),
                                   ("POST", "/team/update", {"team_id": team, "metadata": {"cache": False}}),
                                   ("POST", "/key/generate", {"team_id": team}),
                                   ("POST", "/key/generate", {}),
                                   ("POST", "/team/member_add", {"team_id": team,
                                                                 "member": {"role": "user", "user_id": uid("m")}})]:
            error = error_of(client.request(method, path, headers=key, json=body), 403)
            assert error["type"] == "permission_error"
    assert ok(client.get(f"/team/{team}/callback", headers=admin))["data"]["logging_disabled"] is False
    # Negative control: an internal_user admin of the same team does write.
    ok(client.post(f"/team/{team}/disable_logging", headers=bearer(team_admin(client, admin, team)["key"])))


def test_internal_users_manage_their_own_keys_only(client: Any, admin: dict) -> None:
    alice, bob = new_user(client, admin), new_user(client, admin)
    mine = ok(client.post("/key/generate", headers=bearer(alice["key"]), json={"key_alias": uid("mine")}))
    assert mine["user_id"] == alice["user_id"] and mine["team_id"] is None
    listed = ok(client.get("/key/list", headers=bearer(alice["key"])))
    assert set(listed["keys"]) == {alice["token_id"], mine["token_id"]}
    ok(client.post("/key/update", headers=bearer(alice["key"]), json={"key": mine["key"], "key_alias": "renamed"}))
    assert ok(client.get(f"/key/info?key={mine['token_id']}", headers=bearer(alice["key"])))["info"][
        "key_alias"] == "renamed"
    # Bob's key is not Alice's to read, change or delete, and she cannot make keys for Bob.
    for method, path, body in [("GET", f"/key/info?key={bob['token_id']}", None),
                               ("POST", "/key/update", {"key": bob["token_id"], "blocked": True}),
                               ("POST", "/key/delete", {"keys": [bob["token_id"]]}),
                               ("POST", "/key/generate", {"user_id": bob["user_id"]}),
                               ("POST", "/key/update", {"key": mine["key"], "user_id": bob["user_id"]}),
                               ("GET", f"/key/list?user_id={bob['user_id']}", None)]:
        error_of(client.request(method, path, headers=bearer(alice["key"]), json=body), 403)
    assert chat(client, bob["key"]).status_code == 200
    assert ok(client.post("/key/delete", headers=bearer(alice["key"]), json={"keys": [mine["key"]]}))[
        "deleted_keys"] == [mine["token_id"]]
    error_of(chat(client, mine["key"]), 401)


def test_a_team_admins_team_keys_go_to_members_only(client: Any, admin: dict) -> None:
    team = new_team(client, admin)
    boss = team_admin(client, admin, team)
    member = new_user(client, admin, teams=[team], auto_create_key=False)
    stranger = new_user(client, admin, auto_create_key=False)
    key = ok(client.post("/key/generate", headers=bearer(boss["key"]),
                         json={"team_id": team, "user_id": member["user_id"]}))
    assert key["user_id"] == member["user_id"]
    error_of(client.post("/key/generate", headers=bearer(boss["key"]),
                         json={"team_id": team, "user_id": stranger["user_id"]}), 422, "user_id")
    # The member (role user) reads the team but does not write its keys.
    member_key = ok(client.post("/key/generate", headers=admin, json={"user_id": member["user_id"]}))["key"]
    assert ok(client.get(f"/team/info?team_id={team}", headers=bearer(member_key)))["team_id"] == team
    error_of(client.post("/key/update", headers=bearer(member_key), json={"key": key["key"], "metadata": {
        "logging": []}}), 403, "key")


@pytest.mark.parametrize(("field", "ceiling", "over", "within"), [
    ("max_budget", 10.0, 10.5, 10.0), ("rpm_limit", 60, 61, 60), ("tpm_limit", 6000, 6001, 5000)])
def test_a_team_admin_gives_a_team_key_no_more_than_the_team_has(client: Any, admin: dict, field: str,
                                                                 ceiling: float, over: float, within: float) -> None:
    team = ok(client.post("/team/new", headers=admin, json={"team_id": uid("capped"), field: ceiling}))["team_id"]
    boss = team_admin(client, admin, team)
    error = error_of(client.post("/key/generate", headers=bearer(boss["key"]), json={"team_id": team, field: over}),
                     400, field)
    assert f"{over} is above team {team!r}'s {field} of {ceiling}" in error["message"]
    assert [k["token_id"] for k in ok(client.get(f"/key/list?team_id={team}&return_full_object=true",
                                                 headers=admin))["keys"]] == []  # nothing was created
    made = ok(client.post("/key/generate", headers=bearer(boss["key"]), json={"team_id": team, field: within}))
    assert made[field] == within
    bare = ok(client.post("/key/generate", headers=bearer(boss["key"]), json={"team_id": team}))
    assert bare[field] is None  # no limit of its own: the team's applies at request time
    # /key/update: raising it over the team's is refused and leaves the key as it was; other fields still change
    error_of(client.post("/key/update", headers=bearer(boss["key"]), json={"key": made["key"], field: over}), 400,
             field)
    info = ok(client.get(f"/key/info?key={made['key']}", headers=admin))["info"]
    assert info[field] == within
    renamed = ok(client.post("/key/update", headers=bearer(boss["key"]), json={"key": made["key"],
                                                                                "key_alias": uid("renamed")}))
    assert renamed[field] == within
    # moving a key with more than the team has into the team brings its limit along: refused too
    other = new_team(client, admin)
    ok(client.post("/team/member_add", headers=admin,
                   json={"team_id": other, "member": {"role": "admin", "user_id": boss["user_id"]}}))
    roomy = ok(client.post("/key/generate", headers=bearer(boss["key"]), json={"team_id": other, field: over}))
    error_of(client.post("/key/update", headers=bearer(boss["key"]), json={"key": roomy["key"], "team_id": team}),
             400, field)
    # negative control: the proxy admin may set more than the team has
    assert ok(client.post("/key/generate", headers=admin, json={"team_id": team, field: over}))[field] == over
    assert ok(client.post("/key/update", headers=admin, json={"key": made["key"], field: over}))[field] == over


# ------------------------------------------------------------------------------------------------- audit
def test_audit_records_who_when_and_before_after_with_secrets_masked(client: Any, admin: dict,
                                                                      module_db_url: str, query_db: Any) -> None:
    team = new_team(client, admin)
    boss = team_admin(client, admin, team)
    before = datetime.now(UTC) - timedelta(seconds=5)
    ok(client.post(f"/team/{team}/callback", headers=bearer(boss["key"]), json=langfuse()))
    ok(client.post(f"/team/{team}/disable_logging", headers={**bearer(boss["key"]), "litellm-changed-by": "dpo@acme"}))
    key = ok(client.post("/key/generate", headers=bearer(boss["key"]), json={"team_id": team, "key_alias": "ci"}))
    rows = ok(client.get(f"/audit?team_id={team}", headers=bearer(boss["key"])))["audit_logs"]
    by_action = {r["action"]: r for r in rows}
    assert {"created", "member_added", "callback_added", "logging_disabled"} <= set(by_action)
    added = by_action["callback_added"]
    assert added["changed_by"] == boss["user_id"] and added["table_name"] == "sg_teams"
    assert added["changed_by_api_key"] == boss["token_id"]  # the key's hash, as keys are stored; not the key
    assert added["before_value"]["logging"] is None
    assert added["updated_values"]["logging"][0]["callback_vars"] == {
        "langfuse_public_key": "pk-lf-team", "langfuse_secret": "***REDACTED***",
        "langfuse_host": "http://127.0.0.1:9"}
    # GDPR: the record that the team's logging was switched off, when, and by whom.
    off = by_action["logging_disabled"]
    assert off["object_id"] == team and off["updated_values"]["logging_disabled"] is True
    assert off["before_value"]["logging_disabled"] is False
    # LiteLLM's litellm-changed-by is kept beside who authenticated, never instead of them.
    assert (off["changed_by"], off["on_behalf_of"]) == (boss["user_id"], "dpo@acme")
    assert added["on_behalf_of"] is None
    assert before <= datetime.fromisoformat(off["updated_at"]) <= datetime.now(UTC) + timedelta(seconds=5)
    created_key = next(r for r in rows if r["table_name"] == "sg_keys" and r["object_id"] == key["token_id"])
    assert created_key["updated_values"]["key_alias"] == "ci" and created_key["before_value"] is None
    # Nothing secret anywhere in the stored rows: not the Langfuse secret, not a key.
    stored = json.dumps(query_db(module_db_url, "SELECT * FROM sg_audit"), default=str)
    for secret in (LANGFUSE_SECRET, key["key"], boss["key"]):
        assert secret not in stored
    assert "***REDACTED***" in stored  # negative control: the masked form is what is there


def test_team_admins_read_their_teams_audit_only(client: Any, admin: dict) -> None:
    own, other = new_team(client, admin), new_team(client, admin)
    boss = team_admin(client, admin, own)
    ok(client.post(f"/team/{other}/disable_logging", headers=admin))
    mine = ok(client.get("/audit?page_size=1000", headers=bearer(boss["key"])))
    assert {r["team_id"] for r in mine["audit_logs"]} == {own}
    error_of(client.get(f"/audit?team_id={other}", headers=bearer(boss["key"])), 403, "team_id")
    other_row = ok(client.get(f"/audit?team_id={other}&action=logging_disabled", headers=admin))["audit_logs"][0]
    error_of(client.get(f"/audit/{other_row['id']}", headers=bearer(boss["key"])), 403)
    assert ok(client.get(f"/audit/{other_row['id']}", headers=admin))["action"] == "logging_disabled"
    error_of(client.get("/audit", headers=bearer(new_user(client, admin)["key"])), 403)  # admin of no team
    error_of(client.get("/audit/not-a-number", headers=admin), 422, "audit_id")


def test_audit_pages_like_team_list(client: Any, admin: dict) -> None:
    team = new_team(client, admin)
    for n in range(4):
        ok(client.post("/team/update", headers=admin, json={"team_id": team, "team_alias": f"a{n}"}))
    page = client.get(f"/audit?team_id={team}&page_size=2&page=2", headers=admin)
    body = ok(page)
    assert (body["total"], body["page"], body["page_size"], body["total_pages"]) == (5, 2, 2, 3)
    assert page.headers["x-total-count"] == "5"
    assert [r["updated_values"]["team_alias"] for r in body["audit_logs"]] == ["a1", "a0"]  # newest first
    error_of(client.get("/audit?page=0", headers=admin), 422, "page")


def test_user_and_membership_changes_are_audited(client: Any, admin: dict) -> None:
    team = new_team(client, admin)
    user = new_user(client, admin, teams=[team], rpm_limit=10)
    ok(client.post("/user/update", headers=admin, json={"user_id": user["user_id"], "rpm_limit": 20}))
    ok(client.post("/user/delete", headers=admin, json={"user_ids": [user["user_id"]]}))
    rows = ok(client.get(f"/audit?object_id={user['user_id']}", headers=admin))["audit_logs"]
    assert [r["action"] for r in rows] == ["deleted", "updated", "created"]
    assert rows[1]["before_value"]["rpm_limit"] == 10 and rows[1]["updated_values"]["rpm_limit"] == 20
    assert all(r["changed_by"] == "master_key" and r["changed_by_api_key"] is None for r in rows)
    membership = ok(client.get(f"/audit?team_id={team}&table_name=sg_team_members", headers=admin))["audit_logs"]
    assert [r["action"] for r in membership] == ["member_removed", "member_added"]


def test_a_change_and_its_audit_row_are_one_transaction(db_url: str, query_db: Any) -> None:
    """The store writes the row in the change's transaction: a change whose row cannot be written is not made, and
    a change that fails leaves no row."""
    from sluicegate.db.store import Actor, Store

    from tests.conftest import run_async

    async def go() -> None:
        store = Store(db_url)
        await store.migrate()
        try:
            await store.create_team("t-atomic")
            with pytest.raises(Exception):  # noqa: B017 - IntegrityError, wrapped differently per driver
                await store.create_team("t-atomic")
            with pytest.raises(Exception):  # noqa: B017 - the audit row's NOT NULL changed_by
                no_one = Actor(changed_by=None)  # type: ignore[arg-type]
                await store.update_team("t-atomic", actor=no_one, team_alias="never")
            assert (await store.get_team("t-atomic")).team_alias is None  # type: ignore[union-attr]
            await store.update_team("t-atomic", actor=Actor(changed_by="ops"), team_alias="kept")
            assert (await store.get_team("t-atomic")).team_alias == "kept"  # type: ignore[union-attr]
        finally:
            await store.aclose()

    run_async(go)
    rows = query_db(db_url, "SELECT action, changed_by FROM sg_audit WHERE object_id = 't-atomic' ORDER BY id")
    assert [(r["action"], r["changed_by"]) for r in rows] == [("created", "system"), ("updated", "ops")]


def test_key_generate_for_an_unknown_user_creates_them_for_the_proxy_admin_only(client: Any, admin: dict) -> None:
    fresh = uid("app")
    key = ok(client.post("/key/generate", headers=admin, json={"user_id": fresh}))
    assert key["user_id"] == fresh and chat(client, key["key"]).status_code == 200
    info = ok(client.get(f"/user/info?user_id={fresh}", headers=admin))
    assert info["user_info"]["user_role"] == "internal_user" and [k["token_id"] for k in info["keys"]] == [
        key["token_id"]]
    # Negative control: a team admin naming an unknown user gets a 404, and nothing is created.
    team = new_team(client, admin)
    boss = team_admin(client, admin, team)
    ghost = uid("ghost")
    error_of(client.post("/key/generate", headers=bearer(boss["key"]), json={"team_id": team, "user_id": ghost}),
             404, "user_id")
    error_of(client.get(f"/user/info?user_id={ghost}", headers=admin), 404, "user_id")


def test_revision_0004_downgrades_and_upgrades_again(db_url: str, query_db: Any) -> None:
    from importlib.resources import files

    import sqlalchemy as sa
    from alembic import command
    from alembic.config import Config

    from sluicegate.db.store import Store

    from tests.conftest import run_async

    def run(target: str, down: bool = False, then: str | None = None) -> None:
        async def go() -> None:
            cfg = Config()
            cfg.set_main_option("script_location", str(files("sluicegate.db") / "migrations"))
            store = Store(db_url)

            def migrate(connection: sa.Connection) -> None:
                cfg.attributes["connection"] = connection
                (command.downgrade if down else command.upgrade)(cfg, target)

            try:
                async with store.engine.begin() as conn:
                    await conn.run_sync(migrate)
                    if then is not None:
                        await conn.execute(sa.text(then))
            finally:
                await store.aclose()

        run_async(go)

    run("head", then="INSERT INTO sg_keys (token_id, key_name, blocked, user_id) "
                     "VALUES ('k1', 'sk-...k1', false, 'u1')")
    run("0002", down=True)
    assert "user_id" not in query_db(db_url, "SELECT * FROM sg_keys")[0]  # the key is kept, its owner column gone
    run("head")
    rows = query_db(db_url, "SELECT token_id, user_id FROM sg_keys")
    assert rows == [{"token_id": "k1", "user_id": None}]
    assert query_db(db_url, "SELECT count(*) AS n FROM sg_audit") == [{"n": 0}]


def test_key_list_without_a_team_shows_a_team_admin_their_own_and_their_teams_keys(client: Any, admin: dict) -> None:
    own, other = new_team(client, admin), new_team(client, admin)
    boss = team_admin(client, admin, own)
    own_key = ok(client.post("/key/generate", headers=admin, json={"team_id": own}))
    other_key = ok(client.post("/key/generate", headers=admin, json={"team_id": other}))
    listed = set(ok(client.get("/key/list?page_size=1000", headers=bearer(boss["key"])))["keys"])
    assert {boss["token_id"], own_key["token_id"]} <= listed
    assert other_key["token_id"] not in listed
    assert other_key["token_id"] in ok(client.get(f"/key/list?team_id={other}", headers=admin))["keys"]


def test_team_new_takes_members_with_roles_in_one_transaction(client: Any, admin: dict) -> None:
    boss = new_user(client, admin)
    team = uid("team")
    made = ok(client.post("/team/new", headers=admin, json={"team_id": team, "members_with_roles": [
        {"role": "admin", "user_id": boss["user_id"]}, {"role": "user", "user_email": f"{uid('m')}@example.com"}]}))
    assert [m["role"] for m in made["members_with_roles"]] == ["admin", "user"]
    ok(client.post(f"/team/{team}/disable_logging", headers=bearer(boss["key"])))  # the admin's powers are live
    # A repeated member refuses the whole team: nothing is created.
    again = uid("team")
    error_of(client.post("/team/new", headers=admin, json={"team_id": again, "members_with_roles": [
        {"role": "admin", "user_id": boss["user_id"]}, {"role": "user", "user_id": boss["user_id"]}]}), 400,
        "members_with_roles[1]")
    error_of(client.get(f"/team/info?team_id={again}", headers=admin), 404, "team_id")
