"""Errors raised by the content store.

Each carries the facts a user needs to act (digest, expected and actual
sizes) both as attributes and in its message, so logs are self-explaining.
"""

from __future__ import annotations


class CasError(Exception):
    """Base class for every content-store failure."""


class DigestMismatch(CasError):
    """The bytes ingested do not hash to the digest they were announced as."""

    def __init__(self, expected: str, actual: str, size: int) -> None:
        self.expected = expected
        self.actual = actual
        self.size = size
        super().__init__(
            f"digest mismatch: expected sha256:{expected}, "
            f"got sha256:{actual} over {size} bytes"
        )


class SizeMismatch(CasError):
    """The ingest ended with a byte count different from the announced size."""

    def __init__(self, digest: str, expected: int, actual: int) -> None:
        self.digest = digest
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"size mismatch for sha256:{digest}: expected {expected} bytes, got {actual}"
        )


class SizeLimitExceeded(CasError):
    """A write would take the blob past its allowed or announced size."""

    def __init__(self, digest: str, limit: int, attempted: int) -> None:
        self.digest = digest
        self.limit = limit
        self.attempted = attempted
        super().__init__(
            f"size limit exceeded for sha256:{digest}: limit is {limit} bytes, "
            f"write would reach {attempted}"
        )


class IngestBusy(CasError):
    """Another ingest (this process or another) is writing the same digest."""

    def __init__(self, digest: str) -> None:
        self.digest = digest
        super().__init__(f"ingest of sha256:{digest} is already in progress")
