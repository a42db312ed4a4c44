"""The seed's Drive → Volume transition on a device, with UUIDs the controller allocated.

The seed (volume-content-device-api.txt, "Transition plan") has a controller
first send an app's disks as ``drives`` (the device makes implicit volumes),
then, in phase 2, the drives *and* volumes with UUIDs it allocated, then only
the volumes (phase 3). The data an app wrote under its drives must survive all
of it, and a restart. A purge of a drive-based app regenerates its drives,
except those marked ``preserve``. Everything runs the real CLI on real files.
"""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from edgevol.api import messages as m
from edgevol.device.state import StateStore
from edgevol.model.legacy import implicit_volume_uuid
from tests.datastore_cases import run_once
from tests.configs import ConfigBuilder, drive, new_id, sha256_file
from tests.conftest import EDGEVOL, by_name, device_status, guest_bytes, guest_write, make_raw_image

MiB = 1 << 20
S = m.ZSwState
APP_BYTES = b"written by the app under its drive"


def write_at(path: Path, offset: int, data: bytes) -> None:
    """As the app's guest writes: into the disk it sees, whatever the file's format."""
    guest_write(path, offset, data)


def read_at(path: Path, offset: int, n: int) -> bytes:
    """Guest bytes: a volume made from content is a qcow2 overlay on its blob (edgevol.volume.clone)."""
    return guest_bytes(path)[offset:offset + n]


def outbox(data: Path) -> list[tuple[str, Any]]:
    store = StateStore(data / "state.db")
    try:
        return [(k, m.ZInfoMsg.FromString(p)) for k, _, p in store.outbox_items()]
    finally:
        store.close()


class Story:
    """An app "web" with a root disk from an image and an empty scratch disk, deployed the legacy way."""

    def __init__(self, tmp_path: Path, datastore_dir: Path, url: str) -> None:
        self.raw = make_raw_image(datastore_dir / "root.raw", 2, seed=41)
        self.app, self.img = new_id(), new_id()
        self.data, self.cfg = tmp_path / "dev", tmp_path / "config.pb"
        self.url = url
        self.b = ConfigBuilder()
        self.ds = self.b.datastore(url)
        self.drives = [drive(self.ds, "root.raw", sha256_file(self.raw), "raw", image_id=self.img, max_size=4 * MiB),
                       drive(drvtype="hdd_empty", max_size=8 * MiB)]
        self.b.app_with_drives(self.drives, app_id=self.app, name="web")
        self.implicit = [implicit_volume_uuid(self.app, self.img), implicit_volume_uuid(self.app, "blank-1")]

    def deploy_and_write(self) -> dict[str, Path]:
        """Phase 1: the drives become implicit volumes; the app writes into both."""
        proc = run_once(self.data, self.b, self.cfg)
        assert proc.returncode == 0, proc.stderr[-3000:]
        vols = {v["uuid"]: Path(v["path"]) for v in device_status(self.data)["volumes"]}
        assert set(vols) == set(self.implicit)
        for path in vols.values():
            write_at(path, 3 * MiB, APP_BYTES)
        return vols

    def phase2(self) -> tuple[str, str]:
        """The controller allocates UUIDs: it sends the drives and, for the same app, its own volumes."""
        root, scratch = new_id(), new_id()
        b = ConfigBuilder(device_id=self.b.cfg.id.uuid)
        ds = b.datastore(self.url, ds_id=self.ds)
        b.content_tree(ds, "root.raw", sha256_file(self.raw), "raw", ct_id=self.img, name="root.raw")
        b.download_volume(self.img, 4 * MiB, vol_id=root, name="web root")
        b.blank_volume(8 * MiB, vol_id=scratch, name="web scratch")
        b.app_with_drives(self.drives, app_id=self.app, name="web", volume_ids=[root, scratch])
        self.b = b
        return root, scratch

    def phase3(self) -> None:
        """The cleaned-up controller: no drives any more."""
        del self.b.cfg.apps[0].drives[:]


def assert_adopted(story: Story, root: str, scratch: str, *, renamed: bool = True) -> None:
    st = device_status(story.data)
    vols = {v["uuid"]: v for v in st["volumes"]}
    assert set(vols) == {root, scratch}, f"implicit volumes left or new ones built: {sorted(vols)}"
    for uuid in (root, scratch):
        v = vols[uuid]
        assert (v["generation_count"], v["state"], v["error"]) == (0, "CREATED_VOLUME", None)
        path = Path(v["path"])
        assert read_at(path, 3 * MiB, len(APP_BYTES)) == APP_BYTES  # the app's data, not a fresh volume
        if renamed:
            assert path.name.startswith(f"{uuid}#0.")
    assert read_at(Path(vols[root]["path"]), 0, 2 * MiB) == story.raw.read_bytes()
    app = by_name(st["apps"], "web")
    assert app["volume_refs"] == [{"uuid": root, "generation_count": 0}, {"uuid": scratch, "generation_count": 0}]
    assert app["error"] is None
    assert sorted(p.name.split("#")[0] for p in (story.data / "volumes").iterdir()) == sorted([root, scratch])


