"""Unpacking OCI layers into a directory volume's rootfs: semantics and hostile input.

Layers are built here with ``tarfile`` (plain, gzip, zstd) and unpacked into
``<tmp>/vol/rootfs``; hostile cases also check that nothing outside the rootfs
(a sentinel directory beside it, and the rest of ``<tmp>``) changed.
"""

from __future__ import annotations

import gzip
import io
import os
import stat
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import zstandard

from edgevol.device.volumes.rootfs import (
    UnpackError,
    UnpackLimits,
    UnpackState,
    apply_layer,
    open_layer,
    unpack_layers,
)

MT_TAR = "application/vnd.oci.image.layer.v1.tar"
MT_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MT_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
MT_DOCKER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
MIB = 1 << 20
IS_ROOT = os.geteuid() == 0


# -- building layers ------------------------------------------------------------


@dataclass
class E:
    """One tar entry to write."""

    name: str
    kind: bytes = tarfile.REGTYPE
    data: bytes = b""
    mode: int = 0o644
    linkname: str = ""
    mtime: int = 1_600_000_000
    uid: int = 0
    gid: int = 0
    size: int | None = None  # stream ``size`` zero bytes instead of ``data``
    pax: dict[str, str] = field(default_factory=dict)


def f(name: str, data: bytes = b"", mode: int = 0o644, **kw: object) -> E:
    return E(name, tarfile.REGTYPE, data, mode, **kw)  # type: ignore[arg-type]


def d(name: str, mode: int = 0o755, **kw: object) -> E:
    return E(name, tarfile.DIRTYPE, mode=mode, **kw)  # type: ignore[arg-type]


def sym(name: str, target: str, **kw: object) -> E:
    return E(name, tarfile.SYMTYPE, mode=0o777, linkname=target, **kw)  # type: ignore[arg-type]


def hard(name: str, target: str) -> E:
    return E(name, tarfile.LNKTYPE, linkname=target)


class _Zeros(io.RawIOBase):
    def __init__(self, n: int) -> None:
        self.left = n

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        n = min(len(b), self.left)
        b[:n] = bytes(n)
        self.left -= n
        return n


def write_tar(out: io.BufferedIOBase | io.RawIOBase | gzip.GzipFile, entries: list[E]) -> None:
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tf:  # type: ignore[arg-type]
        for e in entries:
            ti = tarfile.TarInfo(e.name)
            ti.type = e.kind
            ti.mode = e.mode
            ti.mtime = e.mtime
            ti.uid, ti.gid = e.uid, e.gid
            ti.linkname = e.linkname
            ti.pax_headers = dict(e.pax)
            if e.kind == tarfile.REGTYPE:
                if e.size is not None:
                    ti.size = e.size
                    tf.addfile(ti, _Zeros(e.size))
                else:
                    ti.size = len(e.data)
                    tf.addfile(ti, io.BytesIO(e.data))
            else:
                if e.kind in (tarfile.CHRTYPE, tarfile.BLKTYPE):
                    ti.devmajor, ti.devminor = 1, 3
                tf.addfile(ti)


class Layers:
    """Writes layer blobs into a directory and unpacks them into a rootfs."""

    def __init__(self, tmp: Path) -> None:
        self.dir = tmp / "blobs"
        self.dir.mkdir()
        self.n = 0

    def make(self, entries: list[E], media_type: str = MT_GZIP) -> tuple[Path, str, str]:
        self.n += 1
        path = self.dir / f"layer{self.n}"
        with open(path, "wb") as raw:
            if media_type in (MT_GZIP, MT_DOCKER):
                with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6) as gz:
                    write_tar(gz, entries)
            elif media_type == MT_ZSTD:
                with zstandard.ZstdCompressor().stream_writer(raw, closefd=False) as zw:
                    write_tar(zw, entries)  # type: ignore[arg-type]
            else:
                write_tar(raw, entries)
        return path, media_type, f"sha256:layer{self.n}"


@pytest.fixture
def layers(tmp_path: Path) -> Layers:
    return Layers(tmp_path)


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    r = tmp_path / "vol" / "rootfs"
    r.mkdir(parents=True)
    return r


