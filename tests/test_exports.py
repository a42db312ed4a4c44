"""The volume export engine with real daemons: qemu-storage-daemon over NBD, virtiofsd, qemu-io as the client.

Clients run in the exports dir and name sockets relatively, as a long data dir
would make absolute socket paths exceed sun_path's 108 bytes.
"""

from __future__ import annotations

import hashlib
import os
import signal
import stat
import subprocess
import time
from pathlib import Path
from typing import Callable

import pytest

from edgevol.device.exports import Counters, ExportSpec, Exports

pytestmark = pytest.mark.skipif(not Path("/usr/bin/qemu-storage-daemon").exists(),
                                reason="qemu-system-common (qemu-storage-daemon, virtiofsd) is not installed")

UUID = "6ba7b810-9dad-11d1-80b4-00c04fd430c8"
KEY = (UUID, 1)


def qcow2(path: Path, size: str = "16M") -> Path:
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), size], check=True)
    return path


def nbd_io(ex: Exports, key: tuple[str, int], *cmds: str, ro: bool = False) -> subprocess.CompletedProcess[str]:
    """qemu-io over the export's NBD socket; the export name is the volume uuid."""
    st = next(s for s in ex.status() if (s.uuid, s.generation) == key)
    sock = Path(st.sockets["nbd"])
    argv = ["qemu-io", *(["-r"] if ro else []), "-f", "raw", f"nbd+unix:///{key[0]}?socket={sock.name}"]
    for c in cmds:
        argv += ["-c", c]
    return subprocess.run(argv, cwd=sock.parent, capture_output=True, text=True, timeout=20)


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "failed" not in out and "error" not in out.lower(), out
    return out


