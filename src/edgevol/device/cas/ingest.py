"""Digest-verified, resumable writes into the content store.

A blob enters the store only through an :class:`Ingest`: bytes stream into
``ingest/<hex>.partial`` while sha256 is updated incrementally, and only a
commit whose size and digest match renames the file into ``blobs/sha256``.
A closed-but-uncommitted partial stays on disk so a download can resume
(HTTP ``Range``) from :attr:`Ingest.offset`. Beside it, ``ingest/<hex>.validator``
holds what the source said identifies the version those bytes came from (an
ETag, say), so a resume after a restart can still ask whether they are current;
it lives and dies with the partial.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from types import TracebackType

from edgevol.fsutil import atomic_write_bytes, fsync_dir, start_writeback

from .digests import hash_stream
from .errors import CasError, DigestMismatch, SizeLimitExceeded, SizeMismatch
from .locks import DigestLock

BLOB_MODE = 0o444
PARTIAL_SUFFIX = ".partial"
VALIDATOR_SUFFIX = ".validator"
WRITE_BEHIND = 8 << 20  # start writeback of every 8 MiB written, so commit's fsync finds little left


class Ingest:
    """One open ingest of one digest. Not thread-safe; use from one thread.

    Created by :meth:`ContentStore.ingest`, which holds the per-digest lock
    for the lifetime of this object.
    """

    def __init__(
        self,
        digest: str,
        partial: Path,
        blob: Path,
        lock: DigestLock,
        *,
        expected_size: int | None = None,
        max_size: int | None = None,
    ) -> None:
        self.digest = digest
        self.expected_size = expected_size
        self.max_size = max_size
        self.partial_path = partial
        self.validator_path = partial.with_suffix(VALIDATOR_SUFFIX)
        self.blob_path = blob
        self._validator: str | None = None
        self._lock = lock
        self._limit = _min_limit(expected_size, max_size)
        self._hasher = hashlib.sha256()
        self.offset = 0
        self._written_back = 0  # bytes before this offset were handed to the kernel's writeback
        self._file: io.FileIO | None = None
        try:
            self._open_partial()
        except BaseException:
            self.close()
            raise

    def _open_partial(self) -> None:
        created = not self.partial_path.exists()
        self._file = io.FileIO(self.partial_path, "a+")
        if created:
            fsync_dir(self.partial_path.parent)
            self._drop_validator()  # left by a removal cut short: it described bytes that are gone
        else:
            self._validator = _read_validator(self.validator_path)
        self._file.seek(0)
        self._hasher, self.offset = hash_stream(self._file)
        self._written_back = self.offset
        if self._limit is not None and self.offset > self._limit:
            # Longer than the blob can be: the partial is torn; no resume point exists.
            self.reset()

    # -- context manager -------------------------------------------------

    def __enter__(self) -> Ingest:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        # A forgotten ingest must not keep the digest locked forever.
        try:
            self.close()
        except Exception:
            pass

    # -- writing ---------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._file is None

    def _require_open(self) -> io.FileIO:
        if self._file is None:
            raise CasError(f"ingest of sha256:{self.digest} is closed")
        return self._file

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Append ``data``; refuse (writing nothing) if it would pass the size limit."""
        f = self._require_open()
        view = memoryview(data).cast("B")
        end = self.offset + len(view)
        if self._limit is not None and end > self._limit:
            raise SizeLimitExceeded(self.digest, self._limit, end)
        while view:
            n = f.write(view)
            if n is None:
                raise CasError(f"write to partial of sha256:{self.digest} would block")
            self._hasher.update(view[:n])
            self.offset += n
            view = view[n:]
        if self.offset - self._written_back >= WRITE_BEHIND:
            start_writeback(f.fileno(), self._written_back, self.offset - self._written_back)
            self._written_back = self.offset

    def reset(self) -> None:
        """Start over from byte zero (e.g. the server ignored our Range request); the validator goes too."""
        f = self._require_open()
        f.truncate(0)
        f.seek(0)
        self._hasher = hashlib.sha256()
        self.offset = self._written_back = 0
        self._drop_validator()  # after emptying the partial: its old bytes are never left without their validator

    @property
    def validator(self) -> str | None:
        """The source's word for the version the partial's bytes belong to (opaque here), or None."""
        return self._validator

    def set_validator(self, validator: str | None) -> None:
        """Record ``validator`` for the partial, durably (temp file, fsync, rename); None removes it."""
        f = self._require_open()
        if validator == self._validator:
            return
        # The partial's current length (after a reset: empty) reaches the disk before the new validator
        # claims it, so a power cut cannot pair the new validator with the old bytes.
        os.fsync(f.fileno())
        if validator is None:
            self._drop_validator()
            return
        atomic_write_bytes(self.validator_path, validator.encode())
        self._validator = validator

    # -- finishing -------------------------------------------------------

    def commit(self) -> Path:
        """Verify size and sha256, then atomically publish the blob.

        On mismatch the partial is deleted (it can never become valid) and
        DigestMismatch / SizeMismatch is raised. The ingest is closed afterwards
        in every case.
        """
        f = self._require_open()
        try:
            if self.blob_path.exists():
                self._remove_partial()
                return self.blob_path
            f.flush()
            os.fsync(f.fileno())
            on_disk = os.fstat(f.fileno()).st_size
            if on_disk != self.offset:
                # Something else changed the file underneath us; trust nothing.
                self._remove_partial()
                raise SizeMismatch(self.digest, self.offset, on_disk)
            if self.expected_size is not None and self.offset != self.expected_size:
                self._remove_partial()
                raise SizeMismatch(self.digest, self.expected_size, self.offset)
            actual = self._hasher.hexdigest()
            if actual != self.digest:
                self._remove_partial()
                raise DigestMismatch(self.digest, actual, self.offset)
            self._publish(f)
            return self.blob_path
        finally:
            self.close()

    def _publish(self, f: io.FileIO) -> None:
        # Not fsutil.commit_file: it reopens the file for writing, which a
        # 0o444 file refuses to non-root users. Mode is set before the rename
        # so the blob is never visible writable.
        os.fchmod(f.fileno(), BLOB_MODE)
        os.fsync(f.fileno())
        self._close_file()
        os.replace(self.partial_path, self.blob_path)
        fsync_dir(self.blob_path.parent)
        self._drop_validator(sync=False)
        fsync_dir(self.partial_path.parent)

    def discard(self) -> None:
        """Delete the partial and close; the next ingest starts from zero."""
        self._require_open()
        try:
            self._remove_partial()
        finally:
            self.close()

    def _remove_partial(self) -> None:
        self._close_file()
        self.partial_path.unlink(missing_ok=True)
        self._drop_validator(sync=False)
        fsync_dir(self.partial_path.parent)

    def _drop_validator(self, *, sync: bool = True) -> None:
        """Remove the sidecar. Always after the partial goes or is emptied, so no partial is ever left
        without the validator its bytes had (a sidecar without a partial is dropped when one is opened)."""
        self._validator = None
        try:
            self.validator_path.unlink()
        except FileNotFoundError:
            return
        if sync:
            fsync_dir(self.validator_path.parent)

    def close(self) -> None:
        """Close without committing; the partial stays for a later resume."""
        try:
            self._close_file()
        finally:
            self._release()

    def _close_file(self) -> None:
        if self._file is not None:
            f, self._file = self._file, None
            f.close()

    def _release(self) -> None:
        lock = getattr(self, "_lock", None)
        if lock is not None:
            lock.release()


def _read_validator(path: Path) -> str | None:
    """The validator in ``path``; None when there is none or it is unreadable (the digest check still holds)."""
    try:
        text = path.read_bytes().decode()
    except (FileNotFoundError, UnicodeDecodeError):
        return None
    return text or None


def _min_limit(expected_size: int | None, max_size: int | None) -> int | None:
    limits = [x for x in (expected_size, max_size) if x is not None]
    return min(limits) if limits else None
