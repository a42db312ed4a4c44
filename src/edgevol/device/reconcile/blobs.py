"""Download one blob into the CAS: one attempt per call, retries scheduled via the state row.

An attempt resumes the partial ingest left by the previous one (HTTP Range),
and commits only if size and sha256 match. A failure either schedules the next
attempt with backoff (the row keeps its in-progress state and carries a
warning saying when) or, once attempts are exhausted or retrying cannot help,
moves the blob to ERROR with a full description.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from typing import Callable

from edgevol.api import messages as m
from edgevol.device.cas import CasError, ContentStore, DigestMismatch, IngestBusy, SizeLimitExceeded, SizeMismatch
from edgevol.device.cas.ingest import Ingest
from edgevol.device.crashpoints import crash_point
from edgevol.device.datastores.base import Cancelled, PermanentError, TransientError
from edgevol.device.datastores.credentials import CredentialsError
from edgevol.device.datastores.factory import BlobSource, DatastoreClients
from edgevol.device.errors import error, next_attempt, slow_retry
from edgevol.device.retry import Backoff
from edgevol.device.state import StateStore
from edgevol.log import get_logger
from edgevol.model.desired import Settings

log = get_logger("edgevol.download")
S = m.ZSwState
PROGRESS_INTERVAL = 0.5
VALIDATOR_ROOM = 4096  # the validator beside a partial is a small file: one block


class _SparingSink:
    """The ingest, stopping with ENOSPC rather than write into the room the state database took back on a
    full disk: those last bytes must record why the download stopped, not extend it."""

    def __init__(self, ingest: Ingest, store: StateStore) -> None:
        self._ingest = ingest
        self._store = store

    @property
    def offset(self) -> int:
        return self._ingest.offset

    def write(self, data: bytes) -> None:
        if not self._store.leaves_room(len(data)):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._ingest.write(data)

    def reset(self) -> None:
        self._ingest.reset()

    @property
    def validator(self) -> str | None:
        return self._ingest.validator

    def set_validator(self, validator: str | None) -> None:
        if validator is not None and not self._store.leaves_room(VALIDATOR_ROOM):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._ingest.set_validator(validator)


class BlobDownloader:
    def __init__(self, store: StateStore, cas: ContentStore, clients: DatastoreClients, stopping: threading.Event,
                 on_failure: Callable[[str], None], keep_partial: Callable[[], bool] = lambda: False) -> None:
        self.store = store
        self.cas = cas
        self.clients = clients
        self.stopping = stopping  # the agent stops: partials stay, so the next start resumes them
        self.on_failure = on_failure
        # Whether a download stopped because the config dropped its content keeps its partial (for the GC
        # delay, in case the content comes back) or discards it at once.
        self.keep_partial = keep_partial

    def _progress(self, sha: str, expected: int | None) -> tuple[Callable[[int, int | None], None],
                                                                Callable[[], None]]:
        """Write progress at most every :data:`PROGRESS_INTERVAL` (or per percent), and a figure held back
        by that throttle no later than one interval after it arrived: a transfer that stalls then shows
        the bytes it really has, not those of the last write before the stall. The second function ends
        that: nothing is written after the transfer is over."""
        last = [0.0, -1]
        closed = [False]
        held: list[tuple[int, int | None] | None] = [None]
        lock = threading.Lock()

        def write(done: int, total: int | None) -> None:
            pct = min(99, done * 100 // total) if total else 0
            last[0], last[1] = time.monotonic(), pct
            self.store.update_progress("blobs", (sha,), progress=pct, done_bytes=done, size=total or 0)

        def flush() -> None:
            with lock:
                if held[0] is not None and not closed[0]:
                    write(*held[0])
                    held[0] = None

        def report(done: int, total: int | None) -> None:
            total = total or expected
            pct = min(99, done * 100 // total) if total else 0
            with lock:
                if pct != last[1] or time.monotonic() - last[0] >= PROGRESS_INTERVAL:
                    held[0] = None
                    write(done, total)
                    return
                if held[0] is None:
                    timer = threading.Timer(PROGRESS_INTERVAL, flush)
                    timer.daemon = True
                    timer.start()
                held[0] = (done, total)

        def close() -> None:
            with lock:
                closed[0] = True
        return report, close

    def download(self, key: str, sha: str, source: BlobSource, settings: Settings, once: bool,
                 cancel: threading.Event | None = None) -> None:
        """One attempt; ``cancel`` stops it between two chunks, after which it writes nothing to the row."""
        cancel = cancel or self.stopping
        row = self.store.get("blobs", sha)
        if row is None or cancel.is_set():
            return
        backoff = Backoff(settings.retry_base_seconds, settings.retry_cap_seconds, settings.download_max_attempts)
        attempt = row["attempts"] + 1
        what = f"download of {source.describe()} (sha256:{sha[:12]})"
        try:
            with self.cas.ingest(sha, expected_size=source.expected_size, max_size=source.max_size) as ingest:
                self.store.update("blobs", (sha,), state=S.DOWNLOAD_STARTED, done_bytes=ingest.offset)
                log.info("download started", sha256=sha, source=source.describe(), resume_from=ingest.offset,
                         attempt=attempt)
                report, stop_reporting = self._progress(sha, source.expected_size)
                try:
                    self.clients.fetch_blob(source, sha, _SparingSink(ingest, self.store), progress=report,
                                            cancel=cancel)
                finally:
                    stop_reporting()
                if cancel.is_set():
                    raise Cancelled()
                crash_point("blob.fetched")  # every byte in the partial, not yet verified or committed
                self.store.update("blobs", (sha,), state=S.VERIFYING, progress=99)
                path = ingest.commit()
        except Cancelled:
            if not self.stopping.is_set() and not self.keep_partial():
                self.cas.discard_ingest(sha)
                log.info("download stopped; partial discarded", sha256=sha)
            return
        except IngestBusy:
            # Someone else (another agent on this data dir) is writing it; look again shortly.
            self.store.update("blobs", (sha,), next_retry=time.time() + 1)
            return
        except (TransientError, DigestMismatch, SizeMismatch) as exc:
            self._failed(key, sha, attempt, backoff, f"{what}: {exc}", exc, once, settings)
            return
        except CredentialsError as exc:  # nothing was fetched: keep any partial for when they decrypt
            self._final_error(key, sha, attempt, f"{what}: {exc}", settings, once,
                              retry_hint=exc.retry_hint)
            return
        except (PermanentError, SizeLimitExceeded) as exc:
            self.cas.discard_ingest(sha)
            self._final_error(key, sha, attempt, f"{what}: {exc}", settings, once,
                              retry_hint="fix the datastore or the content tree")
            return
        except OSError as exc:
            desc = (f"{what}: no space left on the device" if exc.errno == errno.ENOSPC
                    else f"{what}: {exc.strerror or exc}")
            self._final_error(key, sha, attempt, desc, settings, once, retry_hint="free disk space")
            return
        except (CasError, ValueError) as exc:
            self._final_error(key, sha, attempt, f"{what}: {exc}", settings, once, retry_hint="")
            return
        size = path.stat().st_size
        self.store.update("blobs", (sha,), state=S.VERIFIED)
        self.store.update("blobs", (sha,), state=S.LOADED, progress=100, size=size, done_bytes=size,
                          attempts=0, next_retry=0, error=None)
        log.info("blob loaded", sha256=sha, size=size)

    def _failed(self, key: str, sha: str, attempt: int, backoff: Backoff, desc: str, exc: Exception,
                once: bool, settings: Settings) -> None:
        if isinstance(exc, (DigestMismatch, SizeMismatch)):
            self.cas.discard_ingest(sha)  # the bytes are wrong; a resume would only repeat the mismatch
        if backoff.exhausted(attempt):
            self._final_error(key, sha, attempt, f"{desc} (gave up after {attempt} attempts)", settings, once,
                              retry_hint="")
            return
        delay = getattr(exc, "retry_after", None) or backoff.delay(attempt)
        log.warning("download attempt failed", sha256=sha, attempt=attempt, retry_in=round(delay, 2), error=desc)
        # size=0: what the server announced on a failed attempt is not trusted for the next admission check
        self.store.update("blobs", (sha,), attempts=attempt, next_retry=time.time() + delay, size=0, error=error(
            desc, "blob", sha, severity="warning", retry=next_attempt(attempt, backoff.max_attempts, delay)))

    def _final_error(self, key: str, sha: str, attempt: int, desc: str, settings: Settings, once: bool,
                     retry_hint: str) -> None:
        slow = settings.slow_retry_seconds
        retry = slow_retry(attempt, slow, once, retry_hint)
        log.error("download failed", sha256=sha, error=desc)
        self.on_failure(key)
        self.store.update("blobs", (sha,), state=S.ERROR, attempts=attempt, next_retry=time.time() + slow,
                          error=error(desc, "blob", sha, retry=retry))


