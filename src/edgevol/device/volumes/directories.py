"""Directory volumes: an unpacked OCI root filesystem (or an empty directory) per volume.

``<root>/<uuid>#<generation>.container/`` holds ``rootfs/`` and, for volumes
made from an image, ``image-config.json``. A read-only volume also holds
``config.json``, an OCI runtime spec whose ``root`` is ``{"path": "rootfs",
"readonly": true}`` (the runtime spec's way to have a runtime mount the root
filesystem read-only), and every file and directory in it has lost its write
permission bits. A volume is built under a temp name and renamed into place
only when complete, so a crash never leaves a half-unpacked rootfs under the
final name.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path
from typing import Callable

from edgevol import fsutil
from edgevol.device.volumes.files import VolumeError, VolumeUsage, parse_name

SUFFIX = "container"
CONFIG_NAME = "image-config.json"
RUNTIME_SPEC_NAME = "config.json"  # the OCI runtime bundle's config (opencontainers/runtime-spec, config.md)
# A minimal runtime spec: the version and where the root filesystem is, read-only.
READONLY_SPEC = {"ociVersion": "1.0.2", "root": {"path": "rootfs", "readonly": True}}
_WRITE_BITS = stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH


def _drop_write_bits(top: Path) -> None:
    """chmod a-w on everything under ``top`` and on ``top`` itself; symlinks are left alone (never followed)."""
    for _dirpath, dirnames, filenames, dir_fd in os.fwalk(top, topdown=False, follow_symlinks=False):
        for name in dirnames + filenames:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            if not stat.S_ISLNK(st.st_mode):
                os.chmod(name, stat.S_IMODE(st.st_mode) & ~_WRITE_BITS, dir_fd=dir_fd)
    os.chmod(top, stat.S_IMODE(os.stat(top).st_mode) & ~_WRITE_BITS)


def tree_usage(path: Path) -> int:
    """Bytes allocated under ``path`` (like ``du``), never following symlinks; hardlinks counted once."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for dirpath, dirnames, filenames in os.walk(path, followlinks=False):
        for name in dirnames + filenames:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            if st.st_nlink > 1:
                if (st.st_dev, st.st_ino) in seen:
                    continue
                seen.add((st.st_dev, st.st_ino))
            total += st.st_blocks * 512
    return total


class DirectoryVolumes:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path_for(self, uuid: str, generation: int) -> Path:
        name = f"{uuid}#{generation}.{SUFFIX}"
        parsed = parse_name(name.replace(f".{SUFFIX}", ".raw"))
        if parsed is None:
            raise VolumeError(f"bad volume identity {uuid!r}#{generation!r}")
        return self.root / name

    def find(self, uuid: str, generation: int) -> Path | None:
        p = self.path_for(uuid, generation)
        return p if p.is_dir() else None

    def list(self) -> dict[tuple[str, int], Path]:
        """Every complete directory volume, by (uuid, generation)."""
        found: dict[tuple[str, int], Path] = {}
        for entry in os.scandir(self.root):
            if not entry.name.endswith(f".{SUFFIX}") or not entry.is_dir(follow_symlinks=False):
                continue
            parsed = parse_name(entry.name.removesuffix(f".{SUFFIX}") + ".raw")
            if parsed is not None:
                found[parsed[:2]] = Path(entry.path)
        return found

    def _build(self, uuid: str, generation: int, fill: Callable[[Path], None], readonly: bool = False) -> Path:
        final = self.path_for(uuid, generation)
        if final.exists():
            raise VolumeError(f"volume {uuid}#{generation} already exists at {final}")
        tmp = fsutil.temp_path_for(final)
        tmp.unlink()
        tmp.mkdir(mode=0o700)
        try:
            (tmp / "rootfs").mkdir(mode=0o755)
            fill(tmp)
            os.chmod(tmp, 0o755)
            if readonly:
                (tmp / RUNTIME_SPEC_NAME).write_text(json.dumps(READONLY_SPEC, indent=2) + "\n")
                _drop_write_bits(tmp)
            os.sync()  # a whole tree: one sync beats an fsync per file
            os.replace(tmp, final)
            fsutil.fsync_dir(self.root)
        except BaseException:
            fsutil.remove_tree(tmp)
            raise
        return final

    def create_blank(self, uuid: str, generation: int, readonly: bool = False) -> Path:
        """An empty rootfs; its maxsizebytes is enforced as a quota by whoever mounts it."""
        return self._build(uuid, generation, lambda _d: None, readonly)

    def create_from_layers(self, uuid: str, generation: int, layers: list[tuple[Path, str, str]],
                           config: bytes, max_bytes: int | None,
                           progress: Callable[[int, int], None] | None = None, readonly: bool = False) -> Path:
        """Unpack ``layers`` (path, media type, digest) in order; cap total bytes at ``max_bytes``."""
        # lazy: tarfile, gzip and zstandard, for container images only (start-up)
        from edgevol.device.volumes.rootfs import UnpackError, UnpackLimits, unpack_layers

        def fill(d: Path) -> None:
            try:  # refuse a config that is not JSON before it lands beside the rootfs
                json.loads(config)
            except ValueError as exc:  # a VolumeError, so the volume fails instead of its task crashing
                raise VolumeError(f"image config is not valid JSON: {exc}") from None
            try:
                unpack_layers(d / "rootfs", layers, UnpackLimits(max_bytes=max_bytes), progress)
            except UnpackError as exc:
                raise VolumeError(str(exc)) from exc
            with open(d / CONFIG_NAME, "wb") as f:
                f.write(config)

        return self._build(uuid, generation, fill, readonly)

    def create_from_files(self, uuid: str, generation: int, files: list[tuple[str, Path]],
                          readonly: bool = False) -> Path:
        """``rootfs/`` holding each (name, source) as a file of its own: a BLOB_TREE's blobs, copied.

        Copies, never links: the sources are the CAS's immutable blobs, which a task
        writing into its volume must not reach. Names were checked when the
        manifest was read; they are checked again here against the directory itself.
        """
        def fill(d: Path) -> None:
            root = (d / "rootfs").resolve()
            for name, source in files:
                target = (root / name)
                if root not in target.resolve().parents:
                    raise VolumeError(f"file name {name!r} leaves the volume")
                target.parent.mkdir(parents=True, exist_ok=True)
                with open(source, "rb") as src, open(target, "xb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
                os.chmod(target, 0o644)

        return self._build(uuid, generation, fill, readonly)

    def delete(self, uuid: str, generation: int) -> bool:
        p = self.path_for(uuid, generation)
        if not p.exists():
            return False
        fsutil.remove_tree(p)
        fsutil.fsync_dir(self.root)
        return True

    def usage(self, path: Path, quota: int) -> VolumeUsage:
        """total = the quota (maxsizebytes), or without one what the content uses, as EVE sizes a container
        volume by its snapshot's usage (pkg/pillar/volumehandlers/containerhandler.go, GetVolumeDetails), never
        the filesystem (its growth room would be promised away from every later download); used = bytes under
        the directory."""
        used = tree_usage(path)
        return VolumeUsage(virtual_size=quota if quota > 0 else used, allocated=used)
