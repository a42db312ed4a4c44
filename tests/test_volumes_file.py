"""File volumes against the real qemu-img: bytes, sizes, sparseness, safety."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from edgevol.device.volumes import FileVolumes, VolumeError
from edgevol.fsutil import TEMP_PREFIX

MiB = 1024 * 1024
GiB = 1024 * MiB
UUID = "6ba7b810-9dad-41d1-80b4-00c04fd430c8"
UUID2 = "0f3c2b1a-4d5e-4f60-8a7b-9c8d7e6f5a4b"


def sha256_file(path: Path, limit: int | None = None) -> str:
    h = hashlib.sha256()
    left = limit
    with open(path, "rb") as f:
        while left is None or left > 0:
            chunk = f.read(MiB if left is None else min(MiB, left))
            if not chunk:
                break
            h.update(chunk)
            if left is not None:
                left -= len(chunk)
    return h.hexdigest()


def info(path: Path, fmt: str) -> dict:
    out = subprocess.run(
        ["qemu-img", "info", "--output=json", "-U", "-f", fmt, str(path)],
        check=True, capture_output=True, text=True,
    ).stdout
    return json.loads(out)


def to_raw(path: Path, fmt: str, out: Path) -> Path:
    subprocess.run(
        ["qemu-img", "convert", "-f", fmt, "-O", "raw", str(path), str(out)],
        check=True, capture_output=True,
    )
    return out


def all_zero(path: Path, start: int, length: int) -> bool:
    with open(path, "rb") as f:
        f.seek(start)
        left = length
        while left:
            chunk = f.read(min(MiB, left))
            assert chunk, "file shorter than expected"
            if chunk.count(0) != len(chunk):
                return False
            left -= len(chunk)
    return True


@pytest.fixture
def raw_src(tmp_path: Path) -> Path:
    """28 MiB raw image: 20 MiB of random data split by a 4 MiB hole, zero tail."""
    p = tmp_path / "src" / "blob.raw"
    p.parent.mkdir()
    with open(p, "wb") as f:
        for _ in range(10):
            f.write(os.urandom(MiB))
        f.seek(4 * MiB, os.SEEK_CUR)  # hole
        for _ in range(10):
            f.write(os.urandom(MiB))
        f.truncate(28 * MiB)
    os.chmod(p, 0o444)
    return p


@pytest.fixture
def qcow2_src(raw_src: Path) -> Path:
    p = raw_src.with_name("blob.qcow2")
    subprocess.run(
        ["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw_src), str(p)],
        check=True, capture_output=True,
    )
    os.chmod(p, 0o444)
    return p


@pytest.fixture
def vols(tmp_path: Path) -> FileVolumes:
    return FileVolumes(tmp_path / "volumes")


def entries(vols: FileVolumes) -> list[str]:
    return sorted(p.name for p in vols.root.iterdir())


def test_blank_qcow2_is_thin_and_exact(vols: FileVolumes) -> None:
    path = vols.create_blank(UUID, 1, 100 * GiB)
    assert path == vols.root / f"{UUID}#1.qcow2"
    meta = info(path, "qcow2")
    assert meta["format"] == "qcow2"
    assert meta["virtual-size"] == 100 * GiB
    assert "backing-filename" not in meta
    use = vols.usage(path)
    assert use.virtual_size == 100 * GiB
    assert use.allocated < 10 * MiB
    assert os.stat(path).st_blocks * 512 < 10 * MiB
    assert path.stat().st_mode & 0o777 == 0o644
    assert vols.find(UUID, 1) == path
    assert vols.list() == [(UUID, 1, "qcow2", path)]
    assert entries(vols) == [path.name]


def test_blank_raw_is_sparse_zeros(vols: FileVolumes) -> None:
    path = vols.create_blank(UUID, 0, GiB, fmt="raw")
    assert path.name == f"{UUID}#0.raw"
    assert path.stat().st_size == GiB
    assert path.stat().st_blocks * 512 < MiB
    assert all_zero(path, 0, MiB) and all_zero(path, GiB - MiB, MiB)
    assert vols.usage(path).virtual_size == GiB
    assert info(path, "raw")["virtual-size"] == GiB


def test_blank_size_is_rounded_to_sector(vols: FileVolumes) -> None:
    q = vols.create_blank(UUID, 0, 1000)
    r = vols.create_blank(UUID2, 0, 1000, fmt="raw")
    assert info(q, "qcow2")["virtual-size"] == 1024
    assert r.stat().st_size == 1024


@pytest.mark.parametrize("reflink", [True, False])
def test_from_raw_keeps_bytes_grows_with_zeros(
    tmp_path: Path, raw_src: Path, reflink: bool
) -> None:
    vols = FileVolumes(tmp_path / "volumes", use_reflink=reflink)
    path = vols.create_from_image(UUID, 2, raw_src, "raw", 64 * MiB)
    assert path.name == f"{UUID}#2.raw"
    assert path.stat().st_size == 64 * MiB
    assert info(path, "raw")["virtual-size"] == 64 * MiB
    src_len = raw_src.stat().st_size
    assert sha256_file(path, src_len) == sha256_file(raw_src)
    assert all_zero(path, src_len, 64 * MiB - src_len)
    # Holes stay holes: only the 20 MiB of data (plus a little) is allocated.
    assert vols.usage(path).allocated < 22 * MiB
    assert vols.usage(path).virtual_size == 64 * MiB
    assert entries(vols) == [path.name]


def test_from_qcow2_guest_bytes_match(tmp_path: Path, vols: FileVolumes, qcow2_src: Path) -> None:
    path = vols.create_from_image(UUID, 3, qcow2_src, "qcow2", 40 * MiB)
    assert path.name == f"{UUID}#3.qcow2"
    meta = info(path, "qcow2")
    assert meta["format"] == "qcow2"
    assert meta["virtual-size"] == 40 * MiB
    assert "backing-filename" not in meta
    src_raw = to_raw(qcow2_src, "qcow2", tmp_path / "a.raw")
    vol_raw = to_raw(path, "qcow2", tmp_path / "b.raw")
    n = src_raw.stat().st_size
    assert n == 28 * MiB
    assert sha256_file(vol_raw, n) == sha256_file(src_raw)
    assert all_zero(vol_raw, n, 40 * MiB - n)
    assert vols.usage(path).virtual_size == 40 * MiB


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_smaller_size_never_shrinks(
    tmp_path: Path, vols: FileVolumes, raw_src: Path, qcow2_src: Path, fmt: str
) -> None:
    src = raw_src if fmt == "raw" else qcow2_src
    path = vols.create_from_image(UUID, 0, src, fmt, 1 * MiB)
    assert info(path, fmt)["virtual-size"] == 28 * MiB
    guest = path if fmt == "raw" else to_raw(path, fmt, tmp_path / "g.raw")
    assert sha256_file(guest) == sha256_file(raw_src)


def test_backing_file_refused(tmp_path: Path, vols: FileVolumes) -> None:
    secret = tmp_path / "host-secret.raw"
    secret.write_bytes(b"host data" * 1000)
    evil = tmp_path / "evil.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(secret), "-F", "raw", str(evil)],
        check=True, capture_output=True,
    )
    with pytest.raises(VolumeError, match="backing file"):
        vols.create_from_image(UUID, 0, evil, "qcow2", MiB)
    assert entries(vols) == []
    assert vols.find(UUID, 0) is None


def test_external_data_file_refused(tmp_path: Path, vols: FileVolumes) -> None:
    evil = tmp_path / "evil.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-o", f"data_file={tmp_path / 'd.raw'}",
         str(evil), "1M"],
        check=True, capture_output=True,
    )
    with pytest.raises(VolumeError, match="external data file"):
        vols.create_from_image(UUID, 0, evil, "qcow2", MiB)
    assert entries(vols) == []


def test_raw_declared_as_qcow2_refused(vols: FileVolumes, raw_src: Path) -> None:
    with pytest.raises(VolumeError, match="not a valid qcow2 image"):
        vols.create_from_image(UUID, 0, raw_src, "qcow2", MiB)
    assert entries(vols) == []


def test_readonly_volumes(vols: FileVolumes, raw_src: Path) -> None:
    a = vols.create_from_image(UUID, 0, raw_src, "raw", 0, readonly=True)
    b = vols.create_blank(UUID2, 0, MiB, readonly=True)
    assert a.stat().st_mode & 0o777 == 0o444
    assert b.stat().st_mode & 0o777 == 0o444
    assert sha256_file(a) == sha256_file(raw_src)
    assert vols.delete(UUID, 0) and not a.exists()


def test_progress_increases_to_100(tmp_path: Path, qcow2_src: Path) -> None:
    vols = FileVolumes(tmp_path / "volumes", use_reflink=False)
    seen: list[float] = []
    vols.create_from_image(UUID, 0, qcow2_src, "qcow2", 0, progress=seen.append)
    assert seen, "no progress reported"
    assert seen == sorted(set(seen)), seen
    assert all(0.0 <= v <= 100.0 for v in seen)
    assert seen[-1] == 100.0


def test_cancel_from_progress_leaves_nothing(tmp_path: Path, raw_src: Path) -> None:
    vols = FileVolumes(tmp_path / "volumes", use_reflink=False)

    def cancel(_: float) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        vols.create_from_image(UUID, 0, raw_src, "raw", 0, progress=cancel)
    assert entries(vols) == []


def test_crash_leaves_only_temp(tmp_path: Path, raw_src: Path) -> None:
    root = tmp_path / "volumes"
    script = textwrap.dedent(
        f"""
        import os, signal
        from pathlib import Path
        from edgevol.device.volumes import FileVolumes
        def die(_):
            os.kill(os.getpid(), signal.SIGKILL)
        v = FileVolumes(Path({str(root)!r}), use_reflink=False)
        v.create_from_image({UUID!r}, 4, Path({str(raw_src)!r}), "raw", 0, progress=die)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert proc.returncode == -9, proc.stderr
    vols = FileVolumes(root)
    left = entries(vols)
    assert len(left) == 1 and left[0].startswith(TEMP_PREFIX), left
    assert vols.list() == []
    assert vols.find(UUID, 4) is None
    removed = vols.clean_temps()
    assert [p.name for p in removed] == left
    assert entries(vols) == []
    # The volume can now be created cleanly.
    path = vols.create_from_image(UUID, 4, raw_src, "raw", 0)
    assert sha256_file(path) == sha256_file(raw_src)


