"""The store: every read and write of teams and keys, on SQLite (default) or PostgreSQL.

Each write that caches depend on bumps ``sg_state.version`` in the same transaction, so every process sharing
the database sees that something changed by polling one integer (see ``sluicegate.changes``).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from importlib.resources import files
from typing import TYPE_CHECKING, Any

import msgspec
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

from sluicegate.db.crypto import (SaltKeyError, SecretBox, box_from_environ, open_entries, seal_entries,
                                  wrong_key_message)
from sluicegate.db.models import DailySpendRow, EndUserRow, KeyRow, StateRow, TeamRow

if TYPE_CHECKING:
    from sluicegate.config import Settings

__all__ = ("BUDGET_TABLES", "EndUserRecord", "KeyRecord", "SaltKeyError", "SpendRow", "Store", "TeamRecord",
           "display_url", "normalise_url")

log = logging.getLogger("sluicegate")


class BudgetFields(msgspec.Struct, frozen=True, kw_only=True):
    """A budget as stored (``spend``: of the current period, as last written; see ``sluicegate.limits``)."""

    max_budget: float | None = None
    soft_budget: float | None = None
    budget_duration: str | None = None
    budget_reset_at: datetime | None = None
    spend: float = 0.0


class TeamRecord(BudgetFields, frozen=True, kw_only=True):
    team_id: str
    team_alias: str | None = None
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    logging: list[dict[str, Any]] | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None


class KeyRecord(BudgetFields, frozen=True, kw_only=True):
    token_id: str
    key_name: str
    key_alias: str | None = None
    team_id: str | None = None
    user_id: str | None = None
    models: list[str] = msgspec.field(default_factory=list)
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    expires: datetime | None = None
    blocked: bool = False
    created_at: datetime | None = None
    updated_at: datetime | None = None


class EndUserRecord(BudgetFields, frozen=True, kw_only=True):
    """An end user (LiteLLM's customer): the ``user`` a request names."""

    user_id: str
    alias: str | None = None
    blocked: bool = False
    created_at: datetime | None = None
    updated_at: datetime | None = None


class SpendRow(msgspec.Struct, frozen=True):
    """One line of ``/spend/report``: one day of one key, team, user, end user, tag or model."""

    day: str
    entity_id: str
    spend: float
    requests: int
    prompt_tokens: int
    completion_tokens: int


BUDGET_TABLES: dict[str, tuple[Any, Any]] = {"key": (KeyRow, KeyRow.token_id), "team": (TeamRow, TeamRow.team_id),
                                             "end_user": (EndUserRow, EndUserRow.user_id)}
"""Entity type -> (table, id column) of the rows that carry a budget's columns (``db.models.BudgetColumns``).
Another table with those columns joins with one line, e.g. ``BUDGET_TABLES["user"] = (UserRow, UserRow.user_id)``:
its ``spend`` is then kept and its budgets reset like the others'."""

_BUDGET_NAMES = ("max_budget", "soft_budget", "budget_duration", "budget_reset_at", "spend")


def _budget(row: Any) -> dict[str, Any]:
    return {"max_budget": row.max_budget, "soft_budget": row.soft_budget, "budget_duration": row.budget_duration,
            "budget_reset_at": _utc(row.budget_reset_at), "spend": float(row.spend or 0.0)}


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
                      **_budget(row))


def _key(row: KeyRow, secrets: SecretBox | None) -> KeyRecord:
    metadata = row.metadata_ or {}
    if "logging" in metadata:
        metadata = {**metadata, "logging": open_entries(secrets, metadata["logging"], table="sg_keys",
                                                        row_id=row.token_id)}
    return KeyRecord(token_id=row.token_id, key_name=row.key_name, key_alias=row.key_alias, team_id=row.team_id,
                     user_id=row.user_id, models=row.models or [], metadata=metadata, expires=_utc(row.expires),
                     blocked=bool(row.blocked), created_at=_utc(row.created_at), updated_at=_utc(row.updated_at),
                     **_budget(row))


