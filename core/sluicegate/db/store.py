"""The store: every read and write of teams, keys, users and memberships, on SQLite (default) or PostgreSQL.

Each write that caches depend on bumps ``sg_state.version`` in the same transaction, so every process sharing
the database sees that something changed by polling one integer (see ``sluicegate.changes``). Each write also
appends its audit row (``sg_audit``: who, when, what, before -> after with secrets masked) in that transaction, so
a change is never stored without its record, nor recorded without having happened.
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
from sluicegate.db.models import (AuditRow, DailySpendRow, EndUserRow, KeyRow, MemberRow, StateRow, TeamDailySpendRow,
                                  TeamRow, UserRow)
from sluicegate.sinks.base import MASK

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from sluicegate.config import Settings

__all__ = ("BUDGET_TABLES", "SYSTEM", "Actor", "AuditRecord", "EndUserRecord", "KeyRecord", "MemberRecord",
           "SaltKeyError", "SpendRow", "Store", "TeamRecord", "UserRecord", "display_url", "normalise_url")

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
    rpm_limit: int | None = None
    tpm_limit: int | None = None
    max_parallel_requests: int | None = None
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
    rpm_limit: int | None = None
    tpm_limit: int | None = None
    max_parallel_requests: int | None = None
    model_rpm_limit: dict[str, int] | None = None
    model_tpm_limit: dict[str, int] | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None


# The limit columns of a user an admin sets (``budget_reset_at`` follows from ``budget_duration``).
USER_LIMIT_FIELDS = ("max_budget", "soft_budget", "budget_duration", "spend", "rpm_limit", "tpm_limit",
                     "max_parallel_requests")


class UserRecord(BudgetFields, frozen=True, kw_only=True):
    """A user: their budget is enforced like a key's or a team's on every request of a key they own."""

    user_id: str
    user_email: str | None = None
    user_alias: str | None = None
    user_role: str = "internal_user"
    models: list[str] = msgspec.field(default_factory=list)
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    rpm_limit: int | None = None
    tpm_limit: int | None = None
    max_parallel_requests: int | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None


class EndUserRecord(BudgetFields, frozen=True, kw_only=True):
    """An end user (LiteLLM's customer): the ``user`` a request names."""

    user_id: str
    alias: str | None = None
    blocked: bool = False
    created_at: datetime | None = None
    updated_at: datetime | None = None


class MemberRecord(msgspec.Struct, frozen=True, kw_only=True):
    team_id: str
    user_id: str
    role: str = "user"


class Actor(msgspec.Struct, frozen=True, kw_only=True):
    """Who made a change, as the audit trail names them: a user id, a key alias or name, never a key."""

    changed_by: str
    changed_by_api_key: str | None = None  # the sha256 of the key, as keys are stored
    on_behalf_of: str | None = None  # LiteLLM's litellm-changed-by header: what the caller says, unverified


SYSTEM = Actor(changed_by="system")


class AuditRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One audit row, in LiteLLM's ``AuditLogResponse`` names plus the ``team_id`` it concerns."""

    id: int
    updated_at: datetime
    changed_by: str
    changed_by_api_key: str | None
    on_behalf_of: str | None
    action: str
    table_name: str
    object_id: str
    team_id: str | None
    before_value: dict[str, Any] | None
    updated_values: dict[str, Any] | None


class SpendRow(msgspec.Struct, frozen=True):
    """One line of ``/spend/report``: one day of one key, team, user, end user, tag or model."""

    day: str
    entity_id: str
    spend: float
    requests: int
    prompt_tokens: int
    completion_tokens: int


BUDGET_TABLES: dict[str, tuple[Any, Any]] = {"key": (KeyRow, KeyRow.token_id), "team": (TeamRow, TeamRow.team_id),
                                             "user": (UserRow, UserRow.user_id),
                                             "end_user": (EndUserRow, EndUserRow.user_id)}
"""Entity type -> (table, id column) of the rows that carry a budget's columns (``db.models.BudgetColumns``):
their ``spend`` is kept and their budgets reset by ``sluicegate.limits``."""

_BUDGET_NAMES = ("max_budget", "soft_budget", "budget_duration", "budget_reset_at", "spend")


def _budget(row: Any) -> dict[str, Any]:
    return {"max_budget": row.max_budget, "soft_budget": row.soft_budget, "budget_duration": row.budget_duration,
            "budget_reset_at": _utc(row.budget_reset_at), "spend": float(row.spend or 0.0)}

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
                      **_budget(row), **{name: getattr(row, name) for name in _TEAM_LIMITS})


