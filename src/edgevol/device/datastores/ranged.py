"""One fetch attempt for object stores that serve byte ranges (S3, Azure Blob, Google Cloud Storage, SFTP).

Such a store only answers two questions: how big is this object and which
version is it (``stat``), and what are that version's bytes from ``start`` to
``end`` (``read``, which fails with ObjectChanged once the object is another
version). Everything else an attempt must do is the same for all of them and
lives here once: resume from ``sink.offset`` only while the object is the
version the partial came from, enforce ``maxSizeBytes`` before reading and while
streaming, honour cancellation, report progress, notice a read cut short, and
(for big objects, where the store allows it) read several ranges at once while
still delivering bytes to the sink in order, so the ingest keeps hashing one
stream.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

from edgevol.log import get_logger

from .base import Cancelled, PermanentError, ProgressFn, Sink, TransientError

__all__ = ["PART_SIZE", "PARALLEL_THRESHOLD", "BucketStore", "ObjectChanged", "ObjectStat", "RangedStore",
           "fetch_ranged", "skip_bytes"]

PART_SIZE = 8 << 20
"""Bytes per ranged read when several run at once; memory held is about (streams + 1) parts."""
PARALLEL_THRESHOLD = 4 * PART_SIZE
"""Below this many bytes left, one stream is as fast and costs one request."""

log = get_logger("edgevol.datastores")


@dataclass(frozen=True)
class ObjectStat:
    """What ``stat`` says of an object: its size, and enough to resume only onto the same version."""

    size: int
    validator: str | None
    """The object's version as the store names it (S3/Azure ETag, GCS generation, SFTP mtime and size);
    None when the store gives none."""


class ObjectChanged(TransientError):
    """A conditional read found the object replaced (HTTP 412 or another generation): the bytes this attempt
    received so far belong to another version, so the attempt throws the partial away."""


class RangedStore(Protocol):
    """What an object store implements; its errors are already DatastoreErrors naming the object."""

    parallel_ranges: bool
    """Whether concurrent ``read`` calls on one client are safe and worth it."""

    def describe(self, suffix: str) -> str:
        """The object's name for messages, e.g. ``s3://bucket/key at endpoint``; never credentials."""
        ...

    def stat(self, suffix: str) -> ObjectStat:
        """The object's size and version; NotFoundError / PermanentError / TransientError otherwise."""
        ...

    def read(self, suffix: str, start: int, end: int, version: str | None) -> Iterator[bytes]:
        """Bytes ``start`` to ``end`` (exclusive) of ``version`` of the object (any, for None), in order; may
        yield fewer when the connection ends early; ObjectChanged when the object is no longer ``version``."""
        ...


def fetch_ranged(store: RangedStore, suffix: str, sink: Sink, *, max_size: int | None,
                 progress: ProgressFn | None, cancel: threading.Event | None, streams: int = 1) -> None:
    """One attempt to deliver ``suffix`` from ``sink.offset`` to its end, with up to ``streams`` reads at once."""
    if cancel is not None and cancel.is_set():
        raise Cancelled()
    name = store.describe(suffix)
    stat = store.stat(suffix)
    total = stat.size
    if max_size is not None and total > max_size:
        raise PermanentError(f"{name} is {total} bytes, more than maxSizeBytes {max_size}")
    _keep_only_current(sink, stat, name)
    try:
        if streams > 1 and store.parallel_ranges and total - sink.offset >= PARALLEL_THRESHOLD:
            _parallel(store, suffix, sink, total, stat.validator, streams, progress, cancel)
        else:
            for chunk in store.read(suffix, sink.offset, total, stat.validator):
                _deliver(sink, chunk, total, name, progress, cancel)
    except ObjectChanged:
        sink.reset()  # what this attempt (or an earlier one) received is the old version's
        raise
    if sink.offset != total:
        raise TransientError(f"{name}: the connection ended at byte {sink.offset} of {total}")


def _keep_only_current(sink: Sink, stat: ObjectStat, name: str) -> None:
    """Empty a partial that is not a prefix of the object as it is now, then record the version read from here
    on (also for an empty sink, so a later attempt can tell)."""
    held = sink.offset
    if held and sink.validator is not None and stat.validator is not None and sink.validator != stat.validator:
        log.info("starting over: the object changed since the partial was written", object=name, held=held,
                 was=sink.validator, now=stat.validator)
        sink.reset()
    elif held > stat.size:
        sink.reset()  # the partial is longer than the object now is: start over
    sink.set_validator(stat.validator)


def skip_bytes(chunks: Iterable[bytes], count: int) -> Iterator[bytes]:
    """``chunks`` without their first ``count`` bytes: how a ``read`` follows a store (or something in
    between) that ignored its range and sent the object from byte 0."""
    for chunk in chunks:
        if count:
            cut = min(count, len(chunk))
            chunk, count = chunk[cut:], count - cut
        if chunk:
            yield chunk


def _deliver(sink: Sink, chunk: bytes, total: int, name: str, progress: ProgressFn | None,
             cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise Cancelled()
    if sink.offset + len(chunk) > total:
        raise TransientError(f"{name}: the store sent more than the object's {total} bytes (it changed?)")
    sink.write(chunk)
    if progress is not None:
        progress(sink.offset, total)


def _parallel(store: RangedStore, suffix: str, sink: Sink, total: int, version: str | None, streams: int,
              progress: ProgressFn | None, cancel: threading.Event | None) -> None:
    """Parts read concurrently, written in order; a failed part ends the attempt after the parts before it."""
    name = store.describe(suffix)
    stop = threading.Event()

    def read_part(start: int, end: int) -> list[bytes]:
        chunks, got = [], 0
        for chunk in store.read(suffix, start, end, version):
            if stop.is_set() or (cancel is not None and cancel.is_set()):
                break
            chunks.append(chunk)
            got += len(chunk)
        if got != end - start and not stop.is_set():
            raise TransientError(f"{name}: a ranged read ended at byte {start + got} of {end}")
        return chunks

    starts = iter(range(sink.offset, total, PART_SIZE))
    pending: deque[Future[list[bytes]]] = deque()
    with ThreadPoolExecutor(max_workers=streams, thread_name_prefix="edgevol-range") as pool:
        try:
            def submit_next() -> None:
                start = next(starts, None)
                if start is not None:
                    pending.append(pool.submit(read_part, start, min(start + PART_SIZE, total)))

            for _ in range(streams):
                submit_next()
            while pending:
                chunks = pending.popleft().result()
                submit_next()  # keep `streams` reads in flight while this part is written
                for chunk in chunks:
                    _deliver(sink, chunk, total, name, progress, cancel)
        finally:
            stop.set()
            for f in pending:
                f.cancel()


class BucketStore:
    """Base of the datastores that are a RangedStore: one ``fetch`` for all of them, and object names that
    live under the prefix a dpath may carry after its bucket or container (``bucket/prefix``)."""

    parallel_ranges = False
    prefix = ""

    def key_for(self, suffix: str) -> str:
        return f"{self.prefix}/{suffix.lstrip('/')}" if self.prefix else suffix.lstrip("/")

    def fetch(self, suffix: str, sink: Sink, *, max_size: int | None = None, progress: ProgressFn | None = None,
              cancel: threading.Event | None = None, streams: int = 1) -> None:
        """One attempt to deliver object ``suffix`` from byte ``sink.offset`` to its end."""
        fetch_ranged(self, suffix, sink, max_size=max_size, progress=progress, cancel=cancel,  # type: ignore[arg-type]
                     streams=streams)
