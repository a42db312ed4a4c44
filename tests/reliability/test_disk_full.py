"""A really full data disk: filled behind the agent's back, after its space check let the work in.

Admission control (``edgevol.device.space``) keeps most work from ever
meeting ENOSPC, so every scenario here gets past it the way a real device
would: another process fills the filesystem while a download streams, or a
volume turns out much larger on disk than the blob it is made from (a
compressed qcow2, a gzip layer) while ``edgevol.disk.thin.overcommit`` lets
it promise only what the blob uses. The data dir is a real tmpfs of a few
dozen MiB, the agent is the real CLI in daemon mode, and what the test checks
is what a user sees: states and error texts in ``device status``, bytes and
inodes on disk, and the state database's own integrity check.

The guarantees: the object that hit the full disk goes to ERROR saying so;
nothing half-made becomes visible (no blob in ``cas/blobs`` whose bytes are
incomplete, no volume under its final name, no ``.tmp-*`` left behind);
nothing complete is touched; the agent keeps running; the state database
stays intact even when it cannot write at all; and once space is freed every
object completes by itself, a download resuming from the bytes it already had.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from edgevol.api import messages as m
from edgevol.device.datastores.oci_manifest import host_platform
from edgevol.device.state import StateStore
from edgevol.tools.httpserve import RangeHTTPServer
from edgevol.tools.oci_image import Layer, build_image, push
from tests.configs import ConfigBuilder, sha256_file
from tests.conftest import (EDGEVOL, by_name, device_status, guest_bytes, guest_bytes_sha256, make_raw_image,
                            volume_sha256)
from tests.registry_fixture import RunningRegistry, registry  # noqa: F401  (fixture)
from tests.reliability.figures import record, scale

MiB = 1 << 20
NO_SPACE = "no space left on the device"  # what the agent says for ENOSPC it meets itself
SLOW_RETRY = 3.0  # edgevol.download.slow.retry.seconds: how soon an ERROR is tried again
DEADLINE = 90.0  # generous bound for any one wait; the tests never assert on timing

# (image MiB, fraction of the download done when the disk fills, who meets the full disk first)
DOWNLOAD_POINTS = [(24, 0.35, "download"), (16, 0.5, "database"), (16, 0.7, "download"), (32, 0.2, "database"),
                   (48, 0.5, "download")][: scale(2, 5)]
# (virtual MiB of a compressed qcow2, MiB left free when the volume is added)
CONVERT_POINTS = [(48, 12), (32, 4), (96, 40)][: scale(1, 3)]
# (MiB the layer unpacks to, MiB left free)
UNPACK_POINTS = [(40, 10), (64, 24)][: scale(1, 2)]
DB_ROUNDS = scale(1, 4)
LATE_BLANKS = 6  # blank volumes that arrive while the disk stays full


# -- fixtures and helpers ----------------------------------------------------------


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[[int], Path]]:
    """``mount(mib)``: a fresh tmpfs of that size (needs root, as CI has), unmounted at teardown."""
    mounted: list[Path] = []

    def mount(mib: int) -> Path:
        mnt = tmp_path / f"fs{len(mounted)}"
        mnt.mkdir()
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={mib}m", "tmpfs", str(mnt)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.fail(f"these tests mount a tmpfs (run as root, as CI does): {proc.stderr.strip()}")
        mounted.append(mnt)
        return mnt

    yield mount
    for mnt in reversed(mounted):
        subprocess.run(["umount", "-l", str(mnt)], check=False)


class Agent:
    """``edgevol device run`` as a daemon subprocess, logging JSON lines to a file."""

    def __init__(self, data: Path, cfg: Path, log: Path) -> None:
        self.data, self.log = data, log
        with open(log, "ab") as err:
            self.proc = subprocess.Popen(
                [*EDGEVOL, "device", "run", "--data-dir", str(data), "--config", str(cfg), "--interval", "0.2",
                 "--log-format", "json"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(30)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(30)


def free_bytes(mnt: Path) -> int:
    st = os.statvfs(mnt)
    return st.f_bavail * st.f_frsize


def fill(mnt: Path, name: str, leave_mib: int = 0) -> int:
    """Another process (dd) writes into ``mnt`` until ENOSPC, or until ``leave_mib`` are left; bytes it took."""
    target = mnt / name
    cmd = ["dd", "if=/dev/zero", f"of={target}", "bs=64K"]
    if leave_mib:
        cmd.append(f"count={max(free_bytes(mnt) - leave_mib * MiB, 0) // (64 << 10)}")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if not leave_mib:
        assert "No space left on device" in proc.stderr, proc.stderr  # full (the agent may free a little after)
    return target.stat().st_size


def wait_status(data: Path, ok: Callable[[dict], bool], what: str, agent: Agent,
                seen: list[dict] | None = None) -> dict:
    """Poll ``device status`` until ``ok``; the agent must stay alive throughout."""
    deadline = time.monotonic() + DEADLINE
    while True:
        assert agent.alive(), f"the agent died while waiting for {what}:\n{agent.log_text()[-4000:]}"
        if not (data / "state.db").exists():  # the agent is still starting
            time.sleep(0.1)
            continue
        st = device_status(data)
        if seen is not None:
            seen.append(st)
        if ok(st):
            return st
        assert time.monotonic() < deadline, f"timed out waiting for {what}: {st}"
        time.sleep(0.1)


def state_of(st: dict, table: str, name: str) -> str:
    found = [r for r in st[table] if r.get("display_name") == name]
    return found[0]["state"] if found else "(absent)"


def blob_row(st: dict, sha: str) -> dict:
    return next(r for r in st["blobs"] if r["sha256"] == sha)


def describe(row: dict) -> str:
    return (row.get("error") or {}).get("description", "")


def identity(path: Path) -> tuple[str, int]:
    """What "untouched" means for a complete file: same bytes, same inode."""
    return sha256_file(path), path.stat().st_ino


def temps(data: Path) -> list[str]:
    return sorted(p.name for p in (data / "volumes").iterdir() if p.name.startswith(".tmp-"))


def integrity(db: Path) -> str:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return con.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        con.close()


def base_config(http_url: str, keeper_sha: str) -> ConfigBuilder:
    """Reserve 0 and thin overcommit, so admission lets in everything the free space covers."""
    b = (ConfigBuilder().item("edgevol.disk.reserve.bytes", "0").item("edgevol.disk.thin.overcommit", "true")
         .item("edgevol.download.slow.retry.seconds", str(SLOW_RETRY)))
    ds = b.datastore(http_url)
    ct = b.content_tree(ds, "keep.raw", keeper_sha, "raw", name="keep")
    b.download_volume(ct, 4 * MiB, name="keeper")
    return b


@dataclass
class Keeper:
    """A complete volume and its blob that must come through untouched."""

    volume: Path
    blob: Path
    before: dict[str, tuple[str, int]]

    @classmethod
    def of(cls, data: Path, st: dict, sha: str) -> Keeper:
        volume = Path(by_name(st["volumes"], "keeper")["path"])
        blob = data / "cas/blobs/sha256" / sha
        return cls(volume, blob, {"volume": identity(volume), "blob": identity(blob)})

    def check(self) -> None:
        assert {"volume": identity(self.volume), "blob": identity(self.blob)} == self.before


def start(tmp_path: Path, mnt: Path, b: ConfigBuilder, tag: str) -> tuple[Agent, Path, Path]:
    data, cfg = mnt / "dev", tmp_path / f"{tag}.pb"
    b.save(cfg)
    return Agent(data, cfg, tmp_path / f"{tag}.log"), data, cfg


def assert_no_crash(agent: Agent, *, every_failure_recorded: bool = True) -> None:
    """No traceback, no crashed task; and unless the disk left no room even for that, no failure that could
    not be recorded as the object's state."""
    text = agent.log_text()
    assert "Traceback" not in text and "task crashed" not in text, text[-4000:]
    if every_failure_recorded:
        assert "task stopped" not in text, text[-4000:]


