"""``/team/{id}/callback``, ``disable_logging``, ``enable_logging`` and key ``metadata.logging``: shapes (the
seed's, LiteLLM's), validation at write time, masking, and who may call them."""

from __future__ import annotations

import pytest

from sluicegate.sinks.base import MASK

pytestmark = pytest.mark.usefixtures("acme", "clean_env")

SECRET = "acme-secret-3f9a7c1e"


@pytest.fixture(autouse=True)
def _scan_logs_for_the_secret(register_secret):
    register_secret(SECRET)


async def test_add_get_delete_callback_with_seed_shapes(receiver, make_config, start, vars_for):
    async with start(make_config()) as gw:
        assert (await gw.admin("POST", "/team/new", json={"team_id": "t1", "team_alias": "one"})).status_code == 200
        response = await gw.admin("POST", "/team/t1/callback", json={
            "callback_name": "acme", "callback_type": "success", "callback_vars": vars_for("t1", token=SECRET)})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["status"] == "success" and body["data"]["team_id"] == "t1"
        assert SECRET not in response.text
        response = await gw.admin("GET", "/team/t1/callback")
        data = response.json()["data"]
        assert data["team_id"] == "t1"
        assert data["success_callbacks"] == ["acme"] and data["failure_callbacks"] == []
        assert data["callback_vars"]["api_token"] == MASK and data["callback_vars"]["url"].endswith("/dest/t1")
        assert SECRET not in response.text
        duplicate = await gw.admin("POST", "/team/t1/callback", json={
            "callback_name": "acme", "callback_type": "success", "callback_vars": vars_for("t1b")})
        assert duplicate.status_code == 400 and duplicate.json()["error"]["param"] == "callback_name"
        other_type = await gw.admin("POST", "/team/t1/callback", json={
            "callback_name": "acme", "callback_type": "failure", "callback_vars": vars_for("t1f")})
        assert other_type.status_code == 200
        response = await gw.admin("DELETE", "/team/t1/callback/acme")
        assert response.status_code == 200 and response.json()["data"]["logging"] is None
        missing = await gw.admin("DELETE", "/team/t1/callback/acme")
        assert missing.status_code == 404


async def test_callback_type_defaults_to_success_and_failure(make_config, start, vars_for):
    async with start(make_config()) as gw:
        await gw.admin("POST", "/team/new", json={"team_id": "t"})
        await gw.admin("POST", "/team/t/callback", json={"callback_name": "acme", "callback_vars": vars_for("t")})
        data = (await gw.admin("GET", "/team/t/callback")).json()["data"]
        assert data["success_callbacks"] == ["acme"] and data["failure_callbacks"] == ["acme"]


@pytest.mark.parametrize(("body", "status", "param", "says"), [
    ({"callback_name": "nope", "callback_vars": {}}, 400, "callback_name", "installed sinks: acme"),
    ({"callback_name": "acme", "callback_vars": {"url": "http://x"}}, 422, "callback_vars.api_token", "required"),
    ({"callback_name": "acme", "callback_vars": {"url": "http://x", "api_token": "t", "colour": "red"}}, 422,
     "callback_vars.colour", "unknown variable"),
    ({"callback_name": "acme", "callback_vars": {"url": "http://x", "api_tokn": "t"}}, 422,
     "callback_vars.api_tokn", "did you mean 'api_token'"),
    ({"callback_name": "acme", "callback_vars": {"url": "http://x", "api_token": "t", "batch_size": "many"}}, 422,
     "callback_vars.batch_size", "Expected `int`"),
    ({"callback_name": "acme", "callback_vars": {"url": "ftp://x", "api_token": "t"}}, 422, "callback_vars.url",
     "http(s) URL"),
    ({"callback_name": "acme", "callback_vars": {"url": "http://x", "api_token": MASK}}, 422,
     "callback_vars.api_token", "masked placeholder"),
    ({"callback_name": "acme", "callback_vars": {"url": "http://x", "api_token": "os.environ/SG_NOT_SET_X"}}, 422,
     "callback_vars.api_token", "allowed_env_refs"),
    ({"callback_name": "acme", "callback_type": "sometimes", "callback_vars": {}}, 422, "callback_type", "Invalid enum"),
    ({"callback_vars": {}}, 422, "callback_name", "required"),
])
async def test_bad_callbacks_are_refused_naming_the_field(make_config, start, body, status, param, says):
    async with start(make_config()) as gw:
        await gw.admin("POST", "/team/new", json={"team_id": "t"})
        response = await gw.admin("POST", "/team/t/callback", json=body)
        assert response.status_code == status, response.text
        error = response.json()["error"]
        assert error["param"] == param and says in error["message"]
        assert (await gw.admin("GET", "/team/t/callback")).json()["data"]["source"] == "global"  # nothing stored


