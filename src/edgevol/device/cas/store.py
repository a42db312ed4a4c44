"""Content-addressed blob store laid out as an OCI image layout.

Blobs live at ``blobs/sha256/<hex>`` (read-only once committed) so standard
OCI tools can read the store; in-flight downloads live under ``ingest/`` and
are never visible under ``blobs/``. ``index.json`` names the roots that
garbage collection must keep.
"""

from __future__ import annotations

from pathlib import Path

from edgevol.fsutil import atomic_write_bytes, fsync_dir, remove_temps

from .digests import check_digest, hash_stream, is_digest
from .errors import IngestBusy, SizeLimitExceeded
from .ingest import PARTIAL_SUFFIX, VALIDATOR_SUFFIX, Ingest
from .layout import (
    INDEX_FILE,
    LAYOUT_FILE,
    Descriptor,
    layout_is_valid,
    parse_index,
    render_index,
    render_layout,
)
from .locks import DigestLock

LOCK_SUFFIX = ".lock"


class ContentStore:
    """A content store rooted at ``root``; safe to open concurrently from many processes."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self.blobs_dir = self.root / "blobs" / "sha256"
        self.ingest_dir = self.root / "ingest"
        for d in (self.root, self.root / "blobs", self.blobs_dir, self.ingest_dir):
            if not d.is_dir():
                d.mkdir(parents=True, exist_ok=True)
                fsync_dir(d.parent)
        layout = self.root / LAYOUT_FILE
        if not (layout.is_file() and layout_is_valid(layout.read_bytes())):
            atomic_write_bytes(layout, render_layout())
        index = self.root / INDEX_FILE
        if not index.is_file():
            # Only when missing: an existing index holds roots we must not drop.
            atomic_write_bytes(index, render_index({}))

    # -- committed blobs -------------------------------------------------

    def blob_path(self, digest: str) -> Path:
        return self.blobs_dir / check_digest(digest)

    def has(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    def size(self, digest: str) -> int | None:
        try:
            return self.blob_path(digest).stat().st_size
        except FileNotFoundError:
            return None

    def list_blobs(self) -> list[str]:
        """Digests of committed blobs, sorted; stray non-digest names are ignored."""
        return sorted(p.name for p in self.blobs_dir.iterdir() if is_digest(p.name) and p.is_file())

    def delete(self, digest: str) -> None:
        self.blob_path(digest).unlink(missing_ok=True)
        fsync_dir(self.blobs_dir)

    def verify(self, digest: str) -> bool:
        """Re-hash a committed blob; False if missing or its bytes no longer match."""
        try:
            with open(self.blob_path(digest), "rb", buffering=0) as f:
                h, _ = hash_stream(f)  # type: ignore[arg-type]
        except FileNotFoundError:
            return False
        return h.hexdigest() == digest

    # -- ingests ---------------------------------------------------------

    def _partial_path(self, digest: str) -> Path:
        return self.ingest_dir / (check_digest(digest) + PARTIAL_SUFFIX)

    def _lock(self, digest: str) -> DigestLock:
        return DigestLock(self.ingest_dir / (check_digest(digest) + LOCK_SUFFIX), digest)

    def ingest(
        self,
        digest: str,
        *,
        expected_size: int | None = None,
        max_size: int | None = None,
    ) -> Ingest:
        """Open, or resume, the ingest of ``digest``.

        Raises IngestBusy if this or another process already has it open, and
        SizeLimitExceeded if the announced size is already over ``max_size``.
        """
        check_digest(digest)
        for name, value in (("expected_size", expected_size), ("max_size", max_size)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
                raise ValueError(f"{name} must be a non-negative int or None: {value!r}")
        if expected_size is not None and max_size is not None and expected_size > max_size:
            raise SizeLimitExceeded(digest, max_size, expected_size)
        lock = self._lock(digest)
        return Ingest(
            digest,
            self._partial_path(digest),
            self.blob_path(digest),
            lock,
            expected_size=expected_size,
            max_size=max_size,
        )

    def ingest_offset(self, digest: str) -> int:
        """Bytes already in the partial of ``digest`` (0 if none)."""
        try:
            return self._partial_path(digest).stat().st_size
        except FileNotFoundError:
            return 0

    def discard_ingest(self, digest: str) -> None:
        """Delete the partial of ``digest`` and its validator; IngestBusy if someone is writing it."""
        lock = self._lock(digest)
        try:
            self._remove_partial(digest)
            fsync_dir(self.ingest_dir)
        finally:
            lock.release()

    def _remove_partial(self, digest: str) -> bool:
        """Unlink the partial, then its validator (never the other way round); whether there was a partial."""
        partial = self._partial_path(digest)
        existed = partial.exists()
        partial.unlink(missing_ok=True)
        partial.with_suffix(VALIDATOR_SUFFIX).unlink(missing_ok=True)
        return existed

    def clean_ingests(self, keep: set[str] | frozenset[str] = frozenset()) -> list[str]:
        """Remove partials not in ``keep`` (with their validators) plus leftover temp files.

        Partials that are open right now (locked) are skipped; a validator stays
        only beside a kept partial. Returns the digests whose partials were
        removed, sorted. Meant for start-up or idle time; temp files of a
        concurrent atomic write would be removed.
        """
        removed: list[str] = []
        for p in sorted(self.ingest_dir.iterdir()):
            digest, suffix = p.name[:64], p.name[64:]
            if not is_digest(digest) or suffix not in (PARTIAL_SUFFIX, LOCK_SUFFIX, VALIDATOR_SUFFIX):
                continue
            if digest in keep and suffix != LOCK_SUFFIX and self._partial_path(digest).exists():
                continue
            try:
                lock = self._lock(digest)  # releasing also removes a stale lock file
            except IngestBusy:
                continue
            try:
                if suffix != LOCK_SUFFIX and self._remove_partial(digest):
                    removed.append(digest)
            finally:
                lock.release()
        if removed:
            fsync_dir(self.ingest_dir)
        for d in (self.root, self.blobs_dir, self.ingest_dir):
            if remove_temps(d):
                fsync_dir(d)
        return removed

    # -- roots -----------------------------------------------------------

    def set_roots(self, roots: dict[str, Descriptor]) -> None:
        """Replace index.json atomically with exactly these named roots."""
        atomic_write_bytes(self.root / INDEX_FILE, render_index(roots))

    def roots(self) -> dict[str, Descriptor]:
        """The named roots currently recorded in index.json."""
        return parse_index((self.root / INDEX_FILE).read_bytes())