@pytest.fixture
def outside(tmp_path: Path) -> Iterator[Path]:
    """A sentinel directory beside the volume; after the test, everything
    outside the rootfs must be exactly as it was."""
    s = tmp_path / "outside"
    s.mkdir()
    (s / "victim").write_bytes(b"original")
    before = _snapshot_outside(tmp_path)
    yield s
    assert _snapshot_outside(tmp_path) == before, "something changed outside the rootfs"
    assert (s / "victim").read_bytes() == b"original"


def _snapshot_outside(tmp: Path) -> dict[str, tuple[int, int, int]]:
    snap = {}
    rootfs = tmp / "vol" / "rootfs"
    for dirpath, dirnames, filenames in os.walk(tmp):
        here = Path(dirpath)
        if here == rootfs:
            dirnames[:] = []
            continue
        for n in dirnames + filenames:
            p = here / n
            if p == rootfs or p == tmp / "blobs" or here == tmp / "blobs":
                continue  # the rootfs itself, and layer blobs the test writes later
            st = p.lstat()
            snap[str(p.relative_to(tmp))] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return snap


def unpack(rootfs: Path, *specs: tuple[Path, str, str], **kw: object) -> int:
    limits = kw.pop("limits", UnpackLimits())
    return unpack_layers(rootfs, list(specs), limits, **kw)  # type: ignore[arg-type]


def tree_bytes(root: Path) -> int:
    total = 0
    for dirpath, _, filenames in os.walk(root):
        for n in filenames:
            st = (Path(dirpath) / n).lstat()
            if stat.S_ISREG(st.st_mode):
                total += st.st_blocks * 512
    return total


# -- ordinary images ------------------------------------------------------------


@pytest.mark.parametrize("media_type", [MT_TAR, MT_GZIP, MT_ZSTD, MT_DOCKER])
def test_unpacks_files_dirs_links_in_every_compression(rootfs: Path, layers: Layers, media_type: str) -> None:
    payload = os.urandom(3 * MIB + 17)  # spans several copy chunks
    layer = layers.make(
        [
            d("./"),
            d("etc", 0o755, mtime=1_500_000_000),
            f("etc/hostname", b"edge\n", 0o644, mtime=1_400_000_000),
            f("bin/tool", payload, 0o755),  # parent not listed: made implicitly
            sym("bin/sh", "/bin/busybox", mtime=1_300_000_000),
            hard("bin/tool2", "bin/tool"),
            E("run/fifo", tarfile.FIFOTYPE, mode=0o620),
        ],
        media_type,
    )
    written = unpack(rootfs, layer)

    assert written == len(payload) + 5
    assert (rootfs / "etc/hostname").read_bytes() == b"edge\n"
    assert (rootfs / "bin/tool").read_bytes() == payload
    assert stat.S_IMODE((rootfs / "bin/tool").stat().st_mode) == 0o755
    assert stat.S_IMODE((rootfs / "bin").stat().st_mode) == 0o755
    assert os.readlink(rootfs / "bin/sh") == "/bin/busybox"
    assert (rootfs / "bin/sh").lstat().st_mtime == 1_300_000_000
    assert (rootfs / "bin/tool2").stat().st_ino == (rootfs / "bin/tool").stat().st_ino
    assert stat.S_ISFIFO((rootfs / "run/fifo").lstat().st_mode)
    assert stat.S_IMODE((rootfs / "run/fifo").lstat().st_mode) == 0o620
    assert (rootfs / "etc/hostname").stat().st_mtime == 1_400_000_000
    assert (rootfs / "etc").stat().st_mtime == 1_500_000_000


def test_layers_apply_in_order_and_later_entries_win(rootfs: Path, layers: Layers, outside: Path) -> None:
    l1 = layers.make(
        [
            f("a", b"lower"),
            f("x", b"file becomes dir"),
            d("y"),
            f("y/deep/z", b"dir becomes file"),
            sym("s", str(outside / "victim")),
            d("keep"),
            f("keep/old", b"old"),
        ]
    )
    l2 = layers.make(
        [
            f("a", b"upper"),
            d("x"),
            f("x/inner", b"in"),
            f("y", b"now a file"),
            f("s", b"link replaced by a file"),
            d("keep", 0o700),
            f("keep/new", b"new"),
        ]
    )
    unpack(rootfs, l1, l2)

    assert (rootfs / "a").read_bytes() == b"upper"
    assert (rootfs / "x/inner").read_bytes() == b"in"
    assert (rootfs / "y").read_bytes() == b"now a file"
    assert not (rootfs / "s").is_symlink() and (rootfs / "s").read_bytes() == b"link replaced by a file"
    # A directory over a directory merges and takes the upper metadata.
    assert sorted(p.name for p in (rootfs / "keep").iterdir()) == ["new", "old"]
    assert stat.S_IMODE((rootfs / "keep").stat().st_mode) == 0o700