def test_phase2_volumes_with_controller_uuids_take_over_the_drives_data(tmp_path, datastore_dir, http_server):
    story = Story(tmp_path, datastore_dir, http_server.url)
    story.deploy_and_write()
    root, scratch = story.phase2()
    proc = run_once(story.data, story.b, story.cfg)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_adopted(story, root, scratch)
    # reported once under the new identity; the implicit identities are reported gone, uuid only
    sent = dict(outbox(story.data))
    for old in story.implicit:
        gone = sent[f"volume/{old}#0"].vinfo
        assert (gone.uuid, gone.displayName, gone.state) == (old, "", S.INVALID)
    assert sent[f"volume/{root}#0"].vinfo.displayName == "web root"
    assert sent[f"volume/{scratch}#0"].vinfo.state == S.CREATED_VOLUME

    # a restart changes nothing; then phase 3 (no drives) keeps it all too
    assert run_once(story.data, story.b, story.cfg).returncode == 0
    assert_adopted(story, root, scratch)
    story.phase3()
    assert run_once(story.data, story.b, story.cfg).returncode == 0
    assert_adopted(story, root, scratch)


def test_an_adoption_interrupted_by_kill_9_finishes_on_restart(tmp_path, datastore_dir, http_server):
    story = Story(tmp_path, datastore_dir, http_server.url)
    story.deploy_and_write()
    root, scratch = story.phase2()
    killed = run_once(story.data, story.b, story.cfg, crash_at="volume.adopted")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    # the database already knows the controller's identity, the file still has the drive's name
    st = device_status(story.data)
    moved = [v for v in st["volumes"] if v["uuid"] in (root, scratch) and v["path"]]
    assert len(moved) == 1 and Path(moved[0]["path"]).name.split("#")[0] in story.implicit
    assert run_once(story.data, story.b, story.cfg).returncode == 0
    assert_adopted(story, root, scratch)


def test_a_volume_that_cannot_hold_the_drives_data_is_refused_and_the_drive_kept(tmp_path, datastore_dir,
                                                                                http_server):
    story = Story(tmp_path, datastore_dir, http_server.url)
    vols = story.deploy_and_write()
    root, scratch = story.phase2()
    story.b.cfg.volumes[1].maxsizebytes = 4 * MiB  # smaller than the 8 MiB scratch drive
    proc = run_once(story.data, story.b, story.cfg)
    assert proc.returncode == 1
    st = device_status(story.data)
    refused = by_name(st["volumes"], "web scratch")
    assert refused["state"] == "ERROR" and refused["path"] is None
    assert "cannot take over the drive's volume" in refused["error"]["description"]
    assert "maxsizebytes 4194304" in refused["error"]["description"]
    kept = vols[story.implicit[1]]
    assert kept.exists() and read_at(kept, 3 * MiB, len(APP_BYTES)) == APP_BYTES
    # the root disk, which fits, was taken over
    assert read_at(Path(by_name(st["volumes"], "web root")["path"]), 3 * MiB, len(APP_BYTES)) == APP_BYTES


def test_purge_of_a_drive_app_regenerates_its_drives_except_preserve(tmp_path, datastore_dir, http_server):
    raw = make_raw_image(datastore_dir / "os.raw", 2, seed=42)
    app = new_id()
    b = ConfigBuilder()
    ds = b.datastore(http_server.url)
    os_drive = drive(ds, "os.raw", sha256_file(raw), "raw", max_size=4 * MiB)
    data_drive = drive(drvtype="hdd_empty", max_size=8 * MiB, preserve=True)
    b.app_with_drives([os_drive, data_drive], app_id=app, name="vm")
    data, cfg = tmp_path / "dev", tmp_path / "config.pb"
    assert run_once(data, b, cfg).returncode == 0
    os_uuid, data_uuid = implicit_volume_uuid(app, os_drive.image.uuidandversion.uuid), \
        implicit_volume_uuid(app, "blank-1")
    paths = {v["uuid"]: Path(v["path"]) for v in device_status(data)["volumes"]}
    for p in paths.values():
        write_at(p, 3 * MiB, APP_BYTES)

    b.cfg.apps[0].purge.counter = 1  # the controller purges the app
    proc = run_once(data, b, cfg)
    assert proc.returncode == 0, proc.stderr[-3000:]
    st = device_status(data)
    gens = {(v["uuid"], v["generation_count"]): v for v in st["volumes"]}
    assert set(gens) == {(os_uuid, 1), (data_uuid, 0)}
    fresh = Path(gens[(os_uuid, 1)]["path"])
    assert read_at(fresh, 0, 2 * MiB) == raw.read_bytes() and read_at(fresh, 3 * MiB, 8) == bytes(8)
    assert not paths[os_uuid].exists()  # the old generation went once the app moved
    assert read_at(paths[data_uuid], 3 * MiB, len(APP_BYTES)) == APP_BYTES  # preserve: kept with its data
    assert by_name(st["apps"], "vm")["volume_refs"] == [{"uuid": os_uuid, "generation_count": 1},
                                                        {"uuid": data_uuid, "generation_count": 0}]


