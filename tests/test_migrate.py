"""Migration of the drive-based ``img/`` layout into ``volumes/`` on first start.

Layouts are built for real (qcow2 by qemu-img, raw files with known bytes, an
unpacked container tree); every check is on what a user would find on disk:
bytes, inodes, names, the report and the state database.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import uuid as uuidlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest

from edgevol.api import messages as m
from edgevol.device import migrate as mig
from edgevol.device.migrate import migrate_legacy_layout
from edgevol.device.reconcile.agent import Agent, AgentOptions
from edgevol.device.state import StateStore
from edgevol.device.volumes import FileVolumes
from edgevol.device.volumes.directories import DirectoryVolumes
from edgevol.model.legacy import implicit_volume_uuid
from edgevol.model.parse import parse_config
from tests.configs import ConfigBuilder, new_id, sha256_file
from tests.conftest import make_qcow2_image, make_raw_image

KINDS = ("qcow2", "raw", "container")
IFORMAT = {"qcow2": m.Format.QCOW2, "raw": m.Format.RAW, "container": m.Format.CONTAINER}


# -- building legacy layouts ------------------------------------------------------
def tree_digest(path: Path) -> str:
    """Everything a container app sees in a tree: names, types, modes, bytes, link targets, hardlink groups."""
    h = hashlib.sha256()
    inodes: dict[int, str] = {}
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            p = Path(dirpath) / name
            rel = str(p.relative_to(path))
            st = p.lstat()
            h.update(f"{rel}\0{st.st_mode:o}\0".encode())
            if p.is_symlink():
                h.update(os.readlink(p).encode())
            elif p.is_file():
                h.update(sha256_file(p).encode())
                h.update(inodes.setdefault(st.st_ino, rel).encode())
    return h.hexdigest()


def digest(path: Path) -> str:
    return tree_digest(path) if path.is_dir() else sha256_file(path)


def make_container_tree(path: Path) -> Path:
    (path / "rootfs" / "bin").mkdir(parents=True)
    (path / "rootfs" / "usr" / "lib").mkdir(parents=True)
    (path / "rootfs" / "etc").mkdir()
    sh = path / "rootfs" / "bin" / "sh"
    sh.write_bytes(b"#!shell\n" + bytes(range(256)) * 64)
    sh.chmod(0o755)
    os.link(sh, path / "rootfs" / "bin" / "ash")
    (path / "rootfs" / "etc" / "hostname").write_text("legacy-app\n")
    (path / "rootfs" / "usr" / "lib" / "libc.so").write_bytes(os.urandom(70_000))
    os.symlink("usr/lib", path / "rootfs" / "lib")
    return path


@dataclass
class Legacy:
    data: Path
    ds: str = field(default_factory=new_id)
    registry: str = field(default_factory=new_id)
    app_vm: str = field(default_factory=new_id)
    app_ct: str = field(default_factory=new_id)
    image: dict[str, str] = field(default_factory=lambda: {k: new_id() for k in KINDS})
    sha: dict[str, str] = field(default_factory=dict)
    paths: dict[str, Path] = field(default_factory=dict)
    digests: dict[str, str] = field(default_factory=dict)
    inodes: dict[str, int] = field(default_factory=dict)
    unmapped: dict[str, Path] = field(default_factory=dict)

    def app_of(self, kind: str) -> str:
        return self.app_ct if kind == "container" else self.app_vm

    @property
    def img(self) -> Path:
        return self.data / "img"

    @property
    def volumes(self) -> Path:
        return self.data / "volumes"


def add_drive(app: m.AppInstanceConfig, lg: Legacy, kind: str) -> None:
    d = app.drives.add(drvtype=m.DriveType.HDD, maxsizebytes=64 << 20)
    d.image.uuidandversion.uuid = lg.image[kind]
    d.image.uuidandversion.version = "1"
    d.image.name = f"images/{kind}.img" if kind != "container" else "library/app:1"
    d.image.sha256 = lg.sha[kind]
    d.image.iformat = IFORMAT[kind]
    d.image.dsId = lg.registry if kind == "container" else lg.ds


def drives_config(lg: Legacy) -> m.EdgeDevConfig:
    """What a drive-based controller sends: apps with drives, no volumes."""
    b = ConfigBuilder()
    b.datastore("http://127.0.0.1:9", ds_id=lg.ds)
    b.registry("127.0.0.1:9", ds_id=lg.registry)
    vm = b.cfg.apps.add(displayname="vm")
    vm.uuidandversion.uuid, vm.uuidandversion.version = lg.app_vm, "1"
    add_drive(vm, lg, "qcow2")
    add_drive(vm, lg, "raw")
    ct = b.cfg.apps.add(displayname="ct")
    ct.uuidandversion.uuid, ct.uuidandversion.version = lg.app_ct, "1"
    add_drive(ct, lg, "container")
    return b.cfg


GENERATIONS = {"qcow2": 3, "raw": 1, "container": 2}


def volumes_config(lg: Legacy) -> tuple[m.EdgeDevConfig, dict[str, str]]:
    """A volume-era config: explicit volumes from content trees named like the legacy images."""
    b = ConfigBuilder()
    b.datastore("http://127.0.0.1:9", ds_id=lg.ds)
    b.registry("127.0.0.1:9", ds_id=lg.registry)
    vol: dict[str, str] = {}
    for kind in KINDS:
        if kind == "container":
            b.content_tree(lg.registry, "library/app:1", "", fmt=kind, ct_id=lg.image[kind])
        else:
            b.content_tree(lg.ds, f"images/{kind}.img", lg.sha[kind], fmt=kind, ct_id=lg.image[kind])
        vol[kind] = b.download_volume(lg.image[kind], 64 << 20, name=kind, generation=GENERATIONS[kind])
    blank = b.blank_volume(1 << 20)
    b.app([blank, vol["qcow2"], vol["raw"]], name="vm", app_id=lg.app_vm)
    b.app([vol["container"]], name="ct", app_id=lg.app_ct)
    return b.cfg, vol


def build_legacy(data: Path, checkpoint: bool = True) -> Legacy:
    """img/ as a drive-based version left it: a qcow2, a raw and a container volume, plus strays."""
    lg = Legacy(data)
    lg.img.mkdir(parents=True)
    work = data / "work"
    work.mkdir()
    made = {"qcow2": make_qcow2_image(work / "a.qcow2", 3, seed=1), "raw": make_raw_image(work / "b.raw", 3, seed=2),
            "container": make_container_tree(work / "c")}
    for kind in KINDS:
        lg.sha[kind] = hashlib.sha256(f"image {kind} {lg.image[kind]}".encode()).hexdigest()
        lg.paths[kind] = lg.img / f"{lg.sha[kind]}-{lg.app_of(kind)}.{kind}"
        os.rename(made[kind], lg.paths[kind])
        lg.digests[kind] = digest(lg.paths[kind])
        lg.inodes[kind] = lg.paths[kind].stat().st_ino
    work.rmdir()
    lg.unmapped["stray"] = lg.img / "notes.txt"
    lg.unmapped["stray"].write_text("kept\n")
    lg.unmapped["unknown-app"] = lg.img / f"{'ab' * 32}-{new_id()}.qcow2"
    lg.unmapped["unknown-app"].write_bytes(b"unknown app\n" * 100)
    lg.unmapped["unknown-sha"] = lg.img / f"{'cd' * 32}-{lg.app_vm}.raw"
    lg.unmapped["unknown-sha"].write_bytes(b"unknown sha\n" * 100)
    if checkpoint:
        (data / "checkpoint").mkdir()
        (data / "checkpoint" / "lastconfig").write_bytes(drives_config(lg).SerializeToString())
    return lg


@pytest.fixture
def lg(tmp_path: Path) -> Legacy:
    return build_legacy(tmp_path / "data")


@pytest.fixture
def store(lg: Legacy) -> Iterator[StateStore]:
    s = StateStore(lg.data / "state.db")
    yield s
    s.close()


def implicit_targets(lg: Legacy) -> dict[str, Path]:
    return {k: lg.volumes / f"{implicit_volume_uuid(lg.app_of(k), lg.image[k])}#0.{k}" for k in KINDS}


def assert_migrated(lg: Legacy, targets: dict[str, Path], same_inode: bool = True) -> None:
    for kind, target in targets.items():
        assert not os.path.lexists(lg.paths[kind]), f"{lg.paths[kind]} still there"
        assert target.is_dir() if kind == "container" else target.is_file()
        assert digest(target) == lg.digests[kind], f"{kind} volume changed while moving"
        if same_inode:
            assert target.stat().st_ino == lg.inodes[kind], f"{kind} was copied, not moved"
    for stray in lg.unmapped.values():
        assert stray.exists(), f"unmapped {stray} was removed"
    left = sorted(p.name for p in lg.volumes.iterdir())
    assert left == sorted(t.name for t in targets.values()), "temp files or extra volumes left behind"
    assert sorted(p.name for p in lg.img.iterdir()) == sorted(p.name for p in lg.unmapped.values())


def report_file(lg: Legacy) -> dict:
    return json.loads((lg.data / "migration-report.json").read_text())


# -- mapping -------------------------------------------------------------------
def test_drives_only_config_moves_to_implicit_volumes(lg: Legacy, store: StateStore) -> None:
    report = migrate_legacy_layout(lg.data, drives_config(lg), store)

    targets = implicit_targets(lg)
    assert_migrated(lg, targets)
    assert report.ran and report.done and not report.errors
    assert {(x.legacy, x.target, x.volume_uuid, x.generation) for x in report.moved} == {
        (str(lg.paths[k]), str(t), t.name.split("#")[0], 0) for k, t in targets.items()}
    # exactly the names the agent adopts for a volume row without a path
    assert FileVolumes(lg.volumes).find(targets["qcow2"].name.split("#")[0], 0) == targets["qcow2"]
    assert FileVolumes(lg.volumes).find(targets["raw"].name.split("#")[0], 0) == targets["raw"]
    assert DirectoryVolumes(lg.volumes).find(targets["container"].name.split("#")[0], 0) == targets["container"]
    assert store.meta_get("legacy_migration") == "done"
    on_disk = report_file(lg)
    assert on_disk["done"] and len(on_disk["moved"]) == 3
    summary = json.loads(store.meta_get("legacy_migration_report") or "{}")
    assert summary["status"] == "done" and summary["moved"] == 3
    assert {k["path"] for k in summary["kept_unmapped"]} == {str(p) for p in lg.unmapped.values()}


@pytest.mark.parametrize("explicit", [False, True], ids=["drives", "volume-refs"])
def test_agent_adopts_migrated_volumes(lg: Legacy, explicit: bool) -> None:
    """The agent's first pass finds every migrated volume as already created, without building it."""
    if explicit:
        cfg, vol = volumes_config(lg)
        targets = {k: lg.volumes / f"{vol[k]}#{GENERATIONS[k]}.{k}" for k in KINDS}
    else:
        cfg, targets = drives_config(lg), implicit_targets(lg)
    desired = parse_config(cfg)
    assert desired.errors == []
    store = StateStore(lg.data / "state.db")
    try:
        assert migrate_legacy_layout(lg.data, cfg, store).done
    finally:
        store.close()
    agent = Agent(lg.data, AgentOptions(once=True))
    try:
        agent.set_desired(desired)
        agent.step()
        rows = {(r["uuid"], r["generation"]): r for r in agent.store.all("volumes")}
    finally:
        agent.close()
    for kind, target in targets.items():
        uuid, generation = target.name.split(".")[0].split("#")
        row = rows[(uuid, int(generation))]
        assert row["state"] == m.ZSwState.CREATED_VOLUME and row["path"] == str(target), kind
        assert digest(target) == lg.digests[kind]


