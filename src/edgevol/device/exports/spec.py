"""The values the export engine takes and reports (its whole public vocabulary)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

FILE_FORMATS = ("qcow2", "raw")
DIR_FORMAT = "dir"


@dataclass(frozen=True)
class ExportSpec:
    """One volume to serve: a file (qcow2/raw) through qemu-storage-daemon, a directory through virtiofsd."""

    uuid: str
    generation: int
    path: Path
    fmt: str  # "qcow2" | "raw" | "dir"
    readonly: bool

    @property
    def kind(self) -> str:
        return "directory" if self.fmt == DIR_FORMAT else "file"


@dataclass(frozen=True)
class Counters:
    """Guest-visible I/O of one export, counted since device boot."""

    read_bytes: int = 0
    write_bytes: int = 0
    read_ops: int = 0
    write_ops: int = 0

    def __add__(self, other: Counters) -> Counters:
        return Counters(self.read_bytes + other.read_bytes, self.write_bytes + other.write_bytes,
                        self.read_ops + other.read_ops, self.write_ops + other.write_ops)


@dataclass(frozen=True)
class ExportStatus:
    uuid: str
    generation: int
    kind: str  # "file" | "directory"
    fmt: str
    readonly: bool
    sockets: dict[str, str]  # file: nbd, vhost-user-blk, qmp; directory: virtiofs
    pid: int | None
    state: str  # "running" | "restarting" | "failed"
    restarts: int  # daemon restarts after crashes, this agent run
    error: str | None  # the last failure: what and why (exit status, stderr tail)
    next_attempt: float | None  # time.time() of the next restart while "restarting"
    counters: Counters | None  # since boot; None where the daemon exposes none (virtiofsd)
