"""Volumes served to tasks (issue 18), through the agent: which volumes are exported and when, attached to as a
task would (``qemu-io`` over the NBD socket), and the I/O the exports count in ``ZMetricVolume``.

The export daemons' own behaviour (options, counters, restarts) is tested in tests/test_exports.py; here the
agent decides: an export exists while an activated app uses the volume, it follows the app through a purge,
it goes when the app is deactivated, and a protocol the device cannot offer is an error on the app.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import time
from pathlib import Path
from typing import Any

from edgevol.device.state import StateStore
from edgevol.device.uplink.metrics import volume_metrics
from tests.conftest import by_name, device_status, export_io, run_cli, start_agent
from tests.configs import ConfigBuilder
from tests.controller_fixture import agent_factory, controller_factory, onboard, wait_for  # noqa: F401

MiB = 1 << 20
KiB = 1 << 10


def exports(data: Path) -> list[dict[str, Any]]:
    if not (data / "state.db").exists():
        return []  # the agent has not started yet
    return json.loads(run_cli("device", "exports", "--data-dir", str(data), "-o", "json", check=True).stdout)


def running(data: Path, count: int) -> list[dict[str, Any]] | None:
    found = exports(data)
    return found if len(found) == count and all(e["state"] == "running" for e in found) else None


def metrics_of(data: Path) -> dict[str, Any]:
    store = StateStore(data / "state.db")
    try:
        msg = volume_metrics(store, "dev")
    finally:
        store.close()
    return {v.displayName: v for v in msg.vm}


def test_an_activated_apps_volumes_are_exported_and_count_what_tasks_do(tmp_path: Path) -> None:
    """Two blank volumes of an activated app: each gets an NBD and a vhost-user-blk socket (0600, under the data
    dir). A task writes and reads a pattern over NBD; the read-only volume refuses writes at its export. The
    ZMetricVolume counters equal the bytes and operations done. Deactivating the app stops the exports."""
    b = ConfigBuilder().item("edgevol.volume.blank.format", "qcow2")
    rw = b.blank_volume(8 * MiB, name="data")
    ro = b.blank_volume(8 * MiB, name="golden", readonly=True)
    b.app([rw, ro], name="vm", activate=True)
    cfg, data, log = tmp_path / "config.pb", tmp_path / "dev", tmp_path / "agent.log"
    b.save(cfg)
    agent = start_agent(data, cfg, log)
    try:
        found = wait_for(lambda: running(data, 2), 30.0, "both exports running", interval=0.1)
        by_uuid = {e["uuid"]: e for e in found}
        for e in found:
            assert set(e["sockets"]) >= {"nbd", "vhost-user-blk"}, e
            for path in e["sockets"].values():
                st = os.stat(path)
                assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600, (path, oct(st.st_mode))
                assert Path(path).is_relative_to(data)
        assert by_uuid[ro]["readonly"] and not by_uuid[rw]["readonly"]

        wrote = export_io(by_uuid[rw], "write -P 0xab 0 64k", "write -P 0xab 64k 64k", "write -P 0xab 128k 64k")
        assert wrote.returncode == 0 and "error" not in wrote.stdout.lower(), wrote.stdout + wrote.stderr
        read = export_io(by_uuid[rw], *(f"read -P 0xab {n * 4}k 4k" for n in range(5)))
        assert read.returncode == 0 and "Pattern verification failed" not in read.stdout, read.stdout + read.stderr
        refused = export_io(by_uuid[ro], "write -P 0xcd 0 4k")  # the export refuses a writer (qemu-io cannot open it)
        said = (refused.stdout + refused.stderr).lower()
        assert "permission denied" in said or "write failed" in said, said
        assert "wrote" not in said

        def counted() -> Any:
            m = metrics_of(data)
            return m if m["data"].writeCount == 3 and m["data"].readCount >= 5 else None

        m = wait_for(counted, 30.0, "the counters to reach the metrics", interval=0.1)
        assert (m["data"].writeBytes, m["data"].writeCount) == (3 * 64 * KiB, 3)
        assert (m["data"].readBytes, m["data"].readCount) == (5 * 4 * KiB, 5)
        assert (m["golden"].writeBytes, m["golden"].writeCount) == (0, 0)

        b.cfg.apps[0].activate = False
        b.cfg.id.version = "2"
        b.save(cfg)
        wait_for(lambda: exports(data) == [], 30.0, "the exports to stop", interval=0.1)
        assert not any(os.path.exists(p) for e in found for p in e["sockets"].values())
        after = metrics_of(data)  # counted since boot: an export that stopped keeps its figures
        assert (after["data"].writeBytes, after["data"].readBytes) == (3 * 64 * KiB, 5 * 4 * KiB)
    finally:
        agent.terminate()
        agent.wait(20)
    # what the task wrote is in the volume itself
    vol = by_name(device_status(data)["volumes"], "data")
    check = subprocess.run(["qemu-io", "-f", "qcow2", "-r", "-c", "read -P 0xab 0 192k", vol["path"]],
                           capture_output=True, text=True)
    assert check.returncode == 0 and "Pattern verification failed" not in check.stdout, check.stdout


def test_a_purge_moves_the_export_only_with_the_app_and_a_killed_daemon_comes_back(tmp_path: Path) -> None:
    """``kill -9`` of an export's daemon is recovered, and its counts continue. Then a purge: the app's two
    volumes get new generations, one of which can never fit, so the app stays on the old ones (it moves only
    once all its new volumes exist): the exports stay on the old generations although disk#1 exists. Once the
    other fits, the app moves and the exports move with it."""
    b = ConfigBuilder()
    vol = b.blank_volume(8 * MiB, name="disk")
    big = b.blank_volume(8 * MiB, name="big")
    b.app([vol, big], name="vm", activate=True)
    cfg, data, log = tmp_path / "config.pb", tmp_path / "dev", tmp_path / "agent.log"
    b.save(cfg)
    agent = start_agent(data, cfg, log)
    try:
        found = wait_for(lambda: running(data, 2), 30.0, "the exports", interval=0.1)
        first = next(e for e in found if e["uuid"] == vol)
        assert first["generation"] == 0
        assert export_io(first, "write -P 0x11 0 4k").returncode == 0
        os.kill(first["pid"], signal.SIGKILL)
        back = wait_for(lambda: [e for e in exports(data) if e["uuid"] == vol and e["state"] == "running"
                                 and e["pid"] != first["pid"]], 30.0, "the daemon restarted", interval=0.1)
        assert back[0]["restarts"] == 1
        assert export_io(back[0], "write -P 0x22 4k 4k").returncode == 0
        wait_for(lambda: metrics_of(data)["disk"].writeCount == 2,
                 30.0, "the counts to continue across the restart", interval=0.1)

        for n, size in ((0, 8 * MiB), (1, 1 << 50)):  # big#1 is a PiB: never fits
            b.cfg.volumes[n].generationCount = 1
            b.cfg.volumes[n].maxsizebytes = size
            b.cfg.apps[0].volumeRefList[n].generationCount = 1
        b.cfg.apps[0].purge.counter = 1
        b.cfg.id.version = "2"
        b.save(cfg)
        wait_for(lambda: any(v["generation_count"] == 1 and v["state"] == "CREATED_VOLUME"
                             for v in device_status(data)["volumes"] if v["uuid"] == vol),
                 30.0, "disk#1 created", interval=0.1)
        time.sleep(1.0)  # passes go by: the app stays, and so do its exports
        assert sorted((e["uuid"], e["generation"]) for e in exports(data)) == sorted([(vol, 0), (big, 0)])

        b.cfg.volumes[1].maxsizebytes = 8 * MiB
        b.cfg.id.version = "3"
        b.save(cfg)
        moved = wait_for(lambda: (lambda e: e if sorted(
            (x["uuid"], x["generation"], x["state"]) for x in e) == sorted([(vol, 1, "running"), (big, 1, "running")])
            else None)(exports(data)), 30.0, "the exports on generation 1", interval=0.1)
        apps = device_status(data)["apps"]
        assert sorted([r["uuid"], r["generation_count"]] for r in apps[0]["volume_refs"]) == sorted([[vol, 1], [big, 1]])
        fresh = export_io(next(e for e in moved if e["uuid"] == vol), "read -P 0 0 8k")  # a new blank disk
        assert fresh.returncode == 0 and "Pattern verification failed" not in fresh.stdout, fresh.stdout
    finally:
        agent.terminate()
        agent.wait(20)


def test_vap_9p_on_a_disk_image_is_an_error_on_the_app(tmp_path: Path) -> None:
    """VAP_9P is served as virtiofs, which shares a directory: asked of a qcow2 volume it is refused with an
    error on the volume that the app's error carries too, and nothing is exported for it."""
    b = ConfigBuilder()
    vol = b.blank_volume(8 * MiB, name="disk")
    b.cfg.volumes[0].protocols.append(1)  # VAP_9P
    b.app([vol], name="vm", activate=True)
    cfg, data, log = tmp_path / "config.pb", tmp_path / "dev", tmp_path / "agent.log"
    b.save(cfg)
    agent = start_agent(data, cfg, log)
    try:
        wait_for(lambda: (data / "state.db").exists(), 30.0, "the agent's state", interval=0.1)
        app = wait_for(lambda: next((a for a in device_status(data)["apps"] if a["error"]), None),
                       30.0, "the app's error", interval=0.1)
    finally:
        agent.terminate()
        agent.wait(20)
    assert "VAP_9P cannot be offered for volume disk" in app["error"]["description"], app["error"]
    assert exports(data) == []
    disk = by_name(device_status(data)["volumes"], "disk")
    assert disk["state"] == "CREATED_VOLUME"  # the volume itself is fine


