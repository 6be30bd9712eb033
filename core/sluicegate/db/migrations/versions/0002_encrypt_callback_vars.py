"""Encrypt stored callback_vars and add the salt key check.

Adds ``sg_state.secrets_check`` and encrypts the ``callback_vars`` of every stored logging entry (team logging, key
``metadata.logging``) with the box ``Store.migrate`` hands over in ``config.attributes["secrets"]``.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import context, op

from sluicegate.db.crypto import SaltKeyError, SecretBox, open_entries, seal_entries

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# The tables as this revision knows them (not the models, which move on).
_teams = sa.table("sg_teams", sa.column("team_id", sa.String), sa.column("logging", sa.JSON))
_keys = sa.table("sg_keys", sa.column("token_id", sa.String), sa.column("metadata", sa.JSON))
_state = sa.table("sg_state", sa.column("id", sa.Integer), sa.column("secrets_check", sa.Text))


def _box() -> SecretBox | None:
    return context.config.attributes.get("secrets")


def _convert(convert: Any) -> int:
    """Apply ``convert(entries, table, row_id) -> (entries, changed)`` to every stored entry list; rows changed."""
    bind = op.get_bind()
    changed_rows = 0
    for team_id, logging in bind.execute(sa.select(_teams.c.team_id, _teams.c.logging)).all():
        entries, changed = convert(logging, "sg_teams", team_id)
        if changed:
            bind.execute(sa.update(_teams).where(_teams.c.team_id == team_id).values(logging=entries))
            changed_rows += 1
    for token_id, metadata in bind.execute(sa.select(_keys.c.token_id, _keys.c.metadata)).all():
        if not isinstance(metadata, dict) or "logging" not in metadata:
            continue
        entries, changed = convert(metadata["logging"], "sg_keys", token_id)
        if changed:
            bind.execute(sa.update(_keys).where(_keys.c.token_id == token_id)
                         .values(metadata={**metadata, "logging": entries}))
            changed_rows += 1
    return changed_rows


def upgrade() -> None:
    op.add_column("sg_state", sa.Column("secrets_check", sa.Text(), nullable=True))
    box = _box()

    def seal(entries: Any, table: str, row_id: str) -> tuple[Any, bool]:
        try:
            sealed, count = seal_entries(box, entries, table=table, row_id=row_id)
        except SaltKeyError:
            raise SaltKeyError("the database holds plaintext callback_vars to encrypt and no salt key is set: set "
                               "SLUICEGATE_SALT_KEY (or LITELLM_SALT_KEY, or general_settings.master_key)") from None
        return sealed, count > 0

    if _convert(seal) and box is not None:
        op.get_bind().execute(sa.update(_state).where(_state.c.id == 1).values(secrets_check=box.sentinel()))


def downgrade() -> None:
    box = _box()

    def unseal(entries: Any, table: str, row_id: str) -> tuple[Any, bool]:
        opened = open_entries(box, entries, table=table, row_id=row_id)
        return opened, opened != entries

    _convert(unseal)
    with op.batch_alter_table("sg_state") as batch:
        batch.drop_column("secrets_check")
