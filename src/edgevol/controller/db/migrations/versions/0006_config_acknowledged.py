"""Devices remember the config version they acknowledged.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29

A device acknowledges a config by asking for it again with that config's hash
(and getting 304): from then on the controller knows the device runs it. The
console shows this beside the current version, so an operator sees which
devices have not yet taken a change. Devices stored before this revision
have acknowledged nothing yet.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("devices", sa.Column("config_acked_version", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    # Not batch mode: on SQLite that copies and drops the devices table, and the drop would cascade to every
    # table referencing it. ALTER TABLE ... DROP COLUMN (SQLite >= 3.35, PostgreSQL) touches nothing else.
    op.drop_column("devices", "config_acked_version")
