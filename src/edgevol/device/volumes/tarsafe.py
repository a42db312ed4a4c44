"""No-follow file-system operations confined beneath one root directory.

A container layer is untrusted input: an earlier entry (or an earlier layer)
may have planted ``etc -> /etc`` or ``a -> ../../..``. Resolving paths as
strings would let a later entry write through such a link onto the host. So
every operation here walks from a descriptor of the root, one component at a
time, with ``O_NOFOLLOW``, and acts through ``*at`` calls on the parent's
descriptor: a symlink anywhere above the final component is refused, never
traversed, and the final component itself is never followed.
"""

from __future__ import annotations

import os
import shutil
import stat
import tarfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# pax / GNU long-name headers are read whole into memory by tarfile; cap them.
MAX_META_HEADER = 1 << 20
_META_TYPES = frozenset(
    {tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE, tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK}
)


class UnsafePath(Exception):
    """A name would leave the root or cross a symlink / non-directory."""


class HeaderTooBig(Exception):
    """A tar metadata header (pax, GNU long name) larger than :data:`MAX_META_HEADER`."""


def guarded_tarinfo() -> type[tarfile.TarInfo]:
    """A TarInfo class for one archive that refuses huge metadata headers and
    remembers how the header stream ended (clean end-of-archive or not)."""

    class _Guarded(tarfile.TarInfo):
        ending: str | None = None

        @classmethod
        def frombuf(cls, buf, encoding, errors):  # type: ignore[no-untyped-def]
            try:
                obj = super().frombuf(buf, encoding, errors)
            except (tarfile.EOFHeaderError, tarfile.EmptyHeaderError):
                # A zero block, or a clean end of stream at a block boundary
                # (some writers omit the zero blocks): a proper end.
                _Guarded.ending = "end"
                raise
            except tarfile.HeaderError as e:
                _Guarded.ending = str(e) or type(e).__name__
                raise
            if obj.type in _META_TYPES and obj.size > MAX_META_HEADER:
                raise HeaderTooBig(f"metadata header of {obj.size} bytes (limit {MAX_META_HEADER})")
            return obj

    return _Guarded


def split_name(name: str) -> tuple[str, ...]:
    """Root-relative components of an archive name; ``()`` is the root itself.

    A leading ``/`` is dropped (archive names are relative to the root) and
    ``.``/``..`` are resolved lexically, which matches what the walk does since
    it never follows links. A ``..`` that would climb above the root is refused
    rather than clamped, because such an archive is hostile or broken.
    """
    parts: list[str] = []
    for comp in name.split("/"):
        if comp in ("", "."):
            continue
        if comp == "..":
            if not parts:
                raise UnsafePath("'..' would climb out of the root")
            parts.pop()
            continue
        if "\x00" in comp:
            raise UnsafePath("name contains a NUL byte")
        parts.append(comp)
    return tuple(parts)


def lstat_at(dir_fd: int, name: str) -> os.stat_result | None:
    """``lstat`` of ``name`` in ``dir_fd``, None when it does not exist."""
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def open_dir_at(dir_fd: int, name: str) -> int:
    """Open a child directory without following a symlink in its place."""
    return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)


def remove_at(dir_fd: int, name: str) -> None:
    """Delete whatever ``name`` is (a directory with all its content); no-op if absent.

    ``shutil.rmtree`` with ``dir_fd`` uses descriptor-based traversal, which
    does not follow symlinks found inside the tree.
    """
    st = lstat_at(dir_fd, name)
    if st is None:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(name, dir_fd=dir_fd)
    else:
        os.unlink(name, dir_fd=dir_fd)


class Root:
    """An open descriptor on the root plus confined walks beneath it."""

    def __init__(self, path: os.PathLike[str] | str) -> None:
        self.fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Root:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def dir(
        self,
        parts: tuple[str, ...],
        *,
        create: bool = False,
        on_mkdir: Callable[[tuple[str, ...]], None] | None = None,
    ) -> Iterator[int | None]:
        """Yield a descriptor for directory ``parts`` (None if missing and not ``create``).

        Missing components are made (mode 0o755) when ``create`` is set and
        reported to ``on_mkdir`` so the caller can give them final metadata.
        A symlink or non-directory on the way raises :class:`UnsafePath`.
        """
        fd = os.dup(self.fd)
        try:
            for i, comp in enumerate(parts):
                try:
                    nfd = open_dir_at(fd, comp)
                except FileNotFoundError:
                    if not create:
                        os.close(fd)
                        fd = -1
                        break
                    os.mkdir(comp, 0o755, dir_fd=fd)
                    if on_mkdir is not None:
                        on_mkdir(parts[: i + 1])
                    nfd = open_dir_at(fd, comp)
                except OSError as e:
                    st = lstat_at(fd, comp)
                    where = "/".join(parts[: i + 1])
                    if st is not None and stat.S_ISLNK(st.st_mode):
                        raise UnsafePath(f"'{where}' is a symlink; refusing to go through it") from e
                    if st is not None and not stat.S_ISDIR(st.st_mode):
                        raise UnsafePath(f"'{where}' is not a directory") from e
                    raise
                os.close(fd)
                fd = nfd
            yield fd if fd >= 0 else None
        finally:
            if fd >= 0:
                os.close(fd)