def test_no_current_config_uses_the_legacy_checkpoint(lg: Legacy, store: StateStore) -> None:
    report = migrate_legacy_layout(lg.data, None, store)
    assert report.done
    assert_migrated(lg, implicit_targets(lg))


def test_volume_refs_config_moves_to_explicit_volumes(lg: Legacy, store: StateStore) -> None:
    cfg, vol = volumes_config(lg)
    report = migrate_legacy_layout(lg.data, cfg, store)

    targets = {k: lg.volumes / f"{vol[k]}#{GENERATIONS[k]}.{k}" for k in KINDS}
    assert_migrated(lg, targets)
    assert report.done and not report.errors
    assert {(x.volume_uuid, x.generation) for x in report.moved} == {(vol[k], GENERATIONS[k]) for k in KINDS}
    assert FileVolumes(lg.volumes).find(vol["qcow2"], 3) == targets["qcow2"]
    assert DirectoryVolumes(lg.volumes).find(vol["container"], 2) == targets["container"]


def test_phase1_checkpoint_with_volume_refs_wins_over_drives(lg: Legacy, store: StateStore) -> None:
    """A checkpoint holding both drives and volumeRefList (phase 1) maps to the explicit volumes."""
    cfg, vol = volumes_config(lg)
    for app in cfg.apps:
        for kind in KINDS:
            if lg.app_of(kind) == app.uuidandversion.uuid:
                add_drive(app, lg, kind)
    (lg.data / "checkpoint" / "lastconfig").write_bytes(cfg.SerializeToString())
    report = migrate_legacy_layout(lg.data, None, store)
    assert report.done
    assert_migrated(lg, {k: lg.volumes / f"{vol[k]}#{GENERATIONS[k]}.{k}" for k in KINDS})


