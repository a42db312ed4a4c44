"""What the device puts on the wire, checked against what EVE itself reports (issue 11, device side).

Each rule comes from EVE's source (lf-edge/eve, pkg/pillar) or Eden's scenarios (lf-edge/eden, tests/);
file and line are cited at the test. The wire is read from the device's outbox (``edgevol device
outbox -o json``): the ZInfoMsg bytes a controller would receive.
"""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from edgevol.api import messages as m
from edgevol.device.reconcile.blobs import PROGRESS_INTERVAL, BlobDownloader
from edgevol.device.report import info
from edgevol.device.space import FREE_BYTES_OVERRIDE_ENV
from edgevol.device.state import StateStore
from tests.conftest import by_name, device_status, make_raw_image
from tests.configs import ConfigBuilder, sha256_file
from tests.test_device_failures import outbox, run_once

MiB = 1 << 20
S = m.ZSwState


def wire(data: Path) -> dict[str, dict[str, Any]]:
    """The last queued message per object, reduced to its vinfo / cinfo / single blob."""
    out = {}
    for key, msg in outbox(data).items():
        out[key] = msg.get("vinfo") or msg.get("cinfo") or msg.get("binfo", {}).get("blob", [{}])[0]
    return out


def states(data: Path) -> set[str]:
    return {content.get("state", "INVALID") for content in wire(data).values()}


# -- 1. states on the wire ------------------------------------------------------------------------

def test_loaded_content_is_reported_delivered(tmp_path, datastore_dir, http_server):
    # EVE pkg/pillar/types/types.go:142 (SwState.ZSwState): internal LOADED is sent as DELIVERED;
    # Eden tests/volume/testdata/local_datastore.txt:37 waits for DELIVERED.
    src = make_raw_image(datastore_dir / "a.raw", 1, seed=3)
    b = ConfigBuilder()
    ct = b.content_tree(b.datastore(http_server.url), "a.raw", sha256_file(src), "raw", name="img")
    vol = b.download_volume(ct, 0, name="disk")
    data = tmp_path / "dev"
    assert run_once(data, b.save(tmp_path / "c.json")).returncode == 0
    sent = wire(data)
    assert sent[f"content_tree/{ct}"]["state"] == "DELIVERED"
    assert sent[f"blob/{sha256_file(src)}"]["state"] == "DELIVERED"
    assert sent[f"volume/{vol}#0"]["state"] == "CREATED_VOLUME"
    assert "LOADED" not in states(data)
    assert by_name(device_status(data)["content_trees"], "img")["state"] == "LOADED"  # the device's own view


def test_an_object_with_a_problem_keeps_its_state_and_carries_the_error(tmp_path, datastore_dir, http_server,
                                                                        monkeypatch):
    # EVE sets errors beside the state (VolumeStatus.SetErrorWithSourceAndDescription in
    # pkg/pillar/cmd/volumemgr/updatestatus.go:558, BlobStatus.SetError in blob.go:33) and has no ERROR
    # SwState case in pkg/pillar/types/types.go:120-170, so a blank volume short of space stays INITIAL and
    # a download that fails stays DOWNLOAD_STARTED.
    b = ConfigBuilder()
    ds = b.datastore(http_server.url)
    ct = b.content_tree(ds, "missing.raw", "ab" * 32, "raw", name="gone")
    lost = b.download_volume(ct, 0, name="lost")
    big = b.blank_volume(64 * MiB, name="big")
    cfg = b.save(tmp_path / "c.json")
    data = tmp_path / "dev"
    monkeypatch.setenv(FREE_BYTES_OVERRIDE_ENV, str(300 * MiB))  # 256 MiB reserve: 44 MiB for volumes
    assert run_once(data, cfg).returncode == 1  # --once still says an object has an error

    sent = wire(data)
    assert "ERROR" not in states(data)
    big_info = sent[f"volume/{big}#0"]
    assert big_info["state"] == "INITIAL" and big_info["volumeErr"]["description"].startswith("Remaining")
    assert big_info["volumeErr"]["severity"] == "SEVERITY_ERROR" and big_info["volumeErr"]["timestamp"]
    assert big_info["volumeErr"]["retry_condition"]
    for key in (f"blob/{'ab' * 32}", f"content_tree/{ct}"):
        assert sent[key]["state"] == "DOWNLOAD_STARTED" and sent[key]["err"]["description"], sent[key]
    assert sent[f"volume/{lost}#0"]["state"] == "DOWNLOAD_STARTED" and sent[f"volume/{lost}#0"]["volumeErr"]
    st = device_status(data)  # the device's own view still says ERROR, with the error beside it
    assert by_name(st["volumes"], "big")["state"] == "ERROR" and by_name(st["volumes"], "big")["error"]

    monkeypatch.delenv(FREE_BYTES_OVERRIDE_ENV)  # the cause is gone: the error goes with it
    run_once(data, cfg)
    big_info = wire(data)[f"volume/{big}#0"]
    assert big_info["state"] == "CREATED_VOLUME" and "volumeErr" not in big_info


