"""File volumes: qcow2/raw disk images for VMs, one file per (uuid, generation).

Files are named ``<uuid>#<generation>.<fmt>`` so that a bumped generation lives
beside the old one. Every volume is built under a temp name and only renamed
into place when complete, so a crash never leaves a half-written volume that
looks real; ``clean_temps`` sweeps the leftovers.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edgevol import fsutil
from edgevol.device.crashpoints import crash_point
from edgevol.device.volumes import qemu
from edgevol.device.volumes.qemu import FORMATS, QemuImgError

SECTOR = 512

_UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
_UUID_RE = re.compile(rf"^{_UUID}$")
_NAME_RE = re.compile(rf"^({_UUID})#(0|[1-9][0-9]*)\.(qcow2|raw)$")


class VolumeError(Exception):
    """A volume could not be created or inspected; the message says why for the controller."""


@dataclass(frozen=True)
class VolumeUsage:
    """Size the guest sees versus host disk space actually consumed."""

    virtual_size: int
    allocated: int


def parse_name(name: str) -> tuple[str, int, str] | None:
    """``(uuid, generation, fmt)`` for a volume file name, None for anything else."""
    m = _NAME_RE.match(name)
    if m is None:
        return None
    return m.group(1), int(m.group(2)), m.group(3)


def _round_up(size: int) -> int:
    # qcow2 cannot be resized to a non-sector size; keep both formats alike.
    return -(-size // SECTOR) * SECTOR


class FileVolumes:
    """Manages the volume image files in one directory."""

    def __init__(self, root: Path, qemu_img: str = "qemu-img", *, use_reflink: bool = True) -> None:
        self.root = Path(root)
        self.qemu_img = qemu_img
        # Reflink can be turned off to force the validating qemu-img copy.
        self.use_reflink = use_reflink
        self.root.mkdir(parents=True, exist_ok=True)

    # -- naming ---------------------------------------------------------------

    def path_for(self, uuid: str, generation: int, fmt: str) -> Path:
        """Where volume (uuid, generation) in ``fmt`` lives; rejects odd names."""
        if not isinstance(uuid, str) or not _UUID_RE.match(uuid):
            raise VolumeError(f"volume uuid must be a canonical lowercase UUID, got {uuid!r}")
        if isinstance(generation, bool) or not isinstance(generation, int) or generation < 0:
            raise VolumeError(f"generation must be a non-negative integer, got {generation!r}")
        if fmt not in FORMATS:
            raise VolumeError(f"unsupported volume format {fmt!r}; expected one of {FORMATS}")
        return self.root / f"{uuid}#{generation}.{fmt}"

    def find(self, uuid: str, generation: int) -> Path | None:
        """The existing file for this volume, whatever its format."""
        for fmt in FORMATS:
            p = self.path_for(uuid, generation, fmt)
            if p.exists():
                return p
        return None

    def _ensure_absent(self, uuid: str, generation: int) -> None:
        existing = self.find(uuid, generation)
        if existing is not None:
            # A volume is never silently rewritten; the caller must delete first.
            raise VolumeError(f"volume {uuid}#{generation} already exists at {existing}")

    # -- creation -------------------------------------------------------------

    def create_blank(
        self, uuid: str, generation: int, size: int, fmt: str = "qcow2", readonly: bool = False
    ) -> Path:
        """A new empty sparse disk of ``size`` bytes (rounded up to 512)."""
        final = self.path_for(uuid, generation, fmt)
        if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
            raise VolumeError(f"blank volume size must be a positive integer, got {size!r}")
        self._ensure_absent(uuid, generation)
        size = _round_up(size)
        tmp = fsutil.temp_path_for(final)
        try:
            if fmt == "qcow2":
                qemu.create(tmp, "qcow2", size, qemu_img=self.qemu_img)
            else:
                os.truncate(tmp, size)
            crash_point("volume.temp.written")
            fsutil.commit_file(tmp, final, 0o444 if readonly else 0o644)
        except QemuImgError as exc:
            tmp.unlink(missing_ok=True)
            raise VolumeError(f"cannot create blank volume {final.name}: {exc}") from exc
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return final

    def create_from_image(
        self,
        uuid: str,
        generation: int,
        src: Path,
        src_fmt: str,
        size: int,
        readonly: bool = False,
        progress: Callable[[float], None] | None = None,
    ) -> Path:
        """A volume holding the disk image ``src``, grown (never shrunk) to ``size``.

        ``src`` is an untrusted downloaded blob: it is refused unless it really
        is ``src_fmt`` and stands alone (no backing or external data file that
        could make the guest read host files).
        """
        final = self.path_for(uuid, generation, src_fmt)
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise VolumeError(f"volume size must be a non-negative integer, got {size!r}")
        self._ensure_absent(uuid, generation)
        self._validate(Path(src), src_fmt, what="source image")
        tmp = fsutil.temp_path_for(final)
        try:
            if self.use_reflink and self._reflink(Path(src), tmp):
                # The clone is our private file: re-validate it so nothing the
                # source could have become in between slips through.
                self._validate(tmp, src_fmt, what="cloned image", deep=True)
                if progress is not None:
                    progress(100.0)
            else:
                qemu.convert(Path(src), src_fmt, tmp, src_fmt, progress, qemu_img=self.qemu_img)
            target = _round_up(size)
            info = qemu.image_info(tmp, src_fmt, qemu_img=self.qemu_img)
            if info.virtual_size < target:
                qemu.resize(tmp, src_fmt, target, qemu_img=self.qemu_img)
            crash_point("volume.temp.written")
            fsutil.commit_file(tmp, final, 0o444 if readonly else 0o644)
        except QemuImgError as exc:
            tmp.unlink(missing_ok=True)
            raise VolumeError(f"cannot create volume {final.name} from {src}: {exc}") from exc
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return final

    def _validate(self, path: Path, fmt: str, what: str, deep: bool = False) -> qemu.ImageInfo:
        """Refuse images that are not what they claim or that reference other files."""
        try:
            info = qemu.image_info(path, fmt, qemu_img=self.qemu_img)
        except QemuImgError as exc:
            raise VolumeError(f"{what} {path} is not a valid {fmt} image: {exc.stderr}") from exc
        if info.format != fmt:
            raise VolumeError(f"{what} {path} is {info.format}, but was declared as {fmt}")
        if info.backing_file is not None:
            raise VolumeError(
                f"{what} {path} has a backing file ({info.backing_file!r}); refused for safety"
            )
        if info.data_file is not None:
            raise VolumeError(
                f"{what} {path} has an external data file ({info.data_file!r}); refused for safety"
            )
        if info.corrupt:
            raise VolumeError(f"{what} {path} is marked corrupt")
        if deep and fmt == "qcow2":
            try:
                result = qemu.check(path, fmt, qemu_img=self.qemu_img)
            except QemuImgError as exc:
                raise VolumeError(f"{what} {path} failed qemu-img check: {exc.stderr}") from exc
            if not result.ok:
                raise VolumeError(
                    f"{what} {path} is damaged: {result.corruptions} corruptions, "
                    f"{result.check_errors} check errors"
                )
        return info

    @staticmethod
    def _reflink(src: Path, dst: Path) -> bool:
        """Copy-on-write clone (btrfs/xfs): instant and free; False where unsupported."""
        try:
            proc = subprocess.run(
                ["cp", "--reflink=always", "--sparse=auto", "--", str(src), str(dst)],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                check=False,
            )
        except OSError:
            return False
        return proc.returncode == 0

    # -- inspection and removal -----------------------------------------------

    def delete(self, uuid: str, generation: int) -> bool:
        """Remove this volume's file(s); True if anything was removed."""
        removed = False
        for fmt in FORMATS:
            try:
                self.path_for(uuid, generation, fmt).unlink()
                removed = True
            except FileNotFoundError:
                pass
        if removed:
            fsutil.fsync_dir(self.root)
        return removed

    def usage(self, path: Path) -> VolumeUsage:
        """Guest-visible size and host blocks used, for volume metrics."""
        path = Path(path)
        parsed = parse_name(path.name)
        fmt = parsed[2] if parsed else path.suffix.lstrip(".")
        try:
            st = path.stat()
        except OSError as exc:
            raise VolumeError(f"cannot stat volume {path}: {exc}") from exc
        if fmt == "raw":
            virtual = st.st_size
        else:
            try:
                virtual = qemu.image_info(path, "qcow2", qemu_img=self.qemu_img).virtual_size
            except QemuImgError as exc:
                raise VolumeError(f"cannot inspect volume {path}: {exc}") from exc
        return VolumeUsage(virtual_size=virtual, allocated=st.st_blocks * 512)

    def list(self) -> list[tuple[str, int, str, Path]]:
        """Every complete volume file, as (uuid, generation, fmt, path), sorted."""
        found: list[tuple[str, int, str, Path]] = []
        for entry in os.scandir(self.root):
            parsed = parse_name(entry.name)
            if parsed is None or not entry.is_file(follow_symlinks=False):
                continue
            found.append((*parsed, Path(entry.path)))
        found.sort(key=lambda t: (t[0], t[1], t[2]))
        return found

    def clean_temps(self) -> list[Path]:
        """Remove leftovers of interrupted creations (call at startup)."""
        return fsutil.remove_temps(self.root)


__all__ = ["FileVolumes", "VolumeError", "VolumeUsage", "parse_name"]
