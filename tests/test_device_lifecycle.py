"""Volume lifecycle: purge to a new generation, refcounts, GC with a delay, disk space."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from edgevol.api import messages as m
from edgevol.device.state import StateStore
from tests.configs import ConfigBuilder, sha256_file
from tests.conftest import EDGEVOL, by_name, device_status, guest_bytes, make_raw_image, run_cli

MiB = 1 << 20


def _once(data: Path, b: ConfigBuilder, cfg: Path) -> subprocess.CompletedProcess[str]:
    b.save(cfg)
    return run_cli("device", "run", "--data-dir", str(data), "--config", str(cfg), "--once")


def _gens(st: dict, name: str) -> dict[int, dict]:
    return {v["generation_count"]: v for v in st["volumes"] if v["display_name"] == name}


def test_purge_keeps_the_old_generation_until_the_app_moves(tmp_path, datastore_dir, http_server):
    raw = make_raw_image(datastore_dir / "os.raw", 4, seed=3)
    b = ConfigBuilder()
    ds = b.datastore(http_server.url)
    ct = b.content_tree(ds, "os.raw", sha256_file(raw), "raw", name="os")
    vol = b.download_volume(ct, 8 * MiB, name="root")
    app = b.app([vol], name="vm")
    data, cfg = tmp_path / "dev", tmp_path / "c.pb"
    assert _once(data, b, cfg).returncode == 0
    gen0 = Path(_gens(device_status(data), "root")[0]["path"])
    with open(gen0, "r+b") as f:  # the app writes into its volume
        f.seek(5 * MiB)
        f.write(b"user data" * 1000)
    written = sha256_file(gen0)

    # the controller bumps the volume's generation and points the app at it, but forgets the purge counter
    b.cfg.volumes[0].generationCount = 1
    b.cfg.apps[0].volumeRefList[0].generationCount = 1
    proc = _once(data, b, cfg)
    st = device_status(data)
    gens = _gens(st, "root")
    assert set(gens) == {0, 1} and gens[1]["state"] == "CREATED_VOLUME" and gens[0]["state"] == "CREATED_VOLUME"
    assert sha256_file(gen0) == written  # gen 0 still has the app's data
    assert guest_bytes(Path(gens[1]["path"]))[:4 * MiB] == raw.read_bytes()  # gen 1 is fresh from the content
    app_row = by_name(st["apps"], "vm")
    assert app_row["volume_refs"] == [{"uuid": vol, "generation_count": 0}]
    assert "without a purge counter bump" in app_row["error"]["description"]
    assert proc.returncode == 1
    # both generations are reported
    store = StateStore(data / "state.db")
    keys = {k for k, _, _ in store.outbox_items()}
    store.close()
    assert {f"volume/{vol}#0", f"volume/{vol}#1"} <= keys
    assert gens[0]["ref_count"] == 1 and gens[1]["ref_count"] == 1  # app on gen 0; config on gen 1

    # now with the purge counter: the app moves and gen 0 goes
    b.cfg.apps[0].purge.counter = 1
    assert _once(data, b, cfg).returncode == 0
    st = device_status(data)
    assert set(_gens(st, "root")) == {1}
    assert not gen0.exists()
    assert by_name(st["apps"], "vm")["volume_refs"] == [{"uuid": vol, "generation_count": 1}]
    assert _gens(st, "root")[1]["ref_count"] == 2
    store = StateStore(data / "state.db")
    gone = {k: m.ZInfoMsg.FromString(p) for k, _, p in store.outbox_items()}[f"volume/{vol}#0"]
    store.close()
    assert gone.vinfo.uuid == vol and gone.vinfo.generation_count == 0 and gone.vinfo.state == 0
    assert app


def test_refcounts_change_exactly_when_refs_change_and_survive_a_restart(tmp_path, datastore_dir, http_server):
    b = ConfigBuilder()
    vol = b.blank_volume(4 * MiB, name="v")
    b.app([vol], name="a1")
    b.app([vol], name="a2")
    data, cfg = tmp_path / "dev", tmp_path / "c.pb"
    assert _once(data, b, cfg).returncode == 0
    v1 = by_name(device_status(data)["volumes"], "v")
    assert v1["ref_count"] == 3

    def refs() -> tuple[int, float, float]:
        store = StateStore(data / "state.db")
        row = store.get("volumes", vol, 0)
        store.close()
        assert row is not None
        return row["ref_count"], row["ref_change_time"], row["create_time"]

    count, changed, created = refs()
    assert _once(data, b, cfg).returncode == 0  # restart, same config: nothing changes
    assert refs() == (count, changed, created)
    time.sleep(0.05)
    del b.cfg.apps[1]
    assert _once(data, b, cfg).returncode == 0
    count2, changed2, created2 = refs()
    assert count2 == 2 and changed2 > changed and created2 == created


def test_gc_delay_keeps_unreferenced_content_for_a_while(tmp_path, datastore_dir, http_server):
    raw = make_raw_image(datastore_dir / "img.raw", 2)
    sha = sha256_file(raw)
    b = ConfigBuilder().item("edgevol.gc.delay.seconds", "2")
    ds = b.datastore(http_server.url)
    ct = b.content_tree(ds, "img.raw", sha, "raw", name="img")
    b.download_volume(ct, 4 * MiB, name="v")
    data, cfg = tmp_path / "dev", tmp_path / "c.pb"
    assert _once(data, b, cfg).returncode == 0
    blob = data / "cas" / "blobs" / "sha256" / sha
    gets = len(http_server.requests)

    saved = m.EdgeDevConfig()
    saved.CopyFrom(b.cfg)
    del b.cfg.volumes[:]
    del b.cfg.contentInfo[:]
    assert _once(data, b, cfg).returncode == 0
    st = device_status(data)
    assert st["volumes"] == []
    assert by_name(st["content_trees"], "img")["ref_count"] == 0 and blob.exists()  # not before the delay

    b.cfg.CopyFrom(saved)  # re-added within the delay: reused, nothing downloaded
    assert _once(data, b, cfg).returncode == 0
    assert by_name(device_status(data)["volumes"], "v")["state"] == "CREATED_VOLUME"
    assert len(http_server.requests) == gets

    del b.cfg.volumes[:]
    del b.cfg.contentInfo[:]
    assert _once(data, b, cfg).returncode == 0
    assert blob.exists()
    time.sleep(2.2)
    assert _once(data, b, cfg).returncode == 0  # after the delay: collected
    st = device_status(data)
    assert st["content_trees"] == [] and st["blobs"] == [] and not blob.exists()


@pytest.fixture
def small_fs(tmp_path: Path):
    """A 64 MiB tmpfs for the data dir; without mount rights, an injected free-space figure (named as such)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mnt)],
                             capture_output=True).returncode == 0
    yield mnt, mounted
    if mounted:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_out_of_space_waits_with_figures_and_recovers(tmp_path, datastore_dir, http_server, small_fs):
    mnt, mounted = small_fs
    if not mounted:
        pytest.fail("this test needs to mount a tmpfs (run as root, as CI does)")
    filler = mnt / "filler"
    with open(filler, "wb") as f:
        f.write(os.urandom(24 * MiB))
    raw = make_raw_image(datastore_dir / "img.raw", 8)
    b = ConfigBuilder().item("edgevol.disk.reserve.bytes", "0")
    ds = b.datastore(http_server.url)
    ct = b.content_tree(ds, "img.raw", sha256_file(raw), "raw", max_size=16 * MiB, name="img")
    b.download_volume(ct, 32 * MiB, name="big")
    b.blank_volume(2 * MiB, name="small", readonly=False)
    data, cfg = mnt / "dev", tmp_path / "c.pb"
    b.save(cfg)
    proc = subprocess.Popen([*EDGEVOL, "device", "run", "--data-dir", str(data),
                             "--config", str(cfg), "--interval", "0.2"], stdout=subprocess.DEVNULL,
                            stderr=open(tmp_path / "agent.log", "wb"))
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            if (data / "state.db").exists():
                st = device_status(data)
                big = [v for v in st["volumes"] if v["display_name"] == "big"]
                small = [v for v in st["volumes"] if v["display_name"] == "small"]
                if big and big[0]["error"] and "not enough disk space" in big[0]["error"]["description"] \
                        and small and small[0]["state"] == "CREATED_VOLUME":
                    break
            time.sleep(0.3)
        else:
            raise AssertionError(f"no space error: {device_status(data)}")
        err = big[0]["error"]
        assert big[0]["state"] == "ERROR" and "need 32.0 MiB" in err["description"]
        assert "proceeds by itself" in err["retry_condition"]
        assert by_name(st["volumes"], "small")["state"] == "CREATED_VOLUME"
        assert by_name(st["content_trees"], "img")["state"] == "LOADED"

        filler.unlink()  # space freed: the volume goes ahead by itself
        deadline = time.time() + 120
        while by_name(device_status(data)["volumes"], "big")["state"] != "CREATED_VOLUME":
            assert time.time() < deadline, device_status(data)
            time.sleep(0.3)
    finally:
        proc.terminate()
        proc.wait(20)