def test_read_only_directory_does_not_block_later_layers(rootfs: Path, layers: Layers) -> None:
    l1 = layers.make([d("ro", 0o555), f("ro/a", b"a", 0o444)])
    l2 = layers.make([f("ro/b", b"b", 0o444), f("ro/a", b"A", 0o444)])
    unpack(rootfs, l1, l2, state=UnpackState(as_root=False))
    assert (rootfs / "ro/a").read_bytes() == b"A"
    assert (rootfs / "ro/b").read_bytes() == b"b"
    assert stat.S_IMODE((rootfs / "ro").stat().st_mode) == 0o555


def test_setuid_kept_only_as_root(tmp_path: Path, layers: Layers) -> None:
    layer = layers.make([f("su", b"x", 0o4755), d("sg", 0o2775)])
    plain = tmp_path / "plain"
    plain.mkdir()
    unpack(plain, layer, state=UnpackState(as_root=False))
    assert stat.S_IMODE((plain / "su").stat().st_mode) == 0o755
    assert stat.S_IMODE((plain / "sg").stat().st_mode) == 0o775
    if IS_ROOT:
        privileged = tmp_path / "privileged"
        privileged.mkdir()
        unpack(privileged, layer, state=UnpackState(as_root=True))
        assert stat.S_IMODE((privileged / "su").stat().st_mode) == 0o4755
        assert stat.S_IMODE((privileged / "sg").stat().st_mode) == 0o2775


@pytest.mark.skipif(not IS_ROOT, reason="ownership needs root")
def test_ownership_applied_as_root(rootfs: Path, layers: Layers) -> None:
    layer = layers.make(
        [d("home", uid=1000, gid=1001), f("home/f", b"x", uid=1234, gid=5678), sym("home/l", "f", uid=42, gid=43)]
    )
    unpack(rootfs, layer)
    assert ((rootfs / "home").stat().st_uid, (rootfs / "home").stat().st_gid) == (1000, 1001)
    assert ((rootfs / "home/f").stat().st_uid, (rootfs / "home/f").stat().st_gid) == (1234, 5678)
    assert ((rootfs / "home/l").lstat().st_uid, (rootfs / "home/l").lstat().st_gid) == (42, 43)


def test_progress_reports_compressed_bytes_up_to_total(rootfs: Path, layers: Layers) -> None:
    l1 = layers.make([f("big", os.urandom(3 * MIB))])
    l2 = layers.make([f("small", b"s")])
    calls: list[tuple[int, int]] = []
    unpack(rootfs, l1, l2, progress=lambda done, total: calls.append((done, total)))
    total = l1[0].stat().st_size + l2[0].stat().st_size
    assert calls[-1] == (total, total)
    assert all(t == total for _, t in calls)
    assert [c for c, _ in calls] == sorted(c for c, _ in calls)
    assert len(calls) >= 4  # intermediate reports during the 3 MiB layer, one per layer end


# -- whiteouts ------------------------------------------------------------------


def test_whiteout_removes_lower_files_and_trees(rootfs: Path, layers: Layers) -> None:
    l1 = layers.make(
        [f("a/file", b"1"), f("a/dir/x", b"2"), f("a/dir/sub/y", b"3"), f("b", b"4"), f("keep", b"5")]
    )
    l2 = layers.make([f("a/.wh.file"), f("a/.wh.dir"), f(".wh.b"), f(".wh.never-existed")])
    unpack(rootfs, l1, l2)
    assert sorted(p.name for p in rootfs.iterdir()) == ["a", "keep"]
    assert list((rootfs / "a").iterdir()) == []


def test_whiteout_then_recreate_in_same_layer(rootfs: Path, layers: Layers) -> None:
    l1 = layers.make([f("thing/old", b"old")])
    l2 = layers.make([f(".wh.thing"), f("thing/new", b"new")])
    unpack(rootfs, l1, l2)
    assert [p.name for p in (rootfs / "thing").iterdir()] == ["new"]