def test_delete_and_generations(vols: FileVolumes) -> None:
    old = vols.create_blank(UUID, 1, MiB)
    new = vols.create_blank(UUID, 2, 2 * MiB, fmt="raw")
    assert [(u, g, f) for u, g, f, _ in vols.list()] == [(UUID, 1, "qcow2"), (UUID, 2, "raw")]
    assert vols.delete(UUID, 1) is True
    assert not old.exists() and new.exists()
    assert vols.delete(UUID, 1) is False
    assert vols.list() == [(UUID, 2, "raw", new)]


def test_existing_volume_not_rewritten(vols: FileVolumes, raw_src: Path) -> None:
    path = vols.create_blank(UUID, 0, MiB, fmt="raw")
    with pytest.raises(VolumeError, match="already exists"):
        vols.create_from_image(UUID, 0, raw_src, "raw", 0)
    with pytest.raises(VolumeError, match="already exists"):
        vols.create_blank(UUID, 0, MiB, fmt="qcow2")
    assert path.stat().st_size == MiB and all_zero(path, 0, MiB)


def test_strict_names(vols: FileVolumes) -> None:
    for bad_uuid in (UUID.upper(), UUID.replace("-", ""), "../" + UUID, "x"):
        with pytest.raises(VolumeError):
            vols.path_for(bad_uuid, 0, "raw")
    with pytest.raises(VolumeError):
        vols.path_for(UUID, -1, "raw")
    with pytest.raises(VolumeError):
        vols.path_for(UUID, 0, "vdi")
    for junk in (f"{UUID.upper()}#0.raw", f"{UUID}#01.raw", f"{UUID}#-1.raw",
                 f"{UUID}#0.vdi", "notes.txt", f"{UUID}#0.raw.bak"):
        (vols.root / junk).write_bytes(b"x")
    real = vols.create_blank(UUID, 7, MiB, fmt="raw")
    assert vols.list() == [(UUID, 7, "raw", real)]