async def test_reposting_the_masked_get_payload_is_refused(make_config, start, vars_for):
    async with start(make_config()) as gw:
        await gw.admin("POST", "/team/new", json={"team_id": "t"})
        await gw.admin("POST", "/team/t/callback", json={
            "callback_name": "acme", "callback_type": "success", "callback_vars": vars_for("t", token=SECRET)})
        shown = (await gw.admin("GET", "/team/t/callback")).json()["data"]["callbacks"][0]
        await gw.admin("DELETE", "/team/t/callback/acme")
        response = await gw.admin("POST", "/team/t/callback", json=shown)
        assert response.status_code == 422 and "masked" in response.json()["error"]["message"]


async def test_env_references_are_stored_as_written_and_resolved_for_delivery(
        receiver, make_config, start, monkeypatch):
    monkeypatch.setenv("SG_TEST_ACME_TOKEN", SECRET)
    cfg = make_config()
    cfg["sluicegate_settings"]["allowed_env_refs"] = ["SG_TEST_*"]
    async with start(cfg) as gw:
        await gw.admin("POST", "/team/new", json={"team_id": "t"})
        response = await gw.admin("POST", "/team/t/callback", json={"callback_name": "acme", "callback_vars": {
            "url": f"{receiver.url}/dest/env", "api_token": "os.environ/SG_TEST_ACME_TOKEN"}})
        assert response.status_code == 200, response.text
        shown = (await gw.admin("GET", "/team/t/callback")).json()["data"]
        assert shown["callback_vars"]["api_token"] == "os.environ/SG_TEST_ACME_TOKEN"
        key = await gw.new_key(team_id="t")
        assert (await gw.chat(key)).status_code == 200
        assert await receiver.wait_for_async(lambda: len(receiver.events_at("/dest/env")) == 1)
        assert receiver.received("/dest/env")[0].headers["authorization"] == f"Bearer {SECRET}"


async def test_plugin_resolver_hook_runs_before_env(receiver, make_config, start):
    async with start(make_config()) as gw:
        key = await gw.new_key(metadata={"logging": [{"callback_name": "acme", "callback_vars": {
            "url": f"{receiver.url}/dest/vault", "api_token": "acme-vault:abc"}}]})
        assert (await gw.chat(key)).status_code == 200
        assert await receiver.wait_for_async(lambda: len(receiver.events_at("/dest/vault")) == 1)
        assert receiver.received("/dest/vault")[0].headers["authorization"] == "Bearer vault-abc"


async def test_unknown_team_is_404_and_config_teams_exist(make_config, start, vars_for):
    cfg = make_config(litellm={"default_team_settings": [
        {"team_id": "from-config", "success_callback": ["acme"], **vars_for("cfg")}]})
    async with start(cfg) as gw:
        assert (await gw.admin("POST", "/team/ghost/callback", json={
            "callback_name": "acme", "callback_vars": vars_for("g")})).status_code == 404
        assert (await gw.admin("POST", "/team/ghost/disable_logging")).status_code == 404
        data = (await gw.admin("GET", "/team/from-config/callback")).json()["data"]
        assert data["source"] == "team_config" and data["success_callbacks"] == ["acme"]
        assert data["callback_vars"]["api_token"] == MASK
        assert (await gw.admin("POST", "/team/from-config/disable_logging")).status_code == 200