def _end_user(row: EndUserRow) -> EndUserRecord:
    return EndUserRecord(user_id=row.user_id, alias=row.alias, blocked=bool(row.blocked),
                         created_at=_utc(row.created_at), updated_at=_utc(row.updated_at), **_budget(row))


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
                          metadata: dict[str, Any] | None = None, **budget: Any) -> TeamRecord:
        async with self._sessions.begin() as session:
            row = TeamRow(team_id=team_id, team_alias=team_alias, metadata_=metadata or {}, logging=None, **budget)
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
    async def _update(self, table: Any, ident: str, values: dict[str, Any]) -> bool:
        """Set ``values`` on one row and bump the change counter, in one transaction; False if no such row."""
        if "metadata" in values:
            values["metadata_"] = values.pop("metadata")
        seal = {TeamRow: _seal_team_values, KeyRow: _seal_key_values}.get(table)
        sealed = seal(self.secrets, ident, values) if seal is not None else 0
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
                               team_id=record.team_id, user_id=record.user_id, models=record.models,
                               metadata_=values["metadata_"], expires=record.expires, blocked=record.blocked,
                               **{name: getattr(record, name) for name in _BUDGET_NAMES}))
            await self._bump(session)
        return await self.get_key(record.token_id)  # type: ignore[return-value]

    async def update_key(self, token_id: str, **values: Any) -> KeyRecord | None:
        return await self.get_key(token_id) if await self._update(KeyRow, token_id, values) else None

    async def delete_keys(self, token_ids: list[str]) -> list[str]:
        return await self._delete(KeyRow.token_id, token_ids)

    # end users ---------------------------------------------------------------------------------------------
    async def get_end_user(self, user_id: str) -> EndUserRecord | None:
        async with self._sessions() as session:
            row = await session.get(EndUserRow, user_id)
            return _end_user(row) if row else None

    async def list_end_users(self, *, offset: int = 0, limit: int | None = None) -> list[EndUserRecord]:
        query = sa.select(EndUserRow).order_by(EndUserRow.created_at, EndUserRow.user_id).offset(offset).limit(limit)
        async with self._sessions() as session:
            return [_end_user(r) for r in (await session.execute(query)).scalars()]

    async def any_end_user_limited(self) -> bool:
        """Whether any end user is blocked or has a budget (else requests need not look theirs up)."""
        query = sa.select(EndUserRow.user_id).where(sa.or_(
            EndUserRow.blocked.is_(True), EndUserRow.max_budget.is_not(None),
            EndUserRow.soft_budget.is_not(None))).limit(1)
        async with self._sessions() as session:
            return (await session.execute(query)).first() is not None

    async def create_end_user(self, user_id: str, **values: Any) -> EndUserRecord:
        async with self._sessions.begin() as session:
            session.add(EndUserRow(user_id=user_id, **values))
            await self._bump(session)
        return await self.get_end_user(user_id)  # type: ignore[return-value]

    async def update_end_user(self, user_id: str, **values: Any) -> EndUserRecord | None:
        return await self.get_end_user(user_id) if await self._update(EndUserRow, user_id, values) else None

    async def delete_end_users(self, user_ids: list[str]) -> list[str]:
        return await self._delete(EndUserRow.user_id, user_ids)

    # spend (written in batches by sluicegate.limits, never per request) ----------------------------------------
    async def write_spend(self, daily: Mapping[tuple[str, str, str], list[float]],
                          period: Mapping[tuple[str, str], float], proxy: float, at: float,
                          durations: Callable[[str], float | None]) -> list[tuple[str, str]]:
        """In one transaction: end the budget periods that are over (``spend`` 0, the next ``budget_reset_at``),
        add ``daily`` ((day, entity type, id) -> [spend, requests, prompt tokens, completion tokens]) to
        ``sg_daily_spend``, ``period`` ((entity type, id) -> USD) to each row's ``spend`` and ``proxy`` to the
        proxy's. Returns the (entity type, id) whose period was ended. ``at``: now (seconds since the epoch);
        ``durations`` turns a ``budget_duration`` into seconds."""
        from sluicegate.limits.budgets import next_reset

        reset: list[tuple[str, str]] = []
        now = datetime.fromtimestamp(at, UTC)
        async with self._sessions.begin() as session:
            for entity_type, (table, column) in sorted(BUDGET_TABLES.items()):
                due = sa.select(column, table.budget_duration, table.budget_reset_at).where(
                    table.budget_duration.is_not(None),
                    sa.or_(table.budget_reset_at.is_(None), table.budget_reset_at <= now)).order_by(column)
                for ident, duration, previous in (await session.execute(due)).all():
                    seconds = durations(duration)
                    previous = _utc(previous)
                    next_at = (datetime.fromtimestamp(next_reset(previous.timestamp() if previous else None,
                                                                 seconds, at), UTC) if seconds else None)
                    # the condition again: a process that ended this period first (and maybe added to the new
                    # one) is not undone; PostgreSQL re-checks it on the row it waited for
                    done = await session.execute(sa.update(table).where(
                        column == ident, sa.or_(table.budget_reset_at.is_(None), table.budget_reset_at <= now))
                        .values(spend=0.0, budget_reset_at=next_at).execution_options(synchronize_session=False))
                    if done.rowcount:
                        reset.append((entity_type, ident))
            if daily:
                rows = [{"day": day, "entity_type": kind, "entity_id": ident, "spend": v[0], "requests": int(v[1]),
                         "prompt_tokens": int(v[2]), "completion_tokens": int(v[3])}
                        for (day, kind, ident), v in sorted(daily.items())]
                core = DailySpendRow.__table__.c
                insert = (sqlite_insert if self.is_sqlite else pg_insert)(DailySpendRow.__table__)
                excluded = insert.excluded
                await session.execute(insert.on_conflict_do_update(
                    index_elements=["day", "entity_type", "entity_id"],
                    set_={"spend": core.spend + excluded.spend, "requests": core.requests + excluded.requests,
                          "prompt_tokens": core.prompt_tokens + excluded.prompt_tokens,
                          "completion_tokens": core.completion_tokens + excluded.completion_tokens}), rows)
            by_table: dict[str, list[dict[str, Any]]] = {}
            # rows in one order in every process: two flushes updating the same rows never deadlock (PostgreSQL)
            for (entity_type, ident), amount in sorted(period.items()):
                by_table.setdefault(entity_type, []).append({"ident": ident, "amount": amount})
            for entity_type, params in sorted(by_table.items()):
                known = BUDGET_TABLES.get(entity_type)
                if known is None:
                    continue
                core_table = known[0].__table__
                id_column = core_table.c[known[1].key]
                await session.execute(sa.update(core_table).where(id_column == sa.bindparam("ident"))
                                      .values(spend=core_table.c.spend + sa.bindparam("amount")), params)
            if proxy:
                await session.execute(sa.update(StateRow).where(StateRow.id == 1)
                                      .values(spend=StateRow.spend + proxy))
        return reset

    async def read_spend(self, entity_type: str, idents: list[str]) -> dict[str, tuple[float, datetime | None]]:
        """(period spend, budget_reset_at) of each of ``idents`` that has a row."""
        known = BUDGET_TABLES.get(entity_type)
        if known is None or not idents:
            return {}
        table, column = known
        found: dict[str, tuple[float, datetime | None]] = {}
        async with self._sessions() as session:
            for start in range(0, len(idents), 500):
                query = sa.select(column, table.spend, table.budget_reset_at).where(
                    column.in_(idents[start:start + 500]))
                for ident, spend, reset_at in (await session.execute(query)).all():
                    found[ident] = (float(spend or 0.0), _utc(reset_at))
        return found

    async def proxy_spend(self) -> tuple[float, datetime | None]:
        """The proxy's period spend (``litellm_settings.max_budget``) and when its period ends."""
        async with self._sessions() as session:
            spend, reset_at = (await session.execute(
                sa.select(StateRow.spend, StateRow.budget_reset_at).where(StateRow.id == 1))).one()
        return float(spend or 0.0), _utc(reset_at)

    async def reset_proxy_spend(self, next_at: datetime | None) -> None:
        async with self._sessions.begin() as session:
            await session.execute(sa.update(StateRow).where(StateRow.id == 1).values(spend=0.0,
                                                                                      budget_reset_at=next_at))

    async def spend_report(self, entity_type: str, start: str, end: str,
                           entity_ids: list[str] | None = None) -> list[SpendRow]:
        """Daily spend of every ``entity_type`` (or of ``entity_ids``) from ``start`` to ``end`` (inclusive,
        ``YYYY-MM-DD``), by day then id."""
        table = DailySpendRow
        query = (sa.select(table.day, table.entity_id, table.spend, table.requests, table.prompt_tokens,
                           table.completion_tokens)
                 .where(table.entity_type == entity_type, table.day >= start, table.day <= end)
                 .order_by(table.day, table.entity_id))
        if entity_ids is not None:
            query = query.where(table.entity_id.in_(entity_ids))
        async with self._sessions() as session:
            return [SpendRow(r[0], r[1], float(r[2]), int(r[3]), int(r[4]), int(r[5]))
                    for r in (await session.execute(query)).all()]


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
