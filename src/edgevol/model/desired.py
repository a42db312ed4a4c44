"""The typed, validated picture of what the controller wants on this device.

Everything downstream of :mod:`edgevol.model.parse` trusts these objects:
UUIDs are canonical, digests are lowercase hex, sizes are sane and every
reference points at an object that exists and is itself valid.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class ImageFormat(enum.StrEnum):
    """Content formats the device knows how to store and turn into volumes."""

    RAW = "raw"
    QCOW = "qcow"
    QCOW2 = "qcow2"
    VHD = "vhd"
    VMDK = "vmdk"
    OVA = "ova"
    VHDX = "vhdx"
    CONTAINER = "container"
    ISO = "iso"
    BLOB_TREE = "blob_tree"  # edgevol's: an OCI artifact of plain files (Format 1000, edgevol.api.formats)

    @property
    def manifested(self) -> bool:
        """Content made of several blobs that a manifest lists, fetched and tracked one by one."""
        return self in (ImageFormat.CONTAINER, ImageFormat.BLOB_TREE)


class DatastoreKind(enum.StrEnum):
    HTTP = "http"
    HTTPS = "https"
    CONTAINER_REGISTRY = "registry"
    S3 = "s3"
    SFTP = "sftp"
    AZURE_BLOB = "azure"
    GOOGLE_STORAGE = "gcs"


class VolumeClone(enum.StrEnum):
    """How a volume is made from RAW/QCOW2 content (edgevol.volume.clone)."""

    BACKING = "backing"  # a qcow2 overlay on the verified CAS blob: O(1), the blob stays pinned
    COPY = "copy"  # a full, independent copy (qemu-img convert)


class VolumeOrigin(enum.StrEnum):
    BLANK = "blank"
    DOWNLOAD = "download"


class ObjectKind(enum.StrEnum):
    """The kinds of configured object an error can belong to."""

    DATASTORE = "datastore"
    CONTENT_TREE = "content_tree"
    VOLUME = "volume"
    APP = "app"
    CONFIG_ITEM = "config_item"
    CONFIG = "config"


@dataclass(frozen=True)
class EncryptedCredentials:
    """A datastore's ``cipherData`` and the ``CipherContext`` it names, as serialized protobuf.

    The model only carries them: the device decrypts them with its key when
    it opens the datastore (:mod:`edgevol.device.datastores.credentials`).
    """

    block: bytes  # org.lfedge.eve.common.CipherBlock
    context: bytes | None  # the CipherContext with the block's cipherContextId; None if the config has none


@dataclass(frozen=True)
class Datastore:
    uuid: str
    kind: DatastoreKind
    fqdn: str
    dpath: str
    api_key: str = field(default="", repr=False)
    password: str = field(default="", repr=False)
    ca_pems: tuple[bytes, ...] = field(default=(), repr=False)
    region: str = ""
    # Encrypted apiKey/password; when set they replace the clear ones above once decrypted.
    encrypted: EncryptedCredentials | None = field(default=None, repr=False)


@dataclass(frozen=True)
class ContentSignature:
    """A content tree's ``siginfo``: who signed its sha256, and where their certificates are.

    The URLs are relative to the content tree's datastore, as its own URL is.
    """

    signer_cert_url: str
    intermediate_cert_url: str
    signature: bytes


@dataclass(frozen=True)
class ContentTree:
    uuid: str
    datastore_id: str
    url: str
    format: ImageFormat
    sha256: str | None
    max_size_bytes: int | None
    display_name: str = ""
    generation: int = 0
    signature: ContentSignature | None = None
    # The rest of ``ds_ids_list``, in order: where the content is fetched when datastore_id fails.
    fallback_datastore_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class Volume:
    uuid: str
    generation: int
    origin: VolumeOrigin
    content_tree_id: str | None
    max_size_bytes: int
    readonly: bool
    display_name: str = ""
    # A legacy Drive's ``preserve``: a purge of its app keeps this volume (generation 0 for good).
    preserve: bool = False
    # Set only for an implicit volume made from a legacy Drive (see edgevol.model.legacy):
    # the app instance it belongs to and the drive's image ("" for a blank drive without one).
    app_uuid: str = ""
    image_uuid: str = ""
    # Set only for a volume the controller allocated for an app's Drive (transition phase 2): the
    # implicit volume it takes over, data and all, if the device has one.
    adopts: str = ""
    # How tasks attach to it (VolumeAccessProtocols): "9p" (VAP_9P, served as virtiofs); empty: the default
    # for the volume's kind (a file: NBD and vhost-user-blk; a directory: virtiofs).
    protocols: tuple[str, ...] = ()

    @property
    def key(self) -> tuple[str, int]:
        return (self.uuid, self.generation)

    @property
    def implicit(self) -> bool:
        """True for a volume the device made from an app's Drive rather than one the controller named."""
        return bool(self.app_uuid)


