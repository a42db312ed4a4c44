"""The storage layer's refusals, shared by the store and its helpers."""

from __future__ import annotations


class StoreError(Exception):
    """Base of the store's refusals; the message is meant for the operator."""


class NotFound(StoreError, LookupError):
    """The named device or object does not exist."""


class Conflict(StoreError):
    """The change clashes with what is stored (duplicate, in use, already registered)."""


class Invalid(StoreError, ValueError):
    """A value the device would refuse, or that makes no sense."""
