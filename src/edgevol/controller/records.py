"""Plain, frozen records the store hands out instead of ORM objects.

Why: callers (HTTP handlers, CLI, config builder) must never hold a live
session object that could lazily hit the database or be mutated by accident.
Enum-valued fields keep the wire numbers (``DsType``, ``Format``, ``ZSwState``)
so they map one-to-one onto the API; ``*_name`` properties give the text.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from edgevol.api import messages as m
from edgevol.api.formats import format_name


@dataclass(frozen=True)
class Device:
    uuid: str
    name: str
    serial: str
    created_at: datetime
    config_version: int
    onboard_cert_hash: bytes | None = None
    device_cert_hash: bytes | None = None
    registered_at: datetime | None = None
    last_seen_at: datetime | None = None
    onboard_cert_pem: bytes | None = field(default=None, repr=False)
    device_cert_pem: bytes | None = field(default=None, repr=False)
    # The DEVICE_ECDH_EXCHANGE certificate the device sent in attest CERT, if any.
    device_ecdh_cert_pem: bytes | None = field(default=None, repr=False)
    config_acked_version: int | None = None  # the config version the device runs, as far as we know

    @property
    def registered(self) -> bool:
        return self.device_cert_pem is not None


@dataclass(frozen=True)
class Sender:
    """A registered device as the device API needs it for one request: one statement, the columns it uses."""

    uuid: str
    created_at: datetime
    config_version: int
    config_acked_version: int | None
    device_cert_hash: bytes | None
    device_cert_pem: bytes | None = field(default=None, repr=False)
    integrity_token: bytes | None = field(default=None, repr=False)
    config_hash: str | None = None  # of the config built for config_hash_key ("VERSION/ENCRYPTION")
    config_hash_key: str | None = None


@dataclass(frozen=True)
class Datastore:
    uuid: str
    name: str
    type: int  # DsType number
    fqdn: str
    dpath: str
    region: str
    created_at: datetime
    api_key: str = field(default="", repr=False)
    password: str = field(default="", repr=False)
    ca_pems: tuple[bytes, ...] = field(default=(), repr=False)

    @property
    def type_name(self) -> str:
        return m.DsType.Name(self.type)


@dataclass(frozen=True)
class ContentTree:
    uuid: str
    device_uuid: str
    name: str
    datastore_uuid: str
    url: str
    format: int  # Format number
    sha256: str | None
    max_size_bytes: int
    generation_count: int
    created_at: datetime
    signer_cert_url: str = ""
    intermediate_cert_url: str = ""
    signature: bytes | None = None  # siginfo.signature; shown as hex

    @property
    def format_name(self) -> str:
        return format_name(self.format)


@dataclass(frozen=True)
class Volume:
    uuid: str
    device_uuid: str
    name: str
    origin: str  # "blank" | "download"
    content_tree_uuid: str | None
    max_size_bytes: int
    readonly: bool
    generation_count: int
    created_at: datetime


@dataclass(frozen=True)
class VolumeUpdate:
    """What an update did: a change of size, read-only flag or origin needs a new generation."""

    volume: Volume
    regenerated_from: int | None = None  # the generation it replaced, when the change needed a new one
    purged_apps: tuple[str, ...] = ()  # names of the apps purged to follow the new generation


@dataclass(frozen=True)
class ContentTreeUpdate:
    """What an update did: a change of what the content is makes the device fetch it again."""

    content_tree: ContentTree
    refetched: bool = False  # the device fetches the content again (no generation needed)
    volumes_keeping_content: tuple[str, ...] = ()  # volumes made from it, unchanged until purged


@dataclass(frozen=True)
class VolumeRef:
    volume_uuid: str
    generation_count: int


@dataclass(frozen=True)
class App:
    uuid: str
    device_uuid: str
    name: str
    activate: bool
    purge_counter: int
    volume_refs: tuple[VolumeRef, ...]
    created_at: datetime


@dataclass(frozen=True)
class ConfigSnapshot:
    """Everything one device's config is built from, read in one transaction."""

    device: Device
    datastores: tuple[Datastore, ...]
    content_trees: tuple[ContentTree, ...]
    volumes: tuple[Volume, ...]
    apps: tuple[App, ...]


@dataclass(frozen=True)
class ReportedError:
    description: str
    severity: int  # Severity number
    retry_condition: str
    time: datetime | None

    def to_json(self) -> dict[str, Any]:
        return {"description": self.description, "severity": self.severity,
                "retry_condition": self.retry_condition,
                "time": self.time.isoformat() if self.time else None}

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> ReportedError | None:
        if not data:
            return None
        at = data.get("time")
        return cls(description=data.get("description", ""), severity=int(data.get("severity", 0)),
                   retry_condition=data.get("retry_condition", ""),
                   time=datetime.fromisoformat(at) if at else None)

    @property
    def severity_name(self) -> str:
        return m.Severity.Name(self.severity)


@dataclass(frozen=True)
class Reported:
    """The latest info a device sent about one object."""

    device_uuid: str
    kind: str  # "volume" | "content_tree" | "blob"
    object_key: str  # uuid, or sha256 for blobs
    generation: int  # volumes only; 0 for content trees and blobs
    display_name: str
    state: int  # ZSwState number
    progress: int
    max_size_bytes: int | None
    cur_size_bytes: int
    ref_count: int
    error: ReportedError | None
    updated_at: datetime  # when the controller stored it
    reported_at: datetime | None  # the device's timestamp
    payload: bytes = field(default=b"", repr=False)

    @property
    def state_name(self) -> str:
        return m.ZSwState.Name(self.state)

    def message(self) -> Any:
        """The device's original ``ZInfoVolume`` / ``ZInfoContentTree`` / ``ZInfoBlob``."""
        cls = {"volume": m.ZInfoVolume, "content_tree": m.ZInfoContentTree, "blob": m.ZInfoBlob}[self.kind]
        return cls.FromString(self.payload)


@dataclass(frozen=True)
class FleetDevice:
    """One device at a glance: what the console's fleet view shows."""

    device: Device
    counts: dict[str, dict[str, int]]  # kind -> state name -> how many of its reported objects are in it
    errors: int  # reported objects that carry an error


@dataclass(frozen=True)
class StateChange:
    kind: str
    object_key: str
    generation: int
    state: int
    at: datetime

    @property
    def state_name(self) -> str:
        return m.ZSwState.Name(self.state)


@dataclass(frozen=True)
class VolumeMetric:
    """One ``ZMetricVolume`` as the device sent it (every field of the message, and when)."""

    volume_uuid: str
    at: datetime
    total_bytes: int
    used_bytes: int
    free_bytes: int
    read_bytes: int
    write_bytes: int
    display_name: str = ""
    read_count: int = 0
    write_count: int = 0
