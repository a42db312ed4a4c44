"""Unpack OCI image layers into a directory volume's ``rootfs``.

Layers come from the network and are untrusted, so this is written as a
streaming, confined extractor rather than ``tarfile.extractall``:

* each layer is decompressed and read once, in order (tar mode ``r|``), with
  a 1 MiB copy buffer, so memory does not grow with layer size;
* every write goes through :mod:`tarsafe`, which walks from a descriptor of
  ``rootfs`` with ``O_NOFOLLOW`` and never traverses a symlink, so no entry can
  land outside ``rootfs`` whatever earlier entries or layers planted;
* bytes of regular files are counted as they are written and the unpack stops
  at ``max_bytes``, so a decompression bomb cannot fill the disk;
* OCI whiteouts (``.wh.<name>``, ``.wh..wh..opq``) remove only what *lower*
  layers put there; whatever this layer writes, before or after the marker,
  survives, so the result does not depend on where markers sit in the tar.

Directory metadata (mode, owner, mtime) is applied once, after the last layer
(:meth:`UnpackState.finish`): a read-only directory must not block later
writes into it, and later layers would disturb an mtime set earlier.

Nothing here fsyncs individual files; the caller builds the volume under a
temporary name and must sync before making it visible.
"""

from __future__ import annotations

import gzip
import io
import os
import stat
import tarfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import zstandard

from edgevol.device.volumes.tarsafe import (
    HeaderTooBig,
    Root,
    UnsafePath,
    guarded_tarinfo,
    lstat_at,
    open_dir_at,
    remove_at,
    split_name,
)

CHUNK = 1 << 20
# Longest name we accept: anything longer could not be opened by a normal
# program in the container (PATH_MAX) and would only cost deep walks.
MAX_NAME_BYTES = 4095
OPAQUE = ".wh..wh..opq"
WHITEOUT_PREFIX = ".wh."

_GZIP = "gzip"
_ZSTD = "zstd"
_TAR = "tar"

MEDIA_TYPES: dict[str, str] = {
    "application/vnd.oci.image.layer.v1.tar": _TAR,
    "application/vnd.oci.image.layer.v1.tar+gzip": _GZIP,
    "application/vnd.oci.image.layer.v1.tar+zstd": _ZSTD,
    "application/vnd.oci.image.layer.nondistributable.v1.tar": _TAR,
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip": _GZIP,
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd": _ZSTD,
    "application/vnd.docker.image.rootfs.diff.tar.gzip": _GZIP,
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip": _GZIP,
}

_MAGIC: dict[str, bytes] = {
    _GZIP: b"\x1f\x8b",
    _ZSTD: b"\x28\xb5\x2f\xfd",
    "bzip2": b"BZh",
    "xz": b"\xfd7zXZ\x00",
}

class UnpackError(Exception):
    """A layer could not be applied; the message names the layer, the entry and why."""


@dataclass(frozen=True)
class UnpackLimits:
    """What an unpack may do; the defaults suit an unprivileged container rootfs.

    ``max_bytes`` caps regular-file bytes written across all layers (the
    volume's maxsizebytes). Character/block devices are refused unless
    ``allow_devices`` is set *and* we run as root; FIFOs are always allowed.
    ``max_entries`` caps tar entries across all layers.
    """

    max_bytes: int | None = None
    allow_devices: bool = False
    max_entries: int = 1_000_000


@dataclass(frozen=True)
class _DirMeta:
    mode: int
    uid: int | None
    gid: int | None
    mtime_ns: int | None


