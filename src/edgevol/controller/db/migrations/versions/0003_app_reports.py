"""Reports of app instances: kind 'app' in reported_objects and state_changes.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06

A device reports its apps as ``ZInfoMsg{ztype=ZiApp, ainfo=ZInfoApp}``, as
EVE's zedagent does (pkg/pillar/cmd/zedagent/handlemetrics.go,
PublishAppInfoToZedCloud), with the app's state and errors (``appErr``).
They are kept next to the volume, content tree and blob reports, keyed by
the app's uuid. Only the CHECK constraint on ``kind`` changes.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD_KINDS = "kind IN ('volume', 'content_tree', 'blob')"
NEW_KINDS = "kind IN ('volume', 'content_tree', 'blob', 'app')"
TABLES = ("reported_objects", "state_changes")


def _kinds(check: str) -> None:
    for table in TABLES:
        with op.batch_alter_table(table) as batch:
            batch.drop_constraint(f"ck_{table}_kind", type_="check")
            batch.create_check_constraint(f"ck_{table}_kind", check)


def upgrade() -> None:
    _kinds(NEW_KINDS)


def downgrade() -> None:
    """Drops the app reports, which the old constraint would refuse."""
    for table in TABLES:
        op.execute(f"DELETE FROM {table} WHERE kind = 'app'")
    _kinds(OLD_KINDS)
