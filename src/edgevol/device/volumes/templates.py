"""One ``qemu-img create`` per image shape; every other volume of that shape is a copy of its bytes.

An empty qcow2 image is fully determined by its shape: virtual size and, for
an overlay, its backing file and that file's format (qcow2 headers hold no
timestamps or ids), and it is small (about 200 KiB up to a 1 TiB disk). A
device asked for a thousand volumes of a few shapes (blank disks of one
size, clones of one image) would otherwise run a thousand ``qemu-img``
processes, each costing more CPU than the volume's whole I/O. The first
image of a shape is made and checked by qemu-img, never by hand, and its
bytes are kept in memory for the next ones.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from edgevol.device.volumes import qemu

# (virtual size, backing file or "", backing format or "")
Shape = tuple[int, str, str]
Make = Callable[[Path], qemu.ImageInfo]  # creates the image at the path given, returns what qemu-img says of it
MAX_TEMPLATE = 4 << 20  # an empty image bigger than this (a huge L1 table) is not worth keeping


class ImageTemplates:
    """Bounded, thread-safe memory of empty images, most recently used kept."""

    def __init__(self, limit: int = 32) -> None:
        self._limit = limit
        self._made: OrderedDict[Shape, tuple[bytes, qemu.ImageInfo]] = OrderedDict()
        self._lock = threading.Lock()
        self._shape_locks: dict[Shape, threading.Lock] = {}

    def write(self, shape: Shape, dst: Path, make: Make) -> qemu.ImageInfo:
        """Put an empty image of ``shape`` at ``dst`` (not synced: the caller commits it) and return its info;
        ``make`` builds it there the first time a shape is asked for."""
        with self._lock:
            shape_lock = self._shape_locks.setdefault(shape, threading.Lock())
        with shape_lock:  # workers asking for a new shape at once: one makes it, the others copy it
            with self._lock:
                entry = self._made.get(shape)
                if entry is not None:
                    self._made.move_to_end(shape)
            if entry is None:
                info = make(dst)
                self._keep(shape, dst, info)
                return info
        dst.write_bytes(entry[0])
        return entry[1]

    def _keep(self, shape: Shape, made: Path, info: qemu.ImageInfo) -> None:
        if made.stat().st_size > MAX_TEMPLATE:
            return
        data = made.read_bytes()
        with self._lock:
            self._made[shape] = (data, info)
            while len(self._made) > self._limit:
                self._shape_locks.pop(self._made.popitem(last=False)[0], None)
