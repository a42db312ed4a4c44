"""Garbage collection by references, never of anything referenced.

Volumes go when the config no longer names them and no app uses them.
Content trees and blobs go once nothing references them for the configured
delay (``edgevol.gc.delay.seconds``; 0 = at once), so a content tree
re-added within the delay is reused without a download.
"""

from __future__ import annotations

from typing import Any, Callable

import structlog

from edgevol.api import messages as m
from edgevol.device.cas import ContentStore, Descriptor
from edgevol.device.crashpoints import crash_point
from edgevol.device.reconcile.apps import app_references
from edgevol.device.reconcile.builders import VolumeBuilder
from edgevol.device.report.outbox import Reporter
from edgevol.device.state import StateStore
from edgevol.model.desired import DesiredState, ImageFormat, ObjectKind

log = structlog.get_logger("edgevol.gc")
S = m.ZSwState


class GarbageCollector:
    def __init__(self, store: StateStore, cas: ContentStore, builder: VolumeBuilder, reporter: Reporter,
                 busy: Callable[[str], bool], any_busy: Callable[[str], bool]) -> None:
        self.store = store
        self.cas = cas
        self.builder = builder
        self.reporter = reporter
        self.busy = busy  # is the task with this key running?
        self.any_busy = any_busy  # is any task whose key starts with this prefix running?
        self._roots: dict[str, Descriptor] | None = None

    def collect(self, d: DesiredState, now: float) -> int:
        """Remove what nothing wants any more; returns how many objects went (their space is free)."""
        removed = self._volumes(d)
        if self.any_busy("tree:") or self.any_busy("volume:"):
            return removed  # a tree walk may add blobs its tree does not list yet; a volume may be reading one
        delay = d.settings.gc_delay_seconds
        removed += self._content_trees(d, now, delay)
        removed += self._blobs(now, delay)
        self._index()
        return removed

    def _volumes(self, d: DesiredState) -> int:
        removed = 0
        bad = {e.object_id for e in d.errors if e.kind is ObjectKind.VOLUME}
        used = app_references(self.store)
        for row in self.store.all("volumes"):
            ident = (row["uuid"], row["generation"])
            wanted = d.volumes.get(row["uuid"])
            if (wanted and wanted.generation == row["generation"]) or row["uuid"] in bad or ident in used:
                continue
            if self.busy(f"volume:{row['uuid']}#{row['generation']}"):
                continue
            self.builder.delete(*ident)
            crash_point("volume.deleted")
            # "gone" is queued before the row goes: a kill in between must leave the row, so the next run
            # deletes and reports again; the other order loses the message for good
            self.reporter.deleted("volume", row["uuid"], row["generation"])
            self.store.delete("volumes", *ident)
            removed += 1
            log.info("volume deleted", volume=row["uuid"], generation=row["generation"])
        return removed

    def _expired(self, table: str, key: tuple[Any, ...], row: dict[str, Any], now: float, delay: float) -> bool:
        """Start (or keep) the clock for an unreferenced object; True once its delay has passed."""
        since = row["unreferenced_since"]
        if since is None:
            self.store.update(table, key, unreferenced_since=now)
            since = now
        return now - since >= delay

    def _content_trees(self, d: DesiredState, now: float, delay: float) -> int:
        removed = 0
        bad = {e.object_id for e in d.errors if e.kind is ObjectKind.CONTENT_TREE}
        for row in self.store.all("content_trees"):
            if row["uuid"] in d.content_trees or row["uuid"] in bad:
                if row["unreferenced_since"] is not None:
                    self.store.update("content_trees", (row["uuid"],), unreferenced_since=None)
                continue
            if self._expired("content_trees", (row["uuid"],), row, now, delay):
                # its blobs have waited as long as the tree: they need not wait a second delay
                since = row["unreferenced_since"] if row["unreferenced_since"] is not None else now
                for sha in set(row["component_shas"] or []) | ({row["sha256"]} if row["sha256"] else set()):
                    blob = self.store.get("blobs", sha)
                    if blob is not None and blob["unreferenced_since"] is None:
                        self.store.update("blobs", (sha,), unreferenced_since=since)
                self.reporter.deleted("content_tree", row["uuid"])  # before the row goes, as for volumes
                self.store.delete("content_trees", row["uuid"])
                removed += 1
                log.info("content tree collected", content_tree=row["uuid"])
        return removed

    def _blobs(self, now: float, delay: float) -> int:
        removed = 0
        referenced: set[str] = set()
        for r in self.store.all("content_trees"):
            referenced.update(r["component_shas"] or [])
            if r["sha256"] and r["spec"] and r["spec"].get("format") != ImageFormat.CONTAINER.value:
                referenced.add(r["sha256"])
        for row in self.store.all("blobs"):
            sha = row["sha256"]
            if sha in referenced:
                if row["unreferenced_since"] is not None:
                    self.store.update("blobs", (sha,), unreferenced_since=None)
                continue
            if self.busy(f"blob:{sha}") or not self._expired("blobs", (sha,), row, now, delay):
                continue
            self.cas.delete(sha)
            self.cas.discard_ingest(sha)
            self.reporter.deleted("blob", sha)  # before the row goes, as for volumes
            self.store.delete("blobs", sha)
            removed += 1
            log.info("blob collected", sha256=sha)
        return removed

    def _index(self) -> None:
        """index.json names every loaded content tree, so OCI tools see what the device holds."""
        roots = {row["uuid"]: _root_descriptor(row) for row in self.store.all("content_trees")
                 if row["state"] == S.LOADED}
        if roots != self._roots:
            self.cas.set_roots(roots)
            self._roots = roots


def _root_descriptor(row: dict[str, Any]) -> Descriptor:
    """index.json entry of a loaded content tree: its top manifest, or its single disk-image blob."""
    annotations = {"io.edgevol.content-tree": row["uuid"]}
    if row["layout"]:
        top = row["layout"]["manifests"][0]
        return Descriptor(top["media_type"], top["digest"], top["size"], annotations)
    return Descriptor("application/octet-stream", row["sha256"], row["cur_size"], annotations)
