"""Certificates identified as EVE does; attestation state per device.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29

Until 0001 a device or onboarding certificate was identified by sha256 of
its PEM text. EVE's devices send sha256 of the DER form
(pkg/pillar/controllerconn/authen.go, certToSha256) and Adam looks devices
up by that (pkg/driver/file/device_manager_file.go, DeviceCheckCertHash), so
``*_cert_hash`` now holds the DER hash. The old PEM hash moves to
``*_cert_legacy_hash``, so a device that registered under it, and still
names itself by it, keeps working.

``attest_nonce`` and ``integrity_token`` hold the last nonce given out and
the token a config request must carry, ``storage_keys`` the serialized
AttestStorageKeys a device escrowed (as Adam keeps them in its device
options and storage keys, pkg/server/attestation.go), and
``device_ecdh_cert_pem`` the DEVICE_ECDH_EXCHANGE certificate a device sent
in attest CERT, for which datastore credentials are encrypted.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _der_sha256(pem: bytes) -> bytes:
    # Written out here rather than imported, so this revision keeps doing the same thing.
    return hashlib.sha256(x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER)).digest()


def upgrade() -> None:
    with op.batch_alter_table("devices") as batch:
        batch.add_column(sa.Column("onboard_cert_legacy_hash", sa.LargeBinary(32), nullable=True))
        batch.add_column(sa.Column("device_cert_legacy_hash", sa.LargeBinary(32), nullable=True))
        batch.add_column(sa.Column("attest_nonce", sa.LargeBinary(), nullable=True))
        batch.add_column(sa.Column("integrity_token", sa.LargeBinary(), nullable=True))
        batch.add_column(sa.Column("storage_keys", sa.LargeBinary(), nullable=True))
        batch.add_column(sa.Column("device_ecdh_cert_pem", sa.LargeBinary(), nullable=True))
        batch.create_index("ix_devices_onboard_cert_legacy_hash", ["onboard_cert_legacy_hash"])
        batch.create_index("ix_devices_device_cert_legacy_hash", ["device_cert_legacy_hash"])

    devices = sa.table("devices", sa.column("uuid", sa.String), sa.column("onboard_cert_pem", sa.LargeBinary),
                       sa.column("onboard_cert_hash", sa.LargeBinary),
                       sa.column("onboard_cert_legacy_hash", sa.LargeBinary),
                       sa.column("device_cert_pem", sa.LargeBinary), sa.column("device_cert_hash", sa.LargeBinary),
                       sa.column("device_cert_legacy_hash", sa.LargeBinary))
    conn = op.get_bind()
    rows = conn.execute(sa.select(devices.c.uuid, devices.c.onboard_cert_pem, devices.c.onboard_cert_hash,
                                  devices.c.device_cert_pem, devices.c.device_cert_hash)).all()
    for uuid, onboard_pem, onboard_hash, device_pem, device_hash in rows:
        values: dict[str, object] = {}
        if onboard_pem is not None:
            values.update(onboard_cert_hash=_der_sha256(onboard_pem), onboard_cert_legacy_hash=onboard_hash)
        if device_pem is not None:
            values.update(device_cert_hash=_der_sha256(device_pem), device_cert_legacy_hash=device_hash)
        if values:
            conn.execute(sa.update(devices).where(devices.c.uuid == uuid).values(**values))


def downgrade() -> None:
    """Back to PEM hashes, which the stored PEMs give again."""
    devices = sa.table("devices", sa.column("uuid", sa.String), sa.column("onboard_cert_pem", sa.LargeBinary),
                       sa.column("onboard_cert_hash", sa.LargeBinary),
                       sa.column("device_cert_pem", sa.LargeBinary), sa.column("device_cert_hash", sa.LargeBinary))
    conn = op.get_bind()
    for uuid, onboard_pem, device_pem in conn.execute(
            sa.select(devices.c.uuid, devices.c.onboard_cert_pem, devices.c.device_cert_pem)).all():
        conn.execute(sa.update(devices).where(devices.c.uuid == uuid).values(
            onboard_cert_hash=hashlib.sha256(onboard_pem).digest() if onboard_pem is not None else None,
            device_cert_hash=hashlib.sha256(device_pem).digest() if device_pem is not None else None))
    # Not batch mode: on SQLite that copies and drops the devices table, and the drop cascades to every table
    # referencing it (content trees, volumes, reports). ALTER TABLE ... DROP COLUMN touches nothing else.
    op.drop_index("ix_devices_device_cert_legacy_hash", table_name="devices")
    op.drop_index("ix_devices_onboard_cert_legacy_hash", table_name="devices")
    for column in ("device_ecdh_cert_pem", "storage_keys", "integrity_token", "attest_nonce",
                   "device_cert_legacy_hash", "onboard_cert_legacy_hash"):
        op.drop_column("devices", column)
