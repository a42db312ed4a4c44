"""A file-backed ``Sink`` for datastore tests (the real one is the CAS ingest)."""

from __future__ import annotations

import hashlib
from pathlib import Path


class FileSink:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._f = open(path, "wb")
        self.offset = 0
        self.resets = 0
        self.validator: str | None = None

    def write(self, data: bytes) -> None:
        self._f.write(data)
        self.offset += len(data)

    def reset(self) -> None:
        self._f.seek(0)
        self._f.truncate()
        self.offset = 0
        self.resets += 1
        self.validator = None

    def set_validator(self, validator: str | None) -> None:
        self.validator = validator

    def content(self) -> bytes:
        self._f.flush()
        return self.path.read_bytes()

    def sha256(self) -> str:
        """``sha256:<hex>`` of what was received, streamed."""
        self._f.flush()
        h = hashlib.sha256()
        with open(self.path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        return "sha256:" + h.hexdigest()

    def close(self) -> None:
        self._f.close()
