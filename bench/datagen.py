"""Input data for the benchmarks: incompressible blobs and a qcow2 image with holes.

Random bytes keep any layer (filesystem, qcow2, network) from getting a free
ride on compression or zero detection; the zero regions in the qcow2 source
give qemu-img something to skip, as real disk images do.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

__all__ = ["MiB", "random_blob", "qcow2_with_holes"]

MiB = 1 << 20
ZERO_EVERY_MIB = 64  # in each 64 MiB stretch ...
ZERO_MIB = 8  # ... the last 8 MiB are zeros (1/8 of the image)


def random_blob(path: Path, size: int) -> str:
    """Write ``size`` random bytes to ``path`` in 1 MiB chunks; return the sha256 hex."""
    h = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            chunk = os.urandom(min(MiB, left))
            f.write(chunk)
            h.update(chunk)
            left -= len(chunk)
    return h.hexdigest()


def _raw_with_holes(path: Path, size: int) -> None:
    zero = bytes(MiB)
    with open(path, "wb") as f:
        for i in range(-(-size // MiB)):
            n = min(MiB, size - i * MiB)
            in_hole = i % ZERO_EVERY_MIB >= ZERO_EVERY_MIB - ZERO_MIB
            f.write(zero[:n] if in_hole else os.urandom(n))


def qcow2_with_holes(path: Path, size: int) -> None:
    """A qcow2 whose guest view is ``size`` bytes: random data with 1/8 zero regions."""
    raw = path.with_suffix(".src.raw")
    _raw_with_holes(raw, size)
    try:
        subprocess.run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", str(raw), str(path)], check=True)
    finally:
        raw.unlink(missing_ok=True)
