"""Pure parsing of OCI / Docker v2 manifests and indexes (no I/O).

Manifests come from a network peer, so everything is checked before use:
media types we can unpack, well-formed sha256 digests, sane sizes. Layers
that point at foreign URLs (Windows base layers, "non-distributable" blobs)
are refused: the device must only ever fetch what the registry holds.
"""

from __future__ import annotations

import json
import platform as _platform
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from .base import PermanentError
from .oci_refs import DIGEST_RE

__all__ = [
    "CONFIG_MEDIA_TYPES",
    "Descriptor",
    "INDEX_MEDIA_TYPES",
    "IndexEntry",
    "LAYER_MEDIA_TYPES",
    "MANIFEST_MEDIA_TYPES",
    "ImageManifest",
    "MEDIA_DOCKER_CONFIG",
    "MEDIA_DOCKER_LAYER_GZIP",
    "MEDIA_DOCKER_MANIFEST",
    "MEDIA_DOCKER_MANIFEST_LIST",
    "MEDIA_OCI_CONFIG",
    "MEDIA_OCI_INDEX",
    "MEDIA_OCI_LAYER",
    "MEDIA_OCI_LAYER_GZIP",
    "MEDIA_OCI_LAYER_ZSTD",
    "MEDIA_OCI_MANIFEST",
    "host_platform",
    "layer_compression",
    "parse_index",
    "parse_artifact",
    "parse_manifest",
    "select_platform",
    "sniff_media_type",
]

MEDIA_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MEDIA_DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MEDIA_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
MEDIA_OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
MEDIA_OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MEDIA_OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
MEDIA_DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"

INDEX_MEDIA_TYPES = frozenset({MEDIA_OCI_INDEX, MEDIA_DOCKER_MANIFEST_LIST})
IMAGE_MANIFEST_MEDIA_TYPES = frozenset({MEDIA_OCI_MANIFEST, MEDIA_DOCKER_MANIFEST})
MANIFEST_MEDIA_TYPES = INDEX_MEDIA_TYPES | IMAGE_MANIFEST_MEDIA_TYPES
CONFIG_MEDIA_TYPES = frozenset({MEDIA_OCI_CONFIG, MEDIA_DOCKER_CONFIG})
# media type -> compression of the tar stream (None = plain tar)
LAYER_MEDIA_TYPES: dict[str, str | None] = {
    MEDIA_OCI_LAYER: None,
    MEDIA_OCI_LAYER_GZIP: "gzip",
    MEDIA_OCI_LAYER_ZSTD: "zstd",
    MEDIA_DOCKER_LAYER_GZIP: "gzip",
}
_FOREIGN_MARKERS = ("nondistributable", "foreign")
# Go's GOARCH names, as used in image platforms, from platform.machine().
_GO_ARCH = {
    "x86_64": ("amd64", None),
    "amd64": ("amd64", None),
    "aarch64": ("arm64", None),
    "arm64": ("arm64", None),
    "armv7l": ("arm", "v7"),
    "armv6l": ("arm", "v6"),
    "i386": ("386", None),
    "i686": ("386", None),
    "riscv64": ("riscv64", None),
    "ppc64le": ("ppc64le", None),
    "s390x": ("s390x", None),
}


@dataclass(frozen=True)
class Descriptor:
    """A pointer to content: what it is, its sha256 and its exact size."""

    media_type: str
    digest: str
    size: int
    annotations: dict[str, str] = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class IndexEntry:
    """One manifest of a multi-platform index and the platform it is for."""

    descriptor: Descriptor
    os: str | None
    architecture: str | None
    variant: str | None = None
    os_version: str | None = None

    @property
    def platform(self) -> str:
        if not self.os or not self.architecture:
            return "unknown"
        text = f"{self.os}/{self.architecture}"
        return f"{text}/{self.variant}" if self.variant else text


class ImageManifest(NamedTuple):
    """Unpacks as ``config, layers = parse_manifest(...)``."""

    config: Descriptor
    layers: list[Descriptor]


def host_platform(machine: str | None = None) -> tuple[str, str, str | None]:
    """``(os, arch, variant)`` of this device in image-platform (Go) terms."""
    raw = (machine or _platform.machine()).lower()
    arch, variant = _GO_ARCH.get(raw, (raw, None))
    return "linux", arch, variant


def layer_compression(media_type: str) -> str | None:
    """'gzip', 'zstd' or None for a layer media type parse_manifest accepted."""
    return LAYER_MEDIA_TYPES[media_type]


