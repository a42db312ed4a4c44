"""Garbage collection by references, never of anything referenced.

Volumes go when the config no longer names them and no app uses them.
Content trees and blobs go once nothing references them for the configured
delay (``edgevol.gc.delay.seconds``; 0 = at once), so a content tree
re-added within the delay is reused without a download.

A clone volume (``edgevol.volume.clone=backing``) references the blob it is
an overlay of, so that blob outlives its content tree until the last such
volume goes. The volume row names its blob before the overlay file exists
(builders.py) and goes only after the file, so no crash leaves an overlay
without its backing.

A volume found on disk that no row knows and the config does not name (a
legacy disk the migration moved for a config that has changed since, say)
is taken into the state as an *unclaimed* volume: reported like any other,
kept for the same delay in case a config claims it, then collected.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable

from edgevol.api import messages as m
from edgevol.device.cas import ContentStore, Descriptor
from edgevol.device.crashpoints import crash_point
from edgevol.device.reconcile.apps import app_references
from edgevol.device.reconcile.builders import VolumeBuilder
from edgevol.device.report.outbox import Reporter
from edgevol.device.state import StateStore
from edgevol.log import get_logger
from edgevol.model.desired import DesiredState, ImageFormat, ObjectKind

log = get_logger("edgevol.gc")
S = m.ZSwState
DELETE_BATCH = 256  # volumes removed per directory sync and per transaction
_VOLUME_NAME = re.compile(r"^([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})#([0-9]+)\.[a-z0-9]+$")


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
        self._last_scan = 0.0

    def collect(self, d: DesiredState, now: float) -> int:
        """Remove what nothing wants any more; returns how many objects went (their space is free)."""
        if now - self._last_scan >= d.settings.disk_scan_interval_seconds:
            self._last_scan = now
            self._claim_unknown_volumes(d, now)
        removed = self._volumes(d, now)
        if self.any_busy("tree:") or self.any_busy("volume:"):
            return removed  # a tree walk may add blobs its tree does not list yet; a volume may be reading one
        delay = d.settings.gc_delay_seconds
        removed += self._content_trees(d, now, delay)
        removed += self._blobs(now, delay)
        self._index()
        return removed

    def _claim_unknown_volumes(self, d: DesiredState, now: float) -> None:
        """Give every volume on disk that no row knows, and the config does not name, a row of its own."""
        root = self.builder.files.root
        known = {(r["uuid"], r["generation"]) for r in self.store.all("volumes")}
        for entry in sorted(root.iterdir()) if root.is_dir() else []:
            match = _VOLUME_NAME.match(entry.name)
            if match is None:
                continue  # temp files and other names are not volumes
            ident = (match.group(1), int(match.group(2)))
            wanted = d.volumes.get(ident[0])
            if ident in known or (wanted and wanted.generation == ident[1]) or self.busy(f"volume:{ident[0]}#{ident[1]}"):
                continue
            usage = self.builder.usage(Path(entry), 0)
            self.store.insert("volumes", uuid=ident[0], generation=ident[1], display_name=f"unclaimed {entry.name}",
                              state=S.CREATED_VOLUME, progress=100, path=str(entry), max_size=usage.virtual_size,
                              cur_size=usage.allocated, create_time=entry.stat().st_mtime, ref_change_time=now,
                              unreferenced_since=now, backing_blob=self.builder.backing_blob(Path(entry)))
            log.warning("volume on disk that nothing names; reported, and collected after the GC delay",
                        path=str(entry))

    def _volumes(self, d: DesiredState, now: float) -> int:
        bad = {e.object_id for e in d.errors if e.kind is ObjectKind.VOLUME}
        used = app_references(self.store)
        doomed = []
        for row in self.store.rows("volumes", "uuid", "generation", "path", "unreferenced_since"):
            ident = (row["uuid"], row["generation"])
            wanted = d.volumes.get(row["uuid"])
            if (wanted and wanted.generation == row["generation"]) or row["uuid"] in bad or ident in used:
                continue
            if self.busy(f"volume:{row['uuid']}#{row['generation']}"):
                continue
            if row["unreferenced_since"] is not None and now - row["unreferenced_since"] < d.settings.gc_delay_seconds:
                continue  # an unclaimed volume waits for the GC delay, in case a config claims it
            doomed.append(row)
        for start in range(0, len(doomed), DELETE_BATCH):
            self._delete_volumes(doomed[start:start + DELETE_BATCH])
        return len(doomed)

    def _delete_volumes(self, rows: list[dict[str, Any]]) -> None:
        """Files first (one directory sync for them all), then in one transaction each one's "gone" report and
        row. "Gone" is queued before the row goes, and a kill anywhere leaves the rows of volumes whose files
        may be gone: the next run deletes (nothing) and reports again; the other order loses the message."""
        for row in rows:
            self.builder.delete(row["uuid"], row["generation"], row["path"])
        self.builder.sync_deletions()
        crash_point("volume.deleted")

        def forget() -> None:
            for row in rows:
                self.reporter.deleted("volume", row["uuid"], row["generation"])
                self.store.delete("volumes", row["uuid"], row["generation"])

        self.store.batch(forget)
        for row in rows:
            log.info("volume deleted", volume=row["uuid"], generation=row["generation"])

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
            if r["sha256"] and r["spec"] and not ImageFormat(r["spec"].get("format")).manifested:
                referenced.add(r["sha256"])
        # a clone volume reads through to its blob: the blob stays while the volume row does, whatever the trees
        referenced.update(r["backing_blob"] for r in self.store.all("volumes") if r["backing_blob"])
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
