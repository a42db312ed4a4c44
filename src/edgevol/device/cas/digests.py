"""Digest validation and streaming hashing.

Digests become file names, so anything that is not exactly 64 lowercase hex
characters is rejected before it can reach a path (no traversal, no case
aliases).
"""

from __future__ import annotations

import hashlib
import re
from typing import BinaryIO

CHUNK_SIZE = 1 << 20
_HEX64 = re.compile(r"[0-9a-f]{64}")


def is_digest(value: object) -> bool:
    """True if ``value`` is a bare lowercase sha256 hex digest."""
    return isinstance(value, str) and _HEX64.fullmatch(value) is not None


def check_digest(value: object) -> str:
    """Return ``value`` if it is a valid digest, else raise ValueError."""
    if not is_digest(value):
        raise ValueError(f"not a lowercase 64-hex sha256 digest: {value!r}")
    return value  # type: ignore[return-value]


def hash_stream(f: BinaryIO, hasher: "hashlib._Hash | None" = None) -> tuple["hashlib._Hash", int]:
    """Feed ``f`` from its current position to EOF into ``hasher``.

    Reads into one reused 1 MiB buffer so memory stays flat for any size.
    Returns the hasher and the number of bytes read.
    """
    h = hasher if hasher is not None else hashlib.sha256()
    buf = bytearray(CHUNK_SIZE)
    view = memoryview(buf)
    total = 0
    while True:
        n = f.readinto(buf)  # type: ignore[attr-defined]
        if not n:
            break
        h.update(view[:n])
        total += n
    return h, total