# -- 1: the disk fills while a download streams --------------------------------------


def test_disk_fills_during_a_download(tmp_path, tmpfs, datastore_dir, http_server: RangeHTTPServer):
    keep = make_raw_image(datastore_dir / "keep.raw", 4, seed=7)
    figures: list[dict[str, Any]] = []
    for n, (mib, fraction, first) in enumerate(DOWNLOAD_POINTS):
        figures.append(_download_round(tmp_path, tmpfs(2 * mib + 24), datastore_dir, http_server, keep,
                                       mib, fraction, first, n))
    record("disk_full/download", counts={"fills": len(figures), "recoveries": len(figures),
                                         "resumed": sum(1 for f in figures if f["resumed_from"] > 0)},
           result="pass", details={"rounds": figures})


def _download_round(tmp_path: Path, mnt: Path, datastore_dir: Path, server: RangeHTTPServer, keep: Path,
                    mib: int, fraction: float, first: str, n: int) -> dict[str, Any]:
    """Fill the disk during a download; ``first`` says whether the download or the database meets it first."""
    image = make_raw_image(datastore_dir / f"big{n}.raw", mib, seed=100 + n)
    sha, keep_sha = sha256_file(image), sha256_file(keep)
    b = base_config(server.url, keep_sha)
    agent, data, cfg = start(tmp_path, mnt, b, f"download{n}")
    try:
        st = wait_status(data, lambda s: state_of(s, "volumes", "keeper") == "CREATED_VOLUME", "the keeper", agent)
        keeper = Keeper.of(data, st, keep_sha)

        # the big download, slowed down so the disk can fill while it streams
        server.rate_limit_bytes_per_sec = 8 * MiB
        ct = b.content_tree(b.cfg.datastores[0].id, image.name, sha, "raw", name="big")
        b.download_volume(ct, mib * MiB, name="big")
        b.save(cfg)
        partial = data / "cas/ingest" / f"{sha}.partial"
        deadline = time.monotonic() + DEADLINE
        while not (partial.exists() and partial.stat().st_size >= fraction * mib * MiB):
            assert time.monotonic() < deadline and agent.alive(), agent.log_text()[-4000:]
            time.sleep(0.01)
        requests_before_fill = len(server.requests)
        if first == "database":
            server.rate_limit_bytes_per_sec = 20  # the download idles (a byte per 50 ms) ...
            time.sleep(0.3)
        filled = fill(mnt, "filler")
        filled_at = time.monotonic()
        if first == "database":
            # ... while a config change makes the agent write its database on the full disk, which takes back
            # the room the database keeps for itself; then the download goes on at full speed
            b.cfg.contentInfo[0].displayName = "keep-renamed"
            b.save(cfg)
            while (data / "state.db.reserve").exists():
                assert time.monotonic() - filled_at < DEADLINE and agent.alive(), agent.log_text()[-4000:]
                time.sleep(0.01)
            server.rate_limit_bytes_per_sec = 8 * MiB

        # the blob, its content tree and the volume waiting for it go to ERROR, saying why
        seen: list[dict] = []
        st = wait_status(data, lambda s: all(NO_SPACE in describe(r) for r in (
            blob_row(s, sha), by_name(s["content_trees"], "big"), by_name(s["volumes"], "big"))),
            "the ENOSPC error on blob, content tree and volume", agent, seen)
        blob = blob_row(st, sha)
        assert blob["state"] == "ERROR" and "free disk space" in blob["error"]["retry_condition"]
        assert by_name(st["content_trees"], "big")["state"] == "ERROR"
        assert by_name(st["volumes"], "big")["state"] == "ERROR"
        # nothing half-made in the store: the bytes so far wait in the partial, a prefix of the real thing
        held = partial.stat().st_size
        assert 0 < held < mib * MiB
        assert sorted(os.listdir(data / "cas/blobs/sha256")) == [keep_sha]
        with open(partial, "rb") as got, open(image, "rb") as want:
            assert got.read() == want.read(held)
        keeper.check()
        assert by_name(st["volumes"], "keeper")["state"] == "CREATED_VOLUME"

        # still full after a slow retry: it stays in ERROR (admission now holds it back with the figures)
        st = wait_status(data, lambda s: "not enough disk space" in describe(blob_row(s, sha)),
                         "the admission figures", agent, seen)
        assert all(blob_row(s, sha)["state"] == "ERROR" for s in seen)
        assert len(server.requests) == requests_before_fill  # no download attempt while the disk is full
        assert partial.stat().st_size == held and not (data / "cas/blobs/sha256" / sha).exists()

        # space comes back: the agent carries on by itself, resuming from the partial
        (mnt / "filler").unlink()
        server.rate_limit_bytes_per_sec = None
        freed_at = time.monotonic()
        st = wait_status(data, lambda s: state_of(s, "volumes", "big") == "CREATED_VOLUME", "recovery", agent)
        recovery = time.monotonic() - freed_at
        assert sha256_file(data / "cas/blobs/sha256" / sha) == sha
        assert volume_sha256(Path(by_name(st["volumes"], "big")["path"])) == sha  # the guest sees the image
        resumed = [r for r in server.requests[requests_before_fill:] if r[2]]
        assert resumed and resumed[-1][2] == f"bytes={held}-", server.requests[requests_before_fill:]
        assert not partial.exists() and temps(data) == []
        keeper.check()
        assert_no_crash(agent)
        assert agent.stop() == 0  # a clean exit: every object fine
    finally:
        server.rate_limit_bytes_per_sec = None
        if agent.alive():
            agent.stop()
    assert integrity(data / "state.db") == "ok"
    return {"image_mib": mib, "first_to_meet_it": first, "filled_at_bytes": held, "filler_bytes": filled,
            "resumed_from": held, "served_after_resume": mib * MiB - held,
            "seconds_full": round(freed_at - filled_at, 1), "recovery_seconds": round(recovery, 1)}


