"""Teams, keys and the change counter.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sg_teams",
        sa.Column("team_id", sa.String(255), primary_key=True),
        sa.Column("team_alias", sa.String(255)),
        sa.Column("metadata", sa.JSON()),
        sa.Column("logging", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
    )
    op.create_table(
        "sg_keys",
        sa.Column("token_id", sa.String(64), primary_key=True),
        sa.Column("key_name", sa.String(32), nullable=False),
        sa.Column("key_alias", sa.String(255), index=True),
        sa.Column("team_id", sa.String(255), index=True),
        sa.Column("models", sa.JSON()),
        sa.Column("metadata", sa.JSON()),
        sa.Column("expires", sa.DateTime(timezone=True)),
        sa.Column("blocked", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
    )
    op.create_table(
        "sg_state",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("version", sa.BigInteger(), nullable=False, server_default="0"),
    )
    op.execute("INSERT INTO sg_state (id, version) VALUES (1, 0)")


def downgrade() -> None:
    op.drop_table("sg_state")
    op.drop_table("sg_keys")
    op.drop_table("sg_teams")