def test_whiteout_spares_same_layer_entry_listed_before_it(rootfs: Path, layers: Layers) -> None:
    l1 = layers.make([f("t/lower", b"l")])
    l2 = layers.make([f("t/upper", b"u"), f(".wh.t")])
    unpack(rootfs, l1, l2)
    assert [p.name for p in (rootfs / "t").iterdir()] == ["upper"]


@pytest.mark.parametrize("marker_first", [True, False])
def test_opaque_whiteout_empties_lower_dir_but_keeps_same_layer_entries(
    rootfs: Path, layers: Layers, marker_first: bool
) -> None:
    l1 = layers.make(
        [
            f("d/old1", b"1"),
            f("d/sub/old2", b"2"),
            f("d/keepdir/old3", b"3"),
            f("sibling/untouched", b"4"),
        ]
    )
    before = [f("d/new1", b"n1"), f("d/keepdir/new3", b"n3")]
    after = [f("d/new2", b"n2"), f("d/keepdir/new4", b"n4")]
    marker = [d("d"), f("d/.wh..wh..opq")]
    entries = marker + before + after if marker_first else before + marker + after
    l2 = layers.make(entries)
    unpack(rootfs, l1, l2)

    assert sorted(p.name for p in (rootfs / "d").iterdir()) == ["keepdir", "new1", "new2"]
    assert sorted(p.name for p in (rootfs / "d/keepdir").iterdir()) == ["new3", "new4"]
    assert (rootfs / "sibling/untouched").read_bytes() == b"4"
    assert not (rootfs / "d/.wh..wh..opq").exists()


def test_whiteout_markers_are_never_created(rootfs: Path, layers: Layers) -> None:
    unpack(rootfs, layers.make([f(".wh.x"), f("d/.wh..wh..opq"), f("d/.wh..wh.plnk")]))
    found = [p.name for p in rootfs.rglob("*")]
    assert not [n for n in found if n.startswith(".wh.")]


def test_whiteout_naming_the_parent_is_refused(rootfs: Path, layers: Layers, outside: Path) -> None:
    l1 = layers.make([f("d/x", b"1")])
    l2 = layers.make([f("d/.wh..")])
    with pytest.raises(UnpackError, match="whiteout"):
        unpack(rootfs, l1, l2)
    assert (rootfs / "d/x").exists()


# -- hostile layers --------------------------------------------------------------


@pytest.mark.parametrize("name", ["../evil", "a/../../evil", "./../outside/evil", "a/b/../../../evil"])
def test_dotdot_escape_refused(rootfs: Path, layers: Layers, outside: Path, name: str) -> None:
    layer = layers.make([f(name, b"pwned")])
    with pytest.raises(UnpackError, match=r"layer sha256:layer1: entry .*\.\..*climb out"):
        unpack(rootfs, layer)


def test_absolute_name_stays_inside(rootfs: Path, layers: Layers, outside: Path) -> None:
    layer = layers.make([f("/abs/path", b"inside"), f(str(outside / "victim"), b"inside too")])
    unpack(rootfs, layer)
    assert (rootfs / "abs/path").read_bytes() == b"inside"
    assert (rootfs / str(outside / "victim").lstrip("/")).read_bytes() == b"inside too"


def test_write_through_symlink_in_same_layer_refused(rootfs: Path, layers: Layers, outside: Path) -> None:
    layer = layers.make([sym("link", str(outside)), f("link/file", b"pwned")])
    with pytest.raises(UnpackError, match="'link' is a symlink"):
        unpack(rootfs, layer)
    assert os.readlink(rootfs / "link") == str(outside)


def test_write_through_symlink_planted_in_lower_layer_refused(
    rootfs: Path, layers: Layers, outside: Path
) -> None:
    l1 = layers.make([sym("etc", str(outside))])
    l2 = layers.make([f("etc/victim", b"pwned")])
    with pytest.raises(UnpackError, match=r"layer sha256:layer2: entry 'etc/victim'.*symlink"):
        unpack(rootfs, l1, l2)