# -- 2: the disk fills while a volume is created ----------------------------------------


def _pattern_raw(path: Path, mib: int) -> Path:
    """Guest data that is not zeros (so it is really written) but compresses to almost nothing."""
    line = b"edgevol disk-full pattern "
    block = (line * (MiB // len(line) + 1))[:MiB]
    with open(path, "wb") as f:
        for i in range(mib):
            f.write(block[:-8] + i.to_bytes(8, "big"))
    return path


def test_disk_fills_while_qemu_img_converts_a_volume(tmp_path, tmpfs, datastore_dir, http_server):
    keep = make_raw_image(datastore_dir / "keep.raw", 4, seed=7)
    figures = []
    for n, (virtual, free_mib) in enumerate(CONVERT_POINTS):
        raw = _pattern_raw(tmp_path / f"pattern{n}.raw", virtual)
        image = datastore_dir / f"packed{n}.qcow2"
        subprocess.run(["qemu-img", "convert", "-c", "-f", "raw", "-O", "qcow2", str(raw), str(image)], check=True)
        want = sha256_file(raw)
        raw.unlink()
        b = base_config(http_server.url, sha256_file(keep))
        b.item("edgevol.volume.clone", "copy")  # a full copy: the volume is written by qemu-img convert
        ct = b.content_tree(b.cfg.datastores[0].id, image.name, sha256_file(image), "qcow2", name="big")
        figures.append(_volume_round(tmp_path, tmpfs(virtual + 24), b, ct, free_mib, f"convert{n}",
                                     lambda vol: guest_bytes_sha256(vol, "qcow2", tmp_path) == want,
                                     max_size=virtual * MiB, virtual=virtual, blob_bytes=image.stat().st_size))
    record("disk_full/volume_convert", counts={"fills": len(figures), "recoveries": len(figures)},
           result="pass", details={"rounds": figures})


def test_disk_fills_while_a_container_rootfs_unpacks(tmp_path, tmpfs, datastore_dir, http_server,
                                                    registry: RunningRegistry):  # noqa: F811
    keep = make_raw_image(datastore_dir / "keep.raw", 4, seed=7)
    os_name, arch, variant = host_platform()
    figures = []
    for n, (mib, free_mib) in enumerate(UNPACK_POINTS):
        content = _pattern_raw(tmp_path / f"big{n}.bin", mib).read_bytes()
        layer = Layer.from_files({"data/": ("dir",), "data/big.bin": content, "etc/ok": b"complete\n"})
        image = build_image([layer], {"Cmd": ["/bin/true"]}, os=os_name, arch=arch, variant=variant)
        push(registry.url, f"diskfull/app{n}", "v1", image)
        b = base_config(http_server.url, sha256_file(keep))
        reg = b.registry(registry.host)
        ct = b.content_tree(reg, f"diskfull/app{n}:v1", "", "container", name="big")

        def complete(vol: Path, content: bytes = content) -> bool:
            return (vol / "rootfs/etc/ok").read_bytes() == b"complete\n" and \
                (vol / "rootfs/data/big.bin").read_bytes() == content

        figures.append(_volume_round(tmp_path, tmpfs(mib + 24), b, ct, free_mib, f"unpack{n}", complete,
                                     max_size=0, virtual=mib, blob_bytes=layer.size))
    record("disk_full/volume_unpack", counts={"fills": len(figures), "recoveries": len(figures)},
           result="pass", details={"rounds": figures})


def _volume_round(tmp_path: Path, mnt: Path, b: ConfigBuilder, ct: str, free_mib: int, tag: str,
                  complete: Callable[[Path], bool], *, max_size: int, virtual: int,
                  blob_bytes: int) -> dict[str, Any]:
    """Load the content, fill the disk to ``free_mib``, then ask for a volume that needs more than that."""
    keep_sha = b.cfg.contentInfo[0].sha256
    agent, data, cfg = start(tmp_path, mnt, b, tag)
    try:
        st = wait_status(data, lambda s: state_of(s, "volumes", "keeper") == "CREATED_VOLUME"
                         and state_of(s, "content_trees", "big") == "LOADED", "the keeper and the content", agent)
        keeper = Keeper.of(data, st, keep_sha)
        blobs_before = {p.name: identity(p) for p in (data / "cas/blobs/sha256").iterdir()}
        filled = fill(mnt, "filler", leave_mib=free_mib)

        b.download_volume(ct, max_size, name="big")
        b.save(cfg)
        seen: list[dict] = []
        st = wait_status(data, lambda s: state_of(s, "volumes", "big") == "ERROR", "the volume's ERROR", agent, seen)
        vol = by_name(st["volumes"], "big")
        text = describe(vol)
        assert text == f"creating volume: {NO_SPACE}", text
        assert vol["error"]["retry_condition"].startswith("free disk space")
        # nothing half-made is visible, nothing complete is lost: checked between two identical readings, so
        # no retry of the create overlapped the look at the directory
        for _ in range(20):
            names, tmp = sorted(os.listdir(data / "volumes")), temps(data)
            again = by_name(device_status(data)["volumes"], "big")
            if again["state"] == "ERROR" and again["error"] == vol["error"]:
                break
            vol = again
        else:
            raise AssertionError("the volume never stayed in one ERROR long enough to look")
        assert tmp == [] and names == [keeper.volume.name], names
        assert vol["path"] is None
        assert {p.name: identity(p) for p in (data / "cas/blobs/sha256").iterdir()} == blobs_before
        keeper.check()
        assert state_of(st, "content_trees", "big") == "LOADED"

        (mnt / "filler").unlink()
        freed_at = time.monotonic()
        st = wait_status(data, lambda s: state_of(s, "volumes", "big") == "CREATED_VOLUME", "recovery", agent)
        recovery = time.monotonic() - freed_at
        path = Path(by_name(st["volumes"], "big")["path"])
        assert complete(path)
        assert temps(data) == [] and sorted(os.listdir(data / "volumes")) == sorted([keeper.volume.name, path.name])
        keeper.check()
        assert_no_crash(agent)
        failures = agent.log_text().count("volume creation failed")
        assert agent.stop() == 0
    finally:
        if agent.alive():
            agent.stop()
    assert integrity(data / "state.db") == "ok"
    return {"virtual_mib": virtual, "blob_bytes": blob_bytes, "free_mib_at_create": free_mib,
            "filler_bytes": filled, "failed_creates": failures, "recovery_seconds": round(recovery, 1)}


# -- 3: the state database on a disk that stays full -----------------------------------


def test_a_progress_write_on_a_full_disk_is_dropped_not_the_work(tmpfs):
    """A download or convert filling the disk can beat the database to the room its reserve frees.

    Found by the long profile: a qemu-img convert's progress write met
    SQLITE_FULL and took the whole create down with it. Progress figures are
    dropped on a full disk; state changes still fail loudly.
    """
    mnt = tmpfs(16)
    store = StateStore(mnt / "state.db")
    store.keep_reserve()
    sha, now = "a" * 64, time.time()
    store.insert("blobs", sha256=sha, state=m.ZSwState.DOWNLOAD_STARTED, create_time=now, ref_change_time=now)
    fill(mnt, "filler")
    for i in range(3000):
        store.update_progress("blobs", (sha,), progress=i % 100, done_bytes=i)
    assert store.reserve_released  # it did meet the full disk, twice: once freeing its reserve, once more
    with pytest.raises(sqlite3.OperationalError) as refused:
        for i in range(3000):
            store.update("blobs", (sha,), done_bytes=10**6 + i)
    assert refused.value.sqlite_errorcode == sqlite3.SQLITE_FULL
    store.close()
    (mnt / "filler").unlink()
    assert integrity(mnt / "state.db") == "ok"

# A runaway writer: appends to its file until ENOSPC, and again whenever anything frees a byte.
RUNAWAY = """
import errno, sys, time
with open(sys.argv[1], "ab", buffering=0) as f:
    while True:
        try:
            f.write(bytes(4096))
        except OSError as e:
            if e.errno != errno.ENOSPC:
                raise
            time.sleep(0.02)
"""


def test_state_database_on_a_disk_that_stays_full(tmp_path, tmpfs, datastore_dir, http_server):
    keep = make_raw_image(datastore_dir / "keep.raw", 4, seed=7)
    late = make_raw_image(datastore_dir / "late.raw", 2, seed=8)
    figures = []
    for n in range(DB_ROUNDS):
        figures.append(_db_round(tmp_path, tmpfs(40), http_server, keep, late, n))
    record("disk_full/state_db", counts={"fills": len(figures), "kills_while_full": len(figures),
                                         "rounds_db_refused_writes": sum(f["db_writes_refused"] for f in figures),
                                         "recoveries": len(figures)},
           result="pass", details={"rounds": figures})


def _db_round(tmp_path: Path, mnt: Path, server: RangeHTTPServer, keep: Path, late: Path, n: int) -> dict[str, Any]:
    keep_sha = sha256_file(keep)
    b = base_config(server.url, keep_sha)
    agent, data, cfg = start(tmp_path, mnt, b, f"db{n}")
    runaway = None
    try:
        st = wait_status(data, lambda s: state_of(s, "volumes", "keeper") == "CREATED_VOLUME", "the keeper", agent)
        keeper = Keeper.of(data, st, keep_sha)
        runaway = subprocess.Popen([sys.executable, "-c", RUNAWAY, str(mnt / "runaway")])
        while free_bytes(mnt) >= 64 << 10:
            time.sleep(0.01)
        full_at = time.monotonic()

        # new work arrives while nothing can be written: new rows, a config checkpoint, reports, volumes
        blanks = [f"late-blank-{i}" for i in range(LATE_BLANKS)]
        for name in blanks:
            b.blank_volume(8 * MiB, name=name)
        ct = b.content_tree(b.cfg.datastores[0].id, late.name, sha256_file(late), "raw", name="late")
        b.download_volume(ct, 2 * MiB, name="late-image")
        b.save(cfg)
        time.sleep(2 + n)  # passes fail for a while; the agent must ride it out
        assert agent.alive(), agent.log_text()[-4000:]
        st = device_status(data)  # reading works on a full disk
        assert by_name(st["volumes"], "keeper")["state"] == "CREATED_VOLUME"
        assert_no_crash(agent, every_failure_recorded=False)
        # whether the database's own room sufficed for all that, or its writes failed too, is the luck of the
        # round (SQLite reuses WAL space after a checkpoint): a figure, not a guarantee
        db_refused = "data disk full" in agent.log_text()
        stopped = agent.log_text().count("task stopped: data disk full")

        # killed while full (a power cut, an OOM kill): the database is intact as it lies, and the agent
        # starts again on the still-full disk
        agent.kill()
        assert integrity(data / "state.db") == "ok"
        agent = Agent(data, cfg, tmp_path / f"db{n}-restart.log")
        time.sleep(2)
        started_while_full = agent.alive()
        assert started_while_full, agent.log_text()[-4000:]
        st = device_status(data)
        assert by_name(st["volumes"], "keeper")["state"] == "CREATED_VOLUME"

        runaway.terminate()
        runaway.wait(10)
        runaway = None
        (mnt / "runaway").unlink()
        freed_at = time.monotonic()
        st = wait_status(data, lambda s: all(state_of(s, "volumes", name) == "CREATED_VOLUME"
                                             for name in [*blanks, "late-image"]), "recovery", agent)
        recovery = time.monotonic() - freed_at
        assert guest_bytes(Path(by_name(st["volumes"], "late-image")["path"])) == late.read_bytes()
        keeper.check()
        assert temps(data) == []
        saved = m.EdgeDevConfig.FromString((data / "checkpoint/config.pb").read_bytes())
        assert saved == b.cfg  # the config that arrived on the full disk was checkpointed once it could be
        assert_no_crash(agent, every_failure_recorded=False)
        stopped += agent.log_text().count("task stopped: data disk full")
        db_refused = db_refused or "data disk full" in agent.log_text()
        assert agent.stop() == 0
    finally:
        if runaway is not None:
            runaway.terminate()
            runaway.wait(10)
        if agent.alive():
            agent.stop()
    assert integrity(data / "state.db") == "ok"
    st = device_status(data)
    assert {v["display_name"]: v["state"] for v in st["volumes"]} == {
        name: "CREATED_VOLUME" for name in ["keeper", *blanks, "late-image"]}
    return {"seconds_full": round(freed_at - full_at, 1), "restarted_while_full": started_while_full,
            "db_writes_refused": db_refused, "tasks_stopped_unrecorded": stopped,
            "recovery_seconds": round(recovery, 1)}