def test_the_controller_keeps_the_counts_of_what_tasks_did(controller_factory, agent_factory):  # noqa: F811
    """Through edgevol's controller (whose apps are activated by default): a task writes 2 × 64 KiB and reads
    3 × 4 KiB over the export; the controller's stored ZMetricVolume samples carry exactly those figures."""
    ctrl = controller_factory(None)
    agent = agent_factory(ctrl, "dev1")
    onboard(ctrl, agent, "dev1")
    vol = ctrl.admin("POST", "/devices/dev1/volumes", json={"name": "x", "origin": "blank",
                                                            "max_size_bytes": 16 * MiB})
    ctrl.admin("POST", "/devices/dev1/apps", json={"name": "web", "volumes": ["x"]})
    agent.start()
    try:
        [e] = wait_for(lambda: running(agent.data_dir, 1), 60, "the export", interval=0.1)
        assert export_io(e, "write -P 0x5a 0 64k", "write -P 0x5a 64k 64k").returncode == 0
        assert export_io(e, "read 0 4k", "read 4k 4k", "read 8k 4k").returncode == 0

        def stored() -> Any:
            samples = ctrl.admin("GET", f"/devices/dev1/volumes/{vol['uuid']}/metrics", params={"limit": 1})
            return samples[0] if samples and samples[0]["write_count"] == 2 and samples[0]["read_count"] >= 3 \
                else None

        last = wait_for(stored, 60, "the counts at the controller", interval=0.1)
        assert (last["write_bytes"], last["write_count"]) == (2 * 64 * KiB, 2)
        assert (last["read_bytes"], last["read_count"]) == (3 * 4 * KiB, 3)
    finally:
        agent.stop()


