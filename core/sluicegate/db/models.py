"""Tables. Plaintext keys are never stored: a key's id is the sha256 hex of the key. The ``callback_vars`` of
logging entries (``sg_teams.logging``, ``sg_keys.metadata.logging``) are stored encrypted (``db.crypto``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, DateTime, Integer, String, Text, func
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = ("Base", "KeyRow", "StateRow", "TeamRow")


class Base(DeclarativeBase):
    pass


class TeamRow(Base):
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


class KeyRow(Base):
    __tablename__ = "sg_keys"

    token_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    key_name: Mapped[str] = mapped_column(String(32))
    key_alias: Mapped[str | None] = mapped_column(String(255), index=True)
    team_id: Mapped[str | None] = mapped_column(String(255), index=True)
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


class StateRow(Base):
    """A single row whose ``version`` grows on every change that caches depend on."""

    __tablename__ = "sg_state"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    version: Mapped[int] = mapped_column(BigInteger, default=0)
    # A known value encrypted with the salt key of the stored callback_vars (None until one is stored): a wrong
    # key is refused at start-up and on write (see ``sluicegate.db.crypto``).
    secrets_check: Mapped[str | None] = mapped_column(Text, nullable=True)
