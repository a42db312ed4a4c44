"""Metrics are indexed by time alone, devices by serial; devices keep their config hash.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29

Retention deletes every sample older than the window, across all devices,
from a background thread: without this index each pass would read the whole
table. A batch of devices shares one onboarding certificate, so registering
one by certificate and serial read the whole batch without an index on the
serial. A device's row keeps the hash of its current config, so a config poll
answered 304 builds nothing, in any controller process, even after a restart.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_volume_metrics_at", "volume_metrics", ["at"])
    op.create_index("ix_devices_serial", "devices", ["serial"])
    op.add_column("devices", sa.Column("config_hash", sa.String(64), nullable=True))
    op.add_column("devices", sa.Column("config_hash_key", sa.String(40), nullable=True))


def downgrade() -> None:
    # Not batch mode (see 0006): ALTER TABLE ... DROP COLUMN touches nothing else.
    op.drop_column("devices", "config_hash_key")
    op.drop_column("devices", "config_hash")
    op.drop_index("ix_devices_serial", table_name="devices")
    op.drop_index("ix_volume_metrics_at", table_name="volume_metrics")
