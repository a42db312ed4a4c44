"""Per-digest exclusive locks that work within and across processes.

``fcntl.flock`` alone stops a second process; the in-process registry makes
the same-process case explicit and thread-safe. Lock files are unlinked on
release, so acquisition re-checks that the locked inode is still the one at
the path (otherwise two holders could each lock a different inode).
"""

from __future__ import annotations

import fcntl
import os
import threading
from pathlib import Path

from .errors import IngestBusy

_held: set[str] = set()
_held_guard = threading.Lock()


class DigestLock:
    """An acquired lock on ``path``; call :meth:`release` exactly once."""

    def __init__(self, path: Path, digest: str) -> None:
        self.path = path
        self.digest = digest
        self._key = os.path.realpath(path)
        self._fd: int | None = None
        with _held_guard:
            if self._key in _held:
                raise IngestBusy(digest)
            _held.add(self._key)
        try:
            self._fd = self._lock_file()
        except BaseException:
            with _held_guard:
                _held.discard(self._key)
            raise

    def _lock_file(self) -> int:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise IngestBusy(self.digest) from None
            try:
                on_disk = os.stat(self.path)
            except FileNotFoundError:
                os.close(fd)
                continue
            mine = os.fstat(fd)
            if (on_disk.st_dev, on_disk.st_ino) != (mine.st_dev, mine.st_ino):
                os.close(fd)
                continue
            return fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Unlink the lock file (while still holding it) and unlock."""
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self._fd)
            self._fd = None
            with _held_guard:
                _held.discard(self._key)
