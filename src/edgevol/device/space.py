"""Disk space accounting: what is free, what is already promised, and whether a new job fits.

A download or a volume create is admitted only if the free space, minus what
running and queued work will still write (remaining bytes of downloads in
flight, the growth room of writable volumes up to their maxsizebytes) and
minus a reserve for the system, covers what the new job needs. Short of
space the object waits with an error that gives the figures, and goes ahead
by itself once space is freed.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Collection

from edgevol.api import messages as m
from edgevol.device.errors import human_bytes
from edgevol.device.state import StateStore, sqlite_full

S = m.ZSwState

# Test hook, named as such: pretend the data filesystem has this many bytes free.
FREE_BYTES_OVERRIDE_ENV = "EDGEVOL_TEST_FREE_BYTES"


@dataclass(frozen=True)
class SpaceVerdict:
    need: int
    free: int
    promised: int
    reserve: int

    @property
    def available(self) -> int:
        return self.free - self.promised - self.reserve

    @property
    def ok(self) -> bool:
        return self.need <= self.available

    def describe(self, what: str) -> str:
        """EVE's sentence first (Eden and evetest match on "Remaining"), then how the figure was reached.

        ``what`` is "volume" or "blob", as in EVE's volumemgr.
        """
        have = max(self.available, 0)
        return (f"Remaining disk space {have} {what} needs {self.need}: not enough disk space, need "
                f"{human_bytes(self.need)}, have {human_bytes(have)} ({human_bytes(self.free)} free, "
                f"{human_bytes(self.promised)} promised to work in progress and volumes, "
                f"{human_bytes(self.reserve)} kept in reserve)")


def disk_full(exc: BaseException) -> bool:
    """True for what a full data filesystem raises: ENOSPC/EDQUOT from the OS, SQLITE_FULL from the state db."""
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    return sqlite_full(exc)


def free_bytes(path: Path) -> int:
    override = os.environ.get(FREE_BYTES_OVERRIDE_ENV)
    if override:
        return int(override)
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


class SpaceLedger:
    def __init__(self, root: Path, store: StateStore, free: Callable[[Path], int] = free_bytes) -> None:
        self.root = root
        self.store = store
        self._free = free

    def promised(self, *, except_blob: str | None = None, except_volume: tuple[str, int] | None = None,
                 thin: bool = False, releasing: Collection[tuple[str, int]] = ()) -> int:
        """Bytes that admitted work will still write (with ``thin``, volumes' growth room is not counted)."""
        total = 0
        for b in self.store.all("blobs"):
            if b["sha256"] != except_blob and b["state"] not in (S.LOADED, S.INITIAL, S.ERROR):
                total += max(b["size"] - b["done_bytes"], 0)
        for v in [] if thin else self.store.all("volumes"):
            ident = (v["uuid"], v["generation"])
            if ident == except_volume or ident in releasing or v["readonly"]:
                continue
            if v["path"] or v["state"] == S.CREATING_VOLUME:
                total += max(v["max_size"] - v["cur_size"], 0)
        return total

    def check(self, need: int, reserve: int, *, blob: str | None = None,
              volume: tuple[str, int] | None = None, thin: bool = False,
              releasing: Collection[tuple[str, int]] = ()) -> SpaceVerdict:
        """Whether ``need`` more bytes fit; ``releasing`` names volumes counted as already gone
        (what they hold on disk is free, their growth room no longer promised)."""
        freed = sum(v["cur_size"] for v in self.store.all("volumes") if (v["uuid"], v["generation"]) in releasing)
        return SpaceVerdict(need=need, free=self._free(self.root) + freed, reserve=reserve,
                            promised=self.promised(except_blob=blob, except_volume=volume, thin=thin,
                                                   releasing=releasing))