@pytest.mark.parametrize("delay", [4])
def test_a_volume_nothing_names_is_reported_then_collected_after_the_gc_delay(tmp_path, delay):
    """A migrated disk whose app now names other volume IDs: reported as unclaimed, kept for the GC delay
    (a config may still claim it), then collected and reported gone."""
    data, cfg = tmp_path / "dev", tmp_path / "config.pb"
    b = ConfigBuilder().item("edgevol.gc.delay.seconds", str(delay)).item("edgevol.disk.scan.interval.seconds", "0")
    b.blank_volume(MiB, name="other")
    assert run_once(data, b, cfg).returncode == 0
    stray_uuid = new_id()
    stray = data / "volumes" / f"{stray_uuid}#0.raw"  # as the legacy migration leaves one
    stray.write_bytes(APP_BYTES)
    proc = subprocess.Popen([*EDGEVOL, "device", "run", "--data-dir", str(data), "--config", str(cfg),
                             "--interval", "0.1", "--no-progress"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        import time

        deadline = time.monotonic() + 30
        seen_reported = False
        while time.monotonic() < deadline:
            sent = dict(outbox(data))
            msg = sent.get(f"volume/{stray_uuid}#0")
            if msg is not None and msg.vinfo.displayName.startswith("unclaimed") and not seen_reported:
                seen_reported = True  # first sighting: well within the GC delay, so the file is still there
                assert msg.vinfo.state == S.CREATED_VOLUME and stray.exists()
            if msg is not None and not msg.vinfo.displayName:
                break
            time.sleep(0.1)
        else:
            raise AssertionError(f"the unclaimed volume was never collected: {sent.get(f'volume/{stray_uuid}#0')}")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
    assert seen_reported, "collected without ever being reported"
    assert not stray.exists()
    assert [v["display_name"] for v in device_status(data)["volumes"]] == ["other"]


def test_a_migrated_legacy_disk_the_new_config_does_not_name_is_reported_then_collected(tmp_path):
    """The legacy layout is migrated on the first start with the legacy checkpoint (its drives name the
    implicit volumes), but the config that then arrives gives the apps volumes of other IDs: each migrated
    disk is reported as unclaimed, kept for the GC delay, then collected and reported gone."""
    import time

    from edgevol.device.reconcile.agent import Agent, AgentOptions
    from edgevol.model.parse import parse_config
    from tests.test_migrate import build_legacy, implicit_targets

    lg = build_legacy(tmp_path / "data")
    targets = implicit_targets(lg)
    b = ConfigBuilder().item("edgevol.gc.delay.seconds", "2").item("edgevol.disk.scan.interval.seconds", "0")
    b.app([b.blank_volume(MiB, name="vm-new")], name="vm", app_id=lg.app_vm)
    b.app([b.blank_volume(MiB, name="ct-new")], name="ct", app_id=lg.app_ct)
    agent = Agent(lg.data, AgentOptions())  # the first start migrates, with the legacy checkpoint
    try:
        assert all(p.exists() for p in targets.values())  # moved into volumes/ under the implicit identities
        agent.set_desired(parse_config(b.cfg))
        start = time.monotonic()
        agent.step()
        unclaimed = {r["path"]: r for r in agent.store.all("volumes") if r["display_name"].startswith("unclaimed")}
        assert set(unclaimed) == {str(p) for p in targets.values()}
        sent = {k: m.ZInfoMsg.FromString(p) for k, _, p in agent.store.outbox_items()}
        for row in unclaimed.values():  # reported, as a volume the controller can see and claim
            vinfo = sent[f"volume/{row['uuid']}#0"].vinfo
            assert vinfo.displayName.startswith("unclaimed") and vinfo.state == S.CREATED_VOLUME
        while any(p.exists() for p in targets.values()):
            assert time.monotonic() - start < 30, "unclaimed volumes never collected"
            agent.step()
            time.sleep(0.1)
        assert time.monotonic() - start >= 2  # not before the GC delay
        sent = {k: m.ZInfoMsg.FromString(p) for k, _, p in agent.store.outbox_items()}
        for row in unclaimed.values():
            assert sent[f"volume/{row['uuid']}#0"].vinfo.displayName == ""  # reported gone
        assert {r["display_name"] for r in agent.store.all("volumes")} == {"vm-new", "ct-new"}
    finally:
        agent.close()


def test_a_bigger_controller_volume_takes_over_the_drive_and_grows(tmp_path, datastore_dir, http_server):
    """The controller may give the volume more room than the drive had: the data stays, the disk grows."""
    from edgevol.device.volumes import qemu

    story = Story(tmp_path, datastore_dir, http_server.url)
    story.deploy_and_write()
    root, scratch = story.phase2()
    story.b.cfg.volumes[0].maxsizebytes = 6 * MiB  # the drive had 4 MiB
    assert run_once(story.data, story.b, story.cfg).returncode == 0
    v = by_name(device_status(story.data)["volumes"], "web root")
    path = Path(v["path"])
    assert v["uuid"] == root and read_at(path, 3 * MiB, len(APP_BYTES)) == APP_BYTES
    assert qemu.image_info(path, path.suffix.lstrip(".")).virtual_size == 6 * MiB
