"""Tables. Plaintext keys are never stored: a key's id is the sha256 hex of the key. The ``callback_vars`` of
logging entries (``sg_teams.logging``, ``sg_keys.metadata.logging``) are stored encrypted (``db.crypto``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, DateTime, Float, Index, Integer, String, Text, func
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = ("Base", "BudgetColumns", "DailySpendRow", "EndUserRow", "KeyRow", "StateRow", "TeamRow")


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
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class KeyRow(BudgetColumns, Base):
    __tablename__ = "sg_keys"

    token_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    key_name: Mapped[str] = mapped_column(String(32))
    key_alias: Mapped[str | None] = mapped_column(String(255), index=True)
    team_id: Mapped[str | None] = mapped_column(String(255), index=True)
    models: Mapped[list[str]] = mapped_column(JSON, default=list)
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    expires: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    blocked: Mapped[bool] = mapped_column(Boolean, default=False)
    user_id: Mapped[str | None] = mapped_column(String(255), index=True, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


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
