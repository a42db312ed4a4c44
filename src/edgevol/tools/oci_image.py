"""Build small OCI images in memory and push them to a registry.

Tests, the demo and benchmarks need real images with exact, known bytes
(including hostile ones: whiteouts, hard links, traversal attempts), so
layers are written with :mod:`tarfile` deterministically: fixed mtime,
owner and order, gzip without a timestamp. The same input always gives the
same digests, which keeps test expectations stable.

Pushing uses the distribution API (HEAD to skip existing blobs, POST + PUT
?digest= for small blobs, PATCH chunks for files, PUT manifest) through
:class:`RegistryClient`, so it authenticates exactly like a device does.

    layer = Layer.from_files({"etc/hello": b"hi\\n", "bin/sh": ("symlink", "busybox")})
    image = build_image([layer], {"Cmd": ["/bin/sh"]})
    digest = push("http://127.0.0.1:5000", "demo/app", "v1", image)
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

import httpx

from edgevol.device.datastores.base import PermanentError
from edgevol.device.datastores.oci_manifest import (
    MEDIA_DOCKER_CONFIG,
    MEDIA_DOCKER_LAYER_GZIP,
    MEDIA_DOCKER_MANIFEST,
    MEDIA_DOCKER_MANIFEST_LIST,
    MEDIA_OCI_CONFIG,
    MEDIA_OCI_INDEX,
    MEDIA_OCI_LAYER,
    MEDIA_OCI_LAYER_GZIP,
    MEDIA_OCI_LAYER_ZSTD,
    MEDIA_OCI_MANIFEST,
)
from edgevol.device.datastores.oci_refs import split_registry_address, validate_repository, validate_tag
from edgevol.device.datastores.registry import RegistryClient

__all__ = [
    "Blob",
    "FileSpec",
    "Image",
    "Index",
    "Layer",
    "build_image",
    "build_index",
    "push",
    "push_blob",
    "sha256_digest",
]

FileSpec = Union[bytes, tuple]
"""``bytes`` (regular file) or a tuple: ('file', data[, mode]), ('dir'[, mode]),
('symlink', target), ('hardlink', target), ('whiteout',), ('opaque',),
('fifo',), ('chardev'|'blockdev', major, minor)."""

Blob = Union[bytes, Path]
"""Blob content: in memory, or a file streamed when pushing (big benchmark layers)."""

_UPLOAD_CHUNK = 16 << 20
_ZERO_TIME = "1970-01-01T00:00:00Z"
_LAYER_TYPES = {
    ("oci", None): MEDIA_OCI_LAYER,
    ("oci", "gzip"): MEDIA_OCI_LAYER_GZIP,
    ("oci", "zstd"): MEDIA_OCI_LAYER_ZSTD,
    ("docker", "gzip"): MEDIA_DOCKER_LAYER_GZIP,
}


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def compress(data: bytes, compression: str | None) -> bytes:
    """Deterministic gzip (mtime 0) or zstd; None returns ``data`` unchanged."""
    if compression is None:
        return data
    if compression == "gzip":
        return gzip.compress(data, compresslevel=6, mtime=0)
    if compression == "zstd":
        import zstandard  # only needed for zstd layers

        return zstandard.ZstdCompressor(level=3).compress(data)
    raise ValueError(f"unknown compression {compression!r} (use 'gzip', 'zstd' or None)")


@dataclass(frozen=True)
class Layer:
    """One layer blob plus what the config needs (diff_id = sha256 of the plain tar)."""

    blob: Blob
    media_type: str
    digest: str
    size: int
    diff_id: str

    @classmethod
    def from_files(
        cls,
        files: Mapping[str, FileSpec],
        *,
        compression: str | None = "gzip",
        mode: int = 0o644,
        dir_mode: int = 0o755,
        mtime: int = 0,
        uid: int = 0,
        gid: int = 0,
        flavor: str = "oci",
    ) -> Layer:
        """A layer whose tar has exactly these entries, in this order."""
        return cls.from_tar(
            make_tar(files, mode=mode, dir_mode=dir_mode, mtime=mtime, uid=uid, gid=gid),
            compression=compression,
            flavor=flavor,
        )

    @classmethod
    def from_tar(cls, tar_bytes: bytes, *, compression: str | None = "gzip", flavor: str = "oci") -> Layer:
        """A layer from hand-made (possibly hostile) tar bytes, compressed as asked."""
        media_type = _LAYER_TYPES.get((flavor, compression))
        if media_type is None:
            raise ValueError(f"no {flavor} layer media type for compression {compression!r}")
        blob = compress(tar_bytes, compression)
        return cls(blob, media_type, sha256_digest(blob), len(blob), sha256_digest(tar_bytes))

    @classmethod
    def raw(cls, blob: bytes, media_type: str = MEDIA_OCI_LAYER_GZIP, diff_id: str | None = None) -> Layer:
        """Exactly these blob bytes under any media type (corrupt gzip, zip bombs, ...)."""
        digest = sha256_digest(blob)
        return cls(blob, media_type, digest, len(blob), diff_id or digest)

    @classmethod
    def from_path(cls, path: Path, *, media_type: str, diff_id: str | None = None) -> Layer:
        """A layer blob already on disk (hashed in 1 MiB steps, streamed when pushed)."""
        h = hashlib.sha256()
        size = 0
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
                size += len(chunk)
        digest = "sha256:" + h.hexdigest()
        return cls(Path(path), media_type, digest, size, diff_id or digest)

    def descriptor(self) -> dict[str, object]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


@dataclass(frozen=True)
class Image:
    """A pushable image: manifest bytes and every blob it references."""

    manifest: bytes
    media_type: str
    blobs: dict[str, Blob] = field(default_factory=dict)
    config: bytes | None = None
    platform: tuple[str, str, str | None] = ("linux", "amd64", None)

    @property
    def digest(self) -> str:
        return sha256_digest(self.manifest)

    @property
    def size(self) -> int:
        return len(self.manifest)


@dataclass(frozen=True)
class Index:
    """A multi-platform image index and its images."""

    manifest: bytes
    media_type: str
    images: list[Image]

    @property
    def digest(self) -> str:
        return sha256_digest(self.manifest)

    @property
    def size(self) -> int:
        return len(self.manifest)


def make_tar(
    files: Mapping[str, FileSpec],
    *,
    mode: int = 0o644,
    dir_mode: int = 0o755,
    mtime: int = 0,
    uid: int = 0,
    gid: int = 0,
) -> bytes:
    """Deterministic tar bytes for ``files`` (see :data:`FileSpec`)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, spec in files.items():
            info, data = _tar_entry(name, spec, mode, dir_mode)
            info.mtime, info.uid, info.gid = mtime, uid, gid
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _tar_entry(name: str, spec: FileSpec, mode: int, dir_mode: int) -> tuple[tarfile.TarInfo, bytes | None]:
    path = name.lstrip("/") if name not in ("/", "") else "."
    if isinstance(spec, (bytes, bytearray)):
        spec = ("file", bytes(spec))
    if not isinstance(spec, tuple) or not spec:
        raise ValueError(f"{name}: unsupported file spec {spec!r}")
    kind, args = spec[0], spec[1:]
    if kind == "whiteout":
        parent, _, base = path.rpartition("/")
        path = f"{parent}/.wh.{base}" if parent else f".wh.{base}"
        kind, args = "file", (b"",)
    elif kind == "opaque":
        path = f"{path.rstrip('/')}/.wh..wh..opq"
        kind, args = "file", (b"",)
    info = tarfile.TarInfo(path)
    data: bytes | None = None
    if kind == "file":
        data = bytes(args[0])
        info.size = len(data)
        info.mode = args[1] if len(args) > 1 else mode
    elif kind == "dir":
        info.type = tarfile.DIRTYPE
        info.mode = args[0] if args else dir_mode
    elif kind == "symlink":
        info.type, info.linkname, info.mode = tarfile.SYMTYPE, args[0], 0o777
    elif kind == "hardlink":
        info.type, info.linkname, info.mode = tarfile.LNKTYPE, args[0].lstrip("/"), mode
    elif kind == "fifo":
        info.type, info.mode = tarfile.FIFOTYPE, mode
    elif kind in ("chardev", "blockdev"):
        info.type = tarfile.CHRTYPE if kind == "chardev" else tarfile.BLKTYPE
        info.devmajor, info.devminor, info.mode = args[0], args[1], mode
    else:
        raise ValueError(f"{name}: unknown entry kind {kind!r}")
    return info, data