def _key(row: KeyRow, secrets: SecretBox | None) -> KeyRecord:
    metadata = row.metadata_ or {}
    if "logging" in metadata:
        metadata = {**metadata, "logging": open_entries(secrets, metadata["logging"], table="sg_keys",
                                                        row_id=row.token_id)}
    return KeyRecord(token_id=row.token_id, key_name=row.key_name, key_alias=row.key_alias, team_id=row.team_id,
                     user_id=row.user_id, models=row.models or [], metadata=metadata, expires=_utc(row.expires),
                     blocked=bool(row.blocked), created_at=_utc(row.created_at), updated_at=_utc(row.updated_at),
                     **_budget(row), **{name: getattr(row, name) for name in _KEY_LIMITS})


def _end_user(row: EndUserRow) -> EndUserRecord:
    return EndUserRecord(user_id=row.user_id, alias=row.alias, blocked=bool(row.blocked),
                         created_at=_utc(row.created_at), updated_at=_utc(row.updated_at), **_budget(row))


def _user(row: UserRow) -> UserRecord:
    return UserRecord(user_id=row.user_id, user_email=row.user_email, user_alias=row.user_alias,
                      user_role=row.user_role, models=row.models or [], metadata=row.metadata_ or {},
                      rpm_limit=row.rpm_limit, tpm_limit=row.tpm_limit,
                      max_parallel_requests=row.max_parallel_requests, **_budget(row),
                      created_at=_utc(row.created_at), updated_at=_utc(row.updated_at))


def _audit(row: AuditRow) -> AuditRecord:
    return AuditRecord(id=row.id, updated_at=_utc(row.updated_at), changed_by=row.changed_by,  # type: ignore[arg-type]
                       changed_by_api_key=row.changed_by_api_key, on_behalf_of=row.on_behalf_of,
                       action=row.action, table_name=row.table_name, object_id=row.object_id, team_id=row.team_id, before_value=row.before_value,
                       updated_values=row.updated_values)


def mask_all_vars(entry: Mapping[str, Any]) -> dict[str, Any]:
    """The audit trail's masking when no sink registry is at hand: every variable value masked except
    ``os.environ/`` references (which name a variable, not its value)."""
    data = dict(entry)
    variables = data.get("callback_vars")
    if isinstance(variables, dict):
        data["callback_vars"] = {k: v if isinstance(v, str) and v.startswith("os.environ/") else MASK
                                 for k, v in variables.items()}
    return data


