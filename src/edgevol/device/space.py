"""Disk space accounting: what is free, what is already promised, and whether a new job fits.

A download or a volume create is admitted only if the free space, minus what
running and queued work will still write (remaining bytes of downloads in
flight, the growth room of writable volumes up to their maxsizebytes) and
minus a reserve for the system, covers what the new job needs. Short of
space the object waits with an error that gives the figures, and goes ahead
by itself once space is freed.
"""

from __future__ import annotations

import contextlib
import errno
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Collection, Iterator

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


@dataclass
class _Commitments:
    """What admitted work will still write, read from the state database once per reconcile pass.

    A pass admits up to thousands of jobs; reading every row for each would
    make it O(n^2). Jobs admitted during the pass are added as they are, so
    two admitted in one pass cannot both count on the same free bytes.
    """

    free: int
    downloads: dict[str, int]  # blob sha256 -> bytes still to download
    growth: dict[tuple[str, int], int]  # writable volume -> growth room up to its maxsizebytes
    held: dict[tuple[str, int], int]  # every volume -> bytes it holds on disk
    admitted: dict[tuple[str, int] | str, int] = field(default_factory=dict)  # this pass's jobs (thin or not)
    admitted_total: int = 0

    def __post_init__(self) -> None:
        self.downloads_total = sum(self.downloads.values())
        self.growth_total = sum(self.growth.values())

    def promised(self, *, except_blob: str | None, except_volume: tuple[str, int] | None, thin: bool,
                 releasing: Collection[tuple[str, int]]) -> int:
        total = self.downloads_total - self.downloads.get(except_blob or "", 0)
        if not thin:
            total += self.growth_total - sum(self.growth.get(r, 0) for r in {except_volume, *releasing}
                                             if r is not None)
        mine = sum(self.admitted.get(key, 0) for key in {except_blob, except_volume} if key is not None)
        return total + self.admitted_total - mine


class SpaceLedger:
    def __init__(self, root: Path, store: StateStore, free: Callable[[Path], int] = free_bytes) -> None:
        self.root = root
        self.store = store
        self._free = free
        self._pass: _Commitments | None = None

    @contextlib.contextmanager
    def one_pass(self) -> Iterator[None]:
        """Read the commitments once for the checks of one reconcile pass (the database changes under the
        pass only by what the pass itself admits, which :meth:`admit` adds)."""
        self._pass = self._read()
        try:
            yield
        finally:
            self._pass = None

    def _read(self) -> _Commitments:
        downloads = {b["sha256"]: max(b["size"] - b["done_bytes"], 0)
                     for b in self.store.rows("blobs", "sha256", "state", "size", "done_bytes")
                     if b["state"] not in (S.LOADED, S.INITIAL, S.ERROR)}
        growth: dict[tuple[str, int], int] = {}
        held: dict[tuple[str, int], int] = {}
        for v in self.store.rows("volumes", "uuid", "generation", "state", "path", "readonly", "max_size",
                                 "cur_size"):
            ident = (v["uuid"], v["generation"])
            held[ident] = v["cur_size"]
            if not v["readonly"] and (v["path"] or v["state"] == S.CREATING_VOLUME):
                growth[ident] = max(v["max_size"] - v["cur_size"], 0)
        return _Commitments(self._free(self.root), downloads, growth, held)

    def promised(self, *, except_blob: str | None = None, except_volume: tuple[str, int] | None = None,
                 thin: bool = False, releasing: Collection[tuple[str, int]] = ()) -> int:
        """Bytes that admitted work will still write (with ``thin``, volumes' growth room is not counted)."""
        return (self._pass or self._read()).promised(except_blob=except_blob, except_volume=except_volume,
                                                     thin=thin, releasing=releasing)

    def check(self, need: int, reserve: int, *, blob: str | None = None,
              volume: tuple[str, int] | None = None, thin: bool = False,
              releasing: Collection[tuple[str, int]] = ()) -> SpaceVerdict:
        """Whether ``need`` more bytes fit; ``releasing`` names volumes counted as already gone
        (what they hold on disk is free, their growth room no longer promised)."""
        now = self._pass or self._read()
        freed = sum(now.held.get(r, 0) for r in releasing)
        return SpaceVerdict(need=need, free=now.free + freed, reserve=reserve,
                            promised=now.promised(except_blob=blob, except_volume=volume, thin=thin,
                                                  releasing=releasing))

    def admit(self, need: int, *, blob: str | None = None, volume: tuple[str, int] | None = None) -> None:
        """A job that passed :meth:`check` starts: the rest of the pass counts its bytes as promised."""
        key = blob if blob is not None else volume
        if self._pass is not None and key is not None:
            self._pass.admitted_total += need - self._pass.admitted.get(key, 0)
            self._pass.admitted[key] = need
