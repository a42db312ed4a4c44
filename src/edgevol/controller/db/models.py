"""The controller's tables as SQLAlchemy 2 declarative models.

Why the constraints matter: the database, not only the store code, keeps the
picture consistent. Deleting a device cascades to everything it owns; a
content tree, volume or datastore still in use cannot vanish under its user
(NO ACTION foreign keys; those between a device's own objects are deferred to
commit so the device's cascade can remove both); composite foreign keys keep a volume's content tree
and an app's volumes on the same device.

``versions/0001_initial.py`` creates exactly this schema; a test compares the two.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

# Stable constraint names, so later migrations can alter them on any database.
NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

UUID_LEN = 36
NAME_LEN = 255
KINDS = ("volume", "content_tree", "blob", "app")
# "In use" references between a device's own objects are checked at commit: PostgreSQL
# checks a NO ACTION key while a device's cascade is still half done, and would refuse
# to delete a device whose app uses its volume. Outside a cascade they still refuse.
IN_USE: dict[str, Any] = {"deferrable": True, "initially": "DEFERRED"}
# An integer primary key that is SQLite's rowid (BIGINT would not be) and 64-bit on PostgreSQL.
RowId = BigInteger().with_variant(Integer, "sqlite")


class UTCDateTime(TypeDecorator[datetime]):
    """Timestamps are always timezone-aware UTC in Python, whatever the database keeps.

    SQLite has no time zones, so it stores naive UTC; PostgreSQL stores
    ``timestamptz``. Either way callers get back what they put in.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: the controller stores UTC only")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: JSON, list[str]: JSON}


def _device_fk() -> Any:
    return ForeignKey("devices.uuid", ondelete="CASCADE")


class Device(Base):
    __tablename__ = "devices"
    __table_args__ = (
        UniqueConstraint("onboard_cert_hash", "serial"),
        # register finds a device by serial among a batch sharing one onboarding certificate (migration 0007)
        Index(None, "serial"),
    )

    uuid: Mapped[str] = mapped_column(String(UUID_LEN), primary_key=True)
    name: Mapped[str] = mapped_column(String(NAME_LEN), unique=True)
    serial: Mapped[str] = mapped_column(String(NAME_LEN), default="")
    onboard_cert_pem: Mapped[bytes | None] = mapped_column(LargeBinary)
    # sha256 of the DER form (how EVE names a certificate); *_legacy_hash: sha256 of the PEM
    # text, how edgevol named it before migration 0002, still accepted from older devices.
    onboard_cert_hash: Mapped[bytes | None] = mapped_column(LargeBinary(32), index=True)
    onboard_cert_legacy_hash: Mapped[bytes | None] = mapped_column(LargeBinary(32), index=True)
    device_cert_pem: Mapped[bytes | None] = mapped_column(LargeBinary)
    device_cert_hash: Mapped[bytes | None] = mapped_column(LargeBinary(32), unique=True)
    device_cert_legacy_hash: Mapped[bytes | None] = mapped_column(LargeBinary(32), index=True)
    attest_nonce: Mapped[bytes | None] = mapped_column(LargeBinary)
    integrity_token: Mapped[bytes | None] = mapped_column(LargeBinary)
    storage_keys: Mapped[bytes | None] = mapped_column(LargeBinary)  # serialized AttestStorageKeys
    device_ecdh_cert_pem: Mapped[bytes | None] = mapped_column(LargeBinary)  # from attest CERT
    registered_at: Mapped[datetime | None]
    created_at: Mapped[datetime]
    last_seen_at: Mapped[datetime | None]
    config_version: Mapped[int] = mapped_column(BigInteger, default=1)
    # The version the device last asked for with a matching hash (a 304): the one it runs (migration 0006).
    config_acked_version: Mapped[int | None] = mapped_column(BigInteger)
    # The hash of the config last built for it, and "VERSION/ENCRYPTION" it was built for (migration 0007):
    # a config poll compares against it without building anything, in any controller process, after restarts.
    config_hash: Mapped[str | None] = mapped_column(String(64))
    config_hash_key: Mapped[str | None] = mapped_column(String(40))


class Datastore(Base):
    __tablename__ = "datastores"

    uuid: Mapped[str] = mapped_column(String(UUID_LEN), primary_key=True)
    name: Mapped[str] = mapped_column(String(NAME_LEN), unique=True)
    type: Mapped[int] = mapped_column(Integer)
    fqdn: Mapped[str] = mapped_column(Text)
    dpath: Mapped[str] = mapped_column(Text, default="")
    api_key: Mapped[str] = mapped_column(Text, default="")
    password: Mapped[str] = mapped_column(Text, default="")
    region: Mapped[str] = mapped_column(String(NAME_LEN), default="")
    ca_pems: Mapped[list[str]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime]


class ContentTree(Base):
    __tablename__ = "content_trees"
    __table_args__ = (
        UniqueConstraint("device_uuid", "name"),
        UniqueConstraint("device_uuid", "uuid"),  # target of the volumes' composite key
    )

    uuid: Mapped[str] = mapped_column(String(UUID_LEN), primary_key=True)
    device_uuid: Mapped[str] = mapped_column(String(UUID_LEN), _device_fk())
    name: Mapped[str] = mapped_column(String(NAME_LEN))
    datastore_uuid: Mapped[str] = mapped_column(String(UUID_LEN), ForeignKey("datastores.uuid"), index=True)
    url: Mapped[str] = mapped_column(Text)
    format: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str | None] = mapped_column(String(64))
    max_size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    generation_count: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime]
    # siginfo (migration 0005): certificate URLs relative to the datastore, signature over sha256
    signer_cert_url: Mapped[str] = mapped_column(Text, default="", server_default="")
    intermediate_cert_url: Mapped[str] = mapped_column(Text, default="", server_default="")
    signature: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)


