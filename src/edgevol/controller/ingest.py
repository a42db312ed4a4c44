"""Group commit for what devices report, and batched "last seen" times.

Why: a fleet posts hundreds of info and metrics messages a second, and a
transaction per message spends most of its time on the commit (an fsync on
SQLite, a round trip and a WAL flush on PostgreSQL) and, on SQLite, queueing
for the one write lock. Here one writer thread takes whatever is queued and
stores it in one transaction.

Durability: a device is answered 201 only after the transaction holding its
message has committed (the handler waits for it). So a crash, even kill -9,
loses nothing a device was told was accepted; whatever was queued and not
yet committed was never acknowledged, and the device sends it again, as EVE
does with every report it could not deliver. Queuing durably before answering
would need a second durable store in front of the database: the database
already is one, and group commit gets the same batching out of it.

"Last seen" times, acknowledged config versions and config hashes are not
reports: they are kept in memory and written once a second, and a crash
forgets at most that second (a device acknowledges again on its next poll; a
hash is built again).
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime

from edgevol.controller.db.errors import StoreError
from edgevol.controller.db.infomsg import Report
from edgevol.controller.store import ControllerStore
from edgevol.log import get_logger

log = get_logger("edgevol.controller.ingest")

MAX_BATCH = 512  # reports per transaction
MAX_QUEUED = 20_000  # beyond this devices are told to come back later (503): memory stays bounded
SEEN_FLUSH_S = 1.0


class Overloaded(Exception):
    """More reports are waiting than the writer may queue: the device should retry later."""


@dataclass
class _Job:
    report: Report
    done: Future[int] = field(default_factory=Future)


class ReportWriter:
    """One thread that stores queued reports in group commits and flushes last-seen times.

    Before :meth:`start` (or after :meth:`stop`) every call writes at once on
    the caller's thread, so a store used without the thread still works.
    """

    def __init__(self, store: ControllerStore, *, max_batch: int = MAX_BATCH, max_queued: int = MAX_QUEUED,
                 seen_flush_s: float = SEEN_FLUSH_S) -> None:
        self.store = store
        self.max_batch = max_batch
        self.seen_flush_s = seen_flush_s
        self._queue: queue.Queue[_Job | None] = queue.Queue(maxsize=max_queued)
        self._seen: dict[str, datetime] = {}
        self._acked: dict[str, int] = {}
        self._hashed: dict[str, tuple[int, str, str]] = {}
        self._seen_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.batches = 0  # transactions committed (for tests and the benchmark)

    # -- the request side

    def submit(self, report: Report) -> Future[int]:
        """Queue ``report``; the future resolves once it is committed (or with the store's refusal)."""
        job = _Job(report)
        if self._thread is None:
            self._write([job])
            return job.done
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise Overloaded(f"{self._queue.maxsize} reports are waiting to be stored") from None
        return job.done

    def seen(self, device_uuid: str, at: datetime) -> None:
        """The device was heard from at ``at`` (written within a second)."""
        if self._thread is None:
            self.store.record_contacts({device_uuid: at}, {})
            return
        with self._seen_lock:
            self._seen[device_uuid] = at

    def hashed(self, device_uuid: str, config_version: int, key: str, digest: str) -> None:
        """The hash of the config just built for the device (written within a second, if still current)."""
        if self._thread is None:
            self.store.record_contacts({}, {}, {device_uuid: (config_version, key, digest)})
            return
        with self._seen_lock:
            self._hashed[device_uuid] = (config_version, key, digest)

    def acked(self, device_uuid: str, config_version: int) -> None:
        """The device runs ``config_version`` (written within a second: a fleet acknowledges a change at once)."""
        if self._thread is None:
            self.store.record_contacts({}, {device_uuid: config_version})
            return
        with self._seen_lock:
            self._acked[device_uuid] = max(config_version, self._acked.get(device_uuid, 0))

    # -- the writer thread

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="report-writer", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Store everything queued, flush last-seen times, and end the thread."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._queue.put(None)
        thread.join(timeout)
        late = []  # queued by a request that raced with the stop: written here
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                late.append(job)
        if late:
            self._write(late)

    def _run(self) -> None:
        next_flush = time.monotonic() + self.seen_flush_s
        running = True
        while running:
            jobs: list[_Job] = []
            try:
                first = self._queue.get(timeout=max(0.0, next_flush - time.monotonic()))
            except queue.Empty:
                pass
            else:
                jobs = [] if first is None else [first]
                running = first is not None
                while running and len(jobs) < self.max_batch:
                    try:
                        more = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if more is None:
                        running = False
                    else:
                        jobs.append(more)
            if jobs:
                self._write(jobs)
            if not running or time.monotonic() >= next_flush:
                self._flush_seen()
                next_flush = time.monotonic() + self.seen_flush_s

    def _write(self, jobs: list[_Job]) -> None:
        """One transaction for all; if it fails, each alone, so one bad report cannot sink the others.

        A job whose request gave up waiting (answered 503) is not written: the device sends it again.
        """
        jobs = [j for j in jobs if j.done.running() or j.done.set_running_or_notify_cancel()]
        if not jobs:
            return
        try:
            results = self.store.record_reports([j.report for j in jobs])
        except Exception as exc:  # noqa: BLE001 - any failure: fall back to one transaction per report
            if len(jobs) == 1:
                jobs[0].done.set_exception(exc)
                return
            log.warning("batch of reports failed, storing them one by one", reports=len(jobs), error=str(exc))
            for job in jobs:
                self._write([job])
            return
        self.batches += 1
        for job, result in zip(jobs, results):
            if isinstance(result, StoreError):
                job.done.set_exception(result)
            else:
                job.done.set_result(result)

    def _flush_seen(self) -> None:
        with self._seen_lock:
            seen, self._seen = self._seen, {}
            acked, self._acked = self._acked, {}
            hashed, self._hashed = self._hashed, {}
        if not seen and not acked and not hashed:
            return
        try:
            self.store.record_contacts(seen, acked, hashed)
        except Exception as exc:  # noqa: BLE001 - kept for the next flush (newer values win)
            log.warning("could not record when devices were last seen", devices=len(seen), error=str(exc))
            with self._seen_lock:
                for dev, at in seen.items():
                    self._seen.setdefault(dev, at)
                for dev, version in acked.items():
                    self._acked[dev] = max(version, self._acked.get(dev, 0))
                for dev, built in hashed.items():
                    self._hashed.setdefault(dev, built)
