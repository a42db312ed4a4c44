"""Content-addressed store: an OCI image layout fed only by verified ingests."""

from __future__ import annotations

from .digests import check_digest, is_digest
from .errors import CasError, DigestMismatch, IngestBusy, SizeLimitExceeded, SizeMismatch
from .ingest import Ingest
from .layout import Descriptor
from .store import ContentStore

__all__ = [
    "CasError",
    "ContentStore",
    "Descriptor",
    "DigestMismatch",
    "Ingest",
    "IngestBusy",
    "SizeLimitExceeded",
    "SizeMismatch",
    "check_digest",
    "is_digest",
]
