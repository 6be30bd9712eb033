"""No silent drops: every field LiteLLM documents for ``/key/generate``, ``/key/update``, ``/team/new`` and
``/team/update`` is either honoured (200, and the answer shows the value sent) or refused by name (400 naming the
field and listing the accepted ones), through Litestar's test client on SQLite and PostgreSQL.

The field lists come from LiteLLM's request models (``tests/fixtures/litellm_admin_fields.json``); the accepted
lists come from our request Structs, and docs/api.md must list each of them for its route.
"""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path
from typing import Any

import pytest

from sluicegate.api import end_users, keys, teams
from sluicegate.api.common import accepted_fields

FIELDS = json.loads((Path(__file__).parent / "fixtures" / "litellm_admin_fields.json").read_text())
DOCS = Path(__file__).resolve().parents[1] / "docs" / "api.md"
ROUTES = {"/key/generate": keys.KeyGenerateRequest, "/key/update": keys.KeyUpdateRequest,
          "/key/delete": keys.KeyDeleteRequest, "/team/new": teams.TeamNewRequest,
          "/team/update": teams.TeamUpdateRequest, "/team/delete": teams.TeamDeleteRequest,
          "/team/{team_id}/callback": teams.AddCallbackRequest, "/end_user/new": end_users.EndUserNewRequest,
          "/end_user/update": end_users.EndUserUpdateRequest, "/end_user/delete": end_users.EndUserDeleteRequest}
# fields whose answer shows them under another name or not at all (checked by the route's own tests)
NOT_ECHOED = {"duration", "key"}


@pytest.fixture(scope="module")
def client(module_db_url: str, make_settings: Any) -> Any:
    from litestar.testing import TestClient

    from sluicegate.app import create_app

    with TestClient(create_app(make_settings(database_url=module_db_url)), timeout=30) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def admin(master_key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {master_key}"}


def _body(route: str, field: str, value: Any, client: Any, admin: dict[str, str]) -> dict[str, Any]:
    """A request of ``route`` carrying ``field`` (and what the route needs besides)."""
    suffix = uuid.uuid4().hex[:8]
    if route == "/key/generate":
        if field == "key":
            value = f"{value}-{suffix}"
        return {field: value}
    if route == "/key/update":
        made = client.post("/key/generate", json={}, headers=admin).json()["key"]
        return {"key": made, field: value}
    if route == "/team/new":
        return {field: f"{value}-{suffix}" if field == "team_id" else value}
    made = client.post("/team/new", json={}, headers=admin).json()["team_id"]
    return {"team_id": made, field: value}


@pytest.mark.parametrize("route", ["/key/generate", "/key/update", "/team/new", "/team/update"])
def test_every_litellm_field_is_honoured_or_refused_by_name(route: str, client: Any, admin: dict[str, str]) -> None:
    accepted = accepted_fields(ROUTES[route])
    for user in ("user-fields", "user-fields-2"):  # a key's owner must exist (/key/update does not create one)
        client.post("/user/new", json={"user_id": user, "auto_create_key": False}, headers=admin)
    honoured, refused = [], []
    for field, value in FIELDS[route].items():
        body = _body(route, field, value, client, admin)
        response = client.post(route, json=body, headers=admin)
        if field in accepted:
            assert response.status_code == 200, (field, response.text)
            shown = response.json()
            if field not in NOT_ECHOED and field in shown:
                assert shown[field] == body[field], (field, shown[field], body[field])
            honoured.append(field)
        else:
            assert response.status_code == 400, (field, response.status_code, response.text)
            error = response.json()["error"]
            assert error["param"] == field and error["type"] == "invalid_request_error", error
            assert error["message"].startswith(f"{field}: not supported by POST {route}"), error["message"]
            listed = error["message"].split("accepted fields: ", 1)[1].split(", ")
            assert listed == list(accepted) == error["accepted_fields"]
            refused.append(field)
    # both kinds occur: the walk is not vacuous in either direction
    assert honoured and refused, (honoured, refused)
    for name in ("max_budget", "budget_duration"):
        assert name in honoured


def test_a_made_up_field_is_refused_everywhere_and_a_known_one_is_not(client: Any, admin: dict[str, str]) -> None:
    for route in ("/key/generate", "/team/new", "/end_user/new", "/customer/new", "/key/delete", "/team/delete"):
        response = client.post(route, json={"no_such_field": 1}, headers=admin)
        assert response.status_code == 400, (route, response.text)
        assert response.json()["error"]["param"] == "no_such_field"
    # negative control: the same routes take their own fields
    assert client.post("/key/generate", json={"max_budget": 1.5}, headers=admin).json()["max_budget"] == 1.5
    team = client.post("/team/new", json={"team_id": f"t-{uuid.uuid4().hex[:8]}"}, headers=admin).json()
    response = client.post(f"/team/{team['team_id']}/callback", json={"callback_name": "file", "oops": 1},
                           headers=admin)
    assert response.status_code == 400 and response.json()["error"]["param"] == "oops"


def test_docs_list_every_accepted_field_of_every_admin_route() -> None:
    text = DOCS.read_text()
    for route, struct in ROUTES.items():
        rows = [line for line in text.splitlines() if re.search(rf"\| `{re.escape(route)}` \|", line)]
        assert rows, f"docs/api.md has no row for {route}"
        # the route's body row (the roles table has a row for the route too)
        missing = min(([f for f in accepted_fields(struct) if f"`{f}" not in row] for row in rows), key=len)
        assert not missing, f"docs/api.md's row for {route} does not list {missing}"
