"""Users, team membership, key owners and the audit trail.

Adds ``sg_users`` (with nullable limit columns the limits module enforces), ``sg_team_members`` and ``sg_audit``
(``sg_keys.user_id`` comes with 0003). Nothing existing changes: keys without a user keep working as before.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sg_users",
        sa.Column("user_id", sa.String(255), primary_key=True),
        sa.Column("user_email", sa.String(255), index=True),
        sa.Column("user_alias", sa.String(255)),
        sa.Column("user_role", sa.String(32), nullable=False, server_default="internal_user"),
        sa.Column("models", sa.JSON()),
        sa.Column("metadata", sa.JSON()),
        sa.Column("max_budget", sa.Float(), nullable=True),
        sa.Column("soft_budget", sa.Float(), nullable=True),
        sa.Column("budget_duration", sa.String(32), nullable=True),
        sa.Column("spend", sa.Float(), nullable=True),
        sa.Column("rpm_limit", sa.BigInteger(), nullable=True),
        sa.Column("tpm_limit", sa.BigInteger(), nullable=True),
        sa.Column("max_parallel_requests", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
    )
    op.create_table(
        "sg_team_members",
        sa.Column("team_id", sa.String(255), primary_key=True),
        sa.Column("user_id", sa.String(255), primary_key=True, index=True),
        sa.Column("role", sa.String(16), nullable=False, server_default="user"),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now()),
    )
    op.create_table(
        "sg_audit",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False, index=True),
        sa.Column("changed_by", sa.String(255), nullable=False),
        sa.Column("changed_by_api_key", sa.String(64)),
        sa.Column("on_behalf_of", sa.String(255)),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("table_name", sa.String(32), nullable=False),
        sa.Column("object_id", sa.String(512), nullable=False, index=True),
        sa.Column("team_id", sa.String(255), index=True),
        sa.Column("before_value", sa.JSON(), nullable=True),
        sa.Column("updated_values", sa.JSON(), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("sg_audit")
    op.drop_table("sg_team_members")
    op.drop_table("sg_users")