def sniff_media_type(data: bytes) -> str | None:
    """The manifest kind from the JSON body, for registries that send no Content-Type."""
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(doc, dict):
        return None
    declared = doc.get("mediaType")
    if isinstance(declared, str) and declared in MANIFEST_MEDIA_TYPES:
        return declared
    if doc.get("schemaVersion") == 2 and declared is None:
        if "manifests" in doc:
            return MEDIA_OCI_INDEX
        if "layers" in doc and "config" in doc:
            return MEDIA_OCI_MANIFEST
    return None


def parse_index(data: bytes, media_type: str | None = None) -> list[IndexEntry]:
    """The entries of an OCI index / Docker manifest list."""
    doc = _load(data, "image index")
    _check_media_type(doc, media_type, INDEX_MEDIA_TYPES, "image index")
    manifests = doc.get("manifests")
    if not isinstance(manifests, list):
        raise PermanentError("image index has no 'manifests' list")
    entries = []
    for i, item in enumerate(manifests):
        desc = _descriptor(item, f"manifests[{i}]")
        plat = item.get("platform") if isinstance(item, dict) else None
        plat = plat if isinstance(plat, dict) else {}
        entries.append(
            IndexEntry(
                descriptor=desc,
                os=_opt_str(plat.get("os")),
                architecture=_opt_str(plat.get("architecture")),
                variant=_opt_str(plat.get("variant")),
                os_version=_opt_str(plat.get("os.version")),
            )
        )
    return entries


def select_platform(
    entries: list[IndexEntry],
    os: str = "linux",
    arch: str | None = None,
    variant: str | None = None,
) -> Descriptor:
    """The image manifest for this platform; PermanentError naming the alternatives.

    ``arch=None`` means this machine's. With no ``variant`` asked for, an
    exact variant-less entry wins over one with a variant; arm64 treats a
    missing variant as v8, as container runtimes do.
    """
    if arch is None:
        _, arch, host_variant = host_platform()
        variant = variant or host_variant
    candidates = [
        e
        for e in entries
        if e.os == os
        and e.architecture == arch
        and e.descriptor.media_type in IMAGE_MANIFEST_MEDIA_TYPES
    ]
    if variant:
        wanted = {variant}
        if arch == "arm64" and variant == "v8":
            wanted.add("")  # arm64 images usually omit the v8
        candidates = [e for e in candidates if (e.variant or "") in wanted]
    else:
        candidates.sort(key=lambda e: e.variant not in (None, "", "v8"))
    if not candidates:
        available = sorted({e.platform for e in entries if e.platform != "unknown"})
        want = f"{os}/{arch}" + (f"/{variant}" if variant else "")
        raise PermanentError(
            f"image has no manifest for platform {want}; available: "
            + (", ".join(available) if available else "none")
        )
    return candidates[0].descriptor


def parse_manifest(data: bytes, media_type: str | None = None) -> ImageManifest:
    """Config and layer descriptors of an image manifest, all validated."""
    doc = _load(data, "image manifest")
    if "manifests" in doc:
        raise PermanentError("expected an image manifest but got an image index")
    _check_media_type(doc, media_type, IMAGE_MANIFEST_MEDIA_TYPES, "image manifest")
    config = _descriptor(doc.get("config"), "config")
    if config.media_type not in CONFIG_MEDIA_TYPES:
        raise PermanentError(
            f"image config has media type {config.media_type!r}; this is not a container image "
            f"(expected {MEDIA_OCI_CONFIG} or {MEDIA_DOCKER_CONFIG})"
        )
    layers_raw = doc.get("layers")
    if not isinstance(layers_raw, list):
        raise PermanentError("image manifest has no 'layers' list")
    layers = []
    for i, item in enumerate(layers_raw):
        desc = _descriptor(item, f"layers[{i}]")
        where = f"layer {i} ({desc.digest})"
        if isinstance(item, dict) and item.get("urls"):
            raise PermanentError(
                f"{where} must be fetched from external URLs (a foreign or non-distributable "
                "layer); only layers stored in the registry are supported"
            )
        if any(marker in desc.media_type for marker in _FOREIGN_MARKERS):
            raise PermanentError(
                f"{where} has foreign/non-distributable media type {desc.media_type!r}; "
                "only layers stored in the registry are supported"
            )
        if desc.media_type not in LAYER_MEDIA_TYPES:
            raise PermanentError(
                f"{where} has unsupported media type {desc.media_type!r}; supported: "
                + ", ".join(sorted(LAYER_MEDIA_TYPES))
            )
        layers.append(desc)
    return ImageManifest(config, layers)


TITLE_ANNOTATION = "org.opencontainers.image.title"  # a blob's file name, as ORAS and `oras push` set it
MAX_ARTIFACT_FILES = 10_000


