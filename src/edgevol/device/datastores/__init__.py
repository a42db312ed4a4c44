"""Datastores: where content comes from (HTTP(S) now; registry and S3 later)."""

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
from .http import HttpDatastore

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
