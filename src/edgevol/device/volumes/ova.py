"""OVA packages: a tar holding an OVF descriptor and the disk image(s) it names.

An OVA is untrusted input like a container layer, but nothing in it is ever
written under its own name: only the first disk the OVF names is copied, as a
stream, into a file the caller chose. Every entry is still checked, so that a
hostile or broken package (a ``..`` name, a link, a device node, a huge
metadata header, no disk) is refused with an error naming the entry rather
than half used.
"""

from __future__ import annotations

import os
import tarfile
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

from edgevol.device.volumes.tarsafe import HeaderTooBig, UnsafePath, guarded_tarinfo, split_name

CHUNK = 1 << 20
MAX_OVF = 4 << 20  # an OVF descriptor is XML metadata; anything bigger is hostile
MAX_ENTRIES = 1024  # tarfile keeps a TarInfo per entry; an OVA has a handful


class OvaError(Exception):
    """The OVA is not a package edgevol can take a disk from; the message says why."""


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _attr(el: ET.Element, name: str) -> str | None:
    """An attribute by its local name (OVF 1.x and 2.x put them in the ``ovf:`` namespace)."""
    for key, value in el.attrib.items():
        if _local(key) == name:
            return value
    return None


def first_disk_href(ovf: bytes) -> str:
    """The file (``References/File/@href``) of the first ``DiskSection/Disk`` that has one."""
    head = ovf.upper()
    if b"<!DOCTYPE" in head or b"<!ENTITY" in head:
        raise OvaError("the OVF descriptor declares a DTD or entities; refused")
    try:
        root = ET.fromstring(ovf)
    except ET.ParseError as exc:
        raise OvaError(f"the OVF descriptor is not valid XML: {exc}") from None
    files = {_attr(f, "id"): f for f in root.iter() if _local(f.tag) == "File"}
    for disk in root.iter():
        if _local(disk.tag) != "Disk" or not _attr(disk, "fileRef"):
            continue
        ref = _attr(disk, "fileRef")
        f = files.get(ref)
        href = _attr(f, "href") if f is not None else None
        if not href:
            raise OvaError(f"the OVF's first disk names file {ref!r}, which its References do not list")
        if (_attr(f, "compression") or "identity") != "identity" or _attr(f, "chunkSize"):
            raise OvaError(f"the OVF's disk file {href!r} is compressed or chunked; not supported")
        return href
    raise OvaError("the OVF names no disk (no DiskSection/Disk with a fileRef)")


def _entry_name(name: str, what: str) -> str:
    """A package-relative name, ``a/b``; absolute names and ``..`` are refused."""
    if name.startswith("/"):
        raise OvaError(f"{what} {name!r} is an absolute path; refused")
    try:
        parts = split_name(name)
    except UnsafePath as exc:
        raise OvaError(f"{what} {name!r}: {exc}; refused") from None
    return "/".join(parts)


def _members(tf: tarfile.TarFile) -> list[tarfile.TarInfo]:
    """Every entry, each checked: only regular files and directories with safe names."""
    members = []
    while (m := tf.next()) is not None:
        if len(members) >= MAX_ENTRIES:
            raise OvaError(f"the OVA has more than {MAX_ENTRIES} entries; refused")
        _entry_name(m.name, "OVA entry")
        if m.issparse() or not (m.isreg() or m.isdir()):
            kind = ("a symlink" if m.issym() else "a hard link" if m.islnk() else "a device node"
                    if m.isdev() else "a sparse file" if m.issparse() else "not a regular file")
            raise OvaError(f"OVA entry {m.name!r} is {kind}; an OVA holds only regular files; refused")
        members.append(m)
    return members


def extract_first_disk(ova: Path, dest: Path, progress: Callable[[int, int], None] | None = None) -> str:
    """Copy the first disk the OVF names into ``dest`` (overwritten); returns its name in the package.

    The OVF is the first ``.ovf`` entry (OVF 1.1 wants it first in the
    package). The disk is streamed in 1 MiB chunks, so memory does not grow
    with its size; ``progress(done, total)`` follows the copy in bytes.
    """
    info_cls = guarded_tarinfo()
    try:
        with tarfile.open(ova, mode="r:", tarinfo=info_cls) as tf:
            members = _members(tf)
            ending = getattr(info_cls, "ending", None)
            if ending != "end":
                raise OvaError(f"the OVA is not a complete tar archive: {ending or 'no end-of-archive marker'}")
            ovfs = [m for m in members if m.isreg() and m.name.lower().endswith(".ovf")]
            if not ovfs:
                raise OvaError("the OVA has no .ovf descriptor")
            if ovfs[0].size > MAX_OVF:
                raise OvaError(f"the OVF descriptor {ovfs[0].name!r} is {ovfs[0].size} bytes (limit {MAX_OVF})")
            src = tf.extractfile(ovfs[0])
            assert src is not None
            href = _entry_name(first_disk_href(src.read(MAX_OVF + 1)), "the OVF's disk file")
            disk = next((m for m in members if m.isreg() and _entry_name(m.name, "OVA entry") == href), None)
            if disk is None:
                raise OvaError(f"the OVF names disk file {href!r}, which is not in the OVA")
            _copy(tf, disk, dest, progress)
            return href
    except (tarfile.TarError, EOFError, HeaderTooBig, ValueError, OverflowError) as exc:
        raise OvaError(f"the OVA is not a valid tar archive: {exc}") from exc


def _copy(tf: tarfile.TarFile, disk: tarfile.TarInfo, dest: Path,
          progress: Callable[[int, int], None] | None) -> None:
    src = tf.extractfile(disk)
    assert src is not None
    done = 0
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        while chunk := src.read(CHUNK):
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view):]
            done += len(chunk)
            if progress is not None:
                progress(done, disk.size)
    finally:
        os.close(fd)
    if done != disk.size:
        raise OvaError(f"OVA entry {disk.name!r} is truncated ({done} of {disk.size} bytes)")
