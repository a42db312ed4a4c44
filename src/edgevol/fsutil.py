"""Atomic, durable file-system changes.

Every on-disk change edgevol makes goes through these helpers so that a
power cut or ``kill -9`` leaves either the old or the new file, never a torn one.
"""

from __future__ import annotations

import functools
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

TEMP_PREFIX = ".tmp-"
_SYNC_FILE_RANGE_WRITE = 2  # <linux/fs.h>: start writeback of dirty pages in the range, do not wait


def fsync_dir(path: Path) -> None:
    """Persist a directory entry change (create, rename, unlink) in ``path``."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@functools.cache
def _sync_file_range() -> Any:
    """libc's sync_file_range(2), or None where there is none (the os module does not offer it)."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes  # lazy: only a download needs it (start-up)

    try:
        fn = ctypes.CDLL(None, use_errno=True).sync_file_range  # the process's own symbols: libc is there
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


def start_writeback(fd: int, offset: int, length: int) -> bool:
    """Have the kernel start writing ``length`` bytes at ``offset`` of ``fd`` to disk, without waiting.

    A big streamed file otherwise sits in the page cache as dirty pages until
    the final fsync, which then waits for all of them at once while the
    network and the hasher idle, and which lets dirty memory grow with the
    file. Starting writeback as the bytes arrive keeps the disk busy alongside
    them. Durability still comes from the fsync; this only moves work earlier.
    Returns whether the kernel took the request (False off Linux, or for a
    descriptor it does not apply to, such as a pipe).
    """
    fn = _sync_file_range()
    return fn is not None and fn(fd, offset, length, _SYNC_FILE_RANGE_WRITE) == 0


def temp_path_for(path: Path) -> Path:
    """A unique temporary name beside ``path``; leftovers are recognisable by prefix."""
    fd, name = tempfile.mkstemp(prefix=TEMP_PREFIX + path.name + ".", dir=path.parent)
    os.close(fd)
    return Path(name)


def atomic_write_bytes(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` via temp name, fsync and rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_for(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def commit_file(tmp: Path, path: Path, mode: int | None = None) -> None:
    """Make a fully written temp file visible under its final name, durably.

    The mode is set before the rename so the file is never visible with the
    wrong permissions; the fsync goes through a read-only descriptor so a
    0o444 file can be committed by a non-root process too.
    """
    if mode is not None:
        os.chmod(tmp, mode)
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def remove_temps(directory: Path) -> list[Path]:
    """Delete leftovers of interrupted atomic writes in ``directory``."""
    removed = []
    if not directory.is_dir():
        return removed
    for p in directory.iterdir():
        if p.name.startswith(TEMP_PREFIX):
            if p.is_dir() and not p.is_symlink():
                remove_tree(p)
            else:
                p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def remove_tree(path: Path) -> None:
    """Delete a directory tree, including read-only directories an unpacked image may hold."""

    def make_writable_and_retry(func: object, failed: str, _exc: object) -> None:
        os.chmod(os.path.dirname(failed), 0o700)
        if os.path.isdir(failed) and not os.path.islink(failed):
            os.chmod(failed, 0o700)
        func(failed)  # type: ignore[operator]

    shutil.rmtree(path, onerror=make_writable_and_retry)