async def test_virtual_keys_cannot_touch_team_callbacks(make_config, start, vars_for):
    async with start(make_config()) as gw:
        await gw.admin("POST", "/team/new", json={"team_id": "t"})
        key = await gw.new_key(team_id="t")
        headers = {"Authorization": f"Bearer {key}"}
        for method, path, body in [("POST", "/team/t/callback", {"callback_name": "acme",
                                                                 "callback_vars": vars_for("t")}),
                                   ("GET", "/team/t/callback", None), ("POST", "/team/t/disable_logging", None),
                                   ("DELETE", "/team/t/callback/acme", None), ("POST", "/key/generate", {})]:
            response = await gw.client.request(method, path, headers=headers, json=body)
            assert response.status_code == 403, (path, response.text)
            assert response.json()["error"]["type"] == "permission_error"
        assert (await gw.client.get("/team/t/callback")).status_code == 401


async def test_key_logging_is_validated_and_masked(make_config, start, vars_for):
    async with start(make_config()) as gw:
        response = await gw.admin("POST", "/key/generate", json={"metadata": {"logging": [
            {"callback_name": "acme", "callback_vars": {"url": "http://x"}}]}})
        assert response.status_code == 422
        assert response.json()["error"]["param"] == "metadata.logging[0].callback_vars.api_token"
        response = await gw.admin("POST", "/key/generate", json={"metadata": {"logging": [
            {"callback_name": "acme", "callback_vars": vars_for("k", token=SECRET)}]}})
        assert response.status_code == 200 and SECRET not in response.text
        logging = response.json()["metadata"]["logging"]
        assert logging[0]["callback_vars"]["api_token"] == MASK
        info = await gw.admin("GET", f"/key/info?key={response.json()['key']}")
        assert SECRET not in info.text


async def test_seed_datadog_style_redaction_override_is_accepted(make_config, start):
    """The seed's ``/key/generate`` body (``turn_off_message_logging: false`` as the only var) round-trips."""
    async with start(make_config(litellm={"turn_off_message_logging": True})) as gw:
        response = await gw.admin("POST", "/key/generate", json={"metadata": {"logging": [
            {"callback_name": "file", "callback_vars": {"path": "sg-seed.jsonl",
                                                        "turn_off_message_logging": False}}]}})
        assert response.status_code == 200, response.text
        entry = response.json()["metadata"]["logging"][0]
        assert entry["callback_vars"]["turn_off_message_logging"] is False
        assert len(response.json()["token_id"]) == 64 and response.json()["key"].startswith("sk-")


async def test_team_update_changes_alias_and_metadata_but_not_logging(make_config, start):
    async with start(make_config()) as gw:
        await gw.admin("POST", "/team/new", json={"team_id": "t", "team_alias": "old"})
        response = await gw.admin("POST", "/team/update", json={"team_id": "t", "team_alias": "new",
                                                                "metadata": {"cache": False}})
        assert response.status_code == 200, response.text
        info = (await gw.admin("GET", "/team/info?team_id=t")).json()["team_info"]
        assert info["team_alias"] == "new" and info["metadata"] == {"cache": False}
        refused = await gw.admin("POST", "/team/update", json={"team_id": "t", "metadata": {"logging": []}})
        assert refused.status_code == 422 and refused.json()["error"]["param"] == "metadata.logging"
        assert (await gw.admin("POST", "/team/update", json={"team_id": "ghost"})).status_code == 404
        key = await gw.new_key(team_id="t")
        denied = await gw.client.post("/team/update", json={"team_id": "t"}, headers={"Authorization": f"Bearer {key}"})
        assert denied.status_code == 403
