"""Initial schema: devices, datastores, desired objects, reports, history, metrics.

Revision ID: 0001
Revises:
Create Date: 2025-01-01

Written out in full (not imported from models.py) so that this revision keeps
creating the same schema however the models change later.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Checked at commit, so a device's cascade can remove a volume and the app refs using it.
IN_USE: dict[str, object] = {"deferrable": True, "initially": "DEFERRED"}
KINDS = "kind IN ('volume', 'content_tree', 'blob')"


def _uuid(name: str, **kw: object) -> sa.Column:
    return sa.Column(name, sa.String(36), nullable=False, **kw)


def _ts(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _big(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.BigInteger(), nullable=nullable)


def _rowid() -> sa.Column:
    return sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True,
                     nullable=False)


def _device_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(["device_uuid"], ["devices.uuid"], ondelete="CASCADE",
                                   name=f"fk_{table}_device_uuid_devices")


def upgrade() -> None:
    op.create_table(
        "devices",
        _uuid("uuid"),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("serial", sa.String(255), nullable=False),
        sa.Column("onboard_cert_pem", sa.LargeBinary(), nullable=True),
        sa.Column("onboard_cert_hash", sa.LargeBinary(32), nullable=True),
        sa.Column("device_cert_pem", sa.LargeBinary(), nullable=True),
        sa.Column("device_cert_hash", sa.LargeBinary(32), nullable=True),
        _ts("registered_at", nullable=True),
        _ts("created_at"),
        _ts("last_seen_at", nullable=True),
        _big("config_version"),
        sa.PrimaryKeyConstraint("uuid", name="pk_devices"),
        sa.UniqueConstraint("name", name="uq_devices_name"),
        sa.UniqueConstraint("onboard_cert_hash", "serial", name="uq_devices_onboard_cert_hash_serial"),
        sa.UniqueConstraint("device_cert_hash", name="uq_devices_device_cert_hash"),
    )
    op.create_index("ix_devices_onboard_cert_hash", "devices", ["onboard_cert_hash"])

    op.create_table(
        "datastores",
        _uuid("uuid"),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("type", sa.Integer(), nullable=False),
        sa.Column("fqdn", sa.Text(), nullable=False),
        sa.Column("dpath", sa.Text(), nullable=False),
        sa.Column("api_key", sa.Text(), nullable=False),
        sa.Column("password", sa.Text(), nullable=False),
        sa.Column("region", sa.String(255), nullable=False),
        sa.Column("ca_pems", sa.JSON(), nullable=False),
        _ts("created_at"),
        sa.PrimaryKeyConstraint("uuid", name="pk_datastores"),
        sa.UniqueConstraint("name", name="uq_datastores_name"),
    )

    op.create_table(
        "content_trees",
        _uuid("uuid"),
        _uuid("device_uuid"),
        sa.Column("name", sa.String(255), nullable=False),
        _uuid("datastore_uuid"),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("format", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=True),
        _big("max_size_bytes"),
        _big("generation_count"),
        _ts("created_at"),
        sa.PrimaryKeyConstraint("uuid", name="pk_content_trees"),
        _device_fk("content_trees"),
        sa.ForeignKeyConstraint(["datastore_uuid"], ["datastores.uuid"],
                                name="fk_content_trees_datastore_uuid_datastores"),
        sa.UniqueConstraint("device_uuid", "name", name="uq_content_trees_device_uuid_name"),
        sa.UniqueConstraint("device_uuid", "uuid", name="uq_content_trees_device_uuid_uuid"),
    )
    op.create_index("ix_content_trees_datastore_uuid", "content_trees", ["datastore_uuid"])

    op.create_table(
        "volumes",
        _uuid("uuid"),
        _uuid("device_uuid"),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("origin", sa.String(16), nullable=False),
        sa.Column("content_tree_uuid", sa.String(36), nullable=True),
        _big("max_size_bytes"),
        sa.Column("readonly", sa.Boolean(), nullable=False),
        _big("generation_count"),
        _ts("created_at"),
        sa.PrimaryKeyConstraint("uuid", name="pk_volumes"),
        _device_fk("volumes"),
        sa.ForeignKeyConstraint(["device_uuid", "content_tree_uuid"],
                                ["content_trees.device_uuid", "content_trees.uuid"],
                                name="fk_volumes_device_uuid_content_tree_uuid_content_trees", **IN_USE),
        sa.UniqueConstraint("device_uuid", "name", name="uq_volumes_device_uuid_name"),
        sa.UniqueConstraint("device_uuid", "uuid", name="uq_volumes_device_uuid_uuid"),
        sa.CheckConstraint("(origin = 'blank' AND content_tree_uuid IS NULL) OR "
                           "(origin = 'download' AND content_tree_uuid IS NOT NULL)",
                           name="ck_volumes_origin"),
    )
    op.create_index("ix_volumes_device_uuid_content_tree_uuid", "volumes",
                    ["device_uuid", "content_tree_uuid"])

    op.create_table(
        "apps",
        _uuid("uuid"),
        _uuid("device_uuid"),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("activate", sa.Boolean(), nullable=False),
        _big("purge_counter"),
        _ts("created_at"),
        sa.PrimaryKeyConstraint("uuid", name="pk_apps"),
        _device_fk("apps"),
        sa.UniqueConstraint("device_uuid", "name", name="uq_apps_device_uuid_name"),
        sa.UniqueConstraint("device_uuid", "uuid", name="uq_apps_device_uuid_uuid"),
    )

    op.create_table(
        "app_volume_refs",
        _uuid("app_uuid"),
        sa.Column("position", sa.Integer(), nullable=False),
        _uuid("device_uuid"),
        _uuid("volume_uuid"),
        _big("generation_count"),
        sa.PrimaryKeyConstraint("app_uuid", "position", name="pk_app_volume_refs"),
        sa.ForeignKeyConstraint(["device_uuid", "app_uuid"], ["apps.device_uuid", "apps.uuid"],
                                ondelete="CASCADE", name="fk_app_volume_refs_device_uuid_app_uuid_apps"),
        sa.ForeignKeyConstraint(["device_uuid", "volume_uuid"], ["volumes.device_uuid", "volumes.uuid"],
                                name="fk_app_volume_refs_device_uuid_volume_uuid_volumes", **IN_USE),
    )
    op.create_index("ix_app_volume_refs_device_uuid_volume_uuid", "app_volume_refs",
                    ["device_uuid", "volume_uuid"])

    op.create_table(
        "reported_objects",
        _rowid(),
        _uuid("device_uuid"),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("object_key", sa.String(80), nullable=False),
        _big("generation"),
        sa.Column("display_name", sa.Text(), nullable=False),
        sa.Column("state", sa.Integer(), nullable=False),
        sa.Column("progress", sa.Integer(), nullable=False),
        _big("max_size_bytes", nullable=True),
        _big("cur_size_bytes"),
        _big("ref_count"),
        sa.Column("error", sa.JSON(), nullable=True),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        _ts("updated_at"),
        _ts("reported_at", nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_reported_objects"),
        _device_fk("reported_objects"),
        sa.UniqueConstraint("device_uuid", "kind", "object_key", "generation",
                            name="uq_reported_objects_device_uuid_kind_object_key_generation"),
        sa.CheckConstraint(KINDS, name="ck_reported_objects_kind"),
    )

    op.create_table(
        "state_changes",
        _rowid(),
        _uuid("device_uuid"),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("object_key", sa.String(80), nullable=False),
        _big("generation"),
        sa.Column("state", sa.Integer(), nullable=False),
        _ts("at"),
        sa.PrimaryKeyConstraint("id", name="pk_state_changes"),
        _device_fk("state_changes"),
        sa.CheckConstraint(KINDS, name="ck_state_changes_kind"),
    )
    op.create_index("ix_state_changes_device_uuid_kind_object_key_generation_at", "state_changes",
                    ["device_uuid", "kind", "object_key", "generation", "at"])

    op.create_table(
        "volume_metrics",
        _rowid(),
        _uuid("device_uuid"),
        _uuid("volume_uuid"),
        _ts("at"),
        _big("total_bytes"),
        _big("used_bytes"),
        _big("free_bytes"),
        _big("read_bytes"),
        _big("write_bytes"),
        sa.PrimaryKeyConstraint("id", name="pk_volume_metrics"),
        _device_fk("volume_metrics"),
    )
    op.create_index("ix_volume_metrics_device_uuid_volume_uuid_at", "volume_metrics",
                    ["device_uuid", "volume_uuid", "at"])
    op.create_index("ix_volume_metrics_device_uuid_at", "volume_metrics", ["device_uuid", "at"])


def downgrade() -> None:
    for table in ("volume_metrics", "state_changes", "reported_objects", "app_volume_refs", "apps",
                  "volumes", "content_trees", "datastores", "devices"):
        op.drop_table(table)