@dataclass(frozen=True)
class VolumeRef:
    uuid: str
    generation: int


@dataclass(frozen=True)
class AppInstance:
    uuid: str
    display_name: str
    volume_refs: tuple[VolumeRef, ...]
    purge_counter: int = 0
    # AppInstanceConfig.activate: the app should run, so the device serves its volumes (exports).
    activate: bool = False


@dataclass(frozen=True)
class ObjectError:
    """One invalid object of the config; the rest of the config still applies."""

    kind: ObjectKind
    object_id: str
    message: str
    name: str = ""
    generation: int = 0


@dataclass(frozen=True)
class ProxySettings:
    """HTTP(S) proxies for downloads (edgevol.download.proxy.*, a network's entProxy, or the environment).

    The proxy URLs are normalized (``scheme://[user:password@]host:port``) and may hold credentials, so
    they are left out of ``repr``; ``no_proxy`` entries are validated and lower-case; ``ca_pems`` are the
    certificates trusted for TLS to an https proxy and through a TLS-intercepting one.
    """

    http_proxy: str = field(default="", repr=False)
    https_proxy: str = field(default="", repr=False)
    no_proxy: tuple[str, ...] = ()
    ca_pems: tuple[bytes, ...] = field(default=(), repr=False)

    @property
    def names_a_proxy(self) -> bool:
        return bool(self.http_proxy or self.https_proxy)


@dataclass(frozen=True)
class Settings:
    """Device settings carried as config items (``edgevol.*`` keys and some of EVE's global items)."""

    blank_format: ImageFormat = ImageFormat.QCOW2
    # copy until the tests that read RAW volumes as raw files (the crash harness among them) read them as a guest
    volume_clone: VolumeClone = VolumeClone.BACKING
    download_max_attempts: int = 5
    retry_base_seconds: float = 2.0
    retry_cap_seconds: float = 300.0
    slow_retry_seconds: float = 600.0
    parallel_downloads: int = 2
    # Downloads at once from any one datastore (edgevol.download.datastore.parallel; 0: only the limit above),
    # and a datastore's own limit (edgevol.download.datastore.<uuid>.parallel), which wins over it.
    parallel_per_datastore: int = 0
    parallel_by_datastore: tuple[tuple[str, int], ...] = ()
    # How long a download may go silent (no header or body bytes) before the attempt fails and is retried.
    download_read_timeout_seconds: float = 30.0
    gc_delay_seconds: float = 0.0
    disk_reserve_bytes: int = 256 << 20
    thin_overcommit: bool = False
    # EVE's storage.apps.ignore.disk.check: downloads and volumes are admitted without a space check.
    ignore_disk_check: bool = False
    # How often volumes' used bytes are measured again (EVE's timer.metric.diskscan.interval; EVE's default
    # is 300 s, edgevol's is shorter as a scan of its volume files is cheap).
    disk_scan_interval_seconds: float = 10.0
    # edgevol.content.signature.required: a content tree without siginfo is refused.
    require_signatures: bool = False
    # Download caps in bytes per second, 0 for none: all datastores together, each datastore by default, and
    # datastores' own caps as sorted (uuid, cap) pairs (a tuple, so Settings stays hashable), which win.
    download_bytes_per_second: int = 0
    datastore_bytes_per_second: int = 0
    datastore_caps: tuple[tuple[str, int], ...] = ()
    # edgevol.download.proxy.* (or a network's entProxy): what the config says; the agent layers it over
    # the proxies of its environment (edgevol.device.datastores.proxy.effective).
    proxy: ProxySettings = field(default_factory=ProxySettings)

    def datastore_parallel(self, uuid: str) -> int:
        """How many downloads may run at once from datastore ``uuid`` (0: no limit of its own)."""
        return dict(self.parallel_by_datastore).get(uuid, self.parallel_per_datastore)


@dataclass
class DesiredState:
    device_id: str = ""
    datastores: dict[str, Datastore] = field(default_factory=dict)
    content_trees: dict[str, ContentTree] = field(default_factory=dict)
    volumes: dict[str, Volume] = field(default_factory=dict)
    apps: dict[str, AppInstance] = field(default_factory=dict)
    settings: Settings = field(default_factory=Settings)
    errors: list[ObjectError] = field(default_factory=list)

    def errors_for(self, kind: ObjectKind, object_id: str) -> list[ObjectError]:
        return [e for e in self.errors if e.kind == kind and e.object_id == object_id]
