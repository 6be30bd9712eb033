"""The store: every read and write of teams and keys, on SQLite (default) or PostgreSQL.

Each write that caches depend on bumps ``sg_state.version`` in the same transaction, so every process sharing
the database sees that something changed by polling one integer (see ``sluicegate.changes``).
"""

from __future__ import annotations

import asyncio
import logging
import os
from datetime import UTC, datetime
from importlib.resources import files
from typing import TYPE_CHECKING, Any

import msgspec
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

from sluicegate.db.crypto import (SaltKeyError, SecretBox, box_from_environ, open_entries, seal_entries,
                                  wrong_key_message)
from sluicegate.db.models import KeyRow, StateRow, TeamRow

if TYPE_CHECKING:
    from collections.abc import Mapping

    from sluicegate.config import Settings

__all__ = ("KeyRecord", "SaltKeyError", "Store", "TeamRecord", "display_url", "normalise_url")

log = logging.getLogger("sluicegate")


class TeamRecord(msgspec.Struct, frozen=True, kw_only=True):
    team_id: str
    team_alias: str | None = None
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    logging: list[dict[str, Any]] | None = None
    rpm_limit: int | None = None
    tpm_limit: int | None = None
    max_parallel_requests: int | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None


class KeyRecord(msgspec.Struct, frozen=True, kw_only=True):
    token_id: str
    key_name: str
    key_alias: str | None = None
    team_id: str | None = None
    models: list[str] = msgspec.field(default_factory=list)
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    expires: datetime | None = None
    blocked: bool = False
    rpm_limit: int | None = None
    tpm_limit: int | None = None
    max_parallel_requests: int | None = None
    model_rpm_limit: dict[str, int] | None = None
    model_tpm_limit: dict[str, int] | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None


_KEY_LIMITS = ("rpm_limit", "tpm_limit", "max_parallel_requests", "model_rpm_limit", "model_tpm_limit")
_TEAM_LIMITS = ("rpm_limit", "tpm_limit", "max_parallel_requests")


def normalise_url(url: str) -> str:
    """Accept plain ``postgresql://`` and ``sqlite://`` URLs and pick the async drivers."""
    parsed = make_url(url)
    driver = {"postgresql": "postgresql+asyncpg", "postgres": "postgresql+asyncpg",
              "sqlite": "sqlite+aiosqlite"}.get(parsed.drivername)
    if driver:
        parsed = parsed.set(drivername=driver)
    return parsed.render_as_string(hide_password=False)


