"""Datastores: where content comes from (HTTP(S), container registries, S3, Azure Blob, GCS, SFTP).

Each kind's module is imported when it is used: the HTTP client (httpx) and the
cloud SDKs are large imports that a device without such datastores never pays.
"""

from __future__ import annotations

from .base import (
    Cancelled,
    ConfigError,
    Datastore,
    DatastoreError,
    PermanentError,
    ProgressFn,
    Sink,
    TransientError,
)

__all__ = [
    "Cancelled",
    "ConfigError",
    "Datastore",
    "DatastoreError",
    "HttpDatastore",
    "PermanentError",
    "ProgressFn",
    "Sink",
    "TransientError",
]


def __getattr__(name: str) -> object:
    if name == "HttpDatastore":
        from .http import HttpDatastore

        return HttpDatastore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