def eventually(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


def counters_reach(ex: Exports, key: tuple[str, int], want: Counters) -> None:
    """The counts arrive from the daemon's stderr asynchronously: wait for them, then they must be exact."""
    try:
        eventually(lambda: ex.counters(*key) == want, 3.0)
    except AssertionError:
        assert ex.counters(*key) == want


def restarted(ex: Exports, old_pid: int) -> None:
    def check() -> bool:
        ex.supervise()
        st = ex.status()[0]
        return st.state == "running" and st.pid not in (None, old_pid)
    eventually(check, 10.0)


def nbd_raw_write(sock: Path, name: str, data: bytes) -> tuple[int, int]:
    """A minimal NBD client that writes even to a read-only export: (transmission flags, the server's errno).

    qemu-io refuses to open a read-only export for writing on its own side; this shows the server refuses too.
    """
    import socket
    import struct

    s = socket.socket(socket.AF_UNIX)
    s.settimeout(5)
    dirfd = os.open(sock.parent, os.O_PATH)  # the absolute path may exceed sun_path's 108 bytes
    try:
        s.connect(f"/proc/self/fd/{dirfd}/{sock.name}")
    finally:
        os.close(dirfd)

    def recv(n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = s.recv(n - len(buf))
            assert chunk, "NBD server closed the connection"
            buf += chunk
        return buf

    try:
        assert recv(16) == b"NBDMAGICIHAVEOPT"
        recv(2)  # handshake flags
        s.sendall(struct.pack(">I", 3))  # FIXED_NEWSTYLE | NO_ZEROES
        s.sendall(struct.pack(">QII", 0x49484156454F5054, 1, len(name)) + name.encode())  # NBD_OPT_EXPORT_NAME
        _size, tflags = struct.unpack(">QH", recv(10))
        s.sendall(struct.pack(">IHHQQI", 0x25609513, 0, 1, 7, 0, len(data)) + data)  # NBD_CMD_WRITE
        magic, error, handle = struct.unpack(">IIQ", recv(16))
        assert magic == 0x67446698 and handle == 7
        return tflags, error
    finally:
        s.close()


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def exports(tmp_path: Path):
    ex = Exports(tmp_path / "exports", boot_id="boot-1")
    yield ex
    ex.close()


def test_qcow2_pattern_counters_sockets_and_stop(tmp_path: Path, exports: Exports) -> None:
    vol = qcow2(tmp_path / "vol.qcow2")
    exports.apply({KEY: ExportSpec(UUID, 1, vol, "qcow2", readonly=False)})
    [st] = exports.status()
    assert (st.state, st.kind, st.error, st.restarts) == ("running", "file", None, 0)
    assert set(st.sockets) == {"nbd", "vhost-user-blk", "qmp"}
    root = tmp_path / "exports"
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    for path in st.sockets.values():
        assert Path(path).parent == root and stat.S_ISSOCK(os.stat(path).st_mode)
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert exports.counters(*KEY) == Counters()

    # exactly the requests made: 3 writes of 64 KiB, 5 reads of 4 KiB (qemu-io's NBD client adds none)
    ok(nbd_io(exports, KEY, *(f"write -P 0x11 {i * 65536} 64k" for i in range(3)),
              *(f"read -P 0x11 {i * 4096} 4k" for i in range(5))))
    counters_reach(exports, KEY, Counters(read_bytes=20480, write_bytes=196608, read_ops=5, write_ops=3))

    ok(nbd_io(exports, KEY, "write -P 0xab 0 1M", "read -P 0xab 0 1M"))
    counters_reach(exports, KEY, Counters(read_bytes=20480 + 1048576, write_bytes=196608 + 1048576,
                                          read_ops=6, write_ops=4))
    assert exports.status()[0].counters == exports.counters(*KEY)

    exports.apply({})
    assert exports.status() == [] and not list(root.glob("*.sock"))
    # the data went into the qcow2 itself
    ok(subprocess.run(["qemu-io", "-f", "qcow2", "-r", str(vol), "-c", "read -P 0xab 0 1M"],
                      capture_output=True, text=True))
    # stopped and started again in the same boot: counting continues
    assert exports.counters(*KEY) == Counters(1069056, 1245184, 6, 4)
    exports.apply({KEY: ExportSpec(UUID, 1, vol, "qcow2", readonly=False)})
    ok(nbd_io(exports, KEY, "read 0 4k"))
    counters_reach(exports, KEY, Counters(1069056 + 4096, 1245184, 7, 4))


def test_readonly_refuses_writes_and_a_flip_restarts(tmp_path: Path, exports: Exports) -> None:
    vol = tmp_path / "vol.raw"
    vol.write_bytes(b"\x5a" * (4 << 20))
    before = sha(vol)
    exports.apply({KEY: ExportSpec(UUID, 1, vol, "raw", readonly=True)})
    [st] = exports.status()
    assert st.readonly and st.state == "running"
    # the NBD export advertises read-only: a client opening it for writing is refused at the export
    refused = nbd_io(exports, KEY, "write -P 0xab 0 64k")
    assert refused.returncode != 0 and "Permission denied" in refused.stderr, refused.stderr
    # and a client that ignores the read-only flag gets its write refused by the server (QEMU 7.2 says EINVAL)
    tflags, error = nbd_raw_write(Path(st.sockets["nbd"]), UUID, b"\xab" * 4096)
    assert tflags & 2 and error != 0  # NBD_FLAG_READ_ONLY advertised; the write fails
    ok(nbd_io(exports, KEY, "read -P 0x5a 0 64k", ro=True))
    counters_reach(exports, KEY, Counters(read_bytes=65536, read_ops=1))  # the refused write never got in
    assert sha(vol) == before

    exports.apply({KEY: ExportSpec(UUID, 1, vol, "raw", readonly=False)})
    [st2] = exports.status()
    assert not st2.readonly and st2.pid != st.pid
    ok(nbd_io(exports, KEY, "write -P 0xab 0 64k"))
    exports.close()
    assert vol.read_bytes()[:65536] == b"\xab" * 65536


def test_kill_9_is_recovered_and_counters_continue(tmp_path: Path, exports: Exports) -> None:
    exports.BACKOFF_FIRST = 0.3
    vol = qcow2(tmp_path / "vol.qcow2")
    exports.apply({KEY: ExportSpec(UUID, 1, vol, "qcow2", readonly=False)})
    ok(nbd_io(exports, KEY, "write -P 0xcd 0 128k", "read -P 0xcd 0 64k"))
    counters_reach(exports, KEY, Counters(65536, 131072, 1, 1))
    exports.supervise()  # polls and persists

    pid = exports.status()[0].pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    eventually(lambda: (exports.supervise(), exports.status()[0].state)[1] == "restarting")
    st = exports.status()[0]
    assert st.pid is None and st.next_attempt is not None and st.next_attempt > time.time() - 1
    assert st.error is not None and "SIGKILL" in st.error and "qemu-storage-daemon" in st.error
    assert not list((tmp_path / "exports").glob("*.sock"))

    restarted(exports, pid)
    st = exports.status()[0]
    assert st.restarts == 1 and "SIGKILL" in (st.error or "")
    assert stat.S_IMODE(os.stat(st.sockets["nbd"]).st_mode) == 0o600
    ok(nbd_io(exports, KEY, "read -P 0xcd 0 128k", "write -P 0xef 1M 64k"))
    counters_reach(exports, KEY, Counters(65536 + 131072, 131072 + 65536, 2, 2))


def test_counters_persist_across_agent_restarts_and_reset_at_boot(tmp_path: Path) -> None:
    vol = qcow2(tmp_path / "vol.qcow2")
    wanted = {KEY: ExportSpec(UUID, 1, vol, "qcow2", readonly=False)}
    root = tmp_path / "exports"
    first = Exports(root, boot_id="boot-1")
    try:
        first.apply(wanted)
        ok(nbd_io(first, KEY, "write 0 64k"))
        counters_reach(first, KEY, Counters(write_bytes=65536, write_ops=1))
        first.supervise()
    finally:
        first.close()

    again = Exports(root, boot_id="boot-1")  # the agent restarted, same boot
    try:
        again.apply(wanted)
        assert again.counters(*KEY) == Counters(write_bytes=65536, write_ops=1)
        ok(nbd_io(again, KEY, "read 0 4k"))
        counters_reach(again, KEY, Counters(4096, 65536, 1, 1))
        again.supervise()
    finally:
        again.close()

    rebooted = Exports(root, boot_id="boot-2")
    try:
        rebooted.apply(wanted)
        assert rebooted.counters(*KEY) == Counters()
    finally:
        rebooted.close()


def test_missing_file_fails_until_it_appears(tmp_path: Path, exports: Exports) -> None:
    vol = tmp_path / "later.qcow2"
    exports.apply({KEY: ExportSpec(UUID, 1, vol, "qcow2", readonly=False)})
    [st] = exports.status()
    assert st.state == "failed" and st.pid is None and str(vol) in (st.error or "")
    qcow2(vol)
    exports.supervise()
    assert exports.status()[0].state == "running"


def test_broken_image_is_retried_with_backoff_and_its_error_reported(tmp_path: Path, exports: Exports) -> None:
    vol = tmp_path / "bad.qcow2"
    vol.write_bytes(b"not a qcow2 image" * 100)
    exports.apply({KEY: ExportSpec(UUID, 1, vol, "qcow2", readonly=False)})
    st = exports.status()[0]
    assert st.state == "restarting" and "exited with status 1" in (st.error or "")
    assert "qcow2" in (st.error or "").lower()  # the daemon's own words, from its stderr
    first_wait = (st.next_attempt or 0) - time.time()
    assert 0 < first_wait <= 1.0
    time.sleep(max(first_wait, 0))
    exports.supervise()
    st2 = exports.status()[0]
    assert st2.state == "restarting" and st2.restarts == 1
    assert 1.0 < (st2.next_attempt or 0) - time.time() <= 2.0  # doubled


def test_directory_volume_virtiofsd(tmp_path: Path, exports: Exports) -> None:
    exports.BACKOFF_FIRST = 0.3
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "f").write_text("hello")
    exports.apply({KEY: ExportSpec(UUID, 1, shared, "dir", readonly=True)})
    [st] = exports.status()
    assert (st.state, st.kind, st.counters) == ("running", "directory", None)
    assert exports.counters(*KEY) is None
    sock = Path(st.sockets["virtiofs"])
    assert sock.parent == tmp_path / "exports" and stat.S_IMODE(sock.stat().st_mode) == 0o600
    # read-only is enforced in the daemon's own mount namespace; the host still sees the directory writable
    assert st.pid is not None
    inside = subprocess.run(["nsenter", "-t", str(st.pid), "-m", "touch", str(shared / "x")],
                            capture_output=True, text=True)
    assert inside.returncode != 0 and "Read-only file system" in inside.stderr
    (shared / "host-write").write_text("ok")

    os.kill(st.pid, signal.SIGKILL)
    restarted(exports, st.pid)
    st2 = exports.status()[0]
    assert st2.restarts == 1 and "SIGKILL" in (st2.error or "") and Path(st2.sockets["virtiofs"]).exists()

    exports.apply({KEY: ExportSpec(UUID, 1, shared, "dir", readonly=False)})
    st3 = exports.status()[0]
    assert st3.pid is not None and st3.pid != st2.pid
    writable = subprocess.run(["nsenter", "-t", str(st3.pid), "-m", "touch", str(shared / "x")])
    assert writable.returncode == 0
    exports.apply({})
    assert not sock.exists()


def test_virtiofsd_session_end_is_not_a_crash(tmp_path: Path, exports: Exports) -> None:
    """virtiofsd exits 0 when its client hangs up (a VM stopped): served again at once, no restart counted."""
    import socket

    shared = tmp_path / "shared"
    shared.mkdir()
    exports.apply({KEY: ExportSpec(UUID, 1, shared, "dir", readonly=False)})
    st = exports.status()[0]
    assert st.pid is not None
    dirfd = os.open(tmp_path / "exports", os.O_PATH)
    try:
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(f"/proc/self/fd/{dirfd}/{Path(st.sockets['virtiofs']).name}")
    finally:
        os.close(dirfd)
    restarted(exports, st.pid)
    st2 = exports.status()[0]
    assert (st2.restarts, st2.error) == (0, None)
