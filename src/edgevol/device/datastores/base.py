"""The contract between the downloader and every kind of datastore.

A datastore only moves bytes: one ``fetch`` is one attempt, and its errors say
whether waiting and trying again can help. Retries, backoff and digest checks
live with the caller so every datastore kind (HTTP, registry, S3, ...) gets the
same behaviour for free.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Protocol, runtime_checkable

__all__ = [
    "BytesSink",
    "Cancelled",
    "ConfigError",
    "Datastore",
    "DatastoreError",
    "ManifestDigestMismatch",
    "NotFoundError",
    "PermanentError",
    "ProgressFn",
    "Sink",
    "TransientError",
]


class DatastoreError(Exception):
    """A fetch failed. The message is for humans and never contains credentials."""

    retryable: bool = False


class TransientError(DatastoreError):
    """Waiting may help: dropped connection, timeout, HTTP 5xx or 429.

    ``retry_after`` is the server's hint in seconds (``Retry-After``), if any.
    """

    retryable = True

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PermanentError(DatastoreError):
    """Waiting will not help: not found, access denied, TLS verification, size limit."""

    retryable = False


class NotFoundError(PermanentError):
    """The server says the object does not exist (HTTP 404/410).

    Permanent for a name the controller gave; a caller that derived the name
    itself (a digest hashed from a tag's answer) may know better.
    """


class ManifestDigestMismatch(PermanentError):
    """A manifest fetched by digest hashed to another digest.

    Permanent for this attempt (the bytes are unusable), but like a blob's digest
    mismatch it may be damage in transit, so callers may retry a bounded number of times.
    """


class ConfigError(PermanentError, ValueError):
    """The datastore config or URL suffix is unusable (bad address, bad CA, '..').

    Also a ValueError, so callers validating input can catch it as one.
    """


class Cancelled(Exception):
    """The caller asked the fetch to stop.

    Deliberately not a DatastoreError: it is not a failure, so retry loops that
    catch DatastoreError must let it through.
    """


@runtime_checkable
class Sink(Protocol):
    """Receives fetched bytes in order; ``offset`` is how many it already holds.

    ``validator`` names the version of the content those bytes came from, as the
    store said it (an ETag, a Last-Modified date, an object generation); it is
    opaque to the sink and kept with the bytes, so a resume can ask the store
    whether they still belong to what it serves now.
    """

    offset: int

    @property
    def validator(self) -> str | None: ...

    def write(self, data: bytes) -> None: ...

    def reset(self) -> None:
        """Discard everything received so far and its validator (offset becomes 0)."""
        ...

    def set_validator(self, validator: str | None) -> None:
        """Record the version the bytes held, and those still to come, belong to (None: unknown)."""
        ...


class BytesSink:
    """Collects a small body in memory (manifests, tokens, certificates)."""

    def __init__(self) -> None:
        self.offset = 0
        self.validator: str | None = None
        self._parts: list[bytes] = []

    def write(self, data: bytes) -> None:
        self._parts.append(data)
        self.offset += len(data)

    def reset(self) -> None:
        self._parts.clear()
        self.offset = 0
        self.validator = None

    def set_validator(self, validator: str | None) -> None:
        self.validator = validator

    def getvalue(self) -> bytes:
        return b"".join(self._parts)


ProgressFn = Callable[[int, int | None], None]
"""Called as ``progress(bytes_done_total, total_or_None)``."""


@runtime_checkable
class Datastore(Protocol):
    """Where content comes from."""

    def fetch(
        self,
        suffix: str,
        sink: Sink,
        *,
        max_size: int | None,
        progress: ProgressFn | None,
        cancel: threading.Event | None,
    ) -> None:
        """Make ONE attempt to deliver bytes ``sink.offset..end`` of ``suffix`` to ``sink``.

        Resumes from ``sink.offset`` when the store can; may call ``sink.reset()``
        when it cannot. Raises TransientError / PermanentError / Cancelled;
        exceptions raised by the sink itself propagate unchanged.
        """
        ...

    def close(self) -> None: ...