def _fields(record: msgspec.Struct) -> dict[str, Any]:
    """A record as JSON-ready builtins, without its timestamps (the audit row has its own)."""
    data = msgspec.to_builtins(record)
    data.pop("created_at", None)
    data.pop("updated_at", None)
    return data


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

    __slots__ = ("engine", "url", "_sessions", "is_sqlite", "secrets", "mask_entry")

    def __init__(self, url: str, *, secrets: SecretBox | None = None) -> None:
        self.url = normalise_url(url)
        self.is_sqlite = self.url.startswith("sqlite")
        self.secrets = secrets
        # How a logging entry appears in the audit trail; the gateway sets the sinks' own masking (secret fields
        # of each sink's Vars, as the API shows them). The default masks every value.
        self.mask_entry: Callable[[Mapping[str, Any]], dict[str, Any]] = mask_all_vars
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

    # audit snapshots: the objects as the API shows them, secrets masked, timestamps left to the audit row --------
    def _masked(self, entries: Any) -> Any:
        if not isinstance(entries, list):
            return entries
        shown = []
        for entry in entries:
            try:
                shown.append(self.mask_entry(entry))
            except Exception:  # an entry the sink cannot describe: mask every value rather than fail the change
                shown.append(mask_all_vars(entry) if isinstance(entry, dict) else MASK)
        return shown

    def team_snapshot(self, team: TeamRecord, members: list[MemberRecord] | None = None) -> dict[str, Any]:
        """Every field of the record (so columns added later are audited without changes here), logging masked."""
        data = _fields(team)
        data["logging"] = self._masked(team.logging)
        data["logging_disabled"] = team.logging == []
        if members is not None:
            data["members"] = [{"user_id": m.user_id, "role": m.role} for m in members]
        return data

    def key_snapshot(self, key: KeyRecord) -> dict[str, Any]:
        data = _fields(key)
        if "logging" in data["metadata"]:
            data["metadata"] = {**data["metadata"], "logging": self._masked(key.metadata["logging"])}
        return data

    @staticmethod
    def user_snapshot(user: UserRecord) -> dict[str, Any]:
        return _fields(user)

    @staticmethod
    def member_snapshot(member: MemberRecord) -> dict[str, Any]:
        return {"team_id": member.team_id, "user_id": member.user_id, "role": member.role}

    @staticmethod
    def _record(session: Any, actor: Actor | None, action: str, table: str, object_id: str, team_id: str | None,
                before: dict[str, Any] | None, after: dict[str, Any] | None) -> None:
        actor = actor or SYSTEM
        session.add(AuditRow(updated_at=datetime.now(UTC), changed_by=actor.changed_by,
                             changed_by_api_key=actor.changed_by_api_key, on_behalf_of=actor.on_behalf_of,
                             action=action, table_name=table,
                             object_id=object_id, team_id=team_id, before_value=before, updated_values=after))

    async def _members_in(self, session: Any, team_id: str) -> list[MemberRecord]:
        query = sa.select(MemberRow).where(MemberRow.team_id == team_id).order_by(MemberRow.user_id)
        return [MemberRecord(team_id=r.team_id, user_id=r.user_id, role=r.role)
                for r in (await session.execute(query)).scalars()]

    # teams -------------------------------------------------------------------------------------------------
    async def get_team(self, team_id: str) -> TeamRecord | None:
        async with self._sessions() as session:
            row = await session.get(TeamRow, team_id)
            return _team(row, self.secrets) if row else None

    async def list_teams(self, *, offset: int = 0, limit: int | None = None,
                         team_ids: list[str] | None = None) -> list[TeamRecord]:
        """Teams in creation order; ``team_ids`` narrows the listing to those teams (a non-admin's own)."""
        query = sa.select(TeamRow).order_by(TeamRow.created_at, TeamRow.team_id).offset(offset).limit(limit)
        if team_ids is not None:
            query = query.where(TeamRow.team_id.in_(team_ids))
        async with self._sessions() as session:
            return [_team(r, self.secrets) for r in (await session.execute(query)).scalars()]

    async def count_teams(self, *, team_ids: list[str] | None = None) -> int:
        query = sa.select(sa.func.count()).select_from(TeamRow)
        if team_ids is not None:
            query = query.where(TeamRow.team_id.in_(team_ids))
        async with self._sessions() as session:
            return int((await session.execute(query)).scalar_one())

    async def create_team(self, team_id: str, *, team_alias: str | None = None,
                          metadata: dict[str, Any] | None = None, members: Sequence[MemberRecord] = (),
                          new_users: Sequence[UserRecord] = (), actor: Actor | None = None,
                          **budget: Any) -> TeamRecord:
        """Create a team with its first members (creating ``new_users`` first) and its budget, in one
        transaction."""
        async with self._sessions.begin() as session:
            row = TeamRow(team_id=team_id, team_alias=team_alias, metadata_=metadata or {}, logging=None, **budget)
            session.add(row)
            await session.flush()  # a duplicate id fails here, before its audit row is added
            self._record(session, actor, "created", "sg_teams", team_id, team_id, None, self.team_snapshot(
                TeamRecord(team_id=team_id, team_alias=team_alias, metadata=metadata or {})))
            if members:
                self._add_members(session, members, new_users, actor)
                await session.flush()
            await self._bump(session)
        return await self.get_team(team_id)  # type: ignore[return-value]

    async def ensure_team(self, team_id: str, *, actor: Actor | None = None) -> None:
        if await self.get_team(team_id) is None:
            try:
                await self.create_team(team_id, actor=actor)
            except sa.exc.IntegrityError:
                pass  # created concurrently: fine

    async def update_team(self, team_id: str, *, actor: Actor | None = None, action: str = "updated",
                          **values: Any) -> TeamRecord | None:
        """Set ``values`` on the team; ``action`` names the change in the audit trail (``logging_disabled`` ...)."""
        return await self.get_team(team_id) if await self._update(TeamRow, team_id, values, actor, action) else None

    async def delete_teams(self, team_ids: list[str], *, actor: Actor | None = None) -> tuple[list[str], int]:
        """Delete teams, their memberships and every key of theirs in one transaction; returns (deleted team ids,
        keys deleted).

        The keys go with the team: a key left behind would have no team settings to resolve, and a team created
        later under the same id must not inherit keys someone else was given.
        """
        async with self._sessions.begin() as session:
            teams = (await session.execute(sa.select(TeamRow).where(TeamRow.team_id.in_(team_ids))
                                           .with_for_update())).scalars().all()
            for team in teams:
                before = self.team_snapshot(_team(team, self.secrets), await self._members_in(session, team.team_id))
                self._record(session, actor, "deleted", "sg_teams", team.team_id, team.team_id, before, None)
            keys = (await session.execute(sa.select(KeyRow).where(KeyRow.team_id.in_(team_ids))
                                          .with_for_update())).scalars().all()
            for key in keys:
                self._record(session, actor, "deleted", "sg_keys", key.token_id, key.team_id,
                             self.key_snapshot(_key(key, self.secrets)), None)
            await session.execute(sa.delete(MemberRow).where(MemberRow.team_id.in_(team_ids)))
            await session.execute(sa.delete(KeyRow).where(KeyRow.team_id.in_(team_ids)))
            await session.execute(sa.delete(TeamRow).where(TeamRow.team_id.in_(team_ids)))
            await self._bump(session)
        return [t.team_id for t in teams], len(keys)

    # shared by teams and keys ------------------------------------------------------------------------------
    async def _update(self, table: Any, ident: str, values: dict[str, Any],
                      actor: Actor | None = None, action: str = "updated") -> bool:
        """Set ``values`` on one row, record the change and bump the change counter, in one transaction; False if
        no such row."""
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
            audited = table is TeamRow or table is KeyRow  # end users' budgets are not in the audit trail
            before = self._snapshot_row(row) if audited else None
            for name, value in values.items():
                setattr(row, name, value)
            row.updated_at = datetime.now(UTC)
            if audited:
                after = self._snapshot_row(row)
                if table is TeamRow:
                    self._record(session, actor, action, "sg_teams", ident, ident, before, after)
                else:  # a key moved between teams is recorded for each, so both teams' admins see it
                    for team_id in dict.fromkeys((before["team_id"], after["team_id"])):  # type: ignore[index]
                        self._record(session, actor, action, "sg_keys", ident, team_id, before, after)
            await self._bump(session)
        return True

    def _snapshot_row(self, row: TeamRow | KeyRow) -> dict[str, Any]:
        if isinstance(row, TeamRow):
            return self.team_snapshot(_team(row, self.secrets))
        return self.key_snapshot(_key(row, self.secrets))

    # keys --------------------------------------------------------------------------------------------------
    async def get_key(self, token_id: str) -> KeyRecord | None:
        async with self._sessions() as session:
            row = await session.get(KeyRow, token_id)
            return _key(row, self.secrets) if row else None

    @staticmethod
    def _key_filter(query: Any, team_id: str | None, key_aliases: list[str] | None, user_id: str | None,
                    team_ids: list[str] | None) -> Any:
        if team_id is not None:
            query = query.where(KeyRow.team_id == team_id)
        if key_aliases is not None:
            query = query.where(KeyRow.key_alias.in_(key_aliases))
        if user_id is not None and team_ids is not None:  # a user's keys, and the keys of the teams they run
            query = query.where(sa.or_(KeyRow.user_id == user_id, KeyRow.team_id.in_(team_ids)))
        elif user_id is not None:
            query = query.where(KeyRow.user_id == user_id)
        elif team_ids is not None:
            query = query.where(KeyRow.team_id.in_(team_ids))
        return query

    async def list_keys(self, *, team_id: str | None = None, key_aliases: list[str] | None = None, offset: int = 0,
                        limit: int | None = None, user_id: str | None = None,
                        team_ids: list[str] | None = None) -> list[KeyRecord]:
        query = sa.select(KeyRow).order_by(KeyRow.created_at, KeyRow.token_id).offset(offset).limit(limit)
        query = self._key_filter(query, team_id, key_aliases, user_id, team_ids)
        async with self._sessions() as session:
            return [_key(r, self.secrets) for r in (await session.execute(query)).scalars()]

    async def count_keys(self, *, team_id: str | None = None, user_id: str | None = None,
                         team_ids: list[str] | None = None) -> int:
        query = self._key_filter(sa.select(sa.func.count()).select_from(KeyRow), team_id, None, user_id, team_ids)
        async with self._sessions() as session:
            return int((await session.execute(query)).scalar_one())

    async def create_key(self, record: KeyRecord, *, actor: Actor | None = None) -> KeyRecord:
        values: dict[str, Any] = {"metadata_": record.metadata}
        sealed = _seal_key_values(self.secrets, record.token_id, values)
        async with self._sessions.begin() as session:
            if sealed:
                await self._check_secrets_key(session)
            session.add(KeyRow(token_id=record.token_id, key_name=record.key_name, key_alias=record.key_alias,
                               team_id=record.team_id, user_id=record.user_id, models=record.models,
                               metadata_=values["metadata_"], expires=record.expires, blocked=record.blocked,
                               **{name: getattr(record, name) for name in (*_BUDGET_NAMES, *_KEY_LIMITS)}))
            await session.flush()
            self._record(session, actor, "created", "sg_keys", record.token_id, record.team_id, None,
                         self.key_snapshot(record))
            await self._bump(session)
        return await self.get_key(record.token_id)  # type: ignore[return-value]

    async def update_key(self, token_id: str, *, actor: Actor | None = None, **values: Any) -> KeyRecord | None:
        return await self.get_key(token_id) if await self._update(KeyRow, token_id, values, actor) else None

    async def delete_keys(self, token_ids: list[str], *, actor: Actor | None = None) -> list[str]:
        async with self._sessions.begin() as session:
            rows = (await session.execute(sa.select(KeyRow).where(KeyRow.token_id.in_(token_ids))
                                          .with_for_update())).scalars().all()
            for row in rows:
                self._record(session, actor, "deleted", "sg_keys", row.token_id, row.team_id,
                             self.key_snapshot(_key(row, self.secrets)), None)
            await session.execute(sa.delete(KeyRow).where(KeyRow.token_id.in_([r.token_id for r in rows])))
            await self._bump(session)
        return [r.token_id for r in rows]

    # users -------------------------------------------------------------------------------------------------
    async def get_user(self, user_id: str) -> UserRecord | None:
        async with self._sessions() as session:
            row = await session.get(UserRow, user_id)
            return _user(row) if row else None

    async def get_user_by_email(self, email: str) -> UserRecord | None:
        query = sa.select(UserRow).where(UserRow.user_email == email).order_by(UserRow.created_at).limit(1)
        async with self._sessions() as session:
            row = (await session.execute(query)).scalars().first()
            return _user(row) if row else None

    @staticmethod
    def _user_filter(query: Any, role: str | None, user_ids: list[str] | None, team_id: str | None,
                     user_email: str | None) -> Any:
        if role is not None:
            query = query.where(UserRow.user_role == role)
        if user_ids is not None:
            query = query.where(UserRow.user_id.in_(user_ids))
        if user_email is not None:
            query = query.where(UserRow.user_email.contains(user_email, autoescape=True))
        if team_id is not None:
            query = query.where(UserRow.user_id.in_(sa.select(MemberRow.user_id).where(MemberRow.team_id == team_id)))
        return query

    async def list_users(self, *, offset: int = 0, limit: int | None = None, role: str | None = None,
                         user_ids: list[str] | None = None, team_id: str | None = None,
                         user_email: str | None = None) -> list[UserRecord]:
        query = sa.select(UserRow).order_by(UserRow.created_at, UserRow.user_id).offset(offset).limit(limit)
        query = self._user_filter(query, role, user_ids, team_id, user_email)
        async with self._sessions() as session:
            return [_user(r) for r in (await session.execute(query)).scalars()]

    async def count_users(self, *, role: str | None = None, user_ids: list[str] | None = None,
                          team_id: str | None = None, user_email: str | None = None) -> int:
        query = self._user_filter(sa.select(sa.func.count()).select_from(UserRow), role, user_ids, team_id,
                                  user_email)
        async with self._sessions() as session:
            return int((await session.execute(query)).scalar_one())

    def _add_user(self, session: Any, user: UserRecord, actor: Actor | None) -> None:
        session.add(UserRow(user_id=user.user_id, user_email=user.user_email, user_alias=user.user_alias,
                            user_role=user.user_role, models=user.models, metadata_=user.metadata,
                            budget_reset_at=user.budget_reset_at,
                            **{name: getattr(user, name) for name in USER_LIMIT_FIELDS}))
        self._record(session, actor, "created", "sg_users", user.user_id, None, None, self.user_snapshot(user))

    async def create_user(self, user: UserRecord, *, memberships: Sequence[MemberRecord] = (),
                          key: KeyRecord | None = None, actor: Actor | None = None) -> UserRecord:
        """Create a user with its team memberships and, optionally, its first key: all or nothing."""
        async with self._sessions.begin() as session:
            self._add_user(session, user, actor)
            await session.flush()
            for member in memberships:
                session.add(MemberRow(team_id=member.team_id, user_id=member.user_id, role=member.role))
                self._record(session, actor, "member_added", "sg_team_members", f"{member.team_id}/{member.user_id}",
                             member.team_id, None, self.member_snapshot(member))
            if key is not None:
                values: dict[str, Any] = {"metadata_": key.metadata}
                if _seal_key_values(self.secrets, key.token_id, values):
                    await self._check_secrets_key(session)
                session.add(KeyRow(token_id=key.token_id, key_name=key.key_name, key_alias=key.key_alias,
                                   team_id=key.team_id, user_id=key.user_id, models=key.models,
                                   metadata_=values["metadata_"], expires=key.expires, blocked=key.blocked,
                                   **{name: getattr(key, name) for name in (*_BUDGET_NAMES, *_KEY_LIMITS)}))
                self._record(session, actor, "created", "sg_keys", key.token_id, key.team_id, None,
                             self.key_snapshot(key))
            await self._bump(session)
        return await self.get_user(user.user_id)  # type: ignore[return-value]

    async def update_user(self, user_id: str, *, actor: Actor | None = None, **values: Any) -> UserRecord | None:
        if "metadata" in values:
            values["metadata_"] = values.pop("metadata")
        async with self._sessions.begin() as session:
            row = await session.get(UserRow, user_id, with_for_update=not self.is_sqlite)
            if row is None:
                return None
            before = self.user_snapshot(_user(row))
            for name, value in values.items():
                setattr(row, name, value)
            row.updated_at = datetime.now(UTC)
            self._record(session, actor, "updated", "sg_users", user_id, None, before, self.user_snapshot(_user(row)))
            await self._bump(session)
        return await self.get_user(user_id)

    async def delete_users(self, user_ids: list[str], *, actor: Actor | None = None) -> tuple[list[str], int]:
        """Delete users, their memberships and every key they own, in one transaction; (deleted ids, keys deleted).

        A key outliving its owner would keep spending on their behalf with nobody answerable for it.
        """
        async with self._sessions.begin() as session:
            users = (await session.execute(sa.select(UserRow).where(UserRow.user_id.in_(user_ids))
                                           .with_for_update())).scalars().all()
            for user in users:
                self._record(session, actor, "deleted", "sg_users", user.user_id, None,
                             self.user_snapshot(_user(user)), None)
            members = (await session.execute(sa.select(MemberRow).where(MemberRow.user_id.in_(user_ids)))).scalars()
            for m in members.all():
                member = MemberRecord(team_id=m.team_id, user_id=m.user_id, role=m.role)
                self._record(session, actor, "member_removed", "sg_team_members", f"{m.team_id}/{m.user_id}",
                             m.team_id, self.member_snapshot(member), None)
            keys = (await session.execute(sa.select(KeyRow).where(KeyRow.user_id.in_(user_ids))
                                          .with_for_update())).scalars().all()
            for key in keys:
                self._record(session, actor, "deleted", "sg_keys", key.token_id, key.team_id,
                             self.key_snapshot(_key(key, self.secrets)), None)
            await session.execute(sa.delete(MemberRow).where(MemberRow.user_id.in_(user_ids)))
            await session.execute(sa.delete(KeyRow).where(KeyRow.user_id.in_(user_ids)))
            await session.execute(sa.delete(UserRow).where(UserRow.user_id.in_(user_ids)))
            await self._bump(session)
        return [u.user_id for u in users], len(keys)

    # team membership ---------------------------------------------------------------------------------------
    async def memberships(self, *, user_id: str | None = None, team_id: str | None = None) -> list[MemberRecord]:
        query = sa.select(MemberRow).order_by(MemberRow.team_id, MemberRow.user_id)
        if user_id is not None:
            query = query.where(MemberRow.user_id == user_id)
        if team_id is not None:
            query = query.where(MemberRow.team_id == team_id)
        async with self._sessions() as session:
            return [MemberRecord(team_id=r.team_id, user_id=r.user_id, role=r.role)
                    for r in (await session.execute(query)).scalars()]

    async def add_members(self, members: list[MemberRecord], *, new_users: Sequence[UserRecord] = (),
                          actor: Actor | None = None) -> None:
        """Add memberships (creating ``new_users`` first), all in one transaction.

        Raises:
            sqlalchemy.exc.IntegrityError: one of them is a member already (nothing is stored).
        """
        async with self._sessions.begin() as session:
            self._add_members(session, members, new_users, actor)
            await session.flush()
            await self._bump(session)

    def _add_members(self, session: Any, members: Sequence[MemberRecord], new_users: Sequence[UserRecord],
                     actor: Actor | None) -> None:
        for user in new_users:
            self._add_user(session, user, actor)
        for member in members:
            session.add(MemberRow(team_id=member.team_id, user_id=member.user_id, role=member.role))
            self._record(session, actor, "member_added", "sg_team_members", f"{member.team_id}/{member.user_id}",
                         member.team_id, None, self.member_snapshot(member))

    async def update_member(self, team_id: str, user_id: str, role: str, *,
                            actor: Actor | None = None) -> MemberRecord | None:
        async with self._sessions.begin() as session:
            row = await session.get(MemberRow, (team_id, user_id), with_for_update=not self.is_sqlite)
            if row is None:
                return None
            before = MemberRecord(team_id=team_id, user_id=user_id, role=row.role)
            row.role = role
            after = MemberRecord(team_id=team_id, user_id=user_id, role=role)
            self._record(session, actor, "member_updated", "sg_team_members", f"{team_id}/{user_id}", team_id,
                         self.member_snapshot(before), self.member_snapshot(after))
            await self._bump(session)
        return after

    async def delete_member(self, team_id: str, user_id: str, *, actor: Actor | None = None) -> tuple[bool, int]:
        """Remove a user from a team and delete their keys of that team; (was a member, keys deleted).

        The keys go too: someone removed from a team must not keep calling models on the team's account.
        """
        async with self._sessions.begin() as session:
            row = await session.get(MemberRow, (team_id, user_id), with_for_update=not self.is_sqlite)
            if row is None:
                return False, 0
            member = MemberRecord(team_id=team_id, user_id=user_id, role=row.role)
            self._record(session, actor, "member_removed", "sg_team_members", f"{team_id}/{user_id}", team_id,
                         self.member_snapshot(member), None)
            keys = (await session.execute(sa.select(KeyRow).where(KeyRow.team_id == team_id, KeyRow.user_id == user_id)
                                          .with_for_update())).scalars().all()
            for key in keys:
                self._record(session, actor, "deleted", "sg_keys", key.token_id, team_id,
                             self.key_snapshot(_key(key, self.secrets)), None)
            await session.delete(row)
            await session.execute(sa.delete(KeyRow).where(KeyRow.token_id.in_([k.token_id for k in keys])))
            await self._bump(session)
        return True, len(keys)

    # audit -------------------------------------------------------------------------------------------------
    @staticmethod
    def _audit_filter(query: Any, team_ids: list[str] | None, filters: Mapping[str, str | None]) -> Any:
        if team_ids is not None:
            query = query.where(AuditRow.team_id.in_(team_ids))
        for name, value in filters.items():
            if value is not None:
                query = query.where(getattr(AuditRow, name) == value)
        return query

    async def list_audit(self, *, team_ids: list[str] | None = None, offset: int = 0, limit: int | None = None,
                         **filters: str | None) -> list[AuditRecord]:
        """Audit rows, newest first; ``team_ids`` narrows them to those teams' (a team admin's view)."""
        query = sa.select(AuditRow).order_by(AuditRow.id.desc()).offset(offset).limit(limit)
        async with self._sessions() as session:
            rows = (await session.execute(self._audit_filter(query, team_ids, filters))).scalars()
            return [_audit(r) for r in rows]

    async def count_audit(self, *, team_ids: list[str] | None = None, **filters: str | None) -> int:
        query = self._audit_filter(sa.select(sa.func.count()).select_from(AuditRow), team_ids, filters)
        async with self._sessions() as session:
            return int((await session.execute(query)).scalar_one())

    async def get_audit(self, audit_id: int) -> AuditRecord | None:
        async with self._sessions() as session:
            row = await session.get(AuditRow, audit_id)
            return _audit(row) if row else None

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
        async with self._sessions.begin() as session:
            result = await session.execute(sa.delete(EndUserRow).where(EndUserRow.user_id.in_(user_ids))
                                           .returning(EndUserRow.user_id))
            deleted = [r[0] for r in result]
            await self._bump(session)
        return deleted

    # spend (written in batches by sluicegate.limits, never per request) ----------------------------------------
    async def write_spend(self, daily: Mapping[tuple[str, str, str, str], list[float]],
                          period: Mapping[tuple[str, str], float], proxy: float, at: float,
                          durations: Callable[[str], float | None]) -> list[tuple[str, str]]:
        """In one transaction: end the budget periods that are over (``spend`` 0, the next ``budget_reset_at``),
        add ``daily`` ((day, entity type, id, team) -> [spend, requests, prompt tokens, completion tokens]) to
        ``sg_daily_spend`` (team ``""``: all teams) or ``sg_team_daily_spend`` (one team's), ``period`` ((entity type, id) -> USD) to each row's ``spend`` and ``proxy`` to the
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
            everyone = [{"day": day, "entity_type": kind, "entity_id": ident, "spend": v[0], "requests": int(v[1]),
                         "prompt_tokens": int(v[2]), "completion_tokens": int(v[3])}
                        for (day, kind, ident, team), v in sorted(daily.items()) if not team]
            per_team = [{"team_id": team, "entity_type": kind, "day": day, "entity_id": ident, "spend": v[0],
                         "requests": int(v[1]), "prompt_tokens": int(v[2]), "completion_tokens": int(v[3])}
                        for (day, kind, ident, team), v in sorted(daily.items()) if team]
            for table, rows, key_columns in ((DailySpendRow.__table__, everyone, ["day", "entity_type", "entity_id"]),
                                             (TeamDailySpendRow.__table__, per_team,
                                              ["team_id", "entity_type", "day", "entity_id"])):
                if not rows:
                    continue
                core = table.c
                insert = (sqlite_insert if self.is_sqlite else pg_insert)(table)
                excluded = insert.excluded
                await session.execute(insert.on_conflict_do_update(
                    index_elements=key_columns,
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

    async def spend_report(self, entity_type: str, start: str, end: str, entity_ids: list[str] | None = None,
                           team_id: str | None = None) -> list[SpendRow]:
        """Daily spend of every ``entity_type`` (or of ``entity_ids``) from ``start`` to ``end`` (inclusive,
        ``YYYY-MM-DD``), by day then id; with ``team_id``, only what the team's keys spent (``entity_type`` other
        than ``team``)."""
        table: Any = DailySpendRow if team_id is None else TeamDailySpendRow
        query = (sa.select(table.day, table.entity_id, table.spend, table.requests, table.prompt_tokens,
                           table.completion_tokens)
                 .where(table.entity_type == entity_type, table.day >= start, table.day <= end)
                 .order_by(table.day, table.entity_id))
        if team_id is not None:
            query = query.where(table.team_id == team_id)
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