def test_relative_symlink_chain_to_dotdot_refused(rootfs: Path, layers: Layers, outside: Path) -> None:
    layer = layers.make(
        [
            sym("up", ".."),
            sym("up2", "up/.."),
            sym("a", "../../.."),
            f("up/up/outside/victim", b"pwned"),
        ]
    )
    with pytest.raises(UnpackError, match="symlink"):
        unpack(rootfs, layer)
    for name in ("up2/outside/victim", "a/outside/victim"):
        with pytest.raises(UnpackError, match="symlink"):
            unpack(rootfs, layers.make([f(name, b"pwned")]))


def test_directory_entry_replaces_planted_symlink(rootfs: Path, layers: Layers, outside: Path) -> None:
    l1 = layers.make([sym("etc", str(outside))])
    l2 = layers.make([d("etc"), f("etc/victim", b"inside")])
    unpack(rootfs, l1, l2)
    assert not (rootfs / "etc").is_symlink()
    assert (rootfs / "etc/victim").read_bytes() == b"inside"


def test_file_entry_over_symlink_does_not_follow_it(rootfs: Path, layers: Layers, outside: Path) -> None:
    layer = layers.make([sym("v", str(outside / "victim")), f("v", b"pwned?"), sym("h", str(outside / "victim"))])
    l2 = layers.make([f("real", b"r"), hard("h", "real")])
    unpack(rootfs, layer, l2)
    assert (rootfs / "v").read_bytes() == b"pwned?" and not (rootfs / "v").is_symlink()
    assert (rootfs / "h").stat().st_ino == (rootfs / "real").stat().st_ino


@pytest.mark.parametrize(
    ("target", "why"),
    [
        ("/etc/passwd", "does not exist"),
        ("../outside/victim", "climb out"),
        ("dir", "not a regular file"),
        ("lnkdir/victim", "symlink"),
    ],
)
def test_hostile_hardlinks_refused(rootfs: Path, layers: Layers, outside: Path, target: str, why: str) -> None:
    layer = layers.make([d("dir"), sym("lnkdir", str(outside)), hard("stolen", target)])
    with pytest.raises(UnpackError, match=f"entry 'stolen': .*{why}"):
        unpack(rootfs, layer)
    assert not (rootfs / "stolen").exists()


def test_device_nodes_refused_by_default(rootfs: Path, layers: Layers, outside: Path) -> None:
    for kind in (tarfile.CHRTYPE, tarfile.BLKTYPE):
        layer = layers.make([E("dev/null", kind, mode=0o666)])
        with pytest.raises(UnpackError, match="entry 'dev/null': device nodes are not allowed"):
            unpack(rootfs, layer)
        # Allowed, but not privileged: still refused.
        with pytest.raises(UnpackError, match="device nodes"):
            unpack(rootfs, layer, limits=UnpackLimits(allow_devices=True), state=UnpackState(as_root=False))
    assert not (rootfs / "dev/null").exists()


@pytest.mark.skipif(not IS_ROOT, reason="mknod needs root")
def test_device_nodes_created_when_allowed_as_root(rootfs: Path, layers: Layers) -> None:
    layer = layers.make([E("dev/null", tarfile.CHRTYPE, mode=0o666)])
    unpack(rootfs, layer, limits=UnpackLimits(allow_devices=True))
    st = (rootfs / "dev/null").lstat()
    assert stat.S_ISCHR(st.st_mode) and os.major(st.st_rdev) == 1 and os.minor(st.st_rdev) == 3


def test_gzip_bomb_single_file_stops_at_limit(rootfs: Path, layers: Layers, outside: Path) -> None:
    layer = layers.make([f("small", b"x" * 1000), E("bomb", size=200 * MIB)])
    assert layer[0].stat().st_size < 2 * MIB  # it really is a bomb
    consumed = 0

    def on_read(n: int) -> None:
        nonlocal consumed
        consumed += n

    limits = UnpackLimits(max_bytes=10 * MIB)
    with open_layer(layer[0], MT_GZIP, on_read=on_read) as stream:
        with pytest.raises(UnpackError, match=r"layer sha256:bomb: entry 'bomb': .*more than 10485760 bytes"):
            apply_layer(rootfs, stream, digest="sha256:bomb", limits=limits, state=UnpackState())
    assert consumed < layer[0].stat().st_size  # stopped reading, did not inflate it all
    assert tree_bytes(rootfs) < 11 * MIB


