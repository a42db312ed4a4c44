"""EVE's config item names, sha256 case, volume ref matching and app errors (issue 11).

Each rule is EVE's; the comment on each test names the file and line of
lf-edge/eve it comes from.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

from edgevol.api import messages as m
from edgevol.device.state import StateStore
from edgevol.device.uplink.wiretrace import load_exchange
from edgevol.model.desired import ObjectKind, Settings
from edgevol.model.parse import parse_config
from tests.configs import ConfigBuilder, sha256_file
from tests.conftest import by_name, device_status, make_raw_image, run_cli
from tests.controller_fixture import agent_factory, controller_factory, onboard, wait_for  # noqa: F401

MiB = 1 << 20


def _settings(*items: tuple[str, str]) -> tuple[Settings, dict[str, str]]:
    b = ConfigBuilder()
    for key, value in items:
        b.item(key, value)
    d = parse_config(b.cfg)
    return d.settings, {e.object_id: e.message for e in d.errors if e.kind is ObjectKind.CONFIG_ITEM}


def _once(data: Path, b: ConfigBuilder, cfg: Path) -> subprocess.CompletedProcess[str]:
    b.save(cfg)
    return run_cli("device", "run", "--data-dir", str(data), "--config", str(cfg), "--once")


def _outbox(data: Path) -> dict[str, Any]:
    store = StateStore(data / "state.db")
    try:
        return {k: m.ZInfoMsg.FromString(p) for k, _, p in store.outbox_items()}
    finally:
        store.close()


# ---------------------------------------------------------------- config items


def test_eve_config_items_with_eve_ranges_no_clamping_and_edgevol_aliases_win() -> None:
    # Keys, defaults and ranges: pkg/pillar/types/global.go:183-187 (names), :285 (ignore disk check),
    # :1172-1174 (AddIntItem: timer.defer.content.delete 0..24h, timer.download.retry 60..0xFFFFFFFF,
    # timer.download.stalled 20..0xFFFFFFFF), :1247 (AddBoolItem, default false).
    s, errors = _settings(("timer.defer.content.delete", "3600"), ("timer.download.retry", "120"),
                          ("timer.download.stalled", "45"), ("storage.apps.ignore.disk.check", "true"))
    assert (s.gc_delay_seconds, s.slow_retry_seconds, s.download_read_timeout_seconds) == (3600, 120, 45)
    assert s.ignore_disk_check is True and not errors
    # Defaults that differ only in name are EVE's already (global.go:1172-1173: 0 and 10 min).
    assert (Settings().gc_delay_seconds, Settings().slow_retry_seconds, Settings().ignore_disk_check) == (0, 600, False)
    # Edges of EVE's ranges are accepted.
    s, errors = _settings(("timer.defer.content.delete", "86400"), ("timer.download.retry", "60"),
                          ("timer.download.stalled", "20"))
    assert (s.gc_delay_seconds, s.slow_retry_seconds, s.download_read_timeout_seconds) == (86400, 60, 20)
    assert not errors

    # Out of range is an error on the item and the value is not clamped: global.go:1094-1097
    # (parseValue keeps the spec's default) and :853-867 (ParseItem: previous value, else default).
    s, errors = _settings(("timer.defer.content.delete", "86401"), ("timer.download.retry", "59"),
                          ("timer.download.stalled", "19"))
    assert (s.gc_delay_seconds, s.slow_retry_seconds, s.download_read_timeout_seconds) == (
        Settings().gc_delay_seconds, Settings().slow_retry_seconds, Settings().download_read_timeout_seconds)
    assert errors == {"timer.defer.content.delete": "timer.defer.content.delete='86401': want 0..86400; "
                                                    "the default applies",
                      "timer.download.retry": "timer.download.retry='59': want 60..4294967295; the default applies",
                      "timer.download.stalled": "timer.download.stalled='19': want 20..4294967295; "
                                                "the default applies"}
    # An int item is a base-10 uint32 (global.go:1091, strconv.ParseUint(v, 10, 32)): no sign, no fraction.
    for bad in ("-1", "1.5", "4294967296", "", "0x10"):
        s, errors = _settings(("timer.download.retry", bad))
        assert s.slow_retry_seconds == 600 and "not a whole number" in errors["timer.download.retry"], bad
    # A bool item takes what Go's strconv.ParseBool takes (global.go:1113).
    for raw, want in (("1", True), ("T", True), ("True", True), ("0", False), ("FALSE", False)):
        assert _settings(("storage.apps.ignore.disk.check", raw))[0].ignore_disk_check is want
    s, errors = _settings(("storage.apps.ignore.disk.check", "yes"))
    assert s.ignore_disk_check is False and "want true or false" in errors["storage.apps.ignore.disk.check"]

    # Both names: the edgevol.* alias wins, whichever comes first.
    pairs = [("timer.defer.content.delete", "100", "edgevol.gc.delay.seconds", "7.5"),
             ("timer.download.retry", "100", "edgevol.download.slow.retry.seconds", "30"),
             ("timer.download.stalled", "100", "edgevol.download.read.timeout.seconds", "2.5")]
    for order in (1, -1):
        items = [kv for eve, ev, alias, av in pairs for kv in ((eve, ev), (alias, av))[::order]]
        s, errors = _settings(*items)
        assert (s.gc_delay_seconds, s.slow_retry_seconds, s.download_read_timeout_seconds) == (7.5, 30, 2.5)
        assert not errors
    # The disk scan: global.go:173 (name), :1153 (AddIntItem 5 min, 5..3600); edgevol's default is 10 s.
    assert Settings().disk_scan_interval_seconds == 10
    assert _settings(("timer.metric.diskscan.interval", "5"))[0].disk_scan_interval_seconds == 5
    s, errors = _settings(("timer.metric.diskscan.interval", "3601"))
    assert s.disk_scan_interval_seconds == 10 and "want 5..3600" in errors["timer.metric.diskscan.interval"]
    s, errors = _settings(("timer.metric.diskscan.interval", "60"), ("edgevol.disk.scan.interval.seconds", "0.5"))
    assert s.disk_scan_interval_seconds == 0.5 and not errors
    # An invalid alias leaves EVE's valid value in force, with the alias's error.
    s, errors = _settings(("timer.download.retry", "120"), ("edgevol.download.slow.retry.seconds", "x"))
    assert s.slow_retry_seconds == 120 and "edgevol.download.slow.retry.seconds" in errors


def test_ignore_disk_check_admits_a_volume_that_does_not_fit(tmp_path) -> None:
    # volumemgr skips its space check when storage.apps.ignore.disk.check is set:
    # pkg/pillar/cmd/volumemgr/updatestatus.go:540 (volumes) and blob.go:22 (blobs).
    b = ConfigBuilder()
    b.blank_volume(1 << 46, name="huge")  # 64 TiB: a sparse qcow2, larger than any disk here
    data, cfg = tmp_path / "dev", tmp_path / "c.pb"
    assert _once(data, b, cfg).returncode == 1
    huge = by_name(device_status(data)["volumes"], "huge")
    assert huge["state"] != "CREATED_VOLUME" and huge["error"]
    b.item("storage.apps.ignore.disk.check", "true")
    assert _once(data, b, cfg).returncode == 0
    assert by_name(device_status(data)["volumes"], "huge")["state"] == "CREATED_VOLUME"


# ---------------------------------------------------------------- sha256 case


def test_sha256_is_matched_case_insensitively(tmp_path, datastore_dir, http_server) -> None:
    # EVE lowers the configured sha256 before it names a blob and before it compares it with the
    # computed digest: pkg/pillar/cmd/volumemgr/handlecontent.go:244,253 and
    # pkg/pillar/cmd/verifier/lib/verifier.go:65.
    raw = make_raw_image(datastore_dir / "os.raw", 2, seed=5)
    digest = sha256_file(raw)
    b = ConfigBuilder()
    ds = b.datastore(http_server.url)
    ct = b.content_tree(ds, "os.raw", digest.upper(), "raw", name="os")
    b.download_volume(ct, 4 * MiB, name="root")
    d = parse_config(b.cfg)
    assert not d.errors and d.content_trees[ct].sha256 == digest
    data, cfg = tmp_path / "dev", tmp_path / "c.pb"
    assert _once(data, b, cfg).returncode == 0
    st = device_status(data)
    assert by_name(st["volumes"], "root")["state"] == "CREATED_VOLUME"
    assert [blob["sha256"] for blob in st["blobs"]] == [digest]
    # The same content named in lower case is the same tree: nothing is fetched or made again.
    b.cfg.contentInfo[0].sha256 = digest
    before = by_name(st["volumes"], "root")
    assert _once(data, b, cfg).returncode == 0
    after = by_name(device_status(data)["volumes"], "root")
    assert (after["path"], after["state"], after["error"]) == (before["path"], "CREATED_VOLUME", before["error"])


# ---------------------------------------------------------------- volume refs: uuid and generation


def test_volume_ref_is_matched_by_uuid_and_generation(tmp_path) -> None:
    # A volume ref names the volume uuid#generation (VolumeRefConfig.VolumeKey,
    # pkg/pillar/types/volumetypes.go:354-357), and volumemgr looks the volume up by that key
    # (pkg/pillar/cmd/volumemgr/handlevolumeref.go:25): a ref to another generation names no volume.
    b = ConfigBuilder()
    vol = b.blank_volume(2 * MiB, name="data", generation=1)
    app = b.app([vol], name="vm")  # refers to generation 0
    data, cfg = tmp_path / "dev", tmp_path / "c.pb"
    assert _once(data, b, cfg).returncode == 1
    st = device_status(data)
    row = by_name(st["apps"], "vm")
    assert f"{vol}#0 (the config has generation 1)" in row["error"]["description"]
    assert by_name(st["volumes"], "data")["ref_count"] == 1  # the config's own reference, not the app's
    ainfo = _outbox(data)[f"app/{app}"].ainfo
    assert ainfo.appErr[0].description == row["error"]["description"]

    # The right generation: the app uses the volume and the error is gone.
    b.cfg.apps[0].volumeRefList[0].generationCount = 1
    b.cfg.apps[0].purge.counter = 1
    assert _once(data, b, cfg).returncode == 0
    st = device_status(data)
    assert by_name(st["apps"], "vm")["error"] is None
    assert by_name(st["volumes"], "data")["ref_count"] == 2
    assert not _outbox(data)[f"app/{app}"].ainfo.appErr


# ---------------------------------------------------------------- app errors reach the controller


def test_app_errors_are_reported_as_zinfoapp_and_cleared(tmp_path) -> None:
    # As EVE's zedagent sends an app (pkg/pillar/cmd/zedagent/handlemetrics.go:1138-1170):
    # ZInfoMsg ztype ZiApp with ainfo {AppID, AppName, state, appErr}; without an error no appErr;
    # a deleted app is sent with only its AppID (handlemetrics.go:1136-1137).
    b = ConfigBuilder()
    v1 = b.blank_volume(2 * MiB, name="one")
    v2 = b.blank_volume(2 * MiB, name="two")
    app = b.app([v1], name="vm")
    data, cfg = tmp_path / "dev", tmp_path / "c.pb"
    assert _once(data, b, cfg).returncode == 0
    msg = _outbox(data)[f"app/{app}"]
    assert msg.ztype == m.ZInfoTypes.ZiApp and msg.devId == b.cfg.id.uuid
    assert (msg.ainfo.AppID, msg.ainfo.AppName, msg.ainfo.state) == (app, "vm", m.ZSwState.CREATED_VOLUME)
    assert list(msg.ainfo.volumeRefs) == [v1] and not msg.ainfo.appErr

    # refs changed without a purge counter bump
    b.cfg.apps[0].volumeRefList[0].uuid = v2
    assert _once(data, b, cfg).returncode == 1
    ainfo = _outbox(data)[f"app/{app}"].ainfo
    assert ainfo.AppID == app and ainfo.AppName == "vm" and list(ainfo.volumeRefs) == [v1]
    assert len(ainfo.appErr) == 1 and "without a purge counter bump" in ainfo.appErr[0].description
    assert ainfo.appErr[0].severity == m.Severity.SEVERITY_ERROR and ainfo.appErr[0].HasField("timestamp")
    assert ainfo.appErr[0].entities[0].entity == m.Entity.ENTITY_APP_INSTANCE
    assert ainfo.appErr[0].entities[0].entity_id == app

    # cleared: the purge counter moves the app; the report has no appErr any more
    b.cfg.apps[0].purge.counter = 1
    assert _once(data, b, cfg).returncode == 0
    ainfo = _outbox(data)[f"app/{app}"].ainfo
    assert not ainfo.appErr and list(ainfo.volumeRefs) == [v2]

    # a ref to a volume that is not in the config: the app is refused and says why
    other = b.app([v1], name="other")
    b.cfg.apps[1].volumeRefList[0].uuid = "00000000-0000-4000-8000-000000000000"
    assert _once(data, b, cfg).returncode == 1
    ainfo = _outbox(data)[f"app/{other}"].ainfo
    assert ainfo.AppID == other and ainfo.AppName == "other"
    assert ainfo.appErr[0].description.startswith("invalid config: volumeRef 00000000-0000-4000-8000-000000000000")

    # deleted: one message with only the uuid
    del b.cfg.apps[:]
    assert _once(data, b, cfg).returncode == 0
    box = _outbox(data)
    for gone in (app, other):
        assert box[f"app/{gone}"].ztype == m.ZInfoTypes.ZiApp
        assert box[f"app/{gone}"].ainfo == m.ZInfoApp(AppID=gone)
    store = StateStore(data / "state.db")
    seqs = {k: s for k, s, _ in store.outbox_items()}
    store.close()
    assert _once(data, b, cfg).returncode == 0  # nothing more to say about them
    store = StateStore(data / "state.db")
    assert {k: s for k, s, _ in store.outbox_items()} == seqs
    store.close()


def test_controller_accepts_app_reports_and_the_outbox_drains(controller_factory, agent_factory,  # noqa: F811
                                                               tmp_path) -> None:
    ctrl = controller_factory(None)
    agent = agent_factory(ctrl, "dev1")
    onboard(ctrl, agent, "dev1")
    ctrl.admin("POST", "/devices/dev1/volumes", json={"name": "one", "origin": "blank", "max_size_bytes": 2 * MiB})
    ctrl.admin("POST", "/devices/dev1/volumes", json={"name": "two", "origin": "blank", "max_size_bytes": 2 * MiB})
    app = ctrl.admin("POST", "/devices/dev1/apps", json={"name": "vm", "volumes": ["one"]})
    trace = tmp_path / "trace"
    agent.start("--trace-wire", str(trace))
    wait_for(lambda: (agent.data_dir / "state.db").exists() and agent.status()["apps"], 60, "app on device")
    # The controller changes the refs without bumping the purge counter: an app error on the device.
    ctrl.admin("PUT", f"/devices/dev1/apps/{app['name']}/volume-refs", json={"volumes": ["one", "two"]})
    wait_for(lambda: (by_name(agent.status()["apps"], "vm")["error"] or {}).get("description"), 60, "app error")

    def app_posts() -> list[tuple[int, Any]]:
        out = []
        for path in sorted(trace.glob("*-POST-info.json")):
            ex = load_exchange(path)
            msg = m.ZInfoMsg.FromString(m.AuthContainer.FromString(ex["request_body"]).protectedPayload.payload)
            if msg.ztype == m.ZInfoTypes.ZiApp:
                out.append((ex["status"], msg.ainfo))
        return out

    sent = wait_for(lambda: [(s, a) for s, a in app_posts() if a.appErr], 60, "the app error sent")
    assert sent[0][0] == 201 and "without a purge counter bump" in sent[0][1].appErr[0].description
    wait_for(lambda: not [it for it in agent.outbox() if it["key"].startswith("app/")], 60, "outbox drained")
    assert all(status == 201 for status, _ in app_posts())


def test_the_disk_scan_interval_decides_how_often_volume_usage_is_measured(tmp_path) -> None:
    # EVE measures volumes every timer.metric.diskscan.interval (global.go:173, :1153); so does edgevol.
    from edgevol.device.reconcile.agent import Agent, AgentOptions

    b = ConfigBuilder().item("timer.metric.diskscan.interval", "3600").item("edgevol.volume.blank.format", "raw")
    vol = b.blank_volume(16 * MiB, name="data")
    agent = Agent(tmp_path / "dev", AgentOptions())
    try:
        agent.set_desired(parse_config(b.cfg))
        for _ in range(100):
            agent.step()
            row = agent.store.get("volumes", vol, 0)
            if row and row["state"] == m.ZSwState.CREATED_VOLUME:
                break
            time.sleep(0.05)
        before = agent.store.get("volumes", vol, 0)["cur_size"]
        with open(agent.store.get("volumes", vol, 0)["path"], "r+b") as f:  # the app writes 4 MiB
            f.write(os.urandom(4 * MiB))
            os.fsync(f.fileno())
        for _ in range(5):
            agent.step()
        assert agent.store.get("volumes", vol, 0)["cur_size"] == before  # not measured again within the hour
        b.item("edgevol.disk.scan.interval.seconds", "0")
        agent.set_desired(parse_config(b.cfg))
        agent.step()
        assert agent.store.get("volumes", vol, 0)["cur_size"] >= before + 4 * MiB
    finally:
        agent.close()