class UnpackState:
    """Counters and deferred directory metadata carried from layer to layer.

    ``as_root`` decides whether ownership, setuid/setgid bits and device
    nodes are honoured; it defaults to the effective uid.
    """

    def __init__(self, *, as_root: bool | None = None) -> None:
        self.as_root = os.geteuid() == 0 if as_root is None else as_root
        self.bytes_written = 0
        self.entries = 0
        self._dirs: dict[tuple[str, ...], _DirMeta] = {}

    def note_dir(self, parts: tuple[str, ...], meta: _DirMeta) -> None:
        self._dirs[parts] = meta

    def finish(self, rootfs: Path) -> None:
        """Apply directory modes, owners and mtimes; call once after the last layer.

        Deepest first, so a parent losing its search bit cannot block a
        child. Directories that a later layer removed or replaced are skipped.
        """
        with Root(rootfs) as root:
            for parts in sorted(self._dirs, key=len, reverse=True):
                meta = self._dirs[parts]
                fd = _open_existing_dir(root, parts)
                if fd is None:
                    continue
                try:
                    if self.as_root and meta.uid is not None and meta.gid is not None:
                        os.fchown(fd, meta.uid, meta.gid)
                    os.fchmod(fd, meta.mode)
                    if meta.mtime_ns is not None:
                        os.utime(fd, ns=(meta.mtime_ns, meta.mtime_ns))
                finally:
                    os.close(fd)
        self._dirs.clear()


def _open_existing_dir(root: Root, parts: tuple[str, ...]) -> int | None:
    if not parts:
        return os.dup(root.fd)
    try:
        with root.dir(parts[:-1]) as pfd:
            if pfd is None:
                return None
            return open_dir_at(pfd, parts[-1])
    except (UnsafePath, OSError):
        return None


# -- opening layers -----------------------------------------------------------


class _CountingFile(io.RawIOBase):
    """The compressed file, reporting how many bytes were consumed (for progress)."""

    def __init__(self, f: BinaryIO, on_read: Callable[[int], None] | None) -> None:
        self._f = f
        self._on_read = on_read

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        n = self._f.readinto(b)  # type: ignore[attr-defined]
        if n and self._on_read is not None:
            self._on_read(n)
        return n

    def close(self) -> None:
        self._f.close()
        super().close()


class _LayerStream(io.RawIOBase):
    """The decompressed tar stream; closing it closes the file underneath."""

    def __init__(self, decoded: BinaryIO, raw: _CountingFile) -> None:
        self._decoded = decoded
        self._raw = raw

    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        return self._decoded.readinto(b)  # type: ignore[attr-defined]

    def close(self) -> None:
        try:
            if self._decoded is not self._raw:
                self._decoded.close()
        finally:
            self._raw.close()
            super().close()


def _sniff(head: bytes) -> str | None:
    for kind, magic in _MAGIC.items():
        if head.startswith(magic):
            return kind
    if head[257:262] == b"ustar":
        return _TAR
    return None


def open_layer(
    path: Path,
    media_type: str,
    *,
    digest: str = "",
    on_read: Callable[[int], None] | None = None,
) -> BinaryIO:
    """Open a layer blob as a streaming, decompressed tar.

    The compression comes from ``media_type`` but is checked against the
    content's magic bytes: a mismatch means a wrong manifest or a substituted
    blob, and guessing would hide it. ``on_read`` receives compressed byte
    counts as they are consumed.
    """
    label = digest or Path(path).name
    kind = MEDIA_TYPES.get(media_type.strip().lower())
    if kind is None:
        raise UnpackError(f"layer {label}: unsupported layer media type {media_type!r}")
    f = open(path, "rb")
    try:
        head = f.read(512)
        f.seek(0)
        found = _sniff(head)
        if kind == _TAR:
            if found is not None and found != _TAR:
                raise UnpackError(
                    f"layer {label}: media type {media_type} says uncompressed tar but the content is {found}"
                )
        elif found != kind:
            what = found or "not a recognised compressed stream"
            raise UnpackError(f"layer {label}: media type {media_type} says {kind} but the content is {what}")
        raw = _CountingFile(f, on_read)
    except BaseException:
        f.close()
        raise
    if kind == _GZIP:
        decoded: BinaryIO = gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[assignment]
    elif kind == _ZSTD:
        decoded = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True, closefd=False)
    else:
        decoded = raw  # type: ignore[assignment]
    return _LayerStream(decoded, raw)  # type: ignore[return-value]


# -- applying one layer -------------------------------------------------------


# ValueError/OverflowError: tarfile parses pax and GNU sparse headers with int()/float() and lets
# those escape (e.g. GNU.sparse.map=nan); entry errors are already UnpackErrors by the time they get here.
_STREAM_ERRORS = (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile, zstandard.ZstdError, HeaderTooBig,
                  ValueError, OverflowError)