def parse_artifact(data: bytes, media_type: str | None = None) -> ImageManifest:
    """Config and file blobs of an OCI artifact (a BLOB_TREE content tree), all validated.

    An artifact is an OCI image manifest whose config may be of any media type
    (often the empty descriptor) and whose blobs are plain files, each named by
    its ``org.opencontainers.image.title`` annotation. Names are checked here:
    relative, no ``.``/``..`` segment, no backslash or control character, at
    most 255 bytes a segment, each file named once and never also a directory.
    """
    doc = _load(data, "artifact manifest")
    if "manifests" in doc:
        raise PermanentError("expected an artifact manifest but got an image index")
    _check_media_type(doc, media_type, frozenset({MEDIA_OCI_MANIFEST}), "artifact manifest")
    config = _descriptor(doc.get("config"), "config")
    raw = doc.get("layers")
    if not isinstance(raw, list) or not raw:
        raise PermanentError("artifact manifest lists no blobs ('layers')")
    if len(raw) > MAX_ARTIFACT_FILES:
        raise PermanentError(f"artifact manifest lists {len(raw)} blobs; more than {MAX_ARTIFACT_FILES}")
    files: list[Descriptor] = []
    names: set[str] = set()
    for i, item in enumerate(raw):
        desc = _descriptor(item, f"blobs[{i}]")
        if isinstance(item, dict) and item.get("urls"):
            raise PermanentError(f"blob {i} ({desc.digest}) must be fetched from external URLs; refused")
        name = check_file_name(desc.annotations.get(TITLE_ANNOTATION, ""), f"blob {i} ({desc.digest})")
        parents = {"/".join(name.split("/")[:k]) for k in range(1, name.count("/") + 1)}
        if name in names or parents & names or any(n.startswith(name + "/") for n in names):
            raise PermanentError(f"blob {i} ({desc.digest}): file name {name!r} is used twice, or as a file "
                                 "and a directory")
        names.add(name)
        files.append(desc)
    return ImageManifest(config, files)


def check_file_name(name: str, where: str) -> str:
    """A relative file name that stays inside the directory it is created in."""
    if not name:
        raise PermanentError(f"{where} has no {TITLE_ANNOTATION} annotation to name its file")
    if name.startswith("/") or "\\" in name or any(ord(c) < 0x20 or c == "\x7f" for c in name):
        raise PermanentError(f"{where}: file name {name!r} is absolute or has a backslash or control character")
    segments = name.split("/")
    if any(seg in ("", ".", "..") for seg in segments):
        raise PermanentError(f"{where}: file name {name!r} has an empty, '.' or '..' segment")
    if any(len(seg.encode()) > 255 for seg in segments) or len(name.encode()) > 4096:
        raise PermanentError(f"{where}: file name {name[:64]!r}... is too long")
    return name


def _load(data: bytes, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise PermanentError(f"{what} is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise PermanentError(f"{what} is not a JSON object")
    version = doc.get("schemaVersion")
    if version != 2 or isinstance(version, bool):
        hint = " (Docker schema 1 images are not supported)" if version == 1 else ""
        raise PermanentError(f"{what} has schemaVersion {version!r}, expected 2{hint}")
    return doc


def _check_media_type(
    doc: dict[str, Any], header_type: str | None, allowed: frozenset[str], what: str
) -> None:
    declared = doc.get("mediaType")
    if declared is not None and declared not in allowed:
        raise PermanentError(f"{what} declares media type {declared!r}, expected one of {sorted(allowed)}")
    if header_type is not None and header_type not in allowed:
        raise PermanentError(f"{what} was served as {header_type!r}, expected one of {sorted(allowed)}")
    if declared is not None and header_type is not None and declared != header_type:
        raise PermanentError(
            f"{what} declares media type {declared!r} but was served as {header_type!r}"
        )


def _descriptor(item: object, where: str) -> Descriptor:
    if not isinstance(item, dict):
        raise PermanentError(f"{where} is not a descriptor object")
    media_type = item.get("mediaType")
    digest = item.get("digest")
    size = item.get("size")
    if not isinstance(media_type, str) or not media_type:
        raise PermanentError(f"{where} has no mediaType")
    if not isinstance(digest, str) or not DIGEST_RE.match(digest):
        raise PermanentError(f"{where} has invalid digest {digest!r} (need sha256:<64 hex>)")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise PermanentError(f"{where} has invalid size {size!r}")
    raw_ann = item.get("annotations")
    annotations = (
        {str(k): str(v) for k, v in raw_ann.items()} if isinstance(raw_ann, dict) else {}
    )
    return Descriptor(media_type, digest, size, annotations)


def _opt_str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None
