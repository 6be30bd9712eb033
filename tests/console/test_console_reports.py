"""The console's audit trail and spend pages over plain HTTP (Litestar's test client on a real app and SQLite
database, the offline ``mock_response`` model priced per token): what each page shows, to whom, and that what users
wrote is escaped on both.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import markupsafe
import pytest

from tests.console.test_console_http import csrf_of, log_in, uid

PRICES = {"input_cost_per_token": 1e-3, "output_cost_per_token": 2e-3}
MARKUP = '<script>alert("x")</script><img src=x onerror=alert(1)>'


@pytest.fixture(scope="module")
def client(make_settings: Any) -> Iterator[Any]:
    from litestar.testing import TestClient

    from sluicegate.app import create_app

    models = [{"model_name": "priced", "litellm_params": {"model": "openai/priced-up", "mock_response": "hi there",
                                                          **PRICES}}]
    with TestClient(create_app(make_settings(model_list=models)), timeout=30) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def admin(master_key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {master_key}"}


def new_team(client: Any, admin: dict[str, str], **fields: Any) -> str:
    team_id = uid("team")
    assert client.post("/team/new", json={"team_id": team_id, **fields}, headers=admin).status_code == 200
    return team_id


def team_admin_of(client: Any, admin: dict[str, str], team_id: str, role: str = "admin") -> str:
    made = client.post("/user/new", json={"user_id": uid(role), "user_role": "internal_user",
                                          "teams": [{"team_id": team_id, "user_role": role}]}, headers=admin)
    assert made.status_code == 200, made.text
    return made.json()["key"]


def enter(client: Any, key: str) -> None:
    client.cookies.clear()
    assert log_in(client, key).status_code == 303


def rows_of(text: str) -> list[str]:
    return re.findall(r"<tr>.*?</tr>", text, flags=re.S)


# ---------------------------------------------------------------------------------------------------- audit
def test_the_audit_page_shows_a_teams_logging_switch_to_its_admins_only(client: Any, admin: dict[str, str],
                                                                        master_key: str) -> None:
    team_id, other = new_team(client, admin), new_team(client, admin)
    assert client.post(f"/team/{team_id}/disable_logging", headers=admin).status_code == 200
    own_admin, other_admin = team_admin_of(client, admin, team_id), team_admin_of(client, admin, other)

    enter(client, own_admin)
    page = client.get("/ui/audit")
    assert page.status_code == 200, page.text
    switched = [r for r in rows_of(page.text) if "logging_disabled" in r and team_id in r]
    assert switched, page.text[-3000:]
    assert "master_key" in switched[0]  # who switched it
    filtered = client.get("/ui/audit", params={"team_id": team_id})
    assert any("logging_disabled" in r for r in rows_of(filtered.text))
    assert all(team_id in r for r in rows_of(filtered.text)[1:])  # (the first row is the header)
    assert f'<option value="{team_id}"' in page.text and f'<option value="{other}"' not in page.text

    # Negative control: the admin of another team sees none of it, and may not ask for it.
    enter(client, other_admin)
    theirs = client.get("/ui/audit")
    assert theirs.status_code == 200 and team_id not in theirs.text
    assert client.get("/ui/audit", params={"team_id": team_id}).status_code == 403
    enter(client, team_admin_of(client, admin, team_id, role="user"))  # a member, not an admin: as GET /audit
    member = client.get("/ui/audit")
    assert member.status_code == 403 and "text/html" in member.headers["content-type"]
    assert "logging_disabled" not in member.text

    # The master key reads every row; the newest comes first.
    enter(client, master_key)
    everything = client.get("/ui/audit").text
    assert team_id in everything and other in everything
    created = [r for r in rows_of(everything) if "<code>created</code>" in r and "sg_teams" in r]
    order = [next(t for t in (team_id, other) if f"<code>{t}</code>" in r) for r in created
             if f"<code>{team_id}</code>" in r or f"<code>{other}</code>" in r]
    assert order == [other, team_id]  # newest first: the other team was created later
    client.cookies.clear()


def test_the_audit_page_is_paginated(client: Any, admin: dict[str, str], master_key: str,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    team_id = new_team(client, admin)
    for i in range(3):
        assert client.post("/team/update", json={"team_id": team_id, "team_alias": f"alias-{i}"},
                           headers=admin).status_code == 200
    enter(client, master_key)
    total = client.get("/audit", params={"team_id": team_id}, headers=admin).json()["total"]
    assert total == 4
    from sluicegate.console import pages

    monkeypatch.setattr(pages, "AUDIT_PER_PAGE", 3)  # four rows: two pages without writing fifty-one
    first = client.get("/ui/audit", params={"team_id": team_id}).text
    second = client.get("/ui/audit", params={"team_id": team_id, "page": "2"}).text
    assert len(rows_of(first)) == 1 + 3 and len(rows_of(second)) == 1 + 1
    assert f'href="/ui/audit?page=2&amp;team_id={team_id}"' in first
    assert "alias-2" in first and "alias-2" not in second  # newest first
    assert "<code>created</code>" in second and "<code>created</code>" not in first  # the oldest row, last
    # Of an update, the fields that changed, as compact JSON: before → after.
    assert ("<code>{&#34;team_alias&#34;:&#34;alias-1&#34;}</code> → <code>{&#34;team_alias&#34;:&#34;alias-2&#34;}"
            "</code>") in first
    assert client.get("/ui/audit", params={"page": "0"}).status_code == 422
    client.cookies.clear()


def test_the_audit_page_escapes_what_users_wrote(client: Any, admin: dict[str, str], master_key: str) -> None:
    team_id = new_team(client, admin, team_alias=MARKUP)
    enter(client, master_key)
    page = client.get("/ui/audit", params={"team_id": team_id})
    assert page.status_code == 200
    assert MARKUP not in page.text and "<script>alert" not in page.text
    assert str(markupsafe.escape('"team_alias":' + '"<script>alert(\\"x\\")</script>')) in page.text
    reflected = client.get("/ui/audit", params={"team_id": MARKUP})  # a filter typed in the address bar
    assert reflected.status_code == 200 and "<script>alert" not in reflected.text
    assert str(markupsafe.escape(MARKUP)) in reflected.text
    client.cookies.clear()


# ---------------------------------------------------------------------------------------------------- spend
def test_the_spend_page_shows_a_teams_spend_as_a_chart_and_a_table(client: Any, admin: dict[str, str],
                                                                   master_key: str) -> None:
    team_id, other = new_team(client, admin), new_team(client, admin)
    key = client.post("/key/generate", json={"team_id": team_id}, headers=admin).json()["key"]
    answer = client.post("/v1/chat/completions", headers={"authorization": f"Bearer {key}"},
                         json={"model": "priced", "messages": [{"role": "user", "content": "hello there"}]})
    assert answer.status_code == 200, answer.text
    usage = answer.json()["usage"]
    cost = usage["prompt_tokens"] * PRICES["input_cost_per_token"] + \
        usage["completion_tokens"] * PRICES["output_cost_per_token"]
    assert cost > 0

    enter(client, master_key)
    page = client.get("/ui/spend")
    assert page.status_code == 200, page.text
    row = next(r for r in rows_of(page.text) if f"<code>{team_id}</code>" in r)
    assert f"<td>{cost:.6f}</td>" in row and f"<td>{usage['prompt_tokens']}</td>" in row
    reported = client.get("/spend/report", headers=admin).json()["totals"]
    assert {"team": team_id, "spend": pytest.approx(cost)} in reported
    chart = re.search(r'<svg class="chart" role="img" aria-labelledby="chart-title chart-desc".*?</svg>',
                      page.text, flags=re.S)
    assert chart and "<title" in chart.group(0) and "<desc" in chart.group(0)
    assert len(re.findall(r'<rect class="s\d"', chart.group(0))) >= 1  # a bar for today's spend
    assert "<script" not in page.text and "http" not in page.text.split("<svg", 1)[1].split("</svg>", 1)[0]
    per_model = client.get("/ui/spend", params={"group_by": "model"}).text
    assert any("priced" in r and f"{cost:.6f}" in r for r in rows_of(per_model))
    assert client.get("/ui/spend", params={"group_by": "nonsense"}).status_code == 422

    # A team's admin sees that team's spend only, per team only. Negative control: another team's admin.
    enter(client, team_admin_of(client, admin, team_id))
    own = client.get("/ui/spend")
    assert own.status_code == 200 and f"<code>{team_id}</code>" in own.text and f"{cost:.6f}" in own.text
    assert client.get("/ui/spend", params={"group_by": "key"}).status_code == 403
    enter(client, team_admin_of(client, admin, team_id, role="user"))  # members read their team's spend too
    assert f"<code>{team_id}</code>" in client.get("/ui/spend").text
    enter(client, team_admin_of(client, admin, other))
    theirs = client.get("/ui/spend")
    assert theirs.status_code == 200 and team_id not in theirs.text and "<svg" in theirs.text
    client.cookies.clear()


def test_the_spend_page_escapes_what_users_wrote(client: Any, admin: dict[str, str], master_key: str) -> None:
    team_id = new_team(client, admin, team_alias=MARKUP)
    key = client.post("/key/generate", json={"team_id": team_id, "key_alias": MARKUP}, headers=admin).json()["key"]
    answer = client.post("/v1/chat/completions", headers={"authorization": f"Bearer {key}"},
                         json={"model": "priced", "messages": [{"role": "user", "content": "hi"}]})
    assert answer.status_code == 200
    enter(client, master_key)
    for group_by in ("team", "key"):
        page = client.get("/ui/spend", params={"group_by": group_by})
        assert page.status_code == 200
        assert MARKUP not in page.text and "<script>alert" not in page.text, group_by
        assert str(markupsafe.escape(MARKUP)) in page.text, group_by  # shown, as text
    client.cookies.clear()