def build_image(
    layers: Iterable[Layer],
    config: Mapping[str, object] | None = None,
    *,
    arch: str = "amd64",
    os: str = "linux",
    variant: str | None = None,
    flavor: str = "oci",
    extra_config: Mapping[str, object] | None = None,
) -> Image:
    """An image from layers; ``config`` is the runtime part (Env, Cmd, WorkingDir...).

    ``flavor='docker'`` writes Docker v2 media types instead of OCI ones.
    ``extra_config`` adds top-level image-config fields (or overrides them).
    """
    layers = list(layers)
    image_config: dict[str, object] = {
        "architecture": arch,
        "os": os,
        "created": _ZERO_TIME,
        "config": dict(config or {}),
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
        "history": [{"created": _ZERO_TIME, "created_by": "edgevol.tools.oci_image"} for _ in layers],
    }
    if variant:
        image_config["variant"] = variant
    image_config.update(extra_config or {})
    config_bytes = _canonical_json(image_config)
    docker = flavor == "docker"
    manifest = {
        "schemaVersion": 2,
        "mediaType": MEDIA_DOCKER_MANIFEST if docker else MEDIA_OCI_MANIFEST,
        "config": {
            "mediaType": MEDIA_DOCKER_CONFIG if docker else MEDIA_OCI_CONFIG,
            "digest": sha256_digest(config_bytes),
            "size": len(config_bytes),
        },
        "layers": [layer.descriptor() for layer in layers],
    }
    blobs: dict[str, Blob] = {sha256_digest(config_bytes): config_bytes}
    for layer in layers:
        blobs[layer.digest] = layer.blob
    return Image(
        _canonical_json(manifest),
        str(manifest["mediaType"]),
        blobs,
        config_bytes,
        (os, arch, variant),
    )


