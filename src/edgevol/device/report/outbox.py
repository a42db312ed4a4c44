"""Queue an info message whenever what an object reports has changed.

The reporter compares a fingerprint of each object's info (without the
message timestamp) with the one last queued, so an unchanged object costs
nothing and a changed one replaces its older, unsent message in the outbox.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any, Callable

from edgevol.api import messages as m
from edgevol.device.report import info
from edgevol.device.state import StateStore

_SOURCES: dict[str, tuple[str, Callable[[dict[str, Any]], Any], Callable[[dict[str, Any]], str]]] = {
    "volumes": ("volume", info.volume_info, lambda r: f"{r['uuid']}#{r['generation']}"),
    "content_trees": ("content_tree", info.content_tree_info, lambda r: r["uuid"]),
    "blobs": ("blob", info.blob_info, lambda r: r["sha256"]),
}


# Messages queued per transaction: one commit for many, yet the store is never held for long.
BATCH = 256


class Reporter:
    def __init__(self, store: StateStore, device_id: str = "") -> None:
        self.store = store
        self.device_id = device_id
        self._synced_version = -1

    def sync(self) -> int:
        """Queue a message for every object whose info changed; returns how many were queued."""
        if self.store.version == self._synced_version:
            return 0
        self._synced_version = self.store.version
        known = self.store.fingerprints()
        changed: list[tuple[str, bytes, str]] = []
        for table, (prefix, build, ident) in _SOURCES.items():
            for row in self.store.all(table):
                content = build(row)
                key = f"{prefix}/{ident(row)}"
                fp = hashlib.sha256(content.SerializeToString(deterministic=True)).hexdigest()
                if known.get(key) != fp:
                    changed.append((key, info.wrap(self.device_id, content, time.time()).SerializeToString(), fp))
        for start in range(0, len(changed), BATCH):
            self.store.batch(lambda chunk=changed[start:start + BATCH]: self._queue(chunk))  # type: ignore[misc]
        return len(changed)

    def _queue(self, chunk: list[tuple[str, bytes, str]]) -> None:
        for key, payload, fp in chunk:
            self.store.outbox_put(key, payload)
            self.store.set_fingerprint(key, fp)

    def deleted(self, kind: str, ident: str, generation: int = 0) -> None:
        """Report an object once more with only its identity set: the API's way to say 'gone'."""
        family: str | None = None
        if kind == "volume":
            # A controller keys volumes by uuid alone, as EVE's zedagent queues their reports
            # (pkg/pillar/cmd/zedagent/handlemetrics.go, queueInfoToDest(..., uuid, ...)): the
            # surviving generation's report is queued again after this one, so it is heard last.
            content: Any = m.ZInfoVolume(uuid=ident, generation_count=generation)
            key, family = f"volume/{ident}#{generation}", f"volume/{ident}#"
        elif kind == "content_tree":
            content, key = m.ZInfoContentTree(uuid=ident), f"content_tree/{ident}"
        else:
            content, key = m.ZInfoBlob(sha256=ident), f"blob/{ident}"
        self.store.outbox_put(key, info.wrap(self.device_id, content, time.time()).SerializeToString(), family)
        self.store.set_fingerprint(key, None)
        self._synced_version = -1  # the next sync looks again, even if no row changed
