"""File volumes: disk images for VMs, one file per (uuid, generation).

Files are named ``<uuid>#<generation>.<fmt>``, ``fmt`` being the volume's
disk format in lower case as EVE names them (``qcow2``, ``raw``, ``qcow``,
``vhd``, ``vmdk``, ``vhdx``, ``iso``), so that a bumped generation lives
beside the old one. Every volume is built under a temp name and only renamed
into place when complete, so a crash never leaves a half-written volume that
looks real; ``clean_temps`` sweeps the leftovers.
"""

from __future__ import annotations

import os
import re
import subprocess
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from edgevol import fsutil
from edgevol.device.crashpoints import crash_point
from edgevol.device.volumes import qemu
from edgevol.device.volumes.templates import ImageTemplates, Shape
from edgevol.device.volumes.qemu import QemuImgError

SECTOR = 512

# A volume's disk format (its file suffix, and edgevol.model.desired.ImageFormat's value of the content it
# can be made from) -> the qemu-img driver that opens it. An ISO is opened as raw, as EVE hands it to the
# hypervisor (pkg/pillar/cmd/domainmgr/domainmgr.go:2484-2488).
DRIVERS = {"qcow2": "qcow2", "raw": "raw", "qcow": "qcow", "vhd": "vpc", "vmdk": "vmdk", "vhdx": "vhdx", "iso": "raw"}
FORMATS = tuple(DRIVERS)
# Content formats a volume can be a copy-on-write overlay of (edgevol.volume.clone=backing); the others are copied.
CLONABLE = ("raw", "qcow2")
# VMDK create types that keep everything in the one file (others name extents in other files).
_VMDK_SELF_CONTAINED = ("monolithicSparse", "streamOptimized")
_ISO_DESCRIPTOR_AT = 32 * 1024  # ISO 9660 and UDF volume descriptors start after 16 sectors of 2 KiB
_ISO_IDS = (b"CD001", b"NSR02", b"NSR03")  # ISO 9660 primary/supplementary descriptor, UDF's NSR
T = TypeVar("T")
_INFO_MEMO = 16384  # qemu-img info answers kept (a few hundred bytes each)

_UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
_UUID_RE = re.compile(rf"^{_UUID}$")
_NAME_RE = re.compile(rf"^({_UUID})#(0|[1-9][0-9]*)\.({'|'.join(FORMATS)})$")


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


def volume_format(path: Path) -> str | None:
    """The disk format of a volume file by its name (``container`` for a directory volume), None if unknown."""
    path = Path(path)
    if path.suffix == ".container":
        return "container"
    parsed = parse_name(path.name)
    return parsed[2] if parsed else None


