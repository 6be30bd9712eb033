"""Rate limits on keys and teams.

Adds ``rpm_limit``, ``tpm_limit`` and ``max_parallel_requests`` to ``sg_keys`` and ``sg_teams``, and the per-model
``model_rpm_limit`` / ``model_tpm_limit`` (JSON objects) to ``sg_keys``. All nullable: existing keys and teams
keep having no limits.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_LIMITS = ("rpm_limit", "tpm_limit", "max_parallel_requests")
_MODEL_LIMITS = ("model_rpm_limit", "model_tpm_limit")


def upgrade() -> None:
    with op.batch_alter_table("sg_keys") as batch:
        for name in _LIMITS:
            batch.add_column(sa.Column(name, sa.BigInteger(), nullable=True))
        for name in _MODEL_LIMITS:
            batch.add_column(sa.Column(name, sa.JSON(), nullable=True))
    with op.batch_alter_table("sg_teams") as batch:
        for name in _LIMITS:
            batch.add_column(sa.Column(name, sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("sg_teams") as batch:
        for name in reversed(_LIMITS):
            batch.drop_column(name)
    with op.batch_alter_table("sg_keys") as batch:
        for name in reversed(_MODEL_LIMITS + _LIMITS):
            batch.drop_column(name)