class Volume(Base):
    __tablename__ = "volumes"
    __table_args__ = (
        UniqueConstraint("device_uuid", "name"),
        UniqueConstraint("device_uuid", "uuid"),  # target of the app refs' composite key
        ForeignKeyConstraint(["device_uuid", "content_tree_uuid"],
                             ["content_trees.device_uuid", "content_trees.uuid"], **IN_USE),
        CheckConstraint("(origin = 'blank' AND content_tree_uuid IS NULL) OR "
                        "(origin = 'download' AND content_tree_uuid IS NOT NULL)", name="origin"),
        Index(None, "device_uuid", "content_tree_uuid"),
    )

    uuid: Mapped[str] = mapped_column(String(UUID_LEN), primary_key=True)
    device_uuid: Mapped[str] = mapped_column(String(UUID_LEN), _device_fk())
    name: Mapped[str] = mapped_column(String(NAME_LEN))
    origin: Mapped[str] = mapped_column(String(16))
    content_tree_uuid: Mapped[str | None] = mapped_column(String(UUID_LEN))
    max_size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    readonly: Mapped[bool] = mapped_column(Boolean, default=False)
    generation_count: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime]


class App(Base):
    __tablename__ = "apps"
    __table_args__ = (
        UniqueConstraint("device_uuid", "name"),
        UniqueConstraint("device_uuid", "uuid"),
    )

    uuid: Mapped[str] = mapped_column(String(UUID_LEN), primary_key=True)
    device_uuid: Mapped[str] = mapped_column(String(UUID_LEN), _device_fk())
    name: Mapped[str] = mapped_column(String(NAME_LEN))
    activate: Mapped[bool] = mapped_column(Boolean, default=True)
    purge_counter: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime]


class AppVolumeRef(Base):
    """One entry of an app's ``volumeRefList``; ``position`` keeps the list's order."""

    __tablename__ = "app_volume_refs"
    __table_args__ = (
        ForeignKeyConstraint(["device_uuid", "app_uuid"], ["apps.device_uuid", "apps.uuid"],
                             ondelete="CASCADE"),
        ForeignKeyConstraint(["device_uuid", "volume_uuid"], ["volumes.device_uuid", "volumes.uuid"], **IN_USE),
        Index(None, "device_uuid", "volume_uuid"),
    )

    app_uuid: Mapped[str] = mapped_column(String(UUID_LEN), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    device_uuid: Mapped[str] = mapped_column(String(UUID_LEN))
    volume_uuid: Mapped[str] = mapped_column(String(UUID_LEN))
    generation_count: Mapped[int] = mapped_column(BigInteger, default=0)


class ReportedObject(Base):
    """The latest info a device sent about one object (volume generation, content tree, blob)."""

    __tablename__ = "reported_objects"
    __table_args__ = (
        UniqueConstraint("device_uuid", "kind", "object_key", "generation"),
        CheckConstraint(f"kind IN {KINDS!r}", name="kind"),
    )

    id: Mapped[int] = mapped_column(RowId, primary_key=True, autoincrement=True)
    device_uuid: Mapped[str] = mapped_column(String(UUID_LEN), _device_fk())
    kind: Mapped[str] = mapped_column(String(16))
    object_key: Mapped[str] = mapped_column(String(80))
    generation: Mapped[int] = mapped_column(BigInteger, default=0)
    display_name: Mapped[str] = mapped_column(Text, default="")
    state: Mapped[int] = mapped_column(Integer)
    progress: Mapped[int] = mapped_column(Integer, default=0)
    max_size_bytes: Mapped[int | None] = mapped_column(BigInteger)
    cur_size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    ref_count: Mapped[int] = mapped_column(BigInteger, default=0)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    payload: Mapped[bytes] = mapped_column(LargeBinary)
    updated_at: Mapped[datetime]
    reported_at: Mapped[datetime | None]


class StateChange(Base):
    """One state an object entered; bounded per object by the store."""

    __tablename__ = "state_changes"
    __table_args__ = (
        CheckConstraint(f"kind IN {KINDS!r}", name="kind"),
        Index(None, "device_uuid", "kind", "object_key", "generation", "at"),
    )

    id: Mapped[int] = mapped_column(RowId, primary_key=True, autoincrement=True)
    device_uuid: Mapped[str] = mapped_column(String(UUID_LEN), _device_fk())
    kind: Mapped[str] = mapped_column(String(16))
    object_key: Mapped[str] = mapped_column(String(80))
    generation: Mapped[int] = mapped_column(BigInteger, default=0)
    state: Mapped[int] = mapped_column(Integer)
    at: Mapped[datetime]


class VolumeMetric(Base):
    """One ``ZMetricVolume`` a device sent, every field of it; not tied to the volumes table (the device may know more).

    ``display_name``, ``read_count`` and ``write_count`` came with migration 0004.
    """

    __tablename__ = "volume_metrics"
    __table_args__ = (
        Index(None, "device_uuid", "volume_uuid", "at"),
        Index(None, "device_uuid", "at"),
        Index(None, "at"),  # retention deletes by time alone (migration 0007)
    )

    id: Mapped[int] = mapped_column(RowId, primary_key=True, autoincrement=True)
    device_uuid: Mapped[str] = mapped_column(String(UUID_LEN), _device_fk())
    volume_uuid: Mapped[str] = mapped_column(String(UUID_LEN))
    at: Mapped[datetime]
    total_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    used_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    free_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    read_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    write_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    display_name: Mapped[str] = mapped_column(Text, default="", server_default="")
    read_count: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    write_count: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
