"""End to end through the CLI: config file in, volumes on disk and states out."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

from edgevol.api import messages as m
from tests.conftest import (by_name, device_status, guest_bytes, guest_bytes_sha256, make_qcow2_image, make_raw_image,
                            run_cli)
from tests.configs import ConfigBuilder, sha256_file

GiB = 1 << 30
MiB = 1 << 20


def _virtual_size(path: str, fmt: str) -> int:
    import json

    out = subprocess.run(["qemu-img", "info", "-U", "--output=json", "-f", fmt, path], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out)["virtual-size"]


def test_blank_and_downloaded_volumes_are_created(tmp_path, datastore_dir, http_server):
    image = make_qcow2_image(datastore_dir / "disk.qcow2", 12)
    raw = make_raw_image(datastore_dir / "data.raw", 6, seed=7)
    b = ConfigBuilder()
    ds = b.datastore(http_server.url)
    ct_q = b.content_tree(ds, "disk.qcow2", sha256_file(image), "qcow2", name="qcow2-image")
    ct_r = b.content_tree(ds, "data.raw", sha256_file(raw), "raw", name="raw-image")
    b.item("edgevol.disk.thin.overcommit", "true")  # 100 GiB thin volume on a smaller disk
    b.blank_volume(100 * GiB, name="scratch")
    b.download_volume(ct_q, 64 * MiB, name="root")
    b.download_volume(ct_r, 16 * MiB, name="data", readonly=True)
    cfg = b.save(tmp_path / "config.json")
    data = tmp_path / "dev"

    proc = run_cli("device", "run", "--data-dir", str(data), "--config", str(cfg), "--once")
    assert proc.returncode == 0, proc.stderr

    st = device_status(data)
    scratch, root, disk = (by_name(st["volumes"], n) for n in ("scratch", "root", "data"))
    for v in (scratch, root, disk):
        assert v["state"] == "CREATED_VOLUME", v
        assert v["progress"] == 100
        assert Path(v["path"]).exists()
    assert scratch["path"].endswith(".qcow2") and scratch["max_size_bytes"] == 100 * GiB
    assert _virtual_size(scratch["path"], "qcow2") == 100 * GiB
    assert os.stat(scratch["path"]).st_blocks * 512 < 10 * MiB  # sparse
    # guest-visible bytes: the source image, then zeros up to maxsizebytes
    assert _virtual_size(root["path"], "qcow2") == 64 * MiB
    src_raw = tmp_path / "src.raw"
    subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(image), str(src_raw)], check=True)
    subprocess.run(["truncate", "-s", str(64 * MiB), str(src_raw)], check=True)
    assert guest_bytes_sha256(Path(root["path"]), "qcow2", tmp_path) == sha256_file(src_raw)
    # raw content: first 6 MiB equal the source, file grown to 16 MiB, readonly kept
    guest = guest_bytes(Path(disk["path"]))  # a qcow2 overlay on the blob (edgevol.volume.clone=backing)
    assert disk["path"].endswith(".qcow2") and guest[:6 * MiB] == raw.read_bytes() and guest[6 * MiB:] == bytes(10 * MiB)
    assert stat.S_IMODE(os.stat(disk["path"]).st_mode) == 0o444 and disk["readonly"] is True
    # content trees and blobs are LOADED, one blob per tree, in the OCI layout
    for name, src in (("qcow2-image", image), ("raw-image", raw)):
        ct = by_name(st["content_trees"], name)
        assert ct["state"] == "LOADED" and ct["cur_size_bytes"] == src.stat().st_size
        assert ct["component_sha_list"] == [sha256_file(src)]
        blob = data / "cas" / "blobs" / "sha256" / sha256_file(src)
        assert sha256_file(blob) == sha256_file(src)
    assert {b["state"] for b in st["blobs"]} == {"LOADED"}
    assert not list((data / "cas" / "ingest").glob("*.partial"))


def test_every_object_is_reported_in_the_outbox(tmp_path, datastore_dir, http_server):
    raw = make_raw_image(datastore_dir / "a.raw", 2)
    b = ConfigBuilder()
    ds = b.datastore(http_server.url)
    ct = b.content_tree(ds, "a.raw", sha256_file(raw), "raw", name="a")
    vol = b.download_volume(ct, 4 * MiB, name="va")
    cfg = b.save(tmp_path / "c.pb")
    data = tmp_path / "dev"
    assert run_cli("device", "run", "--data-dir", str(data), "--config", str(cfg), "--once").returncode == 0

    from edgevol.device.state import StateStore

    store = StateStore(data / "state.db")
    msgs = {k: m.ZInfoMsg.FromString(p) for k, _, p in store.outbox_items()}
    vinfo = msgs[f"volume/{vol}#0"]
    assert vinfo.ztype == m.ZInfoTypes.ZiVolume and vinfo.devId == b.cfg.id.uuid
    assert vinfo.vinfo.state == m.ZSwState.CREATED_VOLUME and vinfo.vinfo.progressPercentage == 100
    assert vinfo.vinfo.resources.maxSizeBytes == 4 * MiB and vinfo.vinfo.usage.refCount == 1
    assert vinfo.vinfo.usage.createTime.seconds > 0
    cinfo = msgs[f"content_tree/{ct}"].cinfo
    assert cinfo.state == m.ZSwState.DELIVERED and list(cinfo.componentShaList) == [sha256_file(raw)]
    assert cinfo.usage.refCount == 2  # the config's own reference plus the volume
    blob = msgs[f"blob/{sha256_file(raw)}"].binfo.blob[0]
    # the content tree, and the volume: a clone reads through to the blob itself (edgevol.volume.clone=backing)
    assert blob.state == m.ZSwState.DELIVERED and blob.resources.curSizeBytes == 2 * MiB and blob.usage.refCount == 2
    store.close()
