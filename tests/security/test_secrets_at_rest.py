"""Secrets at rest: the ``callback_vars`` of stored logging entries are encrypted (AES-GCM under the salt key).

Every test runs on real SQLite and PostgreSQL databases (``db_url``) unless it is about the SQLite file itself, and
reads what is stored with plain SQL, beside the store: what an attacker holding the database file or a dump sees.
Delivery goes through the real ``langfuse`` sink to a loopback receiver, which sees the secret in its Basic auth.
"""

from __future__ import annotations

import base64
import hashlib
import os
import stat
import subprocess
import sys
from collections.abc import Callable
from importlib.resources import files
from typing import Any

import pytest
import sqlalchemy as sa

from sluicegate.config import parse_settings
from sluicegate.db.crypto import SaltKeyError, SecretBox
from sluicegate.db.store import Store
from sluicegate.gateway import Gateway
from sluicegate.testing import HttpReceiver
from sluicegate.testing.gateway import RunningGateway, running_gateway

SALT = "salt-key-one-5f0c2a9e31"
NEW_SALT = "salt-key-two-81d3b7c4e6"
TEAM_SECRET = "sk-lf-team-secret-7e1d9c0a"
KEY_SECRET = "sk-lf-key-secret-2b8a4f61"
OLD_KEY = "sk-written-by-0001-key"
INGEST = "/api/public/otel/v1/traces"
SALT_ENVS = ("SLUICEGATE_SALT_KEY", "LITELLM_SALT_KEY", "SLUICEGATE_NEW_SALT_KEY")


@pytest.fixture(autouse=True)
def _scan_logs_for_the_secrets(register_secret: Callable[[str], str]) -> None:
    for secret in (SALT, NEW_SALT, TEAM_SECRET, KEY_SECRET):
        register_secret(secret)


def on_database(config: dict[str, Any], url: str, **general: Any) -> dict[str, Any]:
    return {**config, "general_settings": {**config["general_settings"], "database_url": url, **general}}


@pytest.fixture
def gateway_config(db_url: str, make_config: Callable[..., dict[str, Any]]) -> dict[str, Any]:
    """A gateway on this test's database (both backends), delivering promptly."""
    return on_database(make_config(), db_url)


def langfuse(receiver: HttpReceiver, public: str, secret: str) -> dict[str, Any]:
    return {"callback_name": "langfuse", "callback_type": "success",
            "callback_vars": {"langfuse_public_key": public, "langfuse_secret_key": secret,
                              "langfuse_host": receiver.url}}


