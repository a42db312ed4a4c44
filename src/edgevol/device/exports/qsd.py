"""File volumes through qemu-storage-daemon: one daemon per volume, the image opened once.

The daemon serves the format node over NBD (unix socket, export name = the
volume's uuid) and vhost-user-blk, with a QMP monitor. ``readonly`` is
enforced twice: ``read-only=on`` on both block nodes and ``writable=off`` on
both exports (an NBD client's write gets EPERM; vhost-user-blk advertises RO).

Counters: QEMU 7.2's ``query-blockstats`` reports zeros for a storage daemon's
exports (their BlockBackends are anonymous, so left out of the list, and
neither the NBD nor the vhost-user-blk server does block accounting; with
``query-nodes`` the nodes show only ``wr_highest_offset``). The daemon's own
``blk_co_preadv``/``blk_co_pwritev`` trace events fire once per request an
export makes on its BlockBackend (never for qcow2 metadata I/O, which happens
below it), so they are enabled on stderr and counted as they arrive. Cost: one
short stderr line per guest request. Write-zeroes requests count as writes of
their length; discard and flush are not counted.
"""

from __future__ import annotations

import os
import re
import socket
import threading
from pathlib import Path

from qemu.qmp.legacy import QEMUMonitorProtocol

from .spec import Counters, ExportSpec

QSD = "qemu-storage-daemon"
TRACE_EVENTS = ("blk_co_preadv", "blk_co_pwritev")
_TRACE = re.compile(r"\b(blk_co_preadv|blk_co_pwritev) blk \S+ bs \S+ offset \d+ bytes (\d+)")
SOCKETS = {"nbd": "nbd.sock", "vhost-user-blk": "vhost.sock", "qmp": "qmp.sock"}


def socket_names(stem: str) -> dict[str, str]:
    """Socket file names (relative to the exports dir) of one export."""
    return {role: f"{stem}.{suffix}" for role, suffix in SOCKETS.items()}


def _onoff(flag: bool) -> str:
    return "on" if flag else "off"


def argv(spec: ExportSpec, sockets: dict[str, str]) -> list[str]:
    """The command line; socket paths are relative (the daemon runs in the exports dir: sun_path is 108 bytes)."""
    ro, writable = _onoff(spec.readonly), _onoff(not spec.readonly)
    path = str(spec.path.resolve()).replace(",", ",,")
    cmd = [QSD]
    for event in TRACE_EVENTS:
        cmd += ["--trace", f"enable={event}"]
    return cmd + [
        "--blockdev", f"driver=file,node-name=file0,filename={path},read-only={ro}",
        "--blockdev", f"driver={spec.fmt},node-name=fmt0,file=file0,read-only={ro}",
        "--nbd-server", f"addr.type=unix,addr.path={sockets['nbd']}",
        "--export", f"type=nbd,id=nbd0,node-name=fmt0,name={spec.uuid},writable={writable}",
        "--export", f"type=vhost-user-blk,id=vub0,node-name=fmt0,addr.type=unix,"
                    f"addr.path={sockets['vhost-user-blk']},writable={writable}",
        "--chardev", f"socket,id=qmp0,path={sockets['qmp']},server=on,wait=off",
        "--monitor", "chardev=qmp0",
    ]


def _unix_connect(path: Path) -> socket.socket:
    """Connect through /proc/self/fd/DIRFD/NAME: a long data dir would overflow sun_path (108 bytes)."""
    dirfd = os.open(path.parent, os.O_PATH)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(f"/proc/self/fd/{dirfd}/{path.name}")
    except OSError:
        sock.close()
        raise
    finally:
        os.close(dirfd)
    return sock


def exports_ready(qmp_path: Path, timeout: float = 2.0) -> bool:
    """Both exports registered, asked over QMP (sockets existing is not enough to be serving)."""
    mon = QEMUMonitorProtocol(_unix_connect(qmp_path))
    try:
        mon.settimeout(timeout)
        mon.connect()
        found = mon.cmd("query-block-exports")
    finally:
        mon.close()
    ids = {e.get("id") for e in found} if isinstance(found, list) else set()
    return {"nbd0", "vub0"} <= ids


class TraceCounter:
    """Counts the daemon's request trace lines (called from its stderr reader thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._c = [0, 0, 0, 0]  # read bytes, write bytes, read ops, write ops

    def __call__(self, line: str) -> bool:
        m = _TRACE.search(line)
        if m is None:
            return False
        nbytes, write = int(m.group(2)), m.group(1) == "blk_co_pwritev"
        with self._lock:
            self._c[1 if write else 0] += nbytes
            self._c[3 if write else 2] += 1
        return True

    def snapshot(self) -> Counters:
        with self._lock:
            return Counters(*self._c)