# -- 2. reported values ---------------------------------------------------------------------------

def test_max_size_bytes_is_the_configured_value(tmp_path, datastore_dir, http_server):
    # EVE pkg/pillar/cmd/zedagent/handlevolume.go:104 takes MaxVolSize from the config's maxsizebytes, and
    # pkg/pillar/cmd/volumemgr/handlevolume.go:171-172 fills it from the created volume only when it is 0.
    src = make_raw_image(datastore_dir / "a.raw", 2, seed=5)
    b = ConfigBuilder()
    ct = b.content_tree(b.datastore(http_server.url), "a.raw", sha256_file(src), "raw", name="img")
    sized = b.download_volume(ct, 0, name="sized-by-image")
    odd = b.blank_volume(1_000_000, name="odd")  # qemu-img makes it 1000448 bytes (whole sectors)
    data = tmp_path / "dev"
    assert run_once(data, b.save(tmp_path / "c.json")).returncode == 0
    sent = wire(data)
    assert int(sent[f"volume/{odd}#0"]["resources"]["maxSizeBytes"]) == 1_000_000
    assert int(sent[f"volume/{sized}#0"]["resources"]["maxSizeBytes"]) == 2 * MiB


def test_create_time_is_when_the_volume_was_created(tmp_path, monkeypatch):
    # EVE pkg/pillar/cmd/volumemgr/handlevolume.go:166 stamps CreateTime when the volume is created, and
    # pkg/pillar/cmd/zedagent/handlemetrics.go:1398 reports that stamp as usage.createTime.
    b = ConfigBuilder()
    vol = b.blank_volume(64 * MiB, name="late")
    cfg = b.save(tmp_path / "c.json")
    data = tmp_path / "dev"
    monkeypatch.setenv(FREE_BYTES_OVERRIDE_ENV, str(300 * MiB))
    assert run_once(data, cfg).returncode == 1  # known to the device, not created: no room yet
    time.sleep(1.5)
    monkeypatch.delenv(FREE_BYTES_OVERRIDE_ENV)
    started = time.time()
    assert run_once(data, cfg).returncode == 0
    sent = wire(data)[f"volume/{vol}#0"]
    stamp = Timestamp()
    stamp.FromJsonString(sent["usage"]["createTime"])  # exact, fractions included
    # the row was inserted >= 1.5 s before `started`; the volume was created after it
    assert stamp.ToNanoseconds() / 1e9 >= started - 0.01, (sent["usage"]["createTime"], started)


def test_progress_never_goes_backwards(tmp_path):
    # Issue 11: 99 -> 0 -> 100 must not happen; neither a retried download nor the volume create that follows
    # a download starts the figure again. Only an object that starts over from INITIAL does.
    store = StateStore(tmp_path / "state.db")
    now = time.time()
    store.insert("volumes", uuid="v", generation=0, state=S.DOWNLOAD_STARTED, progress=99, create_time=now,
                 ref_change_time=now)
    store.update("volumes", ("v", 0), state=S.CREATING_VOLUME, progress=0)
    assert info.volume_info(store.get("volumes", "v", 0)).progressPercentage == 99
    store.update("volumes", ("v", 0), state=S.ERROR, progress=0)
    assert info.volume_info(store.get("volumes", "v", 0)).progressPercentage == 99
    store.update("volumes", ("v", 0), state=S.CREATED_VOLUME, progress=100)
    assert info.volume_info(store.get("volumes", "v", 0)).progressPercentage == 100
    store.insert("blobs", sha256="b", state=S.DOWNLOAD_STARTED, progress=60, create_time=now, ref_change_time=now)
    store.update_progress("blobs", ("b",), progress=10, done_bytes=10)  # a retry that lost its partial
    assert info.blob_info(store.get("blobs", "b")).progressPercentage == 60
    store.update("blobs", ("b",), state=S.INITIAL, progress=0)  # the blob vanished: fetched again from 0
    assert store.get("blobs", "b")["progress"] == 0


