"""User budgets: ``sg_users.budget_reset_at``, and ``sg_users.spend`` kept like every other budget's.

A user's ``budget_duration`` now has a period (``budget_reset_at``: when it ends, None until the next spend write
starts one) and ``spend`` is the spend of that period, added to in batches by ``sluicegate.limits``: it becomes
NOT NULL with 0 for users that had none.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(sa.text("UPDATE sg_users SET spend = 0 WHERE spend IS NULL"))
    with op.batch_alter_table("sg_users") as batch:
        batch.add_column(sa.Column("budget_reset_at", sa.DateTime(timezone=True), nullable=True))
        batch.alter_column("spend", existing_type=sa.Float(), nullable=False, server_default="0")


def downgrade() -> None:
    with op.batch_alter_table("sg_users") as batch:
        batch.alter_column("spend", existing_type=sa.Float(), nullable=True, server_default=None)
        batch.drop_column("budget_reset_at")
