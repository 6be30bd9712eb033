"""The console in a real browser: Debian's chromium through Playwright, against a gateway served by uvicorn on
loopback with a real SQLite database, the bundled sinks and the third-party-shaped acme sink really installed
(pip-installed into a temporary folder, found through its entry point as any plugin is).

Every flow checks its outcome through the admin API as well as on the page. Screenshots for docs/console.md
are taken here: ``SLUICEGATE_WRITE_SCREENSHOTS=1`` writes them to docs/images/ (commit them); otherwise they
are taken to a temporary folder and the committed ones are checked to exist.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from sluicegate.sinks.base import MASK
from sluicegate.testing import HttpReceiver, wait_until

ROOT = Path(__file__).resolve().parents[2]
UV = Path(sys.executable).with_name("uv")
DOCS_IMAGES = ROOT / "docs" / "images"
SCREENSHOTS = ("console-teams.png", "console-team.png", "console-sink-form.png", "console-keys.png",
               "console-delivery.png", "console-phone.png")


@pytest.fixture(scope="module")
def acme_installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """tests/fixtures/acme_sink installed into a folder on ``sys.path`` for this module only."""
    target = tmp_path_factory.mktemp("acme-console")
    subprocess.run([str(UV), "pip", "install", "--quiet", "--no-deps", "--target", str(target),
                    str(ROOT / "tests" / "fixtures" / "acme_sink")], check=True, capture_output=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(target))
        importlib.invalidate_caches()
        yield target


@pytest.fixture(scope="module")
def gateway(acme_installed: Path, make_settings: Any, mock_upstream: Any, module_serve_app: Any) -> Any:
    from sluicegate.app import create_app

    settings = make_settings(upstream=mock_upstream.url, sluicegate_settings={"delivery": {
        "batch_interval": 0.01, "retry_base_delay": 0.05, "max_retries": 1}})
    served = module_serve_app(create_app(settings))
    served.gateway = served.app.state.gateway
    return served


@pytest.fixture(scope="module")
def api(gateway: Any, master_key: str) -> Iterator[httpx.Client]:
    headers = {"authorization": f"Bearer {master_key}"}
    with httpx.Client(base_url=gateway.url, headers=headers, timeout=30) as client:
        yield client


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def log_in(page: Any, gateway: Any, master_key: str) -> None:
    """Log in with the keyboard only: the key field has focus-able label, Enter submits."""
    page.goto(f"{gateway.url}/ui/teams")
    assert page.url.endswith("/ui/login")
    page.get_by_label("Key").fill(master_key)
    page.get_by_label("Key").press("Enter")
    page.wait_for_url("**/ui/teams")
    assert page.get_by_role("status").filter(has_text="Logged in.").is_visible()


# ------------------------------------------------------------------------------------------------- flows
def test_admin_creates_a_team_adds_langfuse_sees_the_secret_masked_and_disables_logging(
        page: Any, gateway: Any, api: httpx.Client, master_key: str) -> None:
    team_id = uid("browser")
    secret = "sk-lf-" + uuid.uuid4().hex
    log_in(page, gateway, master_key)
    page.get_by_label("Team id").fill(team_id)
    page.get_by_label("Alias").fill("Browser team")
    page.get_by_role("button", name="Create team").click()
    page.wait_for_url(f"**/ui/teams/{team_id}")
    info = api.get("/team/info", params={"team_id": team_id}).json()
    assert info["team_info"]["team_alias"] == "Browser team"

    page.get_by_label("Add a sink").select_option("langfuse")
    page.get_by_role("button", name="Configure…").click()
    page.wait_for_url("**/sinks/new?callback_name=langfuse")
    # The form is the Vars struct: its fields, typed, the secret a password input, the docstring shown.
    assert page.get_by_label("langfuse_secret_key").get_attribute("type") == "password"
    assert "Base URL of the Langfuse deployment" in page.locator("#var-langfuse_host-help").inner_text()
    assert "also accepted as langfuse_secret" in page.locator("#var-langfuse_secret_key-help").inner_text()
    page.get_by_label("langfuse_public_key").fill("pk-lf-browser")
    page.get_by_label("langfuse_secret_key").fill(secret)
    page.get_by_label("langfuse_host").fill("ftp://not-http")
    page.get_by_role("button", name="Add langfuse").click()
    # Refused by the API's own check, shown next to the field, the secret not sent back.
    error = page.locator("#var-langfuse_host-error")
    assert "callback_vars.langfuse_host: must be an http(s) URL" in error.inner_text()
    assert page.get_by_label("langfuse_host").get_attribute("aria-invalid") == "true"
    assert page.evaluate("() => document.activeElement.id") == "var-langfuse_host"  # focus on the error
    assert page.get_by_label("langfuse_secret_key").input_value() == ""
    assert api.get(f"/team/{team_id}/callback").json()["data"]["source"] == "global"  # nothing written

    page.get_by_label("langfuse_secret_key").fill(secret)
    page.get_by_label("langfuse_host").fill("https://langfuse.example.com")
    page.get_by_role("button", name="Add langfuse").click()
    page.wait_for_url(f"**/ui/teams/{team_id}")
    row = page.get_by_role("table", name="Sinks that receive this team's calls").get_by_role("row").filter(
        has_text="langfuse")
    assert MASK in row.inner_text() and "pk-lf-browser" in row.inner_text()
    redaction = page.get_by_role("table", name="What each destination of this team's calls receives")
    assert "langfuse" in redaction.inner_text() and "not redacted" in redaction.inner_text()
    assert secret not in page.content()
    data = api.get(f"/team/{team_id}/callback").json()["data"]
    assert data["source"] == "team" and data["callbacks"][0]["callback_vars"]["langfuse_secret_key"] == MASK
    assert data["logging_disabled"] is False

    page.get_by_role("button", name="Disable logging (GDPR)").click()
    page.wait_for_url(f"**/ui/teams/{team_id}")
    assert "Logging is disabled" in page.locator("#logging-state").inner_text()
    data = api.get(f"/team/{team_id}/callback").json()["data"]
    assert data["logging_disabled"] is True and data["callbacks"] == []
    page.get_by_role("button", name="Enable logging").click()
    page.wait_for_url(f"**/ui/teams/{team_id}")
    assert api.get(f"/team/{team_id}/callback").json()["data"]["logging_disabled"] is False


def test_a_third_party_sink_appears_with_its_own_fields(page: Any, gateway: Any, api: httpx.Client,
                                                         master_key: str) -> None:
    """acme is installed in the test's environment only; the console has no code naming it. (The negative
    control, a gateway without acme offering no acme form, is in test_console_security.py.)"""
    team_id = uid("acme")
    assert api.post("/team/new", json={"team_id": team_id}).status_code == 200
    log_in(page, gateway, master_key)
    page.goto(f"{gateway.url}/ui/teams/{team_id}")
    page.get_by_label("Add a sink").select_option("acme")
    page.get_by_role("button", name="Configure…").click()
    labels = page.locator("form.sink-form .field > label").all_inner_texts()
    assert labels == ["url (required)", "api_token (required)", "batch_size", "Send"]
    assert page.get_by_label("api_token").get_attribute("type") == "password"
    assert page.get_by_label("batch_size").get_attribute("placeholder") == "100"
    assert "also accepted as token" in page.locator("#var-api_token-help").inner_text()
    assert "sluicegate-acme-sink" in page.content()  # the distribution it came from
    # The plugin's own validate_callback_vars hook answers through the API function.
    page.get_by_label("url (required)").fill("gopher://x")
    page.get_by_label("api_token").fill("acme-token-" + uuid.uuid4().hex)
    page.get_by_role("button", name="Add acme").click()
    assert "url: must be an http(s) URL" in page.locator("p.error").first.inner_text()
    page.get_by_label("url (required)").fill("http://127.0.0.1:9/acme")
    page.get_by_label("api_token").fill("acme-token-" + uuid.uuid4().hex)
    page.get_by_label("batch_size").fill("many")
    page.get_by_role("button", name="Add acme").click()
    assert "callback_vars.batch_size: Expected `int`" in page.locator("#var-batch_size-error").inner_text()
    page.get_by_label("api_token").fill("acme-token-" + uuid.uuid4().hex)
    page.get_by_label("batch_size").fill("7")
    page.get_by_role("button", name="Add acme").click()
    page.wait_for_url(f"**/ui/teams/{team_id}")
    entry = api.get(f"/team/{team_id}/callback").json()["data"]["callbacks"][0]
    stored = dict(entry["callback_vars"])
    assert str(stored.pop("batch_size")) == "7"  # stored as the form sent it; the Vars decode takes "7" as 7
    assert entry["callback_name"] == "acme" and stored == {"url": "http://127.0.0.1:9/acme", "api_token": MASK}
    page.get_by_role("button", name="Remove acme").click()
    page.wait_for_url(f"**/ui/teams/{team_id}")
    assert api.get(f"/team/{team_id}/callback").json()["data"]["source"] == "global"


def test_keys_are_shown_once_rotated_and_revoked(page: Any, gateway: Any, api: httpx.Client,
                                                 master_key: str) -> None:
    team_id = uid("keys")
    alias = uid("alias")
    assert api.post("/team/new", json={"team_id": team_id}).status_code == 200
    log_in(page, gateway, master_key)
    page.goto(f"{gateway.url}/ui/keys?team_id={team_id}")
    assert page.get_by_label("Team").input_value() == team_id
    page.get_by_label("Alias").fill(alias)
    page.get_by_label("Expires after").fill("soon")
    page.get_by_role("button", name="Create key").click()
    assert "duration: expected a positive number with a unit" in page.locator("#duration-error").inner_text()
    page.get_by_label("Expires after").fill("30d")
    page.get_by_role("button", name="Create key").click()
    key = page.locator("#new-key").input_value()
    assert key.startswith("sk-")

    def models_with(key: str) -> int:
        return httpx.get(f"{gateway.url}/v1/models", headers={"authorization": f"Bearer {key}"}).status_code

    assert models_with(key) == 200
    page.goto(f"{gateway.url}/ui/keys?team_id={team_id}")
    assert key not in page.content()  # shown once: never again
    assert f"sk-...{key[-4:]}" in page.content()

    page.get_by_role("button", name=f"Rotate sk-...{key[-4:]}").click()
    rotated = page.locator("#new-key").input_value()
    assert rotated.startswith("sk-") and rotated != key
    assert models_with(key) == 401 and models_with(rotated) == 200
    info = api.get("/key/info", params={"key": rotated}).json()["info"]
    assert info["key_alias"] == alias and info["team_id"] == team_id and info["expires"]

    page.get_by_role("button", name=f"Block sk-...{rotated[-4:]}").click()
    assert models_with(rotated) == 401
    page.get_by_role("button", name=f"Unblock sk-...{rotated[-4:]}").click()
    assert models_with(rotated) == 200
    page.get_by_role("button", name=f"Revoke sk-...{rotated[-4:]}").click()
    page.wait_for_url("**/ui/keys")
    assert models_with(rotated) == 401
    assert api.get("/key/list", params={"team_id": team_id}).json()["keys"] == []


def test_delivery_health_per_instance_with_the_last_error_scrubbed(page: Any, gateway: Any, api: httpx.Client,
                                                                   master_key: str) -> None:
    token_ok, token_bad = "acme-ok-" + uuid.uuid4().hex, "acme-bad-" + uuid.uuid4().hex
    good_team, bad_team = uid("deliv-ok"), uid("deliv-bad")
    with HttpReceiver() as receiver:
        receiver.behave("/fail", status=401, body=f"bad token {token_bad}")
        for team_id, url, token in ((good_team, f"{receiver.url}/ok", token_ok),
                                    (bad_team, f"{receiver.url}/fail", token_bad)):
            assert api.post("/team/new", json={"team_id": team_id}).status_code == 200
            assert api.post(f"/team/{team_id}/callback", json={"callback_name": "acme", "callback_vars": {
                "url": url, "api_token": token}}).status_code == 200
            key = api.post("/key/generate", json={"team_id": team_id}).json()["key"]
            answer = httpx.post(f"{gateway.url}/v1/chat/completions",
                                headers={"authorization": f"Bearer {key}"},
                                json={"model": "gpt-mock", "messages": [{"role": "user", "content": "hi"}]})
            assert answer.status_code == 200
        wait_until(lambda: receiver.events_at("/ok"), timeout=10, what="the good team's event")
        stats = gateway.gateway.dispatcher.stats
        wait_until(lambda: any(s["last_error"] for s in stats() if s["callback_name"] == "acme"), timeout=10,
                   what="the failing instance's error")
    log_in(page, gateway, master_key)
    page.goto(f"{gateway.url}/ui/delivery")
    rows = page.get_by_role("row").filter(has_text="acme")
    assert rows.count() >= 2
    texts = rows.all_inner_texts()
    sent = [t for t in texts if "\t1\t" in t or "\t2\t" in t]
    failing = [t for t in texts if "401" in t]
    assert sent, texts
    assert failing, texts
    assert token_bad not in page.content() and token_ok not in page.content()  # scrubbed


def test_plugins_and_pages_not_built_yet(page: Any, gateway: Any, master_key: str) -> None:
    log_in(page, gateway, master_key)
    page.get_by_role("navigation", name="Console sections").get_by_role("link", name="Plugins").click()
    row = page.get_by_role("row").filter(has_text="sluicegate-acme-sink")
    assert "1.2.3" in row.inner_text() and "acme" in row.inner_text()
    for name, built in (("Spend", True), ("Audit trail", True), ("Users", False)):
        page.get_by_role("navigation", name="Console sections").get_by_role("link", name=name).click()
        assert page.get_by_role("heading", level=1).inner_text() == name
        assert ("Not available yet" in page.locator("main").inner_text()) is not built, name
        if name == "Spend":  # the chart, named for screen readers
            assert page.get_by_role("img", name="Spend per day by team").count() == 1
    page.get_by_role("button", name="Log out").click()
    page.wait_for_url("**/ui/login")
    page.goto(f"{gateway.url}/ui/teams")
    assert page.url.endswith("/ui/login")


def test_a_team_admin_sees_only_their_team_and_gets_a_403_page_for_another(page: Any, gateway: Any,
                                                                           api: httpx.Client) -> None:
    """A user who is ``admin`` of one team logs in with their own key: the teams page lists that team only, its
    page offers the GDPR switch, and another team's page is a 403 page (the API's rules, in the browser)."""
    own, other = uid("own"), uid("other")
    for team in (own, other):
        assert api.post("/team/new", json={"team_id": team}).status_code == 200
    made = api.post("/user/new", json={"user_id": uid("admin"), "teams": [{"team_id": own, "user_role": "admin"}]})
    assert made.status_code == 200, made.text
    log_in(page, gateway, made.json()["key"])
    teams = page.locator("main").inner_text()
    assert own in teams and other not in teams
    page.get_by_role("link", name=own).click()
    assert page.get_by_role("heading", level=1).inner_text().endswith(own)
    assert page.get_by_role("button", name="Disable logging").count() == 1
    answer = page.goto(f"{gateway.url}/ui/teams/{other}")
    assert answer is not None and answer.status == 403
    assert other not in page.get_by_role("heading", level=1).inner_text()


# ----------------------------------------------------------------------------------------- accessibility
UNLABELLED = """() => [...document.querySelectorAll('input, select, textarea')]
  .filter(e => e.type !== 'hidden' && e.labels.length === 0 && !e.getAttribute('aria-label'))
  .map(e => e.name || e.id)"""


def test_every_input_is_labelled_pages_have_landmarks_and_the_keyboard_reaches_everything(
        page: Any, gateway: Any, api: httpx.Client, master_key: str) -> None:
    team_id = uid("a11y")
    assert api.post("/team/new", json={"team_id": team_id}).status_code == 200
    page.goto(f"{gateway.url}/ui/login")
    assert page.evaluate(UNLABELLED) == []
    log_in(page, gateway, master_key)
    paths = ["/ui/teams", f"/ui/teams/{team_id}", f"/ui/teams/{team_id}/sinks/new?callback_name=otel",
             "/ui/keys", "/ui/delivery", "/ui/plugins", "/ui/audit", "/ui/spend"]
    for path in paths:
        page.goto(gateway.url + path)
        assert page.evaluate(UNLABELLED) == [], path
        assert page.locator("main").count() == 1 and page.locator("header").count() == 1, path
        assert page.get_by_role("heading", level=1).count() == 1, path
    # Negative control: the check finds an input without a label.
    page.evaluate("() => document.querySelector('main').append(document.createElement('input'))")
    assert page.evaluate(UNLABELLED) == [""]
    # From the top, Tab reaches the skip link first, and Enter on it moves to the main content.
    page.goto(f"{gateway.url}/ui/teams")
    page.keyboard.press("Tab")
    assert page.evaluate("() => document.activeElement.textContent") == "Skip to content"
    page.keyboard.press("Enter")
    assert page.evaluate("() => document.activeElement.id") == "main"
    # Creating a team with the keyboard alone.
    new_team = uid("kbd")
    page.get_by_label("Team id").focus()
    page.keyboard.type(new_team)
    page.keyboard.press("Tab")
    page.keyboard.press("Tab")
    page.keyboard.press("Enter")
    page.wait_for_url(f"**/ui/teams/{new_team}")


WIDER_THAN_SCREEN = """() => [...document.querySelectorAll('body *')]
  .filter(e => e.getBoundingClientRect().right > document.documentElement.clientWidth + 1)
  .filter(e => !e.closest('.table-wrap') || e.classList.contains('table-wrap'))
  .map(e => e.tagName + '#' + e.id + '.' + e.className).slice(0, 8)"""


def test_pages_fit_a_phone_screen(browser: Any, gateway: Any, api: httpx.Client, master_key: str,
                                  tmp_path: Path) -> None:
    team_id = uid("phone")
    assert api.post("/team/new", json={"team_id": team_id, "team_alias": "On a phone"}).status_code == 200
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    try:
        phone = context.new_page()
        log_in(phone, gateway, master_key)
        overflow = "() => document.documentElement.scrollWidth - document.documentElement.clientWidth"
        for path in ("/ui/teams", f"/ui/teams/{team_id}", f"/ui/teams/{team_id}/sinks/new?callback_name=s3",
                     "/ui/keys"):
            phone.goto(gateway.url + path)
            # Wide tables scroll inside their own box; the message names what sticks out.
            assert phone.evaluate(overflow) <= 0, (path, phone.evaluate(WIDER_THAN_SCREEN))
        # Negative control: a page wider than the screen is measured as overflowing.
        phone.evaluate("() => { const d = document.createElement('div'); d.style.width = '2000px'; "
                       "d.textContent = 'x'; document.body.append(d); }")
        assert phone.evaluate(overflow) > 0
    finally:
        context.close()


# ------------------------------------------------------------------------------------------- docs images
def _screenshot(page: Any, name: str, tmp_path: Path) -> None:
    write = os.environ.get("SLUICEGATE_WRITE_SCREENSHOTS") == "1"
    target = (DOCS_IMAGES if write else tmp_path) / name
    target.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(target), full_page=False)
    assert target.stat().st_size > 1000


def test_screenshots_for_the_docs(page: Any, browser: Any, gateway: Any, api: httpx.Client, master_key: str,
                                  tmp_path: Path) -> None:
    team_id = "team-research"
    if api.get("/team/info", params={"team_id": team_id}).status_code == 404:
        assert api.post("/team/new", json={"team_id": team_id, "team_alias": "Research"}).status_code == 200
        assert api.post(f"/team/{team_id}/callback", json={"callback_name": "langfuse", "callback_vars": {
            "langfuse_public_key": "pk-lf-research", "langfuse_secret_key": "sk-lf-research-secret",
            "langfuse_host": "https://langfuse.example.com"}}).status_code == 200
        assert api.post("/key/generate", json={"team_id": team_id, "key_alias": "research-notebooks"}
                        ).status_code == 200
    log_in(page, gateway, master_key)
    page.goto(f"{gateway.url}/ui/teams")
    _screenshot(page, "console-teams.png", tmp_path)
    page.goto(f"{gateway.url}/ui/teams/{team_id}")
    _screenshot(page, "console-team.png", tmp_path)
    page.goto(f"{gateway.url}/ui/teams/{team_id}/sinks/new?callback_name=langfuse")
    _screenshot(page, "console-sink-form.png", tmp_path)
    page.goto(f"{gateway.url}/ui/keys?team_id={team_id}")
    _screenshot(page, "console-keys.png", tmp_path)
    page.goto(f"{gateway.url}/ui/delivery")
    _screenshot(page, "console-delivery.png", tmp_path)
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True)
    try:
        phone = context.new_page()
        log_in(phone, gateway, master_key)
        phone.goto(f"{gateway.url}/ui/teams/{team_id}")
        _screenshot(phone, "console-phone.png", tmp_path)
    finally:
        context.close()
    missing = [name for name in SCREENSHOTS if not (DOCS_IMAGES / name).is_file()]
    assert not missing, f"run with SLUICEGATE_WRITE_SCREENSHOTS=1 and commit docs/images/: {missing}"
