"""Every field of ZMetricVolume is kept: display name and read/write operation counts.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-13

A device's ``ZMetricVolume`` (package org.lfedge.eve.metrics) carries uuid,
displayName, readBytes, writeBytes, readCount, writeCount, totalBytes,
usedBytes and freeBytes. Until now ``volume_metrics`` dropped the name and
the two operation counts. Samples stored before this revision get an empty
name and zero counts, which is what their devices had sent as far as the
controller can tell (edgevol's device does not measure IO yet).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = ("display_name", "read_count", "write_count")


def upgrade() -> None:
    with op.batch_alter_table("volume_metrics") as batch:
        batch.add_column(sa.Column("display_name", sa.Text(), nullable=False, server_default=""))
        batch.add_column(sa.Column("read_count", sa.BigInteger(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("write_count", sa.BigInteger(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("volume_metrics") as batch:
        for column in reversed(COLUMNS):
            batch.drop_column(column)