def test_unmapped_entries_are_kept_and_reported(lg: Legacy, store: StateStore) -> None:
    cfg, vol = volumes_config(lg)
    ct_app = next(a for a in cfg.apps if a.uuidandversion.uuid == lg.app_ct)
    cfg.apps.remove(ct_app)  # the container app was deleted meanwhile
    raw_tree = next(c for c in cfg.contentInfo if c.uuid == lg.image["raw"])
    raw_tree.iformat = m.Format.CONTAINER  # and the raw disk's content tree now says container
    before = {name: digest(p) for name, p in lg.unmapped.items()}

    report = migrate_legacy_layout(lg.data, cfg, store)

    reasons = {k.path: k.reason for k in report.kept_unmapped}
    assert "not a legacy volume name" in reasons[str(lg.unmapped["stray"])]
    assert "not in the legacy checkpoint" in reasons[str(lg.unmapped["unknown-app"])]
    assert "no drive with sha256" in reasons[str(lg.unmapped["unknown-sha"])]
    assert "not in the current config" in reasons[str(lg.paths["container"])]
    assert "as a container" in reasons[str(lg.paths["raw"])]
    assert [x.target for x in report.moved] == [str(lg.volumes / f"{vol['qcow2']}#3.qcow2")]
    for kind in ("raw", "container"):
        assert digest(lg.paths[kind]) == lg.digests[kind]
    assert {name: digest(p) for name, p in lg.unmapped.items()} == before
    assert report.done and store.meta_get("legacy_migration") == "done"
    assert {k["path"] for k in report_file(lg)["kept_unmapped"]} == set(reasons)


