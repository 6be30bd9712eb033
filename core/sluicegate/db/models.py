"""Tables. Plaintext keys are never stored: a key's id is the sha256 hex of the key. The ``callback_vars`` of
logging entries (``sg_teams.logging``, ``sg_keys.metadata.logging``) are stored encrypted (``db.crypto``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, DateTime, Float, Index, Integer, String, Text, func
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = ("AuditRow", "Base", "BudgetColumns", "DailySpendRow", "EndUserRow", "KeyRow", "MemberRow", "StateRow",
           "TeamDailySpendRow", "TeamRow", "UserRow")


class Base(DeclarativeBase):
    pass


class BudgetColumns:
    """A budget's columns (LiteLLM's names): ``spend`` is the spend of the current budget period (all time without a
    ``budget_duration``); ``budget_reset_at`` is when the period ends. Written by ``sluicegate.limits`` in batches,
    never per request."""

    max_budget: Mapped[float | None] = mapped_column(Float, nullable=True)
    soft_budget: Mapped[float | None] = mapped_column(Float, nullable=True)
    budget_duration: Mapped[str | None] = mapped_column(String(16), nullable=True)
    budget_reset_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    spend: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")


class TeamRow(BudgetColumns, Base):
    __tablename__ = "sg_teams"

    team_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    team_alias: Mapped[str | None] = mapped_column(String(255))
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    # None: no callbacks set through the API (config/global apply); []: logging disabled; else entries.
    logging: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON, nullable=True)
    # Rate limits (None: no limit): requests and tokens per window, requests in flight.
    rpm_limit: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    tpm_limit: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    max_parallel_requests: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class KeyRow(BudgetColumns, Base):
    __tablename__ = "sg_keys"

    token_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    key_name: Mapped[str] = mapped_column(String(32))
    key_alias: Mapped[str | None] = mapped_column(String(255), index=True)
    team_id: Mapped[str | None] = mapped_column(String(255), index=True)
    user_id: Mapped[str | None] = mapped_column(String(255), index=True)  # the owning user (sg_users), if any
    models: Mapped[list[str]] = mapped_column(JSON, default=list)
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    expires: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    blocked: Mapped[bool] = mapped_column(Boolean, default=False)
    rpm_limit: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    tpm_limit: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    max_parallel_requests: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    # {model name as the client sends it: limit}; None: no per-model limits
    model_rpm_limit: Mapped[dict[str, int] | None] = mapped_column(JSON, nullable=True)
    model_tpm_limit: Mapped[dict[str, int] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class UserRow(Base):
    """A person (or service) that owns keys and belongs to teams. Its budget (the ``BudgetColumns``, with a wider
    ``budget_duration``) and rate limits are enforced on every request of a key the user owns."""

    __tablename__ = "sg_users"

    user_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    user_email: Mapped[str | None] = mapped_column(String(255), index=True)
    user_alias: Mapped[str | None] = mapped_column(String(255))
    user_role: Mapped[str] = mapped_column(String(32), default="internal_user")
    models: Mapped[list[str]] = mapped_column(JSON, default=list)
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    max_budget: Mapped[float | None] = mapped_column(Float, nullable=True)
    soft_budget: Mapped[float | None] = mapped_column(Float, nullable=True)
    budget_duration: Mapped[str | None] = mapped_column(String(32), nullable=True)
    budget_reset_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    spend: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    rpm_limit: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    tpm_limit: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    max_parallel_requests: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class MemberRow(Base):
    """A user's membership of a team, with its role there (``admin`` or ``user``)."""

    __tablename__ = "sg_team_members"

    team_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(255), primary_key=True, index=True)
    role: Mapped[str] = mapped_column(String(16), default="user")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class AuditRow(Base):
    """One change to a team, key, user, membership or logging destination, written in the transaction of the
    change. Values are the API's views of the object (secrets masked); the key that made the change appears by its
    alias, name (``sk-...abcd``) and hash, never in full."""

    __tablename__ = "sg_audit"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
                                    autoincrement=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    changed_by: Mapped[str] = mapped_column(String(255))
    changed_by_api_key: Mapped[str | None] = mapped_column(String(64))
    on_behalf_of: Mapped[str | None] = mapped_column(String(255))  # litellm-changed-by, as the caller wrote it
    action: Mapped[str] = mapped_column(String(32))
    table_name: Mapped[str] = mapped_column(String(32))
    object_id: Mapped[str] = mapped_column(String(512), index=True)
    team_id: Mapped[str | None] = mapped_column(String(255), index=True)
    before_value: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    updated_values: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


class StateRow(Base):
    """A single row whose ``version`` grows on every change that caches depend on."""

    __tablename__ = "sg_state"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version: Mapped[int] = mapped_column(BigInteger, default=0)
    # A known value encrypted with the salt key of the stored callback_vars (None until one is stored): a wrong
    # key is refused at start-up and on write (see ``sluicegate.db.crypto``).
    secrets_check: Mapped[str | None] = mapped_column(Text, nullable=True)
    # litellm_settings.max_budget: the whole proxy's spend in the current period, and when the period ends
    spend: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    budget_reset_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class EndUserRow(BudgetColumns, Base):
    """End users (the request's ``user`` field), LiteLLM's customers: ``/end_user/*`` and ``/customer/*``."""

    __tablename__ = "sg_end_users"

    user_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    alias: Mapped[str | None] = mapped_column(String(255), nullable=True)
    blocked: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class DailySpendRow(Base):
    """Spend per day (UTC, ``YYYY-MM-DD``) of one key, team, user, end user, tag or model (``entity_type``),
    upserted in batches by ``sluicegate.limits.spend``."""

    __tablename__ = "sg_daily_spend"
    __table_args__ = (Index("ix_sg_daily_spend_type_day", "entity_type", "day"),)

    day: Mapped[str] = mapped_column(String(10), primary_key=True)
    entity_type: Mapped[str] = mapped_column(String(16), primary_key=True)
    entity_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    spend: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    requests: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    prompt_tokens: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    completion_tokens: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")


class TeamDailySpendRow(Base):
    """Spend per day of one key, user, end user, tag or model within one team (requests made with the team's keys):
    what a team's admin reads in ``/spend/report``. Upserted with ``sg_daily_spend``, in the same transaction."""

    __tablename__ = "sg_team_daily_spend"

    # the key's order serves the report's query: one team, one entity type, a range of days
    team_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    entity_type: Mapped[str] = mapped_column(String(16), primary_key=True)
    day: Mapped[str] = mapped_column(String(10), primary_key=True)
    entity_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    spend: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    requests: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    prompt_tokens: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    completion_tokens: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