def build_index(images: Mapping[str, Image] | Iterable[Image], *, flavor: str = "oci") -> Index:
    """An index over images; keys like ``linux/arm64/v8`` override each image's platform."""
    pairs: list[tuple[tuple[str, str, str | None], Image]] = []
    if isinstance(images, Mapping):
        for key, image in images.items():
            parts = key.split("/")
            if len(parts) not in (2, 3):
                raise ValueError(f"platform {key!r} must be OS/ARCH or OS/ARCH/VARIANT")
            pairs.append(((parts[0], parts[1], parts[2] if len(parts) == 3 else None), image))
    else:
        pairs = [(image.platform, image) for image in images]
    entries = []
    for (os_name, arch, variant), image in pairs:
        platform: dict[str, str] = {"architecture": arch, "os": os_name}
        if variant:
            platform["variant"] = variant
        entries.append(
            {"mediaType": image.media_type, "digest": image.digest, "size": image.size, "platform": platform}
        )
    media_type = MEDIA_DOCKER_MANIFEST_LIST if flavor == "docker" else MEDIA_OCI_INDEX
    doc = {"schemaVersion": 2, "mediaType": media_type, "manifests": entries}
    return Index(_canonical_json(doc), media_type, [image for _, image in pairs])


def push(
    registry_url: str,
    repository: str,
    tag: str | None,
    image: Image | Index,
    *,
    api_key: str = "",
    password: str = "",
    ca_pems: Iterable[bytes] = (),
) -> str:
    """Push blobs, then manifests (children before the index); returns the top digest.

    ``registry_url`` is ``http://127.0.0.1:PORT``, ``docker://HOST`` or ``HOST:PORT``.
    ``tag=None`` pushes by digest only.
    """
    validate_repository(repository)
    if tag is not None:
        validate_tag(tag)
    scheme, host, prefix = split_registry_address(registry_url)
    if prefix:
        repository = f"{prefix}/{repository}"
    with RegistryClient(host, scheme, api_key=api_key, password=password, ca_pems=tuple(ca_pems)) as client:
        children = image.images if isinstance(image, Index) else [image]
        for child in children:
            for digest, blob in child.blobs.items():
                push_blob(client, repository, digest, blob)
            if isinstance(image, Index):
                _put_manifest(client, repository, child.digest, child.manifest, child.media_type)
        _put_manifest(client, repository, tag or image.digest, image.manifest, image.media_type)
    return image.digest


def push_blob(client: RegistryClient, repository: str, digest: str, blob: Blob) -> None:
    """Upload one blob unless the registry already has it."""
    head = client.request("HEAD", repository, f"/v2/{repository}/blobs/{digest}", push=True)
    if head.status_code == 200:
        return
    start = client.request("POST", repository, f"/v2/{repository}/blobs/uploads/", push=True)
    _expect(start, 202, f"starting upload of {digest}")
    location = _location(start)
    if isinstance(blob, Path):
        offset = 0
        with open(blob, "rb") as f:
            while chunk := f.read(_UPLOAD_CHUNK):
                resp = client.request(
                    "PATCH",
                    repository,
                    location,
                    push=True,
                    content=chunk,
                    headers={
                        "Content-Type": "application/octet-stream",
                        "Content-Range": f"{offset}-{offset + len(chunk) - 1}",
                    },
                )
                _expect(resp, 202, f"uploading {digest}")
                location = _location(resp)
                offset += len(chunk)
        body = b""
    else:
        body = blob
    done = client.request(
        "PUT",
        repository,
        location,
        push=True,
        content=body,
        params={"digest": digest},
        headers={"Content-Type": "application/octet-stream"},
    )
    _expect(done, 201, f"finishing upload of {digest}")


def _put_manifest(client: RegistryClient, repository: str, reference: str, body: bytes, media_type: str) -> None:
    resp = client.request(
        "PUT",
        repository,
        f"/v2/{repository}/manifests/{reference}",
        push=True,
        content=body,
        headers={"Content-Type": media_type},
    )
    _expect(resp, 201, f"pushing manifest {repository}:{reference}")


def _location(resp: httpx.Response) -> str:
    location = resp.headers.get("location")
    if not location:
        raise PermanentError("registry answered an upload request without a Location header")
    return str(location)


def _expect(resp: httpx.Response, status: int, what: str) -> None:
    if resp.status_code != status:
        raise PermanentError(
            f"{what}: registry answered HTTP {resp.status_code} (expected {status}): {resp.text[:500]}"
        )


def _canonical_json(doc: object) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
