"""Spend and budgets: the daily spend table, budget columns on keys and teams, end users, the global budget.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def _budget_columns() -> list[sa.Column]:
    return [sa.Column("max_budget", sa.Float(), nullable=True),
            sa.Column("soft_budget", sa.Float(), nullable=True),
            sa.Column("budget_duration", sa.String(16), nullable=True),
            sa.Column("budget_reset_at", sa.DateTime(timezone=True), nullable=True),
            sa.Column("spend", sa.Float(), nullable=False, server_default="0")]


def upgrade() -> None:
    op.create_table(
        "sg_daily_spend",
        sa.Column("day", sa.String(10), primary_key=True),
        sa.Column("entity_type", sa.String(16), primary_key=True),
        sa.Column("entity_id", sa.String(255), primary_key=True),
        sa.Column("spend", sa.Float(), nullable=False, server_default="0"),
        sa.Column("requests", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("prompt_tokens", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("completion_tokens", sa.BigInteger(), nullable=False, server_default="0"),
    )
    op.create_index("ix_sg_daily_spend_type_day", "sg_daily_spend", ["entity_type", "day"])
    op.create_table(
        "sg_end_users",
        sa.Column("user_id", sa.String(255), primary_key=True),
        sa.Column("alias", sa.String(255), nullable=True),
        sa.Column("blocked", sa.Boolean(), nullable=False, server_default=sa.false()),
        *_budget_columns(),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
    )
    with op.batch_alter_table("sg_keys") as batch:
        batch.add_column(sa.Column("user_id", sa.String(255), nullable=True))
        for column in _budget_columns():
            batch.add_column(column)
        batch.create_index("ix_sg_keys_user_id", ["user_id"])
    with op.batch_alter_table("sg_teams") as batch:
        for column in _budget_columns():
            batch.add_column(column)
    with op.batch_alter_table("sg_state") as batch:  # litellm_settings.max_budget: the proxy's own period spend
        batch.add_column(sa.Column("spend", sa.Float(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("budget_reset_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    names = ("max_budget", "soft_budget", "budget_duration", "budget_reset_at", "spend")
    with op.batch_alter_table("sg_state") as batch:
        batch.drop_column("budget_reset_at")
        batch.drop_column("spend")
    with op.batch_alter_table("sg_teams") as batch:
        for name in names:
            batch.drop_column(name)
    with op.batch_alter_table("sg_keys") as batch:
        batch.drop_index("ix_sg_keys_user_id")
        for name in names:
            batch.drop_column(name)
        batch.drop_column("user_id")
    op.drop_table("sg_end_users")
    op.drop_index("ix_sg_daily_spend_type_day", table_name="sg_daily_spend")
    op.drop_table("sg_daily_spend")