def display_url(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


def _utc(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


# Records hold callback_vars in plaintext, rows hold them encrypted: these four convert (see sluicegate.db.crypto).
def _team(row: TeamRow, secrets: SecretBox | None) -> TeamRecord:
    logging_ = open_entries(secrets, row.logging, table="sg_teams", row_id=row.team_id)
    return TeamRecord(team_id=row.team_id, team_alias=row.team_alias, metadata=row.metadata_ or {},
                      logging=logging_, created_at=_utc(row.created_at), updated_at=_utc(row.updated_at),
                      **{name: getattr(row, name) for name in _TEAM_LIMITS})


def _key(row: KeyRow, secrets: SecretBox | None) -> KeyRecord:
    metadata = row.metadata_ or {}
    if "logging" in metadata:
        metadata = {**metadata, "logging": open_entries(secrets, metadata["logging"], table="sg_keys",
                                                        row_id=row.token_id)}
    return KeyRecord(token_id=row.token_id, key_name=row.key_name, key_alias=row.key_alias, team_id=row.team_id,
                     models=row.models or [], metadata=metadata, expires=_utc(row.expires),
                     blocked=bool(row.blocked), created_at=_utc(row.created_at), updated_at=_utc(row.updated_at),
                     **{name: getattr(row, name) for name in _KEY_LIMITS})


def _seal_team_values(secrets: SecretBox | None, team_id: str, values: dict[str, Any]) -> int:
    """Encrypt ``values["logging"]`` in place (column values of a team row); how many entries were encrypted."""
    if "logging" not in values:
        return 0
    values["logging"], count = seal_entries(secrets, values["logging"], table="sg_teams", row_id=team_id)
    return count


def _seal_key_values(secrets: SecretBox | None, token_id: str, values: dict[str, Any]) -> int:
    """Encrypt ``values["metadata_"]["logging"]`` in place (column values of a key row); entries encrypted."""
    metadata = values.get("metadata_")
    if not isinstance(metadata, dict) or "logging" not in metadata:
        return 0
    entries, count = seal_entries(secrets, metadata["logging"], table="sg_keys", row_id=token_id)
    values["metadata_"] = {**metadata, "logging": entries}
    return count


class Store:
    """Teams and keys in one database. ``secrets`` encrypts the stored ``callback_vars`` (None: no salt key is set,
    and storing any is refused); records going in and out hold them in plaintext."""

    __slots__ = ("engine", "url", "_sessions", "is_sqlite", "secrets")

    def __init__(self, url: str, *, secrets: SecretBox | None = None) -> None:
        self.url = normalise_url(url)
        self.is_sqlite = self.url.startswith("sqlite")
        self.secrets = secrets
        if self.is_sqlite:
            self.engine: AsyncEngine = create_async_engine(self.url, connect_args={"timeout": 30})
            path = _sqlite_path(self.url)
            if path is not None:
                event.listen(self.engine.sync_engine, "do_connect",
                             lambda *_: _make_owner_only(path))  # before SQLite opens (and maybe creates) it
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        else:
            self.engine = create_async_engine(self.url, pool_size=10, max_overflow=10, pool_pre_ping=True)
        self._sessions = async_sessionmaker(self.engine, expire_on_commit=False)

    @classmethod
    def for_settings(cls, settings: Settings, environ: Mapping[str, str] | None = None) -> Store:
        """The store of ``settings``, its salt key from ``SLUICEGATE_SALT_KEY`` / ``LITELLM_SALT_KEY`` in ``environ``
        (default: the process environment), else the master key."""
        secrets = box_from_environ(environ, master_key=settings.general_settings.master_key)
        return cls(settings.database_url, secrets=secrets)

    async def migrate(self) -> None:
        """Bring the schema to the newest Alembic revision (idempotent; never drops data), then make sure the salt
        key opens the stored secrets.

        Raises:
            SaltKeyError: the database holds secrets this store's salt key cannot decrypt (or there are plaintext
                ones to encrypt and no key); the message names the setting.
        """
        from alembic import command
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(files("sluicegate.db") / "migrations"))
        cfg.attributes["secrets"] = self.secrets  # revision 0002 encrypts the plaintext callback_vars with it

        def upgrade(connection: sa.Connection) -> None:
            cfg.attributes["connection"] = connection
            command.upgrade(cfg, "head")

        async with self.engine.begin() as conn:
            if not self.is_sqlite:  # replicas starting together migrate one at a time
                await conn.execute(sa.text("SELECT pg_advisory_xact_lock(727274)"))
            await conn.run_sync(upgrade)
            stored = (await conn.execute(sa.select(StateRow.secrets_check).where(StateRow.id == 1))).scalar_one()
        if stored is not None:
            if self.secrets is None:
                raise SaltKeyError(wrong_key_message(None))
            self.secrets.check(stored)

    async def rotate_secrets(self, new: SecretBox) -> int:
        """Re-encrypt every stored ``callback_vars`` with ``new``, in one transaction; how many were.

        Run it with the gateways stopped: a process still holding the old key has its writes refused afterwards.

        Raises:
            SaltKeyError: this store's (old) key does not open what is stored.
        """
        count = 0
        # Rows are locked (PostgreSQL; SQLite renders no FOR UPDATE and has one writer at a time anyway) so that a
        # concurrent write cannot land between reading a value and writing it back under the new key.
        async with self._sessions.begin() as session:
            state_query = sa.select(StateRow).where(StateRow.id == 1).with_for_update()
            state = (await session.execute(state_query)).scalar_one()
            if state.secrets_check is not None:
                if self.secrets is None:
                    raise SaltKeyError(wrong_key_message(None))
                self.secrets.check(state.secrets_check)
            teams = sa.select(TeamRow).where(TeamRow.logging.is_not(None)).with_for_update()
            for team in (await session.execute(teams)).scalars():
                values = {"logging": open_entries(self.secrets, team.logging, table="sg_teams", row_id=team.team_id)}
                count += _seal_team_values(new, team.team_id, values)
                team.logging = values["logging"]
            for key in (await session.execute(sa.select(KeyRow).with_for_update())).scalars():
                metadata = key.metadata_ or {}
                if "logging" not in metadata:
                    continue
                values = {"metadata_": {**metadata, "logging": open_entries(
                    self.secrets, metadata["logging"], table="sg_keys", row_id=key.token_id)}}
                count += _seal_key_values(new, key.token_id, values)
                key.metadata_ = values["metadata_"]
            state.secrets_check = new.sentinel()
            await self._bump(session)
        self.secrets = new
        return count

    async def _check_secrets_key(self, session: Any) -> None:
        """In a write storing secrets: record this key's check value if none is, else refuse a different key."""
        assert self.secrets is not None  # sealing raised otherwise
        first = await session.execute(sa.update(StateRow).where(StateRow.id == 1, StateRow.secrets_check.is_(None))
                                      .values(secrets_check=self.secrets.sentinel()))
        if first.rowcount == 0:
            stored = (await session.execute(sa.select(StateRow.secrets_check).where(StateRow.id == 1))).scalar_one()
            self.secrets.check(stored)

    async def aclose(self) -> None:
        await self.engine.dispose()

    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(sa.text("SELECT 1"))

    async def version(self) -> int:
        async with self.engine.connect() as conn:
            return int((await conn.execute(sa.select(StateRow.version).where(StateRow.id == 1))).scalar_one())

    @staticmethod
    async def _bump(session: Any) -> None:
        await session.execute(sa.update(StateRow).where(StateRow.id == 1).values(version=StateRow.version + 1))

    # teams -------------------------------------------------------------------------------------------------
    async def get_team(self, team_id: str) -> TeamRecord | None:
        async with self._sessions() as session:
            row = await session.get(TeamRow, team_id)
            return _team(row, self.secrets) if row else None

    async def list_teams(self, *, offset: int = 0, limit: int | None = None) -> list[TeamRecord]:
        query = sa.select(TeamRow).order_by(TeamRow.created_at, TeamRow.team_id).offset(offset).limit(limit)
        async with self._sessions() as session:
            return [_team(r, self.secrets) for r in (await session.execute(query)).scalars()]

    async def count_teams(self) -> int:
        async with self._sessions() as session:
            return int((await session.execute(sa.select(sa.func.count()).select_from(TeamRow))).scalar_one())

    async def create_team(self, team_id: str, *, team_alias: str | None = None,
                          metadata: dict[str, Any] | None = None, **limits: int | None) -> TeamRecord:
        """``limits``: the team's ``rpm_limit``, ``tpm_limit``, ``max_parallel_requests`` (None: no limit)."""
        async with self._sessions.begin() as session:
            row = TeamRow(team_id=team_id, team_alias=team_alias, metadata_=metadata or {}, logging=None, **limits)
            session.add(row)
            await self._bump(session)
        return await self.get_team(team_id)  # type: ignore[return-value]

    async def ensure_team(self, team_id: str) -> None:
        if await self.get_team(team_id) is None:
            try:
                await self.create_team(team_id)
            except sa.exc.IntegrityError:
                pass  # created concurrently: fine

    async def update_team(self, team_id: str, **values: Any) -> TeamRecord | None:
        return await self.get_team(team_id) if await self._update(TeamRow, team_id, values) else None

    async def delete_teams(self, team_ids: list[str]) -> tuple[list[str], int]:
        """Delete teams and every key of theirs in one transaction; returns (deleted team ids, keys deleted).

        The keys go with the team: a key left behind would have no team settings to resolve, and a team created
        later under the same id must not inherit keys someone else was given.
        """
        async with self._sessions.begin() as session:
            result = await session.execute(sa.delete(TeamRow).where(TeamRow.team_id.in_(team_ids))
                                           .returning(TeamRow.team_id))
            deleted = [r[0] for r in result]
            keys = await session.execute(sa.delete(KeyRow).where(KeyRow.team_id.in_(team_ids))
                                         .returning(KeyRow.token_id))
            key_count = len(keys.all())
            await self._bump(session)
        return deleted, key_count

    # shared by teams and keys ------------------------------------------------------------------------------
    async def _update(self, table: type[TeamRow] | type[KeyRow], ident: str, values: dict[str, Any]) -> bool:
        """Set ``values`` on one row and bump the change counter, in one transaction; False if no such row."""
        if "metadata" in values:
            values["metadata_"] = values.pop("metadata")
        seal = _seal_team_values if table is TeamRow else _seal_key_values
        sealed = seal(self.secrets, ident, values)
        async with self._sessions.begin() as session:
            row = await session.get(table, ident, with_for_update=not self.is_sqlite)
            if row is None:
                return False
            if sealed:
                await self._check_secrets_key(session)
            for name, value in values.items():
                setattr(row, name, value)
            row.updated_at = datetime.now(UTC)
            await self._bump(session)
        return True

    async def _delete(self, column: Any, idents: list[str]) -> list[str]:
        async with self._sessions.begin() as session:
            result = await session.execute(sa.delete(column.class_).where(column.in_(idents)).returning(column))
            deleted = [r[0] for r in result]
            await self._bump(session)
        return deleted

    # keys --------------------------------------------------------------------------------------------------
    async def get_key(self, token_id: str) -> KeyRecord | None:
        async with self._sessions() as session:
            row = await session.get(KeyRow, token_id)
            return _key(row, self.secrets) if row else None

    async def list_keys(self, *, team_id: str | None = None, key_aliases: list[str] | None = None, offset: int = 0,
                        limit: int | None = None) -> list[KeyRecord]:
        query = sa.select(KeyRow).order_by(KeyRow.created_at, KeyRow.token_id).offset(offset).limit(limit)
        if team_id is not None:
            query = query.where(KeyRow.team_id == team_id)
        if key_aliases is not None:
            query = query.where(KeyRow.key_alias.in_(key_aliases))
        async with self._sessions() as session:
            return [_key(r, self.secrets) for r in (await session.execute(query)).scalars()]

    async def count_keys(self, *, team_id: str | None = None) -> int:
        query = sa.select(sa.func.count()).select_from(KeyRow)
        if team_id is not None:
            query = query.where(KeyRow.team_id == team_id)
        async with self._sessions() as session:
            return int((await session.execute(query)).scalar_one())

    async def create_key(self, record: KeyRecord) -> KeyRecord:
        values: dict[str, Any] = {"metadata_": record.metadata}
        sealed = _seal_key_values(self.secrets, record.token_id, values)
        async with self._sessions.begin() as session:
            if sealed:
                await self._check_secrets_key(session)
            session.add(KeyRow(token_id=record.token_id, key_name=record.key_name, key_alias=record.key_alias,
                               team_id=record.team_id, models=record.models, metadata_=values["metadata_"],
                               expires=record.expires, blocked=record.blocked,
                               **{name: getattr(record, name) for name in _KEY_LIMITS}))
            await self._bump(session)
        return await self.get_key(record.token_id)  # type: ignore[return-value]

    async def update_key(self, token_id: str, **values: Any) -> KeyRecord | None:
        return await self.get_key(token_id) if await self._update(KeyRow, token_id, values) else None

    async def delete_keys(self, token_ids: list[str]) -> list[str]:
        return await self._delete(KeyRow.token_id, token_ids)


def _sqlite_path(url: str) -> str | None:
    """The file behind a SQLite URL; None for in-memory databases and ``file:`` URIs."""
    database = make_url(url).database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return database


def _make_owner_only(path: str) -> None:
    """Create the SQLite file readable by its owner only before SQLite opens it, or take group and other access
    away from an existing one (SQLite would create it by the umask, typically 0644; its ``-wal`` and ``-shm``
    files take the database file's mode)."""
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        return
    except FileExistsError:
        pass
    for name in (path, f"{path}-wal", f"{path}-shm", f"{path}-journal"):
        try:
            mode = os.stat(name).st_mode & 0o777
            if mode & 0o077:
                os.chmod(name, mode & 0o700)
                log.warning("%s was readable by other users (mode %o): now %o", name, mode, mode & 0o700)
        except FileNotFoundError:
            continue


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


async def _selfcheck(url: str) -> None:  # pragma: no cover - manual
    store = Store(url)
    await store.migrate()
    print(await store.version())
    await store.aclose()


if __name__ == "__main__":  # pragma: no cover
    import sys

    asyncio.run(_selfcheck(sys.argv[1]))