def apply_layer(
    rootfs: Path,
    layer: BinaryIO,
    *,
    digest: str,
    limits: UnpackLimits,
    state: UnpackState,
) -> None:
    """Apply one decompressed layer tar on top of ``rootfs``.

    Directory metadata is deferred to :meth:`UnpackState.finish`, which the
    caller runs after the last layer (``unpack_layers`` does).
    """
    info_cls = guarded_tarinfo()
    last: str | None = None
    with Root(rootfs) as root:
        applier = _Applier(root, digest, limits, state)
        try:
            tf = tarfile.open(fileobj=layer, mode="r|", tarinfo=info_cls, bufsize=64 * 1024)
            while True:
                member = tf.next()
                if member is None:
                    break
                # tarfile keeps every member it has read; we never look back, so
                # drop them to keep memory flat on layers with many entries.
                tf.members = []
                state.entries += 1
                if state.entries > limits.max_entries:
                    raise UnpackError(
                        f"layer {digest}: more than {limits.max_entries} entries across layers (max_entries)"
                    )
                last = member.name
                applier.apply(tf, member)
        except UnpackError:
            raise
        except RecursionError:
            raise UnpackError(f"layer {digest}: directory tree too deep (after entry {last!r})") from None
        except _STREAM_ERRORS as e:
            where = f"after entry {last!r}" if last is not None else "at the start"
            raise UnpackError(f"layer {digest}: corrupt or truncated archive {where}: {e}") from e
        if info_cls.ending != "end":  # type: ignore[attr-defined]
            where = f"after entry {last!r}" if last is not None else "at the start"
            why = info_cls.ending or "no end-of-archive marker"  # type: ignore[attr-defined]
            raise UnpackError(f"layer {digest}: corrupt or truncated archive {where}: {why}")