def test_progress_is_byte_accurate_while_a_transfer_stalls(tmp_path):
    # Issue 11: the bytes a stalled transfer really holds reach the report, not those of the last throttled
    # write before the stall.
    store = StateStore(tmp_path / "state.db")
    now = time.time()
    store.insert("blobs", sha256="b", state=S.DOWNLOAD_STARTED, create_time=now, ref_change_time=now)
    downloader = BlobDownloader(store, None, None, threading.Event(), lambda _k: None)  # type: ignore[arg-type]
    report, stop = downloader._progress("b", 100 * MiB)
    report(10 * MiB, None)
    report(10 * MiB + 4096, None)  # same percent within the interval: held back, then the peer goes quiet
    time.sleep(PROGRESS_INTERVAL * 3)
    assert store.get("blobs", "b")["done_bytes"] == 10 * MiB + 4096
    report(20 * MiB, None)
    report(20 * MiB + 4096, None)  # held back, and then the transfer ends: nothing is written after it
    stop()
    time.sleep(PROGRESS_INTERVAL * 3)
    assert store.get("blobs", "b")["done_bytes"] == 20 * MiB


# -- 3. error texts EVE's tools match on -----------------------------------------------------------

def test_out_of_space_says_remaining_disk_space(tmp_path, monkeypatch):
    # EVE pkg/pillar/cmd/volumemgr/updatestatus.go:554 "Remaining disk space %d volume needs %d";
    # Eden tests/volume/testdata/volumes_test.txt:34 waits for 'InfoContent.vinfo.volumeErr:Remaining'.
    b = ConfigBuilder()
    vol = b.blank_volume(64 * MiB, name="big")
    data = tmp_path / "dev"
    monkeypatch.setenv(FREE_BYTES_OVERRIDE_ENV, str(300 * MiB))
    assert run_once(data, b.save(tmp_path / "c.json")).returncode == 1
    desc = wire(data)[f"volume/{vol}#0"]["volumeErr"]["description"]
    match = re.match(r"Remaining disk space (\d+) volume needs (\d+)\b", desc)
    assert match, desc
    assert int(match[1]) == 300 * MiB - 256 * MiB and int(match[2]) == 64 * MiB
    assert "kept in reserve" in desc  # edgevol's detail follows EVE's words


def test_blob_out_of_space_says_remaining_disk_space(tmp_path, datastore_dir, http_server, monkeypatch):
    # EVE pkg/pillar/cmd/volumemgr/blob.go:31 "Remaining disk space %d blob needs %d".
    src = make_raw_image(datastore_dir / "a.raw", 1, seed=7)
    b = ConfigBuilder()
    ct = b.content_tree(b.datastore(http_server.url), "a.raw", sha256_file(src), "raw", name="img",
                        max_size=512 * MiB)
    b.download_volume(ct, 0, name="disk")
    data = tmp_path / "dev"
    monkeypatch.setenv(FREE_BYTES_OVERRIDE_ENV, str(300 * MiB))
    assert run_once(data, b.save(tmp_path / "c.json")).returncode == 1
    desc = wire(data)[f"blob/{sha256_file(src)}"]["err"]["description"]
    assert re.match(rf"Remaining disk space {44 * MiB} blob needs {512 * MiB}\b", desc), desc


def test_content_change_without_generation_bump_uses_eves_words(tmp_path):
    # EVE pkg/pillar/cmd/volumemgr/handlevolume.go:50
    # "Need volume regeneration due to %s but generation counter not incremented".
    b = ConfigBuilder()
    vol = b.blank_volume(4 * MiB, name="disk")
    cfg = b.save(tmp_path / "c.json")
    data = tmp_path / "dev"
    assert run_once(data, cfg).returncode == 0
    b.cfg.volumes[0].maxsizebytes = 8 * MiB
    assert run_once(data, b.save(cfg)).returncode == 1
    desc = wire(data)[f"volume/{vol}#0"]["volumeErr"]["description"]
    assert desc.startswith("Need volume regeneration due to max_size changed from 4194304 to 8388608 "
                           "but generation counter not incremented"), desc
