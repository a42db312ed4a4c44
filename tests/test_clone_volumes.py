"""Copy-on-write volumes from content (issue 15): a qcow2 overlay on the verified CAS blob.

Real qemu-img and qemu-io throughout; the agent runs as ``edgevol device run --once`` so that crash points
(``EDGEVOL_TEST_CRASH_AT``) kill a real process.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from edgevol.api import messages as m
from edgevol.device.state import StateStore
from edgevol.device.volumes import FileVolumes, VolumeError
from edgevol.model.desired import VolumeClone
from edgevol.model.parse import parse_config
from edgevol.tools.httpserve import RangeHTTPServer
from tests.datastore_cases import run_once
from tests.configs import ConfigBuilder, sha256_file
from tests.conftest import by_name, device_status, make_qcow2_image, make_raw_image

MiB = 1 << 20
QEMU_IO = shutil.which("qemu-io")


def _info(path: Path) -> dict:
    out = subprocess.run(["qemu-img", "info", "-U", "--output=json", str(path)], capture_output=True, text=True,
                         check=True).stdout
    return json.loads(out)


def _image(datastore_dir: Path, fmt: str, seed: int = 5) -> Path:
    path = datastore_dir / f"os.{fmt}"
    return make_raw_image(path, 4, seed=seed) if fmt == "raw" else make_qcow2_image(path, 4, seed=seed)


def _deploy(tmp_path: Path, datastore_dir: Path, http_server: RangeHTTPServer, fmt: str, clone: str | None,
            size: int = 8 * MiB) -> tuple[ConfigBuilder, Path, Path, str, Path]:
    """One content tree, one volume from it: (builder, data dir, config path, blob sha256, image)."""
    image = _image(datastore_dir, fmt)
    b = ConfigBuilder()
    if clone is not None:
        b.item("edgevol.volume.clone", clone)
    ds = b.datastore(http_server.url)
    sha = sha256_file(image)
    ct = b.content_tree(ds, image.name, sha, fmt, name="os")
    b.download_volume(ct, size, name="root")
    return b, tmp_path / "dev", tmp_path / "c.pb", sha, image


def _blob(data: Path, sha: str) -> Path:
    return data / "cas" / "blobs" / "sha256" / sha


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_clone_reads_like_its_image_and_is_an_overlay_on_the_blob(
        fmt: str, tmp_path: Path, datastore_dir: Path, http_server: RangeHTTPServer) -> None:
    b, data, cfg, sha, image = _deploy(tmp_path, datastore_dir, http_server, fmt, "backing")
    proc = run_once(data, b, cfg)
    assert proc.returncode == 0, proc.stderr[-3000:]
    st = device_status(data)
    vol = by_name(st["volumes"], "root")
    path = Path(vol["path"])
    blob = _blob(data, sha)
    assert blob.is_file() and (blob.stat().st_mode & 0o777) == 0o444
    # an overlay, backed by the blob's absolute path in the pinned format
    info = _info(path)
    assert path.name.endswith(".qcow2") and vol["format"] == "qcow2"
    assert info["format"] == "qcow2" and info["virtual-size"] == 8 * MiB
    assert info["backing-filename"] == str(blob.resolve()) and info["backing-filename-format"] == fmt
    # the guest sees the image (and zeros beyond it: compare is not strict about the extra size)
    cmp = subprocess.run(["qemu-img", "compare", "-U", "-f", fmt, "-F", "qcow2", str(image), str(path)],
                         capture_output=True, text=True)
    assert cmp.returncode == 0, cmp.stdout + cmp.stderr
    # O(1): the overlay holds metadata only; reported sizes keep ZInfoVolume's meaning
    assert vol["max_size_bytes"] == 8 * MiB and 0 < vol["cur_size_bytes"] < MiB
    assert vol["backing_blob"] == sha
    blob_row = next(r for r in st["blobs"] if r["sha256"] == sha)
    assert blob_row["volume_users"] == [{"uuid": vol["uuid"], "generation_count": 0}]
    assert blob_row["ref_count"] == 2  # its content tree and the clone


def test_clone_grows_to_the_image_when_maxsize_is_smaller(
        tmp_path: Path, datastore_dir: Path, http_server: RangeHTTPServer) -> None:
    b, data, cfg, sha, image = _deploy(tmp_path, datastore_dir, http_server, "raw", "backing", size=MiB)
    assert run_once(data, b, cfg).returncode == 0
    vol = by_name(device_status(data)["volumes"], "root")
    assert _info(Path(vol["path"]))["virtual-size"] == 4 * MiB  # never shrunk below the image


@pytest.mark.skipif(QEMU_IO is None, reason="qemu-io (qemu-utils) is missing")
@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_guest_writes_land_in_the_overlay_never_in_the_blob(
        fmt: str, tmp_path: Path, datastore_dir: Path, http_server: RangeHTTPServer) -> None:
    b, data, cfg, sha, image = _deploy(tmp_path, datastore_dir, http_server, fmt, "backing")
    assert run_once(data, b, cfg).returncode == 0
    path = Path(by_name(device_status(data)["volumes"], "root")["path"])
    blob = _blob(data, sha)
    subprocess.run([QEMU_IO, "-f", "qcow2", "-c", "write -P 0xab 0 1M", "-c", "write -P 0xcd 6M 1M", str(path)],
                   check=True, capture_output=True)
    read = subprocess.run([QEMU_IO, "-f", "qcow2", "-c", "read -P 0xab 0 1M", "-c", "read -P 0xcd 6M 1M",
                           str(path)], capture_output=True, text=True, check=True)
    assert "Pattern verification failed" not in read.stdout + read.stderr
    assert sha256_file(blob) == sha  # the verified blob is untouched
    # a second clone of the same blob still sees the pristine image
    b.download_volume(b.cfg.contentInfo[0].uuid, 8 * MiB, name="second")
    assert run_once(data, b, cfg).returncode == 0
    second = Path(by_name(device_status(data)["volumes"], "second")["path"])
    cmp = subprocess.run(["qemu-img", "compare", "-U", "-f", fmt, "-F", "qcow2", str(image), str(second)],
                         capture_output=True, text=True)
    assert cmp.returncode == 0, cmp.stdout + cmp.stderr
    blob_row = next(r for r in device_status(data)["blobs"] if r["sha256"] == sha)
    assert len(blob_row["volume_users"]) == 2 and blob_row["ref_count"] == 3


def test_blob_outlives_its_content_tree_while_a_clone_uses_it_then_goes(
        tmp_path: Path, datastore_dir: Path, http_server: RangeHTTPServer) -> None:
    """An app kept on generation 0 (no purge counter bump) keeps gen 0's blob after its content tree is
    replaced; once the app moves, gen 0 goes and so does the blob: file, row and a 'gone' report."""
    b, data, cfg, sha, image = _deploy(tmp_path, datastore_dir, http_server, "raw", "backing")
    vol_id = b.cfg.volumes[0].uuid
    b.app([vol_id], name="vm")
    assert run_once(data, b, cfg).returncode == 0
    gen0 = Path(by_name(device_status(data)["volumes"], "root")["path"])

    # the controller replaces the content tree and bumps the volume, but forgets the purge counter
    new_image = make_raw_image(datastore_dir / "os2.raw", 4, seed=9)
    new_sha = sha256_file(new_image)
    del b.cfg.contentInfo[:]
    new_ct = b.content_tree(b.cfg.datastores[0].id, "os2.raw", new_sha, "raw", name="os2")
    b.cfg.volumes[0].generationCount = 1
    b.cfg.volumes[0].origin.downloadContentTreeID = new_ct
    b.cfg.apps[0].volumeRefList[0].generationCount = 1
    run_once(data, b, cfg)  # exits 1: the app's error about the missing purge counter bump
    st = device_status(data)
    assert [t["display_name"] for t in st["content_trees"]] == ["os2"]  # the old tree is gone
    assert gen0.exists() and _blob(data, sha).is_file() and sha256_file(_blob(data, sha)) == sha
    old_blob = next(r for r in st["blobs"] if r["sha256"] == sha)
    assert old_blob["volume_users"] == [{"uuid": vol_id, "generation_count": 0}] and old_blob["ref_count"] == 1
    cmp = subprocess.run(["qemu-img", "compare", "-U", "-f", "raw", "-F", "qcow2", str(image), str(gen0)],
                         capture_output=True, text=True)
    assert cmp.returncode == 0, cmp.stdout + cmp.stderr

    # the purge counter moves the app to gen 1: gen 0 goes, and with it the blob nothing else uses
    b.cfg.apps[0].purge.counter = 1
    proc = run_once(data, b, cfg)
    assert proc.returncode == 0, proc.stderr[-3000:]
    st = device_status(data)
    assert [r["sha256"] for r in st["blobs"]] == [new_sha]
    assert not gen0.exists() and not _blob(data, sha).exists()
    assert by_name(st["volumes"], "root")["backing_blob"] == new_sha
    store = StateStore(data / "state.db")
    items = {k: m.ZInfoMsg.FromString(p) for k, _, p in store.outbox_items()}
    store.close()
    gone = items[f"blob/{sha}"]
    assert [(x.sha256, x.state) for x in gone.binfo.blob] == [(sha, 0)]


@pytest.mark.parametrize("point", ["volume.temp.written", "volume.committed"])
def test_kill_9_during_clone_creation_converges(
        point: str, tmp_path: Path, datastore_dir: Path, http_server: RangeHTTPServer) -> None:
    b, data, cfg, sha, image = _deploy(tmp_path, datastore_dir, http_server, "qcow2", "backing")
    killed = run_once(data, b, cfg, crash_at=point)
    assert killed.returncode == -signal.SIGKILL, f"never reached {point}: {killed.stderr[-3000:]}"
    after = run_once(data, b, cfg)
    assert after.returncode == 0 and "Traceback" not in after.stderr, after.stderr[-3000:]
    st = device_status(data)
    vol = by_name(st["volumes"], "root")
    path = Path(vol["path"])
    assert vol["state"] == "CREATED_VOLUME" and vol["backing_blob"] == sha
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left behind
    assert _info(path)["backing-filename"] == str(_blob(data, sha).resolve())
    cmp = subprocess.run(["qemu-img", "compare", "-U", "-f", "qcow2", "-F", "qcow2", str(image), str(path)],
                         capture_output=True, text=True)
    assert cmp.returncode == 0, cmp.stdout + cmp.stderr
    assert next(r for r in st["blobs"] if r["sha256"] == sha)["volume_users"] == [
        {"uuid": vol["uuid"], "generation_count": 0}]


@pytest.mark.parametrize("clone", ["backing", "copy"])
def test_backing_path_planted_in_the_content_is_refused(
        clone: str, tmp_path: Path, datastore_dir: Path, http_server: RangeHTTPServer) -> None:
    secret = tmp_path / "host-secret.raw"
    secret.write_bytes(b"host secret\n" * 4096)
    evil = datastore_dir / "evil.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(secret), str(evil), "1M"],
                   check=True)
    b = ConfigBuilder().item("edgevol.volume.clone", clone)
    ds = b.datastore(http_server.url)
    ct = b.content_tree(ds, "evil.qcow2", sha256_file(evil), "qcow2", name="evil")
    b.download_volume(ct, 8 * MiB, name="root")
    data, cfg = tmp_path / "dev", tmp_path / "c.pb"
    proc = run_once(data, b, cfg)
    assert proc.returncode == 1
    vol = by_name(device_status(data)["volumes"], "root")
    assert vol["state"] == "ERROR" and vol["path"] is None and vol["backing_blob"] is None
    assert "backing file" in vol["error"]["description"] and "refused for safety" in vol["error"]["description"]
    vol_dir = data / "volumes"
    assert not vol_dir.is_dir() or list(vol_dir.iterdir()) == []  # no overlay, no temp file


def test_planted_backing_refused_by_the_volume_layer_too(tmp_path: Path) -> None:
    secret = tmp_path / "secret.raw"
    secret.write_bytes(bytes(MiB))
    evil = tmp_path / "evil.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(secret), str(evil), "1M"],
                   check=True)
    vols = FileVolumes(tmp_path / "vols")
    with pytest.raises(VolumeError, match="backing file"):
        vols.create_from_image("11111111-2222-3333-4444-555555555555", 0, evil, "qcow2", MiB, backing=True)
    assert list((tmp_path / "vols").iterdir()) == []


def test_copy_setting_makes_an_independent_copy(
        tmp_path: Path, datastore_dir: Path, http_server: RangeHTTPServer) -> None:
    b, data, cfg, sha, image = _deploy(tmp_path, datastore_dir, http_server, "raw", "copy")
    assert run_once(data, b, cfg).returncode == 0
    st = device_status(data)
    vol = by_name(st["volumes"], "root")
    path = Path(vol["path"])
    assert path.name.endswith(".raw") and vol["backing_blob"] is None
    assert "backing-filename" not in _info(path)
    with open(path, "rb") as f:
        assert f.read(4 * MiB) == image.read_bytes()
    blob_row = next(r for r in st["blobs"] if r["sha256"] == sha)
    assert blob_row["volume_users"] == [] and blob_row["ref_count"] == 1


def test_other_formats_keep_copying_under_backing(tmp_path: Path) -> None:
    """VHD (and VMDK, VHDX, QCOW, ISO) content is converted as before, whatever the setting."""
    raw = make_raw_image(tmp_path / "src.raw", 2, seed=4)
    vhd = tmp_path / "src.vhd"
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "vpc", str(raw), str(vhd)], check=True)
    vols = FileVolumes(tmp_path / "vols")
    path = vols.create_from_image("11111111-2222-3333-4444-555555555555", 0, vhd, "vhd", 0, backing=True)
    assert "backing-filename" not in _info(path) and vols.backing_of(path) is None


def test_setting_parses_and_refuses_unknown_values() -> None:
    assert parse_config(ConfigBuilder().cfg).settings.volume_clone is VolumeClone.BACKING  # the default
    assert parse_config(ConfigBuilder().item("edgevol.volume.clone", "backing").cfg).settings.volume_clone \
        is VolumeClone.BACKING
    assert parse_config(ConfigBuilder().item("edgevol.volume.clone", "copy").cfg).settings.volume_clone \
        is VolumeClone.COPY
    bad = parse_config(ConfigBuilder().item("edgevol.volume.clone", "reflink").cfg)
    assert bad.settings.volume_clone is VolumeClone.BACKING  # the default stays
    assert any("edgevol.volume.clone" in e.message for e in bad.errors)


def test_blob_is_pinned_before_the_overlay_exists(
        tmp_path: Path, datastore_dir: Path, http_server: RangeHTTPServer) -> None:
    """Killed after the overlay is committed but before its row says so, then the content tree is removed:
    the volume row already names its blob, so GC keeps the blob the overlay reads through to."""
    b, data, cfg, sha, image = _deploy(tmp_path, datastore_dir, http_server, "raw", "backing")
    killed = run_once(data, b, cfg, crash_at="volume.committed")
    assert killed.returncode == -signal.SIGKILL
    overlays = list((data / "volumes").iterdir())
    assert len(overlays) == 1 and overlays[0].name.endswith(".qcow2")
    del b.cfg.contentInfo[:]  # the volume now names a missing content tree: an error, and the volume is kept
    run_once(data, b, cfg)
    st = device_status(data)
    assert st["content_trees"] == []
    assert _blob(data, sha).is_file() and overlays[0].exists()
    blob_row = next(r for r in st["blobs"] if r["sha256"] == sha)
    assert [u["uuid"] for u in blob_row["volume_users"]] == [b.cfg.volumes[0].uuid]
    cmp = subprocess.run(["qemu-img", "compare", "-U", "-f", "raw", "-F", "qcow2", str(image), str(overlays[0])],
                         capture_output=True, text=True)
    assert cmp.returncode == 0, cmp.stdout + cmp.stderr
