"""The store: every read and write of teams and keys, on SQLite (default) or PostgreSQL.

Each write that caches depend on bumps ``sg_state.version`` in the same transaction, so every process sharing
the database sees that something changed by polling one integer (see ``sluicegate.changes``).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from importlib.resources import files
from typing import Any

import msgspec
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

from sluicegate.db.models import KeyRow, StateRow, TeamRow

__all__ = ("KeyRecord", "Store", "TeamRecord", "display_url", "normalise_url")


class TeamRecord(msgspec.Struct, frozen=True, kw_only=True):
    team_id: str
    team_alias: str | None = None
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    logging: list[dict[str, Any]] | None = None
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
    created_at: datetime | None = None
    updated_at: datetime | None = None


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


def _team(row: TeamRow) -> TeamRecord:
    return TeamRecord(team_id=row.team_id, team_alias=row.team_alias, metadata=row.metadata_ or {},
                      logging=row.logging, created_at=_utc(row.created_at), updated_at=_utc(row.updated_at))


def _key(row: KeyRow) -> KeyRecord:
    return KeyRecord(token_id=row.token_id, key_name=row.key_name, key_alias=row.key_alias, team_id=row.team_id,
                     models=row.models or [], metadata=row.metadata_ or {}, expires=_utc(row.expires),
                     blocked=bool(row.blocked), created_at=_utc(row.created_at), updated_at=_utc(row.updated_at))


class Store:
    __slots__ = ("engine", "url", "_sessions", "is_sqlite")

    def __init__(self, url: str) -> None:
        self.url = normalise_url(url)
        self.is_sqlite = self.url.startswith("sqlite")
        if self.is_sqlite:
            self.engine: AsyncEngine = create_async_engine(self.url, connect_args={"timeout": 30})
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        else:
            self.engine = create_async_engine(self.url, pool_size=10, max_overflow=10, pool_pre_ping=True)
        self._sessions = async_sessionmaker(self.engine, expire_on_commit=False)

    async def migrate(self) -> None:
        """Bring the schema to the newest Alembic revision (idempotent; never drops data)."""
        from alembic import command
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(files("sluicegate.db") / "migrations"))

        def upgrade(connection: sa.Connection) -> None:
            cfg.attributes["connection"] = connection
            command.upgrade(cfg, "head")

        async with self.engine.begin() as conn:
            if not self.is_sqlite:  # replicas starting together migrate one at a time
                await conn.execute(sa.text("SELECT pg_advisory_xact_lock(727274)"))
            await conn.run_sync(upgrade)

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
            return _team(row) if row else None

    async def list_teams(self) -> list[TeamRecord]:
        async with self._sessions() as session:
            rows = (await session.execute(sa.select(TeamRow).order_by(TeamRow.created_at))).scalars()
            return [_team(r) for r in rows]

    async def create_team(self, team_id: str, *, team_alias: str | None = None,
                          metadata: dict[str, Any] | None = None) -> TeamRecord:
        async with self._sessions.begin() as session:
            row = TeamRow(team_id=team_id, team_alias=team_alias, metadata_=metadata or {}, logging=None)
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

    async def delete_teams(self, team_ids: list[str]) -> list[str]:
        return await self._delete(TeamRow.team_id, team_ids)

    # shared by teams and keys ------------------------------------------------------------------------------
    async def _update(self, table: type[TeamRow] | type[KeyRow], ident: str, values: dict[str, Any]) -> bool:
        """Set ``values`` on one row and bump the change counter, in one transaction; False if no such row."""
        if "metadata" in values:
            values["metadata_"] = values.pop("metadata")
        async with self._sessions.begin() as session:
            row = await session.get(table, ident, with_for_update=not self.is_sqlite)
            if row is None:
                return False
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
            return _key(row) if row else None

    async def list_keys(self, *, team_id: str | None = None) -> list[KeyRecord]:
        query = sa.select(KeyRow).order_by(KeyRow.created_at)
        if team_id is not None:
            query = query.where(KeyRow.team_id == team_id)
        async with self._sessions() as session:
            return [_key(r) for r in (await session.execute(query)).scalars()]

    async def create_key(self, record: KeyRecord) -> KeyRecord:
        async with self._sessions.begin() as session:
            session.add(KeyRow(token_id=record.token_id, key_name=record.key_name, key_alias=record.key_alias,
                               team_id=record.team_id, models=record.models, metadata_=record.metadata,
                               expires=record.expires, blocked=record.blocked))
            await self._bump(session)
        return await self.get_key(record.token_id)  # type: ignore[return-value]

    async def update_key(self, token_id: str, **values: Any) -> KeyRecord | None:
        return await self.get_key(token_id) if await self._update(KeyRow, token_id, values) else None

    async def delete_keys(self, token_ids: list[str]) -> list[str]:
        return await self._delete(KeyRow.token_id, token_ids)


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
