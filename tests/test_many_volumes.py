"""Many volumes at once (issue 15): one run creates hundreds, one run deletes them, and nothing is lost.

Not timed (bench/scale.py measures 1,000 and 10,000): these check what a user sees after such runs,
and the mechanisms that make them cheap: one ``qemu-img create`` per image shape (volumes/templates.py),
``qemu-img info`` answers kept only while a file is unchanged, and batched state writes.
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
from pathlib import Path

import pytest

from edgevol.api import messages as m
from edgevol.device.state import StateStore
from edgevol.device.volumes import FileVolumes
from edgevol.tools.httpserve import RangeHTTPServer
from tests.configs import ConfigBuilder, sha256_file
from tests.conftest import device_status, guest_bytes, guest_write, make_qcow2_image, run_cli

MiB = 1 << 20
UUIDS = [f"00000000-0000-4000-8000-{n:012x}" for n in range(1, 40)]


def _info(path: Path) -> dict:
    return json.loads(subprocess.run(["qemu-img", "info", "-U", "--output=json", str(path)], check=True,
                                     capture_output=True, text=True).stdout)


def _outbox(data: Path) -> dict[str, m.ZInfoMsg]:
    store = StateStore(data / "state.db")
    try:
        return {k: m.ZInfoMsg.FromString(p) for k, _, p in store.outbox_items()}
    finally:
        store.close()


def test_hundreds_of_volumes_in_one_run_then_all_deleted(tmp_path: Path, datastore_dir: Path,
                                                          http_server: RangeHTTPServer) -> None:
    image = make_qcow2_image(datastore_dir / "os.qcow2", 2, seed=11)
    sha = sha256_file(image)
    b = ConfigBuilder()
    ds = b.datastore(http_server.url)
    ct = b.content_tree(ds, image.name, sha, "qcow2", name="os")
    clones = [b.download_volume(ct, 4 * MiB, name=f"clone{i}") for i in range(150)]
    blanks = [b.blank_volume(3 * MiB, name=f"blank{i}") for i in range(150)]
    volumes = clones + blanks
    for a in range(30):
        b.app(volumes[a::30], name=f"app{a}")
    data, cfg = tmp_path / "dev", tmp_path / "c.pb"
    b.save(cfg)

    proc = run_cli("device", "run", "--data-dir", str(data), "--config", str(cfg), "--once", "--no-progress",
                   timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    st = device_status(data)
    rows = {v["uuid"]: v for v in st["volumes"]}
    assert set(rows) == set(volumes) and {v["state"] for v in rows.values()} == {"CREATED_VOLUME"}
    files = sorted((data / "volumes").iterdir())
    assert len(files) == 300 and all(f.suffix == ".qcow2" for f in files)  # nothing else: no temp, no template
    blob = data / "cas" / "blobs" / "sha256" / sha
    for uuid in clones:
        info = _info(Path(rows[uuid]["path"]))
        assert (info["backing-filename"], info["backing-filename-format"], info["virtual-size"]) == \
            (str(blob), "qcow2", 4 * MiB)
    for uuid in blanks:
        info = _info(Path(rows[uuid]["path"]))
        assert "backing-filename" not in info and info["virtual-size"] == 3 * MiB
    # copies of one template are still separate disks: a guest write to one shows in no other
    first, second = (Path(rows[u]["path"]) for u in clones[:2])
    guest_write(first, MiB, b"only in the first clone")
    assert guest_bytes(second) == guest_bytes(Path(rows[clones[2]]["path"]))
    subprocess.run(["qemu-img", "compare", "-q", "-f", "qcow2", "-F", "qcow2", str(image), str(second)], check=True)
    subprocess.run(["qemu-img", "check", "-q", str(first)], check=True)
    assert sha256_file(blob) == sha
    sent = _outbox(data)
    assert all(sent[f"volume/{u}#0"].vinfo.state == m.ZSwState.CREATED_VOLUME for u in volumes)
    assert len([a for a in st["apps"] if a["error"] is None]) == 30

    # a config that names none of them: every volume goes, each reported gone, and then its blob
    none = ConfigBuilder(device_id=b.cfg.id.uuid)
    none.datastore(http_server.url, ds_id=ds)
    none.save(cfg)
    proc = run_cli("device", "run", "--data-dir", str(data), "--config", str(cfg), "--once", "--no-progress",
                   timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    st = device_status(data)
    assert st["volumes"] == [] and st["blobs"] == [] and os.listdir(data / "volumes") == []
    sent = _outbox(data)
    for u in volumes:
        gone = sent[f"volume/{u}#0"].vinfo
        assert (gone.uuid, gone.displayName, gone.state) == (u, "", m.ZSwState.INVALID)
    assert sent[f"blob/{sha}"].binfo.blob[0].sha256 == sha and not blob.exists()


@pytest.fixture
def counted_qemu_img(tmp_path: Path) -> tuple[str, Path]:
    """The real qemu-img behind a script that logs each call: how many processes a device runs."""
    calls = tmp_path / "qemu-img.calls"
    script = tmp_path / "qemu-img"
    script.write_text(f'#!/bin/sh\necho "$1" >> {calls}\nexec qemu-img "$@"\n')
    script.chmod(0o755)
    return str(script), calls


def test_one_qemu_img_create_per_image_shape(tmp_path: Path, counted_qemu_img: tuple[str, Path]) -> None:
    qemu_img, calls = counted_qemu_img
    blob = make_qcow2_image(tmp_path / "blob.qcow2", 2, seed=3)
    blob.chmod(0o444)
    vols = FileVolumes(tmp_path / "vols", qemu_img=qemu_img)
    clones = [vols.create_from_image(u, 0, blob, "qcow2", 4 * MiB, backing=True) for u in UUIDS[:10]]
    small = [vols.create_blank(u, 0, 3 * MiB) for u in UUIDS[10:20]]
    big = [vols.create_blank(u, 0, 5 * MiB, readonly=True) for u in UUIDS[20:25]]
    made = calls.read_text().split()
    assert made.count("create") == 3, made  # one overlay shape, two blank sizes
    assert made.count("info") == 4, made  # the blob checked once, each new shape checked after qemu-img made it

    for path in clones:
        info = _info(path)
        assert (info["backing-filename"], info["virtual-size"]) == (str(blob), 4 * MiB)
        assert vols.usage(path).virtual_size == 4 * MiB and vols.backing_of(path) == blob
    for path, size in [(p, 3 * MiB) for p in small] + [(p, 5 * MiB) for p in big]:
        info = _info(path)
        assert "backing-filename" not in info and info["virtual-size"] == size
        assert guest_bytes(path) == bytes(size)
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o444 for p in big)
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o644 for p in clones + small)
    assert sorted(os.listdir(vols.root)) == sorted(p.name for p in clones + small + big)
    assert calls.read_text().split() == made  # recording them asked qemu-img nothing more


def test_image_facts_are_asked_again_once_the_file_changes(tmp_path: Path,
                                                           counted_qemu_img: tuple[str, Path]) -> None:
    qemu_img, calls = counted_qemu_img
    vols = FileVolumes(tmp_path / "vols", qemu_img=qemu_img)
    path = vols.create_blank(UUIDS[0], 0, 3 * MiB)
    assert vols.usage(path).virtual_size == 3 * MiB
    subprocess.run(["qemu-img", "resize", "-q", "-f", "qcow2", str(path), str(7 * MiB)], check=True)
    asked = calls.read_text().count("info")
    assert vols.usage(path).virtual_size == 7 * MiB  # not the answer kept for the file as it was
    assert calls.read_text().count("info") == asked + 1
    assert vols.usage(path).virtual_size == 7 * MiB and calls.read_text().count("info") == asked + 1


def test_a_batch_commits_once_and_a_failed_one_leaves_nothing(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.db")
    other = sqlite3.connect(tmp_path / "state.db")
    try:
        def add(n: int) -> int:
            for i in range(n):
                store.insert("apps", uuid=UUIDS[i], display_name=f"app{i}", create_time=0.0)
                store.outbox_put(f"app/{UUIDS[i]}", b"x")
            # another connection, as `device status` is, sees none of it before the commit
            return other.execute("SELECT COUNT(*) FROM apps").fetchone()[0]

        assert store.batch(lambda: add(5)) == 0
        assert other.execute("SELECT COUNT(*) FROM apps").fetchone()[0] == 5
        assert len(list(store.outbox_items())) == 5

        def fail() -> None:
            store.insert("apps", uuid=UUIDS[30], display_name="late", create_time=0.0)
            store.outbox_put("app/late", b"y")
            raise RuntimeError("the pass broke off")

        with pytest.raises(RuntimeError):
            store.batch(fail)
        assert store.get("apps", UUIDS[30]) is None and len(list(store.outbox_items())) == 5
        store.insert("apps", uuid=UUIDS[31], display_name="after", create_time=0.0)  # the store still writes
        assert other.execute("SELECT COUNT(*) FROM apps").fetchone()[0] == 6
    finally:
        other.close()
        store.close()