class FileVolumes:
    """Manages the volume image files in one directory."""

    def __init__(self, root: Path, qemu_img: str = "qemu-img", *, use_reflink: bool = True) -> None:
        self.root = Path(root)
        self.qemu_img = qemu_img
        # Reflink can be turned off to force the validating qemu-img copy.
        self.use_reflink = use_reflink
        self.root.mkdir(parents=True, exist_ok=True)
        self._infos: OrderedDict[tuple[object, ...], qemu.ImageInfo] = OrderedDict()
        self._infos_lock = threading.Lock()
        self._templates = ImageTemplates()

    # -- what qemu-img said about a file, while the file stays as it was -----

    @staticmethod
    def _identity(path: Path) -> tuple[int, ...]:
        st = os.stat(path)
        return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns

    def _image_info(self, path: Path, drv: str) -> qemu.ImageInfo:
        """``qemu-img info``, asked once per file version: any write changes the file's size or mtime, and
        with them the key. A thousand clones of one blob validate it once, and a volume just made is not
        inspected again to be recorded (each call is a process pair, prlimit and qemu-img)."""
        key = (*self._identity(path), drv)
        with self._infos_lock:
            hit = self._infos.get(key)
        if hit is not None:
            return hit
        info = qemu.image_info(path, drv, qemu_img=self.qemu_img)
        self._remember(key, info)
        return info

    def _remember(self, key: tuple[object, ...], info: qemu.ImageInfo) -> None:
        with self._infos_lock:
            self._infos[key] = info
            self._infos.move_to_end(key)
            while len(self._infos) > _INFO_MEMO:
                self._infos.popitem(last=False)

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
        if fmt == "qcow2":
            return self._from_template((size, "", ""), final, lambda path: self._new_qcow2(path, size), readonly,
                                       f"cannot create blank volume {final.name}")
        self._built(final, readonly, f"cannot create blank volume {final.name}", lambda tmp: os.truncate(tmp, size))
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
        *,
        backing: bool = False,
    ) -> Path:
        """A volume holding the disk image ``src`` (content format ``src_fmt``), grown (never shrunk) to ``size``.

        With ``backing`` (RAW or QCOW2 content only; other formats are still
        copied), the volume is a qcow2 overlay whose backing file is ``src``
        itself, at its absolute path and in its pinned format: created in O(1),
        and the guest's writes land in the overlay, never in ``src``. ``src``
        must then be immutable and outlive the volume (a CAS blob the caller pins).

        ``src`` is an untrusted downloaded blob: it is refused unless it really
        is ``src_fmt`` and stands alone (no backing, external data or extent
        file that could make the guest read host files). As EVE does
        (pkg/pillar/volumehandlers/filehandler.go:118-124, 176-201), the volume
        keeps the image's format and is grown to ``size``; an ISO is never
        grown and always read-only. Where qemu-img cannot grow the format
        (qcow, vhd, vmdk, vhdx) and growth is needed, the volume is converted
        to qcow2 and grown; an OVA's disk always becomes a qcow2 volume.
        """
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise VolumeError(f"volume size must be a non-negative integer, got {size!r}")
        src = Path(src)
        if src_fmt == "ova":
            return self._create_from_ova(uuid, generation, src, size, readonly, progress)
        if src_fmt not in DRIVERS:
            raise VolumeError(f"unsupported image format {src_fmt!r}; expected one of {FORMATS} or 'ova'")
        self._ensure_absent(uuid, generation)
        info = self._validate(src, src_fmt, f"source image {src}")
        if backing and src_fmt in CLONABLE:
            return self._make_overlay(uuid, generation, src, src_fmt, info, size, readonly, progress)
        return self._make(uuid, generation, src, src_fmt, info, size, readonly, progress)

    def _make(self, uuid: str, generation: int, src: Path, src_fmt: str, info: qemu.ImageInfo, size: int,
              readonly: bool, progress: Callable[[float], None] | None, *, convert: bool = False) -> Path:
        """Copy the validated ``src`` into place, in its format or (``convert``, or growth it cannot take) qcow2."""
        target = _round_up(size)
        if src_fmt == "iso":  # a CD-ROM: never grown, never written
            grow, readonly = False, True
        else:
            grow = info.virtual_size < target
        keep = not convert and (DRIVERS[src_fmt] in qemu.GROWABLE or not grow)
        out_fmt = src_fmt if keep else "qcow2"
        src_drv, out_drv = DRIVERS[src_fmt], DRIVERS[out_fmt]
        final = self.path_for(uuid, generation, out_fmt)

        def build(tmp: Path) -> None:
            # A VMDK is rewritten by qemu-img (as monolithicSparse): a streamOptimized one, as OVAs carry,
            # cannot be written in place ("Could not write to allocated cluster for streamOptimized").
            if out_fmt == src_fmt and src_drv != "vmdk" and self.use_reflink and self._reflink(src, tmp):
                # The clone is our private file: re-validate it so nothing the
                # source could have become in between slips through.
                self._validate(tmp, src_fmt, f"cloned image {tmp}", deep=True)
                if progress is not None:
                    progress(100.0)
            else:
                qemu.convert(src, src_drv, tmp, out_drv, progress, qemu_img=self.qemu_img)
            if grow and qemu.image_info(tmp, out_drv, qemu_img=self.qemu_img).virtual_size < target:
                qemu.resize(tmp, out_drv, target, qemu_img=self.qemu_img)

        self._built(final, readonly, f"cannot create volume {final.name} from {src}", build)
        return final

    def _make_overlay(self, uuid: str, generation: int, src: Path, src_fmt: str, info: qemu.ImageInfo, size: int,
                      readonly: bool, progress: Callable[[float], None] | None) -> Path:
        """A qcow2 overlay on the validated ``src``, as big as the image or ``size``, whichever is larger."""
        backing = Path(os.path.abspath(src))
        final = self.path_for(uuid, generation, "qcow2")
        shape = (_round_up(max(info.virtual_size, size)), str(backing), DRIVERS[src_fmt])
        self._from_template(shape, final, lambda path: self._new_overlay(path, *shape), readonly,
                            f"cannot create volume {final.name} over {src}")
        if progress is not None:
            progress(100.0)
        return final

    def _from_template(self, shape: Shape, final: Path, make: Callable[[Path], qemu.ImageInfo], readonly: bool,
                       failure: str) -> Path:
        """An empty qcow2 image of ``shape`` (a copy of its template, or made by ``make``), committed as
        ``final``; what qemu-img said of it is kept, so recording the volume need not ask again."""
        info = self._built(final, readonly, failure, lambda tmp: self._templates.write(shape, tmp, make))
        self._remember((*self._identity(final), "qcow2"), info)
        return final

    @staticmethod
    def _built(final: Path, readonly: bool, failure: str, build: Callable[[Path], T]) -> T:
        """Run ``build`` on a temp name beside ``final``, then commit the file there: a crash never leaves a
        half-made volume under its real name. Any failure removes the temp file; qemu-img's becomes a
        VolumeError that starts with ``failure``."""
        tmp = fsutil.temp_path_for(final)
        try:
            result = build(tmp)
            crash_point("volume.temp.written")
            fsutil.commit_file(tmp, final, 0o444 if readonly else 0o644)
        except QemuImgError as exc:
            tmp.unlink(missing_ok=True)
            raise VolumeError(f"{failure}: {exc}") from exc
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return result

    def _new_qcow2(self, path: Path, size: int) -> qemu.ImageInfo:
        """An empty qcow2 image (a template for blank volumes of this size)."""
        qemu.create(path, "qcow2", size, qemu_img=self.qemu_img)
        return qemu.image_info(path, "qcow2", qemu_img=self.qemu_img)

    def _new_overlay(self, path: Path, size: int, backing: str, backing_drv: str) -> qemu.ImageInfo:
        """An overlay image (a template for clones of ``backing``), checked after qemu-img wrote it: it
        names our backing, in our format, and nothing else."""
        qemu.create_overlay(path, Path(backing), backing_drv, size, qemu_img=self.qemu_img)
        made = qemu.image_info(path, "qcow2", qemu_img=self.qemu_img)
        if made.backing_file != backing or made.data_file is not None:
            raise VolumeError(f"overlay {path.name} names backing {made.backing_file!r}, "
                              f"data file {made.data_file!r}; expected {backing}")
        return made

    def backing_of(self, path: Path) -> Path | None:
        """The backing file a volume reads through to (a clone's CAS blob), None for a standalone volume."""
        path = Path(path)
        if path.is_dir() or volume_format(path) != "qcow2":
            return None
        try:
            backing = self._image_info(path, "qcow2").backing_file
        except QemuImgError as exc:
            raise VolumeError(f"cannot inspect volume {path}: {exc}") from exc
        return Path(backing) if backing else None

    def _create_from_ova(self, uuid: str, generation: int, src: Path, size: int, readonly: bool,
                         progress: Callable[[float], None] | None) -> Path:
        """Take the first disk the OVA's OVF names (a VMDK), and make a qcow2 volume of it."""
        from edgevol.device.volumes import ova  # lazy: tarfile and an XML parser, for OVAs only (start-up)

        self._ensure_absent(uuid, generation)
        # The extracted disk is a temp file beside the volumes, so clean_temps sweeps it after a crash.
        disk = fsutil.temp_path_for(self.path_for(uuid, generation, "vmdk"))
        try:
            try:
                name = ova.extract_first_disk(
                    src, disk, None if progress is None else lambda done, total: progress(50 * done / max(total, 1)))
            except ova.OvaError as exc:
                raise VolumeError(f"OVA {src}: {exc}") from exc
            info = self._validate(disk, "vmdk", f"OVA {src}: disk {name!r}")
            half = None if progress is None else (lambda pct: progress(50 + pct / 2))
            return self._make(uuid, generation, disk, "vmdk", info, size, readonly, half, convert=True)
        finally:
            disk.unlink(missing_ok=True)

    def _validate(self, path: Path, fmt: str, subject: str, deep: bool = False) -> qemu.ImageInfo:
        """Refuse images that are not what they claim or that reference other files; ``subject`` names the
        image in error messages."""
        drv = DRIVERS[fmt]
        if drv == "vmdk":
            self._check_vmdk_header(path, subject)
        try:
            info = self._image_info(path, drv)
        except QemuImgError as exc:
            raise VolumeError(f"{subject} is not a valid {fmt} image: {exc.stderr}") from exc
        if info.format != drv:
            raise VolumeError(f"{subject} is {info.format}, but was declared as {fmt}")
        if info.backing_file is not None:
            raise VolumeError(
                f"{subject} has a backing file ({info.backing_file!r}); refused for safety"
            )
        if info.data_file is not None:
            raise VolumeError(
                f"{subject} has an external data file ({info.data_file!r}); refused for safety"
            )
        if info.corrupt:
            raise VolumeError(f"{subject} is marked corrupt")
        if drv == "vmdk" and (info.create_type not in _VMDK_SELF_CONTAINED
                              or any(e != str(path) for e in info.extents)):
            raise VolumeError(f"{subject} is a {info.create_type} vmdk with extents in other files "
                              f"({', '.join(info.extents)}); refused for safety")
        if fmt == "iso":
            self._check_iso(path, subject)
        if deep and fmt == "qcow2":
            try:
                result = qemu.check(path, fmt, qemu_img=self.qemu_img)
            except QemuImgError as exc:
                raise VolumeError(f"{subject} failed qemu-img check: {exc.stderr}") from exc
            if not result.ok:
                raise VolumeError(
                    f"{subject} is damaged: {result.corruptions} corruptions, "
                    f"{result.check_errors} check errors"
                )
        return info

    @staticmethod
    def _check_vmdk_header(path: Path, subject: str) -> None:
        """Only a sparse VMDK with its own data: a text descriptor, or a sparse header of capacity 0 (whose
        embedded descriptor is read instead), can name any host file as an extent, and qemu-img info would
        open those files before we could look at the answer."""
        with open(path, "rb") as f:
            head = f.read(20)
        if head.startswith(b"# Disk Desc"):
            raise VolumeError(f"{subject} is a VMDK descriptor, which names other files as extents; refused for "
                              "safety (a VMDK must be monolithicSparse or streamOptimized)")
        if head[:4] != b"KDMV":
            raise VolumeError(f"{subject} is not a valid vmdk image: no sparse VMDK header (KDMV)")
        if int.from_bytes(head[12:20], "little") == 0:
            raise VolumeError(f"{subject} is a vmdk whose header defers to a descriptor; refused for safety")

    @staticmethod
    def _check_iso(path: Path, subject: str) -> None:
        """A plausible ISO 9660 or UDF image: a volume descriptor where the standards put the first one.

        qemu opens an ISO as raw, so any bytes would pass qemu-img info."""
        found = set()
        with open(path, "rb") as f:
            f.seek(_ISO_DESCRIPTOR_AT)
            for _ in range(16):
                block = f.read(2048)
                if len(block) < 6:
                    break
                found.add(block[1:6])
        if not found.intersection(_ISO_IDS):
            raise VolumeError(f"{subject} is not a valid iso image: no ISO 9660 or UDF volume descriptor "
                              f"at {_ISO_DESCRIPTOR_AT} bytes")

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
        drv = DRIVERS.get(fmt or "", "qcow2")
        if drv == "raw":
            virtual = st.st_size
        else:
            try:
                virtual = self._image_info(path, drv).virtual_size
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


__all__ = ["CLONABLE", "FORMATS", "FileVolumes", "VolumeError", "VolumeUsage", "parse_name", "volume_format"]
