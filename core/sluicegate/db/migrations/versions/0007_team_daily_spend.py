"""Spend per day within a team: ``sg_team_daily_spend``, what a team's admin reads in ``/spend/report``.

One row per team, entity type (key, user, end user, tag, model), day and entity id, for requests made with the
team's keys. Rows start with the upgrade: spend recorded before it is in ``sg_daily_spend`` only (all teams).

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sg_team_daily_spend",
        sa.Column("team_id", sa.String(255), primary_key=True),
        sa.Column("entity_type", sa.String(16), primary_key=True),
        sa.Column("day", sa.String(10), primary_key=True),
        sa.Column("entity_id", sa.String(255), primary_key=True),
        sa.Column("spend", sa.Float(), nullable=False, server_default="0"),
        sa.Column("requests", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("prompt_tokens", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("completion_tokens", sa.BigInteger(), nullable=False, server_default="0"),
    )


def downgrade() -> None:
    op.drop_table("sg_team_daily_spend")