def test_an_export_that_cannot_restart_says_why_on_the_volume_and_recovers(tmp_path: Path) -> None:
    """The volume's image is damaged under its export and the daemon dies: restarting fails (qemu cannot open
    it), and the volume's ErrorInfo says so (and when the next restart is) while the volume stays created.
    Once the image is whole again the export comes back by itself and the error goes."""
    b = ConfigBuilder()
    vol = b.blank_volume(8 * MiB, name="disk")
    b.app([vol], name="vm", activate=True)
    cfg, data, log = tmp_path / "config.pb", tmp_path / "dev", tmp_path / "agent.log"
    b.save(cfg)
    agent = start_agent(data, cfg, log)
    try:
        [first] = wait_for(lambda: running(data, 1), 30.0, "the export", interval=0.1)
        image = Path(by_name(device_status(data)["volumes"], "disk")["path"])
        header = image.read_bytes()[:4]
        with open(image, "r+b") as f:
            f.write(b"XXXX")  # no longer a qcow2 magic
        os.kill(first["pid"], signal.SIGKILL)
        broken = wait_for(lambda: by_name(
            device_status(data)["volumes"], "disk")["export_error"], 30, "the volume's export error", interval=0.1)
        assert "export of the volume to its apps' tasks" in broken["description"], broken
        assert "next restart at" in broken["retry_condition"], broken
        assert by_name(device_status(data)["volumes"], "disk")["state"] == "CREATED_VOLUME"
        table = " ".join(run_cli("device", "status", "--data-dir", str(data), check=True).stdout.split())
        assert "export of the volume" in table
        with open(image, "r+b") as f:
            f.write(header)
        wait_for(lambda: running(data, 1), 90, "the export back", interval=0.1)
        wait_for(lambda: by_name(device_status(data)["volumes"], "disk")["export_error"] is None,
                 30.0, "the error gone", interval=0.1)
    finally:
        agent.terminate()
        agent.wait(20)
