"""Input data for the benchmarks: incompressible blobs, a qcow2 image with holes, image layers.

Random bytes keep any layer (filesystem, qcow2, network) from getting a free
ride on compression or zero detection; the zero regions in the qcow2 source
give qemu-img something to skip, as real disk images do.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import random
import subprocess
import tarfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

__all__ = ["LayerTar", "MiB", "image_layers", "qcow2_with_holes", "random_blob"]

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


# -- container image layers -------------------------------------------------------

LAYER_MTIME = 1_700_000_000  # fixed, so the same seed gives the same layer digest on every run
SMALL_FILES = 1000  # per layer: many small files are what a real rootfs unpack spends its entries on
SMALL_DIRS = 40
SMALL_MAX = 16 << 10
OVERWRITTEN = 20  # the last layer rewrites this many small files of the first, so layer order matters


@dataclass(frozen=True)
class LayerTar:
    """One generated layer: the gzip blob on disk and what the image config and the report need."""

    path: Path
    diff_id: str  # "sha256:<hex>" of the uncompressed tar
    tar_bytes: int
    files: int  # regular-file entries (hardlinks not counted)
    file_bytes: int


class _Random(io.RawIOBase):
    """``size`` deterministic pseudo-random bytes, read by tarfile as a member's content."""

    def __init__(self, rng: random.Random, size: int) -> None:
        self._rng, self._left = rng, size

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        n = self._left if n < 0 else min(n, self._left)
        self._left -= n
        return self._rng.randbytes(n)


class _HashingGzip:
    """The uncompressed tar stream: hashed (diff_id) and counted on its way into gzip."""

    def __init__(self, path: Path) -> None:
        self._raw = open(path, "wb")
        self._gz = gzip.GzipFile(fileobj=self._raw, mode="wb", compresslevel=6, mtime=0, filename="")
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self.size += len(data)
        return self._gz.write(data)

    def close(self) -> None:
        self._gz.close()
        self._raw.close()


def _text(rng: random.Random, size: int) -> bytes:
    """Config-file-like bytes that gzip can shrink, unlike the random ones."""
    words = ("enabled", "path", "/usr/lib", "timeout", "=", "true", "false", "user", "0755", "level", "\n")
    out = bytearray()
    while len(out) < size:
        out += " ".join(rng.choices(words, k=64)).encode()
    return bytes(out[:size])


def _layer(index: int, count: int, path: Path, size: int) -> LayerTar:
    rng = random.Random(f"edgevol-bench-layer-{index}")
    sink = _HashingGzip(path)
    files = file_bytes = 0

    def add(name: str, kind: bytes = tarfile.REGTYPE, data: bytes | None = None, length: int = 0,
            link: str = "", mode: int = 0o644) -> None:
        nonlocal files, file_bytes
        info = tarfile.TarInfo(name)
        info.type, info.mode, info.mtime, info.linkname = kind, mode, LAYER_MTIME, link
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        content: io.RawIOBase | io.BytesIO | None = None
        if kind == tarfile.REGTYPE:
            content = io.BytesIO(data) if data is not None else _Random(rng, length)
            info.size = len(data) if data is not None else length
            files += 1
            file_bytes += info.size
        tar.addfile(info, content)

    with tarfile.open(fileobj=sink, mode="w|", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
        tar.copybufsize = MiB
        # In directory-walk order, as image builders write layers (GNU tar restores a directory's
        # mtime when it leaves the directory, so interleaved directories would defeat it).
        add("etc/", tarfile.DIRTYPE, mode=0o755)
        for i in range(OVERWRITTEN if index in (0, count - 1) else 0):
            add(f"etc/conf-{i:03d}", data=_text(rng, 200 + i) + f"# layer {index}\n".encode())
        pkg = f"usr/lib/pkg{index}"
        for d in ("usr", "usr/lib", pkg):
            add(d + "/", tarfile.DIRTYPE, mode=0o755)
        small_total = 0
        per_dir = SMALL_FILES // SMALL_DIRS
        for i in range(SMALL_FILES):
            n = rng.randrange(0, SMALL_MAX)
            small_total += n
            sub = f"{pkg}/d{i // per_dir:02d}"
            if i % per_dir == 0:
                add(sub + "/", tarfile.DIRTYPE, mode=0o755)
            data = _text(rng, n) if i % 2 else None
            mode = 0o755 if i % 7 == 0 else 0o644
            add(f"{sub}/f{i:04d}.{'conf' if i % 2 else 'bin'}", data=data, length=n, mode=mode)
        big = max(0, size - small_total)
        for j, share in enumerate((0.5, 0.3, 0.2)):
            add(f"{pkg}/big-{j}.bin", length=int(big * share))
        for i in range(5):
            target = f"d{2 * i:02d}/f{2 * i * per_dir:04d}.bin"
            add(f"{pkg}/link-{i}", tarfile.SYMTYPE, link=target, mode=0o777)
        add(f"{pkg}/hard-0", tarfile.LNKTYPE, link=f"{pkg}/big-2.bin")
    sink.close()
    return LayerTar(path, "sha256:" + sink.sha.hexdigest(), sink.size, files, file_bytes)


def image_layers(out_dir: Path, total: int, count: int = 5) -> list[LayerTar]:
    """``count`` gzip layer tars of about ``total`` bytes of file content together, deterministic.

    Each layer holds three large random files, 1000 small files (half random,
    half text) in 40 directories, symlinks and a hardlink; the first and last
    layers both write ``etc/conf-*``, so only in-order application gives the
    last layer's content. Layers are built in parallel: gzip of random data
    runs at only ~25 MB/s per core.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"layer-{i}.tar.gz" for i in range(count)]
    with ProcessPoolExecutor(max_workers=min(count, os.cpu_count() or 1)) as pool:
        futures = [pool.submit(_layer, i, count, p, total // count) for i, p in enumerate(paths)]
        return [f.result() for f in futures]
