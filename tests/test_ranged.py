"""fetch_ranged's resume rules against an in-memory store: the partial is continued only while the object is
the version it came from."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from edgevol.device.datastores.ranged import BucketStore, ObjectChanged, ObjectStat
from tests.sinks import FileSink


class MemoryStore(BucketStore):
    """One object whose content (and version) a test swaps; ``replace_after`` bytes into a read, it changes."""

    def __init__(self, data: bytes, version: str | None) -> None:
        self.data, self.version = data, version
        self.reads: list[tuple[int, int, str | None]] = []
        self.replace_after: tuple[int, bytes, str] | None = None

    def describe(self, suffix: str) -> str:
        return f"mem://{suffix}"

    def stat(self, suffix: str) -> ObjectStat:
        return ObjectStat(len(self.data), self.version)

    def read(self, suffix: str, start: int, end: int, version: str | None) -> Iterator[bytes]:
        self.reads.append((start, end, version))
        for at in range(start, end, 1000):
            if self.replace_after is not None and at >= self.replace_after[0]:
                _, self.data, self.version = self.replace_after
                self.replace_after = None
            if version is not None and version != self.version:
                raise ObjectChanged(f"mem://{suffix}: the object changed during the download")
            yield self.data[at:min(at + 1000, end)]


@pytest.fixture
def sink(tmp_path: Path) -> Iterator[FileSink]:
    s = FileSink(tmp_path / "sink.bin")
    yield s
    s.close()


def test_a_partial_of_the_current_version_is_continued(sink: FileSink) -> None:
    store = MemoryStore(b"a" * 5000, "v1")
    sink.write(b"a" * 2000)
    sink.set_validator("v1")
    store.fetch("x", sink)
    assert sink.content() == store.data and sink.resets == 0
    assert store.reads == [(2000, 5000, "v1")]


def test_a_partial_of_another_version_is_thrown_away(sink: FileSink) -> None:
    store = MemoryStore(b"b" * 5000, "v2")
    sink.write(b"a" * 2000)
    sink.set_validator("v1")
    store.fetch("x", sink)
    assert sink.content() == store.data and sink.resets == 1 and sink.validator == "v2"
    assert store.reads == [(0, 5000, "v2")]


def test_a_partial_without_a_validator_is_continued_and_gets_one(sink: FileSink) -> None:
    """A partial older than validators (or from a content-addressed source): the digest check decides."""
    store = MemoryStore(b"a" * 5000, "v1")
    sink.write(b"a" * 2000)
    store.fetch("x", sink)
    assert sink.content() == store.data and sink.resets == 0 and sink.validator == "v1"


def test_an_object_replaced_during_the_attempt_fails_it_and_the_partial_goes(sink: FileSink) -> None:
    store = MemoryStore(b"a" * 5000, "v1")
    store.replace_after = (3000, b"b" * 6000, "v2")
    with pytest.raises(ObjectChanged):
        store.fetch("x", sink)
    assert sink.offset == 0 and sink.resets == 1 and sink.validator is None
    store.fetch("x", sink)  # the next attempt reads the new version whole
    assert sink.content() == b"b" * 6000 and sink.validator == "v2"