def test_gzip_bomb_many_files_stops_at_limit(rootfs: Path, layers: Layers, outside: Path) -> None:
    layer = layers.make([E(f"z/{i:03}", size=MIB) for i in range(200)])
    assert layer[0].stat().st_size < 2 * MIB
    state = UnpackState()
    with pytest.raises(UnpackError, match=r"\(maxsizebytes\)"):
        unpack(rootfs, layer, limits=UnpackLimits(max_bytes=10 * MIB + 123), state=state)
    assert state.bytes_written <= 10 * MIB + 123
    assert tree_bytes(rootfs) < 11 * MIB
    assert len(list((rootfs / "z").iterdir())) == 10


def test_limit_counts_bytes_across_layers(rootfs: Path, layers: Layers) -> None:
    l1 = layers.make([f("a", b"x" * 600)])
    l2 = layers.make([f("b", b"y" * 600)])
    with pytest.raises(UnpackError, match="layer sha256:layer2: entry 'b'"):
        unpack(rootfs, l1, l2, limits=UnpackLimits(max_bytes=1000))
    assert unpack(rootfs, l1, limits=UnpackLimits(max_bytes=1000)) == 600


def test_entry_count_limited(rootfs: Path, layers: Layers) -> None:
    layer = layers.make([f(f"f{i}") for i in range(5)])
    with pytest.raises(UnpackError, match="max_entries"):
        unpack(rootfs, layer, limits=UnpackLimits(max_entries=3))


def test_huge_pax_header_refused(rootfs: Path, layers: Layers) -> None:
    layer = layers.make([f("x", b"1", pax={"comment": "A" * (2 * MIB)})])
    with pytest.raises(UnpackError, match="layer sha256:layer1: corrupt or truncated archive.*metadata header"):
        unpack(rootfs, layer)


def test_file_standing_for_root_refused(rootfs: Path, layers: Layers) -> None:
    with pytest.raises(UnpackError, match="only a directory"):
        unpack(rootfs, layers.make([f("./", b"x")]))


# -- broken input ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("build_as", "declare", "msg"),
    [
        (MT_GZIP, MT_ZSTD, "says zstd but the content is gzip"),
        (MT_ZSTD, MT_GZIP, "says gzip but the content is zstd"),
        (MT_TAR, MT_GZIP, "says gzip but the content is tar"),
        (MT_GZIP, MT_TAR, "says uncompressed tar but the content is gzip"),
        (MT_ZSTD, MT_TAR, "says uncompressed tar but the content is zstd"),
        (MT_TAR, "application/vnd.oci.image.layer.v1.tar+bzip2", "unsupported layer media type"),
    ],
)
def test_media_type_mismatch_refused(
    rootfs: Path, layers: Layers, build_as: str, declare: str, msg: str
) -> None:
    path, _, digest = layers.make([f("a", b"1")], build_as)
    with pytest.raises(UnpackError, match=f"layer {digest}: .*{msg}"):
        unpack(rootfs, (path, declare, digest))
    assert list(rootfs.iterdir()) == []


@pytest.mark.parametrize("media_type", [MT_TAR, MT_GZIP, MT_ZSTD])
def test_truncated_layer_refused(rootfs: Path, layers: Layers, media_type: str) -> None:
    path, mt, digest = layers.make([f("a", os.urandom(100_000)), f("b", os.urandom(100_000))], media_type)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(UnpackError, match=f"layer {digest}: "):
        unpack(rootfs, (path, mt, digest))


def test_garbage_after_member_refused(rootfs: Path, layers: Layers) -> None:
    path, mt, digest = layers.make([f("a", b"1" * 512)], MT_TAR)
    data = path.read_bytes()
    path.write_bytes(data[:1024] + b"\x07" * 1024)  # header + data, then junk
    with pytest.raises(UnpackError, match="corrupt or truncated archive after entry 'a'"):
        unpack(rootfs, (path, mt, digest))


def test_whiteouts_never_reach_through_a_symlink(rootfs: Path, layers: Layers, outside: Path) -> None:
    l1 = layers.make([sym("etc", str(outside)), sym("up", "..")])
    l2 = layers.make([f("etc/.wh.victim"), f("etc/.wh..wh..opq"), f("up/up/outside/.wh.victim")])
    unpack(rootfs, l1, l2)
    assert os.readlink(rootfs / "etc") == str(outside)