def basic(public: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{public}:{secret}".encode()).decode()


def env_with(**values: str) -> dict[str, str]:
    """The process environment without any salt key, plus ``values``."""
    env = {k: v for k, v in os.environ.items() if k not in SALT_ENVS and k != "DATABASE_URL"}
    env.update(values)
    return env


def stored_text(query_db: Callable[..., list[dict[str, Any]]], url: str) -> str:
    """Everything in the teams and keys tables, as one string."""
    return repr(query_db(url, "SELECT * FROM sg_teams")) + repr(query_db(url, "SELECT * FROM sg_keys"))


async def delivered_with(receiver: HttpReceiver, authorization: str) -> bool:
    return await receiver.wait_for_async(
        lambda: any(r.headers.get("authorization") == authorization for r in receiver.received(INGEST)), timeout=15)


async def store_secrets(gw: RunningGateway, receiver: HttpReceiver) -> str:
    """A team callback and a key's ``metadata.logging``, both carrying a secret, written through the API.

    Returns the key (its own logging overrides the team's).
    """
    assert (await gw.admin("POST", "/team/new", json={"team_id": "t-a"})).status_code == 200
    response = await gw.admin("POST", "/team/t-a/callback", json=langfuse(receiver, "pk-team", TEAM_SECRET))
    assert response.status_code == 200, response.text
    return await gw.new_key(team_id="t-a", metadata={"logging": [langfuse(receiver, "pk-key", KEY_SECRET)]})


async def start_refused(settings_config: dict[str, Any], environ: dict[str, str]) -> SaltKeyError | None:
    """Start a gateway's store the way ``Gateway.start`` does; the error that refused it, or None."""
    gateway = Gateway(parse_settings(dict(settings_config)), environ=environ)
    try:
        await gateway.store.migrate()
    except SaltKeyError as exc:
        return exc
    finally:
        await gateway.store.aclose()
    return None


# ----------------------------------------------------------------------------------------------------------------
async def test_stored_callback_secrets_are_ciphertext_and_still_delivered(gateway_config, receiver, query_db, db_url):
    environ = {"SLUICEGATE_SALT_KEY": SALT}
    async with running_gateway(gateway_config, environ) as gw:
        key = await store_secrets(gw, receiver)
        team_key = await gw.new_key(team_id="t-a")

        stored = stored_text(query_db, db_url)
        assert TEAM_SECRET not in stored and KEY_SECRET not in stored
        assert "pk-team" not in stored and "pk-key" not in stored  # every callback var, not only secret ones
        # control: the rows read are the ones holding the entries, encrypted
        assert stored.count("sg1:") == 2 and "langfuse" in stored

        # what the API shows and what the sinks get is the plaintext, as before
        shown = (await gw.admin("GET", "/team/t-a/callback")).json()["data"]
        assert shown["callback_vars"]["langfuse_public_key"] == "pk-team"
        assert (await gw.chat(team_key, model="mock")).status_code == 200
        assert await delivered_with(receiver, basic("pk-team", TEAM_SECRET)), receiver.requests
        assert (await gw.chat(key, model="mock")).status_code == 200
        assert await delivered_with(receiver, basic("pk-key", KEY_SECRET)), receiver.requests


async def test_a_wrong_salt_key_refuses_start_up_naming_the_setting(gateway_config, receiver, write_config,
                                                                   gateway_process, db_url):
    async with running_gateway(gateway_config, {"LITELLM_SALT_KEY": SALT}) as gw:  # LiteLLM's name is accepted
        await store_secrets(gw, receiver)
    config = write_config(gateway_config)

    refused = subprocess.run([sys.executable, "-m", "sluicegate", "serve", "--config", str(config), "--port", "9"],
                             env=env_with(SLUICEGATE_SALT_KEY=NEW_SALT), capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2, refused.stderr
    (line,) = refused.stderr.strip().splitlines()
    assert line.startswith("sluicegate: cannot start:") and "SLUICEGATE_SALT_KEY" in line, line
    assert "LITELLM_SALT_KEY" in line and NEW_SALT not in line and SALT not in line

    # no salt key at all: the master key it falls back to is not the key either
    missing = await start_refused(gateway_config, {})
    assert missing is not None and "general_settings.master_key does not decrypt" in str(missing)

    # control: the key the secrets were written with starts, under either name
    assert await start_refused(gateway_config, {"SLUICEGATE_SALT_KEY": SALT}) is None
    gateway_process(config, env={"LITELLM_SALT_KEY": SALT, "SLUICEGATE_SALT_KEY": ""})


async def test_a_changed_master_key_refuses_start_up_when_it_was_the_key(gateway_config, receiver, db_url):
    async with running_gateway(gateway_config, {}) as gw:  # no salt key: the master key encrypts
        await store_secrets(gw, receiver)
    assert await start_refused(gateway_config, {}) is None  # control: same master key
    changed = on_database(gateway_config, db_url, master_key="sk-another-master-key-0123")
    refused = await start_refused(changed, {})
    assert refused is not None and "general_settings.master_key" in str(refused)
    assert "SLUICEGATE_SALT_KEY" in str(refused)


async def schema_0001_with_plaintext(url: str, team_entry: dict[str, Any], key_entry: dict[str, Any]) -> None:
    """The database as revision 0001 left it: tables, and logging entries whose callback_vars are plaintext."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(files("sluicegate.db") / "migrations"))
    store = Store(url)

    def upgrade(connection: sa.Connection) -> None:
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, "0001")

    try:
        async with store.engine.begin() as conn:
            await conn.run_sync(upgrade)
            teams = sa.table("sg_teams", sa.column("team_id"), sa.column("logging", sa.JSON),
                             sa.column("metadata", sa.JSON))
            keys = sa.table("sg_keys", sa.column("token_id"), sa.column("key_name"), sa.column("team_id"),
                            sa.column("models", sa.JSON), sa.column("metadata", sa.JSON))
            await conn.execute(sa.insert(teams), [
                {"team_id": "t-a", "metadata": {}, "logging": [team_entry]},
                {"team_id": "t-off", "metadata": {}, "logging": []},
                {"team_id": "t-none", "metadata": {}, "logging": None}])
            await conn.execute(sa.insert(keys), [
                {"token_id": hashlib.sha256(OLD_KEY.encode()).hexdigest(), "key_name": "sk-...0001", "team_id": "t-a",
                 "models": [], "metadata": {"owner": "x", "logging": [key_entry]}}])
    finally:
        await store.aclose()


async def test_the_migration_encrypts_rows_written_in_plaintext(gateway_config, receiver, query_db, db_url):
    team_entry = langfuse(receiver, "pk-team", TEAM_SECRET)
    await schema_0001_with_plaintext(db_url, team_entry, langfuse(receiver, "pk-key", KEY_SECRET))
    before = stored_text(query_db, db_url)
    assert TEAM_SECRET in before and KEY_SECRET in before  # control: written in plaintext, as 0001 did

    async with running_gateway(gateway_config, {"SLUICEGATE_SALT_KEY": SALT}) as gw:
        stored = stored_text(query_db, db_url)
        assert TEAM_SECRET not in stored and KEY_SECRET not in stored and stored.count("sg1:") == 2
        assert "'owner': 'x'" in stored or '"owner": "x"' in stored  # the rest of the key's metadata is kept
        team = await gw.gateway.store.get_team("t-a")
        assert team is not None and team.logging == [team_entry]
        assert (await gw.gateway.store.get_team("t-off")).logging == []  # disabled stays disabled
        assert (await gw.gateway.store.get_team("t-none")).logging is None
        assert (await gw.chat(OLD_KEY, model="mock")).status_code == 200
        assert await delivered_with(receiver, basic("pk-key", KEY_SECRET)), receiver.requests
    assert await start_refused(gateway_config, {"SLUICEGATE_SALT_KEY": NEW_SALT}) is not None


async def test_rotate_salt_key_re_encrypts_and_only_the_new_key_starts(gateway_config, receiver, write_config,
                                                                      query_db, db_url):
    async with running_gateway(gateway_config, {"SLUICEGATE_SALT_KEY": SALT}) as gw:
        key = await store_secrets(gw, receiver)
    config = write_config(gateway_config)
    before = stored_text(query_db, db_url)
    version = query_db(db_url, "SELECT version FROM sg_state")[0]["version"]
    rotate = [sys.executable, "-m", "sluicegate", "rotate-salt-key", "--config", str(config)]

    no_new_key = subprocess.run(rotate, env=env_with(SLUICEGATE_SALT_KEY=SALT), capture_output=True, text=True,
                                timeout=120)
    assert no_new_key.returncode == 2 and "SLUICEGATE_NEW_SALT_KEY" in no_new_key.stderr
    wrong_old_key = subprocess.run(rotate, env=env_with(SLUICEGATE_SALT_KEY="not-the-key-0000",
                                                        SLUICEGATE_NEW_SALT_KEY=NEW_SALT),
                                   capture_output=True, text=True, timeout=120)
    assert wrong_old_key.returncode == 2 and "SLUICEGATE_SALT_KEY" in wrong_old_key.stderr
    assert stored_text(query_db, db_url) == before  # refused: nothing rewritten

    done = subprocess.run(rotate, env=env_with(SLUICEGATE_SALT_KEY=SALT, SLUICEGATE_NEW_SALT_KEY=NEW_SALT),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "re-encrypted 2 callback_vars" in done.stdout and NEW_SALT not in done.stdout + done.stderr
    after = stored_text(query_db, db_url)
    assert after != before and after.count("sg1:") == 2 and TEAM_SECRET not in after and KEY_SECRET not in after
    assert query_db(db_url, "SELECT version FROM sg_state")[0]["version"] > version

    assert await start_refused(gateway_config, {"SLUICEGATE_SALT_KEY": SALT}) is not None
    async with running_gateway(gateway_config, {"SLUICEGATE_SALT_KEY": NEW_SALT}) as gw:
        assert (await gw.gateway.store.get_team("t-a")).logging == [langfuse(receiver, "pk-team", TEAM_SECRET)]
        assert (await gw.chat(key, model="mock")).status_code == 200
        assert await delivered_with(receiver, basic("pk-key", KEY_SECRET)), receiver.requests


async def test_a_ciphertext_copied_to_another_row_does_not_decrypt(gateway_config, receiver, query_db, db_url):
    async with running_gateway(gateway_config, {"SLUICEGATE_SALT_KEY": SALT}) as gw:
        key = await store_secrets(gw, receiver)
        assert (await gw.admin("POST", "/team/new", json={"team_id": "t-b"})).status_code == 200
        other_key = await gw.new_key(team_id="t-b", metadata={"logging": []})
    key_id, other_key_id = (hashlib.sha256(k.encode()).hexdigest() for k in (key, other_key))
    # what someone with write access to the database (not the key) would try: move a team's credentials to theirs
    store = Store(db_url, secrets=SecretBox(SALT))
    try:
        async with store.engine.begin() as conn:
            await conn.execute(sa.text("UPDATE sg_teams SET logging = (SELECT logging FROM sg_teams WHERE team_id = "
                                       "'t-a') WHERE team_id = 't-b'"))
            await conn.execute(sa.text("UPDATE sg_keys SET metadata = (SELECT metadata FROM sg_keys WHERE token_id "
                                       "= :a) WHERE token_id = :b"), {"a": key_id, "b": other_key_id})
        with pytest.raises(SaltKeyError, match="sg_teams row 't-b'"):
            await store.get_team("t-b")
        with pytest.raises(SaltKeyError, match=f"sg_keys row '{other_key_id}'"):
            await store.get_key(other_key_id)
        # control: in the row it was written for, the same ciphertext decrypts
        assert (await store.get_team("t-a")).logging == [langfuse(receiver, "pk-team", TEAM_SECRET)]
    finally:
        await store.aclose()


async def test_storing_secrets_without_any_key_is_refused_naming_the_setting(db_url):
    store = Store(db_url)
    try:
        await store.migrate()
        await store.create_team("t")
        with pytest.raises(SaltKeyError, match="SLUICEGATE_SALT_KEY"):
            await store.update_team("t", logging=[{"callback_name": "langfuse", "callback_vars": {"k": "v"}}])
        assert (await store.get_team("t")).logging is None
        # control: entries without variables hold nothing secret and need no key
        updated = await store.update_team("t", logging=[{"callback_name": "langfuse", "callback_vars": {}}])
        assert updated.logging == [{"callback_name": "langfuse", "callback_vars": {}}]
    finally:
        await store.aclose()


async def test_the_sqlite_file_is_readable_by_its_owner_only(tmp_path, make_config, receiver):
    control = tmp_path / "control.db"
    control.touch()
    assert stat.S_IMODE(control.stat().st_mode) & 0o044, "the umask here would make the database world-readable"

    path = tmp_path / "gateway.db"
    config = on_database(make_config(), f"sqlite+aiosqlite:///{path}")
    async with running_gateway(config, {"SLUICEGATE_SALT_KEY": SALT}) as gw:
        await store_secrets(gw, receiver)
        files_now = sorted(p.name for p in tmp_path.glob("gateway.db*"))
        assert files_now == ["gateway.db", "gateway.db-shm", "gateway.db-wal"]
        assert {name: oct(stat.S_IMODE((tmp_path / name).stat().st_mode)) for name in files_now} == {
            name: "0o600" for name in files_now}

    # a file an earlier version left readable to others is made owner-only at the next start
    path.chmod(0o644)
    async with running_gateway(config, {"SLUICEGATE_SALT_KEY": SALT}):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_rotate_takes_the_new_key_from_the_environment_only():
    done = subprocess.run([sys.executable, "-m", "sluicegate", "rotate-salt-key", "--help"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0 and "SLUICEGATE_NEW_SALT_KEY" in done.stdout
    assert "--new" not in done.stdout and "--key" not in done.stdout