class _Applier:
    """Applies entries of one layer; knows which paths this layer has produced."""

    def __init__(self, root: Root, digest: str, limits: UnpackLimits, state: UnpackState) -> None:
        self.root = root
        self.digest = digest
        self.limits = limits
        self.state = state
        # Paths this layer created (with their ancestors): whiteouts must spare them.
        self.ours: set[tuple[str, ...]] = set()

    def err(self, name: str, why: str) -> UnpackError:
        return UnpackError(f"layer {self.digest}: entry {name!r}: {why}")

    def apply(self, tf: tarfile.TarFile, m: tarfile.TarInfo) -> None:
        name = m.name
        try:
            if len(os.fsencode(name)) > MAX_NAME_BYTES:
                raise UnsafePath(f"name longer than {MAX_NAME_BYTES} bytes")
            parts = split_name(name)
            if parts and parts[-1].startswith(WHITEOUT_PREFIX):
                self._whiteout(name, parts)
            elif not parts:
                if not m.isdir():
                    raise self.err(name, "only a directory may stand for the root")
                self.state.note_dir((), self._dir_meta(m))
            else:
                with self.root.dir(parts[:-1], create=True, on_mkdir=self._implicit_dir) as pfd:
                    assert pfd is not None
                    self._entry(tf, m, pfd, parts)
                self._mark(parts)
        except UnpackError:
            raise
        except UnsafePath as e:
            raise self.err(name, str(e)) from None
        except (OSError, ValueError, OverflowError) as e:
            why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            raise self.err(name, why) from e

    # -- bookkeeping --

    def _mark(self, parts: tuple[str, ...]) -> None:
        for i in range(len(parts), 0, -1):
            p = parts[:i]
            if p in self.ours:
                break
            self.ours.add(p)

    def _implicit_dir(self, parts: tuple[str, ...]) -> None:
        # A parent the tar never listed: give it the conventional mode rather
        # than whatever the umask left.
        self.state.note_dir(parts, _DirMeta(0o755, None, None, None))

    def _mode(self, m: tarfile.TarInfo) -> int:
        mode = m.mode & 0o7777
        return mode if self.state.as_root else mode & ~0o6000

    def _dir_meta(self, m: tarfile.TarInfo) -> _DirMeta:
        return _DirMeta(self._mode(m), m.uid, m.gid, _mtime_ns(m))

    # -- entries --

    def _entry(self, tf: tarfile.TarFile, m: tarfile.TarInfo, pfd: int, parts: tuple[str, ...]) -> None:
        base = parts[-1]
        if m.isreg():
            self._file(tf, m, pfd, base)
        elif m.isdir():
            st = lstat_at(pfd, base)
            if st is None or not stat.S_ISDIR(st.st_mode):
                remove_at(pfd, base)
                os.mkdir(base, 0o755, dir_fd=pfd)
            self.state.note_dir(parts, self._dir_meta(m))
        elif m.issym():
            remove_at(pfd, base)
            # The link's target is only data; it is never followed here.
            os.symlink(m.linkname, base, dir_fd=pfd)
            self._node_meta(m, pfd, base, chmod=False)
        elif m.islnk():
            self._hardlink(m, pfd, base)
        elif m.ischr() or m.isblk():
            if not (self.limits.allow_devices and self.state.as_root):
                raise self.err(m.name, "device nodes are not allowed in this volume")
            remove_at(pfd, base)
            kind = stat.S_IFCHR if m.ischr() else stat.S_IFBLK
            os.mknod(base, 0o600 | kind, os.makedev(m.devmajor, m.devminor), dir_fd=pfd)
            self._node_meta(m, pfd, base, chmod=True)
        elif m.isfifo():
            remove_at(pfd, base)
            os.mkfifo(base, 0o600, dir_fd=pfd)
            self._node_meta(m, pfd, base, chmod=True)
        else:
            raise self.err(m.name, f"unsupported tar entry type {m.type!r}")

    def _over_limit(self, extra: int) -> bool:
        cap = self.limits.max_bytes
        return cap is not None and self.state.bytes_written + extra > cap

    def _file(self, tf: tarfile.TarFile, m: tarfile.TarInfo, pfd: int, base: str) -> None:
        too_big = f"would unpack more than {self.limits.max_bytes} bytes (maxsizebytes)"
        if self._over_limit(m.size):
            raise self.err(m.name, too_big)
        remove_at(pfd, base)
        fd = os.open(base, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=pfd)
        try:
            src = tf.extractfile(m)
            assert src is not None
            while True:
                chunk = src.read(CHUNK)
                if not chunk:
                    break
                if self._over_limit(len(chunk)):
                    raise self.err(m.name, too_big)
                _write_all(fd, chunk)
                self.state.bytes_written += len(chunk)
            if self.state.as_root:
                os.fchown(fd, m.uid, m.gid)  # before chmod: chown clears setuid
            os.fchmod(fd, self._mode(m))
            t = _mtime_ns(m)
            os.utime(fd, ns=(t, t))
        finally:
            os.close(fd)

    def _hardlink(self, m: tarfile.TarInfo, pfd: int, base: str) -> None:
        try:
            target = split_name(m.linkname)
        except UnsafePath as e:
            raise self.err(m.name, f"hardlink target {m.linkname!r}: {e}") from None
        if not target:
            raise self.err(m.name, "hardlink to the root directory")
        try:
            with self.root.dir(target[:-1]) as tfd:
                st = lstat_at(tfd, target[-1]) if tfd is not None else None
                if st is None:
                    raise self.err(m.name, f"hardlink target {m.linkname!r} does not exist in the rootfs")
                if not (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
                    raise self.err(m.name, f"hardlink target {m.linkname!r} is not a regular file")
                here = lstat_at(pfd, base)
                if here is not None and (here.st_dev, here.st_ino) == (st.st_dev, st.st_ino):
                    return
                remove_at(pfd, base)
                os.link(target[-1], base, src_dir_fd=tfd, dst_dir_fd=pfd, follow_symlinks=False)
        except UnsafePath as e:
            raise self.err(m.name, f"hardlink target {m.linkname!r}: {e}") from None

    def _node_meta(self, m: tarfile.TarInfo, pfd: int, base: str, *, chmod: bool) -> None:
        if self.state.as_root:
            os.chown(base, m.uid, m.gid, dir_fd=pfd, follow_symlinks=False)
        if chmod:
            # We just created this node ourselves, so it is not a symlink.
            os.chmod(base, self._mode(m), dir_fd=pfd)
        t = _mtime_ns(m)
        os.utime(base, ns=(t, t), dir_fd=pfd, follow_symlinks=False)

    # -- whiteouts --

    def _whiteout(self, name: str, parts: tuple[str, ...]) -> None:
        marker = parts[-1]
        if marker == OPAQUE:
            self._opaque(parts[:-1])
            return
        if marker.startswith(WHITEOUT_PREFIX + WHITEOUT_PREFIX):
            return  # aufs bookkeeping (.wh..wh.plnk etc.), not a deletion
        victim = marker[len(WHITEOUT_PREFIX) :]
        if victim in ("", ".", ".."):
            raise self.err(name, "whiteout names no entry")
        target = parts[:-1] + (victim,)
        try:
            with self.root.dir(parts[:-1]) as pfd:
                if pfd is None:
                    return
                if target in self.ours:
                    # Only the lower layers' part of it goes.
                    self._prune(pfd, victim, target)
                else:
                    remove_at(pfd, victim)
        except UnsafePath:
            # Nothing of a lower layer can live beneath a symlink or a file.
            return

    def _opaque(self, dir_parts: tuple[str, ...]) -> None:
        fd = _open_existing_dir(self.root, dir_parts)
        if fd is not None:
            try:
                self._prune_children(fd, dir_parts)
            finally:
                os.close(fd)
        if dir_parts:
            self._mark(dir_parts)

    def _prune(self, pfd: int, name: str, parts: tuple[str, ...]) -> None:
        st = lstat_at(pfd, name)
        if st is None or not stat.S_ISDIR(st.st_mode):
            return
        fd = open_dir_at(pfd, name)
        try:
            self._prune_children(fd, parts)
        finally:
            os.close(fd)

    def _prune_children(self, dir_fd: int, parts: tuple[str, ...]) -> None:
        """Remove everything under ``parts`` that this layer did not produce."""
        stack: list[tuple[int, tuple[str, ...]]] = [(os.dup(dir_fd), parts)]
        try:
            while stack:
                fd, where = stack.pop()
                try:
                    for child in os.listdir(fd):
                        p = where + (child,)
                        if p not in self.ours:
                            remove_at(fd, child)
                            continue
                        st = lstat_at(fd, child)
                        if st is not None and stat.S_ISDIR(st.st_mode):
                            stack.append((open_dir_at(fd, child), p))
                finally:
                    os.close(fd)
        finally:
            for fd, _ in stack:
                os.close(fd)


def _mtime_ns(m: tarfile.TarInfo) -> int:
    mt = m.mtime
    return mt * 1_000_000_000 if isinstance(mt, int) else int(mt * 1_000_000_000)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


# -- whole image --------------------------------------------------------------


def unpack_layers(
    rootfs: Path,
    layers: list[tuple[Path, str, str]],
    limits: UnpackLimits,
    progress: Callable[[int, int], None] | None = None,
    *,
    state: UnpackState | None = None,
) -> int:
    """Apply ``(path, media_type, digest)`` layers in order; returns regular-file bytes written.

    ``progress(done, total)`` is in compressed bytes over all layer blobs,
    reported about every MiB. On error ``rootfs`` is left half-made (but
    nothing outside it is touched); the caller deletes the volume directory.
    """
    state = state or UnpackState()
    total = sum(Path(p).stat().st_size for p, _, _ in layers)
    done = 0
    reported = 0

    def on_read(n: int) -> None:
        nonlocal done, reported
        done += n
        if progress is not None and done - reported >= CHUNK:
            reported = done
            progress(min(done, total), total)

    finished = 0
    for path, media_type, digest in layers:
        with open_layer(path, media_type, digest=digest, on_read=on_read) as stream:
            apply_layer(rootfs, stream, digest=digest, limits=limits, state=state)
        finished += Path(path).stat().st_size
        done = reported = finished
        if progress is not None:
            progress(finished, total)
    state.finish(rootfs)
    return state.bytes_written
