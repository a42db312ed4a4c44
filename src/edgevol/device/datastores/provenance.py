"""Which source a partial download's bytes came from, so a validator is only ever shown to the source that gave it.

A blob's partial is shared by every source that can serve its sha256 (the content tree's datastore, its
fallbacks, other trees naming the same digest). The sink stores one record beside the partial,
``"<source key> <validator>"`` (the validator may be absent): the source that wrote last, and its word
for the version it served. Each source sees the partial through a :class:`SourceSink`:

* the record is this source's: the source gets its own validator back and resumes conditionally
  (If-Range, If-Match, a generation), so a changed object throws the partial away;
* anything else (another datastore wrote last, a registry did, or nobody recorded it): the source
  continues the bytes with a plain range and no validator, and records its own from its answer. The
  digest check at commit decides for the bytes no validator of this source can vouch for.

Why not start over instead when another file datastore wrote the bytes: a content tree's fallbacks are
mirrors of one sha256, and a source fails mid-download mostly because the device's own link dropped. If
each switch between sources threw the partial away, two sources on a flaky link would undo each other's
progress at every attempt and a big image might never finish; continuing costs at most one failed digest
check (and a restart) in the rare case where the mirrors disagree. Bytes from a registry are a prefix of
the blob by construction.

A source's key hashes its kind, address and locator, not the datastore's id: a datastore whose address
changes is another server, and two ids for one address are one server.
"""

from __future__ import annotations

import hashlib

from edgevol.model.desired import Datastore as DatastoreSpec
from edgevol.model.desired import DatastoreKind

from .base import Sink

__all__ = ["CONTENT_ADDRESSED", "SourceSink", "source_key", "split_record"]

CONTENT_ADDRESSED = "digest"
"""The key of every source that addresses a blob by its digest (a registry): their bytes are interchangeable."""


def source_key(spec: DatastoreSpec, locator: str) -> str:
    """A short, space-free name for one object on one server; never holds credentials."""
    if spec.kind is DatastoreKind.CONTAINER_REGISTRY:
        return CONTENT_ADDRESSED
    ident = "\0".join((spec.kind.value, spec.fqdn, spec.dpath, spec.region, locator))
    return f"{spec.kind.value}:{hashlib.sha256(ident.encode()).hexdigest()[:20]}"


def split_record(record: str | None) -> tuple[str | None, str | None]:
    """``(source key, validator)`` of a stored record; ``(None, None)`` when there is none."""
    if not record:
        return None, None
    key, _, validator = record.partition(" ")
    return key, validator or None


class SourceSink:
    """The download's sink as one source sees it: its own validator or none (see the module's docstring)."""

    def __init__(self, sink: Sink, key: str) -> None:
        self._sink = sink
        self._key = key
        owner, validator = split_record(sink.validator)
        self._own = owner == key
        self._validator = validator if self._own else None

    @property
    def offset(self) -> int:
        return self._sink.offset

    @property
    def validator(self) -> str | None:
        return self._validator

    def write(self, data: bytes) -> None:
        if not self._own:  # a source that keeps no validator (a registry) still says it wrote last
            self._claim(None)
        self._sink.write(data)

    def reset(self) -> None:
        self._own, self._validator = False, None
        self._sink.reset()

    def set_validator(self, validator: str | None) -> None:
        self._claim(validator)

    def _claim(self, validator: str | None) -> None:
        self._sink.set_validator(self._key if validator is None else f"{self._key} {validator}")
        self._own, self._validator = True, validator
