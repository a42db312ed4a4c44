"""A record of every exchange with the controller, byte for byte (``device run --trace-wire DIR``).

Why: when a device and a controller disagree, the bytes on the wire settle
it (EVE's own agents have network tracing for the same reason). The records
are also how edgevol's test vectors from LF Edge Adam were made: one JSON
file per exchange, bodies in base64, so a test can verify signatures and
parse payloads without the controller that produced them.

Nothing secret is written: request and answer bodies are signed envelopes
and public certificates; the device's private key never leaves its file.
"""

from __future__ import annotations

import base64
import itertools
import json
import re
import threading
from datetime import UTC, datetime
from pathlib import Path

import httpx

from edgevol.fsutil import atomic_write_bytes

_KEPT_HEADERS = ("content-type", "content-length")


def _slug(path: str) -> str:
    tail = path.rstrip("/").rsplit("/", 1)[-1]
    return re.sub(r"[^A-Za-z0-9_.-]", "_", tail) or "root"


class WireTrace:
    """Writes ``NNNN-METHOD-last_path_part.json`` under ``directory``, numbered in call order."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        start = max((int(p.name[:4]) for p in self.directory.glob("[0-9][0-9][0-9][0-9]-*.json")), default=0)
        self._seq = itertools.count(start + 1)
        self._lock = threading.Lock()

    def record(self, method: str, path: str, body: bytes | None, resp: httpx.Response) -> Path:
        with self._lock:
            seq = next(self._seq)
        doc = {
            "seq": seq,
            "time": datetime.now(UTC).isoformat(),
            "method": method,
            "path": path,
            "request_body": base64.b64encode(body or b"").decode(),
            "status": resp.status_code,
            "response_headers": {k: resp.headers[k] for k in _KEPT_HEADERS if k in resp.headers},
            "response_body": base64.b64encode(resp.content).decode(),
        }
        target = self.directory / f"{seq:04d}-{method}-{_slug(path)}.json"
        atomic_write_bytes(target, json.dumps(doc, indent=1).encode() + b"\n")
        return target


def load_exchange(path: Path) -> dict[str, object]:
    """One recorded exchange with its bodies decoded to bytes."""
    doc = json.loads(Path(path).read_text())
    doc["request_body"] = base64.b64decode(doc["request_body"])
    doc["response_body"] = base64.b64decode(doc["response_body"])
    return dict(doc)