def test_without_legacy_checkpoint_nothing_moves(tmp_path: Path) -> None:
    lg = build_legacy(tmp_path / "data", checkpoint=False)
    store = StateStore(lg.data / "state.db")
    try:
        report = migrate_legacy_layout(lg.data, drives_config(lg), store)
    finally:
        store.close()
    assert report.moved == [] and report.done
    for kind in KINDS:
        assert digest(lg.paths[kind]) == lg.digests[kind]
        assert any("no readable legacy checkpoint" in k.reason for k in report.kept_unmapped
                   if k.path == str(lg.paths[kind]))
    assert list(lg.volumes.iterdir()) == []


def test_not_run_without_img_dir(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.db")
    try:
        report = migrate_legacy_layout(tmp_path, None, store)
        assert not report.ran
        assert store.meta_get("legacy_migration") is None
    finally:
        store.close()
    assert not (tmp_path / "migration-report.json").exists()


# -- existing targets ------------------------------------------------------------
def test_existing_target_with_other_content_keeps_both(lg: Legacy, store: StateStore) -> None:
    targets = implicit_targets(lg)
    lg.volumes.mkdir()
    targets["raw"].write_bytes(b"a volume the agent built meanwhile")
    (targets["container"] / "rootfs").mkdir(parents=True)

    report = migrate_legacy_layout(lg.data, drives_config(lg), store)

    conflicts = {k.path: k for k in report.kept_unmapped if k.reason.startswith("conflict")}
    assert set(conflicts) == {str(lg.paths["raw"]), str(lg.paths["container"])}
    assert conflicts[str(lg.paths["raw"])].target == str(targets["raw"])
    assert targets["raw"].read_bytes() == b"a volume the agent built meanwhile"
    assert digest(lg.paths["raw"]) == lg.digests["raw"]
    assert digest(lg.paths["container"]) == lg.digests["container"]
    assert digest(targets["qcow2"]) == lg.digests["qcow2"] and not lg.paths["qcow2"].exists()


def test_two_legacy_entries_for_one_volume_keep_the_second(lg: Legacy, store: StateStore) -> None:
    twin = lg.img / f"{lg.sha['qcow2']}-{lg.app_vm}.raw"  # same image and app, other format
    twin.write_bytes(b"twin" * 1000)
    report = migrate_legacy_layout(lg.data, drives_config(lg), store)
    target = implicit_targets(lg)["qcow2"]
    moved = [x.legacy for x in report.moved if x.target.startswith(str(target.with_suffix("")))]
    kept = [k for k in report.kept_unmapped if "maps to the same volume" in k.reason]
    assert len(moved) == 1 and len(kept) == 1 and {moved[0], kept[0].path} == {str(twin), str(lg.paths["qcow2"])}
    assert Path(kept[0].path).exists() and report.done


def test_existing_hardlink_target_just_drops_the_legacy_name(lg: Legacy, store: StateStore) -> None:
    targets = implicit_targets(lg)
    lg.volumes.mkdir()
    os.link(lg.paths["qcow2"], targets["qcow2"])
    report = migrate_legacy_layout(lg.data, drives_config(lg), store)
    assert report.done and not [k for k in report.kept_unmapped if k.reason.startswith("conflict")]
    assert_migrated(lg, targets)


# -- interruption and re-runs ------------------------------------------------------
def test_failed_unlink_after_link_finishes_on_the_next_run(lg: Legacy, store: StateStore,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    real_unlink = os.unlink

    def failing_unlink(path: os.PathLike[str] | str, *a: object, **k: object) -> None:
        if Path(path).parent == lg.img:
            raise OSError(errno.EIO, "simulated I/O error", str(path))
        real_unlink(path, *a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "unlink", failing_unlink)
    first = migrate_legacy_layout(lg.data, drives_config(lg), store)
    monkeypatch.undo()

    targets = implicit_targets(lg)
    assert not first.done and first.errors
    assert store.meta_get("legacy_migration") != "done"
    assert json.loads(store.meta_get("legacy_migration_report") or "{}")["status"] == "incomplete"
    # the move that failed half-way stops the run; both names are the same data until the old one goes
    linked = [k for k in ("qcow2", "raw") if targets[k].exists()]
    assert len(linked) == 1 and len(first.errors) == 1
    kind = linked[0]
    assert lg.paths[kind].stat().st_ino == targets[kind].stat().st_ino == lg.inodes[kind]

    second = migrate_legacy_layout(lg.data, drives_config(lg), store)
    assert second.done and not second.errors
    assert_migrated(lg, targets)
    assert sorted(x.target for x in second.moved) == sorted(str(t) for t in targets.values())


def test_second_run_is_a_no_op(lg: Legacy, store: StateStore) -> None:
    first = migrate_legacy_layout(lg.data, drives_config(lg), store)
    assert first.done
    report_before = (lg.data / "migration-report.json").read_bytes()
    again = migrate_legacy_layout(lg.data, drives_config(lg), store)
    assert not again.ran
    assert (lg.data / "migration-report.json").read_bytes() == report_before
    assert_migrated(lg, implicit_targets(lg))
    # forced again (meta cleared by hand): nothing to move, the moves are still on record
    store.meta_set("legacy_migration", "")
    forced = migrate_legacy_layout(lg.data, drives_config(lg), store)
    assert forced.done and len(forced.moved) == 3 and not forced.errors
    assert_migrated(lg, implicit_targets(lg))


_KILLER = r"""
import os, signal, subprocess, sys, json
from pathlib import Path
from edgevol import fsutil
from edgevol.device.state import StateStore

kill_at, count = int(sys.argv[3]), [0]

def wrap(owner, name):
    real = getattr(owner, name)
    def step(*args, **kwargs):
        count[0] += 1
        if count[0] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*args, **kwargs)
    setattr(owner, name, step)

for name in ("link", "unlink", "rename", "replace", "sync"):
    wrap(os, name)
for name in ("fsync_dir", "remove_tree"):
    wrap(fsutil, name)
wrap(subprocess, "run")
wrap(StateStore, "meta_set")

from edgevol.api.codec import load_edge_dev_config
from edgevol.device.migrate import migrate_legacy_layout
from edgevol.device.reconcile.agent import Agent, AgentOptions

data = Path(sys.argv[1])
store = StateStore(data / "state.db")
report = migrate_legacy_layout(data, load_edge_dev_config(Path(sys.argv[2])), store)
print(json.dumps({"steps": count[0], "done": report.done}))
"""


def _kill_everywhere(root: Path, volumes_elsewhere: Path | None) -> int:
    """SIGKILL the migration before each of its on-disk steps in turn; a re-run must always finish it."""
    kill_at = 1
    while True:
        lg = build_legacy(root / f"kill-{kill_at}")
        if volumes_elsewhere is not None:
            target = volumes_elsewhere / f"kill-{kill_at}"
            target.mkdir()
            lg.volumes.symlink_to(target)
        cfg_path = ConfigBuilder().save(root / f"cfg-{kill_at}.pb")
        cfg_path.write_bytes(drives_config(lg).SerializeToString())
        proc = subprocess.run([sys.executable, "-c", _KILLER, str(lg.data), str(cfg_path), str(kill_at)],
                              capture_output=True, text=True, timeout=120)
        if proc.returncode == 0:
            assert json.loads(proc.stdout.splitlines()[-1])["done"]
            return kill_at - 1
        assert proc.returncode == -signal.SIGKILL, proc.stderr
        store = StateStore(lg.data / "state.db")
        try:
            report = migrate_legacy_layout(lg.data, drives_config(lg), store)
            assert report.done, (kill_at, report.errors)
            assert store.meta_get("legacy_migration") == "done"
        finally:
            store.close()
        targets = implicit_targets(lg)
        assert_migrated(lg, targets, same_inode=volumes_elsewhere is None)
        assert sorted(x.target for x in report.moved) == sorted(str(t) for t in targets.values()), kill_at
        assert len(report_file(lg)["moved"]) == 3
        shutil.rmtree(lg.data)
        kill_at += 1
        assert kill_at < 200, "the migration never finished"


def test_sigkill_at_every_step_then_restart(tmp_path: Path) -> None:
    killed = _kill_everywhere(tmp_path, None)
    assert killed >= 15  # every link, unlink, fsync and journal write of three moves was a kill point


@pytest.fixture
def other_filesystem(tmp_path: Path) -> Iterator[Path]:
    shm = Path("/dev/shm")
    if not shm.is_dir() or not os.access(shm, os.W_OK) or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("needs /dev/shm on a filesystem other than the test's tmp dir")
    d = shm / f"edgevol-migrate-{uuidlib.uuid4()}"
    d.mkdir()
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_across_filesystems_copies_then_drops_the_source(lg: Legacy, store: StateStore,
                                                         other_filesystem: Path) -> None:
    lg.volumes.symlink_to(other_filesystem)
    report = migrate_legacy_layout(lg.data, drives_config(lg), store)
    assert report.done and not report.errors
    targets = implicit_targets(lg)
    assert_migrated(lg, targets, same_inode=False)
    root = targets["container"] / "rootfs" / "bin"
    assert (root / "sh").stat().st_ino == (root / "ash").stat().st_ino  # hardlinks inside the tree survive


def test_across_filesystems_sigkill_at_every_step_then_restart(tmp_path: Path, other_filesystem: Path) -> None:
    assert _kill_everywhere(tmp_path, other_filesystem) >= 15


def test_link_refused_falls_back_to_copy(lg: Legacy, store: StateStore, monkeypatch: pytest.MonkeyPatch) -> None:
    real_link = os.link

    def no_cross_link(src: object, dst: object, *a: object, **k: object) -> None:
        if Path(str(src)).parent == lg.img:
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        real_link(src, dst, *a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "link", no_cross_link)
    report = migrate_legacy_layout(lg.data, drives_config(lg), store)
    assert report.done
    targets = implicit_targets(lg)
    assert_migrated(lg, {k: targets[k] for k in ("qcow2", "raw")} | {"container": targets["container"]},
                    same_inode=False)
    assert targets["container"].stat().st_ino == lg.inodes["container"]  # directories still renamed
    assert targets["raw"].stat().st_ino != lg.inodes["raw"]
    assert mig.META_JOURNAL and json.loads(store.meta_get(mig.META_JOURNAL) or "{}")["pending"] is None
