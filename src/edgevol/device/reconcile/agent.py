"""The device agent: a level-triggered reconciler.

Each :meth:`Agent.step` compares the desired state (from the config) with the
recorded state (SQLite) and the disk, starts the next piece of work for each
object that is not done yet, collects what is no longer wanted and queues info
messages for whatever changed. Work runs in a small thread pool; every step is
idempotent, so a restart after ``kill -9`` simply carries on.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sqlite3
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from edgevol.log import get_logger
from edgevol.api import messages as m
from edgevol.device.cas import ContentStore
from edgevol.device.datastores.credentials import DatastoreCredentials
from edgevol.device.errors import error, mirror_error, standing
from edgevol.device.migrate import load_checkpointed_config, migrate_legacy_layout
from edgevol.device.paths import DataDir
from edgevol.device.reconcile.adoption import adopt_implicit, settle_name
from edgevol.device.reconcile.apps import app_references, sync_apps
from edgevol.device.reconcile.blobs import BlobDownloader
from edgevol.device.reconcile.exports import record as record_exports
from edgevol.device.reconcile.exports import wanted_exports
from edgevol.device.reconcile.gc import GarbageCollector
from edgevol.device.reconcile.signatures import SignatureChecker, check_key, due, gate
from edgevol.device.reconcile.builders import VolumeBuilder, volume_spec
from edgevol.device.report.outbox import Reporter
from edgevol.device.space import SpaceLedger, disk_full
from edgevol.device.state import StateStore
from edgevol.device.datastores.factory import BlobSource, DatastoreClients
from edgevol.device.datastores.proxy import effective as effective_proxy
from edgevol.device.datastores.proxy import from_environment as proxies_from_environment
from edgevol.device.reconcile.trees import ContainerResolver, derive_status, layout_blobs, layout_sources, tree_spec
from edgevol.device.volumes import FileVolumes
from edgevol.device.volumes.directories import DirectoryVolumes
from edgevol.model.desired import Datastore, DesiredState, ImageFormat, ObjectKind, ProxySettings, VolumeOrigin

if TYPE_CHECKING:  # the export daemons' module is loaded when an activated app first needs a volume served
    from edgevol.device.exports import Exports

log = get_logger("edgevol.agent")
S = m.ZSwState

TERMINAL = {S.LOADED, S.CREATED_VOLUME, S.ERROR}
MAX_PARALLEL_DOWNLOADS = 64  # the config item's upper bound
CRASH_COOLDOWN_SECONDS = 10.0


def _environment_proxy() -> ProxySettings:
    """HTTP(S)_PROXY, ALL_PROXY and NO_PROXY, read once at start; an unusable one is logged and ignored."""
    settings, warnings = proxies_from_environment(os.environ)
    for warning in warnings:
        log.warning("proxy setting of the environment ignored", reason=warning)
    if settings.names_a_proxy:
        log.info("download proxies from the environment", http=bool(settings.http_proxy),
                 https=bool(settings.https_proxy), no_proxy=",".join(settings.no_proxy))
    return settings


@dataclass(frozen=True)
class AgentOptions:
    once: bool = False
    workers: int = 4
    content_trust: bytes = b""  # PEM trust anchors for signed content (siginfo)


class Agent:
    def __init__(self, data_dir: Path, options: AgentOptions | None = None) -> None:
        self.options = options or AgentOptions()
        self.dirs = DataDir(data_dir)
        data_dir.mkdir(parents=True, exist_ok=True)
        self.store = StateStore(self.dirs.state_db)
        self.cas = ContentStore(self.dirs.cas)
        self.files = FileVolumes(self.dirs.volumes)
        self.dirvols = DirectoryVolumes(self.dirs.volumes)
        self.credentials = DatastoreCredentials(data_dir)
        self.clients = DatastoreClients(credentials=self.credentials.resolve)
        self._env_proxy = _environment_proxy()
        self.reporter = Reporter(self.store, self.store.meta_get("device_id") or "")
        self.desired = DesiredState()
        self.wake = threading.Event()
        self._cancel = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=self.options.workers + MAX_PARALLEL_DOWNLOADS,
                                        thread_name_prefix="edgevol-work")
        # Volume creates queue here, ``workers`` at a time: a config adding thousands of volumes is taken in
        # one pass, yet never runs thousands of qemu-img processes or disk writers at once.
        self._volume_pool = ThreadPoolExecutor(max_workers=max(1, self.options.workers),
                                               thread_name_prefix="edgevol-volume")
        self._tasks: dict[str, Future[None]] = {}
        # Each download and tree walk has its own cancel event: set when the config stops needing what it
        # fetches, and for every task when the agent stops.
        self._cancels: dict[str, threading.Event] = {}
        self._tree_specs: dict[str, dict[str, Any]] = {}  # a running tree walk -> the spec it walks
        self._submitted: set[str] = set()  # every task key started by this process
        self._failed_this_run: set[str] = set()
        self._started_with: dict[str, tuple[Any, ...]] = {}  # download/resolve task -> its datastore then
        self._cooldown: dict[str, float] = {}
        self._last_usage = 0.0
        self._disk_full = False
        self._purge_first: set[tuple[str, int]] = set()  # new generations that fit only once the old ones go
        self.exports: Exports | None = None  # made when an activated app first needs a volume served
        self.blobs = BlobDownloader(self.store, self.cas, self.clients, self._cancel, self._task_failed,
                                    keep_partial=lambda: self.desired.settings.gc_delay_seconds > 0)
        self.resolver = ContainerResolver(self.store, self.cas, self.clients, self._task_failed)
        self.signatures = SignatureChecker(self.store, self.clients, lambda: self.options.content_trust)
        self.builder = VolumeBuilder(self.store, self.cas, self.files, self.dirvols, self._task_failed)
        self.gc = GarbageCollector(self.store, self.cas, self.builder, self.reporter, self._busy, self._any_working)
        self.space = SpaceLedger(self.dirs.root, self.store)
        self._recover()

    # -- lifecycle ------------------------------------------------------------
    def _recover(self) -> None:
        """Migrate a legacy layout once, then clean up after an interrupted run (partials stay for resume)."""
        report = migrate_legacy_layout(self.dirs.root, load_checkpointed_config(self.dirs.checkpoint), self.store)
        if report.ran:
            log.info("legacy layout migrated", moved=len(report.moved), kept=len(report.kept_unmapped),
                     errors=len(report.errors))
        removed = self.files.clean_temps()
        pending = {r["sha256"] for r in self.store.all("blobs") if r["state"] != S.LOADED}
        dropped = self.cas.clean_ingests(keep=pending)
        try:
            for row in self.store.all("volumes"):
                if row["state"] == S.CREATING_VOLUME:
                    self.store.update("volumes", (row["uuid"], row["generation"]), state=S.INITIAL)
        except (OSError, sqlite3.OperationalError) as exc:
            if not disk_full(exc):
                raise
            # Start anyway: the reconcile passes redo those creates whatever their row says.
            log.error("data disk full at start", error=str(exc))
        if removed or dropped:
            log.info("recovered", temp_files_removed=len(removed), stale_partials_removed=len(dropped))

    def close(self) -> None:
        self._cancel.set()
        if self.exports is not None:
            self.exports.close()
        for event in list(self._cancels.values()):
            event.set()
        self._volume_pool.shutdown(wait=True, cancel_futures=True)
        self._pool.shutdown(wait=True, cancel_futures=True)
        self.clients.close()
        try:
            self.reporter.sync()
        except (OSError, sqlite3.OperationalError) as exc:
            if not disk_full(exc):
                raise
            log.error("data disk full; last reports not queued", error=str(exc))  # redone at the next start
        finally:
            self.store.release_reserve()  # held only while the agent runs
            self.store.close()

    def set_desired(self, desired: DesiredState) -> None:
        self.desired = desired
        self.clients.read_timeout = desired.settings.download_read_timeout_seconds
        self.clients.range_streams = desired.settings.parallel_downloads
        self.clients.proxy = effective_proxy(desired.settings.proxy, self._env_proxy)
        self.clients.set_caps(desired.settings.download_bytes_per_second, desired.settings.datastore_bytes_per_second,
                              dict(desired.settings.datastore_caps))
        self.record_config_status(None)
        if desired.device_id:
            self.store.meta_set("device_id", desired.device_id)
            self.reporter.device_id = desired.device_id
        self.wake.set()

    def record_config_status(self, source_error: str | None) -> None:
        """Keep config-level problems where ``device status`` can show them."""
        errors = [{"kind": e.kind.value, "id": e.object_id, "name": e.name, "message": e.message}
                  for e in self.desired.errors]
        status = json.dumps({"errors": errors, "source_error": source_error})
        if self.store.meta_get("config_status") != status:  # called every pass: write only on change
            self.store.meta_set("config_status", status)

    # -- tasks ----------------------------------------------------------------
    def _submit(self, key: str, fn: Callable[..., None], *args: Any, **kwargs: Any) -> None:
        self._submitted.add(key)
        pool = self._volume_pool if key.startswith("volume:") else self._pool
        self._tasks[key] = pool.submit(fn, *args, **kwargs)
        self._tasks[key].add_done_callback(lambda _f: self.wake.set())

    def _cancel_event(self, key: str) -> threading.Event:
        """A fresh cancel event for the task about to start under ``key`` (already set if the agent stops)."""
        event = self._cancels[key] = threading.Event()
        if self._cancel.is_set():
            event.set()
        return event

    def _cancelled(self, key: str) -> bool:
        """Whether ``key``'s running task was told to stop (it may still be winding down)."""
        event = self._cancels.get(key)
        return event is not None and event.is_set() and self._busy(key)

    def _cancel_unwanted(self, d: DesiredState, wanted: dict[str, BlobSource]) -> None:
        """Stop the downloads and tree walks that the config no longer needs.

        A content tree is wanted while the config names it, volumes or not, as EVE's volumemgr starts a
        content tree's download when its config arrives (pkg/pillar/cmd/volumemgr/handlecontent.go:19-33,
        handleContentTreeCreate). A stopped download's partial goes at once, or stays for the GC delay
        (``blobs.py``); nothing about it is written after the stop, so nothing is reported but its deletion.
        """
        for key, event in list(self._cancels.items()):
            if event.is_set() or not self._busy(key):
                continue
            kind, _, ident = key.partition(":")
            if kind == "blob" and ident not in wanted:
                why = "no content tree of the config needs it any more"
            elif kind == "tree" and (ident not in d.content_trees
                                     or tree_spec(d.content_trees[ident]) != self._tree_specs.get(key)):
                why = "the content tree left the config" if ident not in d.content_trees else "the content tree changed"
            else:
                continue
            event.set()
            log.info("download cancelled", task=key, reason=why)

    def _task_failed(self, key: str) -> None:
        self._failed_this_run.add(key)

    def _busy(self, key: str) -> bool:
        fut = self._tasks.get(key)
        if fut is None:
            return False
        if fut.done():
            del self._tasks[key]
            self._cancels.pop(key, None)
            self._tree_specs.pop(key, None)
            exc = fut.exception()
            if exc is not None:  # the workers catch everything they expect; back off on anything else
                if disk_full(exc):  # not even its failure could be recorded; tried again after the cooldown
                    log.error("task stopped: data disk full", task=key, error=str(exc))
                else:
                    log.error("task crashed", task=key, error=repr(exc))
                self._cooldown[key] = time.time() + CRASH_COOLDOWN_SECONDS
            return False
        return True

    def _any_working(self, prefix: str) -> bool:
        """Whether a task under ``prefix`` runs and was not cancelled: a cancelled one writes nothing more."""
        return any(self._busy(k) and not self._cancelled(k) for k in list(self._tasks) if k.startswith(prefix))

    def _source_changed(self, key: str, row: dict[str, Any], ds: Datastore, epoch: Any) -> tuple[Any, ...]:
        """What the task would fetch with now; a failed one gets a fresh try if that differs from its last start.

        A new config that changes the datastore, or, for encrypted
        credentials, new controller certificates (``epoch``), may well cure
        the failure, so it is not left waiting for the slow retry.
        """
        inputs = (ds, epoch if ds.encrypted is not None else None)
        if row["state"] == S.ERROR and self._started_with.get(key, inputs) != inputs:
            self._failed_this_run.discard(key)
        return inputs

    def _may_retry(self, key: str, row: dict[str, Any], now: float) -> bool:
        """An object in ERROR gets one fresh try per run; after that it waits for its slow retry."""
        if self._cooldown.get(key, 0) > now:
            return False
        if row["state"] == S.ERROR:
            if key not in self._failed_this_run:
                return True
            return not self.options.once and row.get("next_retry", 0) <= now
        return row.get("next_retry", 0) <= now

    # -- the reconcile pass ---------------------------------------------------
    def step(self) -> None:
        now = time.time()
        d = self.desired
        self.store.keep_reserve()
        wanted = self._wanted_blobs(d)
        self._cancel_unwanted(d, wanted)
        with self.space.one_pass():
            self._sync_blobs(d, now, wanted)
            self._sync_content_trees(d, now)
            self._purge_first = set()
            self._sync_volumes(d, now)
        sync_apps(self.store, d, now, self._purge_first)
        if not self.options.once:  # a --once pass ends before any task could attach
            self._serve(d)
        if self.gc.collect(d, now):
            self._space_freed()
        self.store.batch(lambda: self._sync_refcounts(d, now))
        self.reporter.sync()

    def _serve(self, d: DesiredState) -> None:
        """Start, stop and supervise the exports of the volumes activated apps use (reconcile/exports.py)."""
        specs, refused = wanted_exports(self.store, d)
        if self.exports is None:
            if not specs and not refused:
                return  # no daemon machinery until an activated app needs a volume
            from edgevol.device.exports import Exports

            self.exports = Exports(self.dirs.root / "exports")
        self.exports.apply(specs)
        self.exports.supervise()
        record_exports(self.store, self.exports, refused)

    def _space_freed(self) -> None:
        """A deletion freed space: whatever waits for space is tried at the next pass, not on its slow retry.

        EVE re-runs its space check for waiting objects as soon as another object goes
        (pkg/pillar/cmd/volumemgr/updatestatus.go, doUpdateVol: "Will retry when more space will be available").
        """
        for table, key_of in (("volumes", lambda r: f"volume:{r['uuid']}#{r['generation']}"),
                              ("blobs", lambda r: f"blob:{r['sha256']}")):
            for row in self.store.all(table):
                desc = (row["error"] or {}).get("description", "")
                if not desc.startswith("Remaining disk space") and "no space left" not in desc:
                    continue
                key = key_of(row)
                self._failed_this_run.discard(key)
                self._cooldown.pop(key, None)
                if row.get("next_retry"):
                    ident = (row["uuid"], row["generation"]) if table == "volumes" else (row["sha256"],)
                    self.store.update(table, ident, next_retry=0)
        self.wake.set()

    def _wanted_blobs(self, d: DesiredState) -> dict[str, BlobSource]:
        """Every blob the config needs and where to fetch it: the first content tree naming it, from its
        first datastore; every other datastore of that tree and every other tree with the same bytes are
        alternates, tried in turn when it fails."""
        found: dict[str, list[BlobSource]] = {}
        for ct in d.content_trees.values():
            datastores = [d.datastores[ds_id] for ds_id in (ct.datastore_id, *ct.fallback_datastore_ids)]
            if not ct.format.manifested:
                assert ct.sha256 is not None
                found.setdefault(ct.sha256, []).extend(BlobSource(ds, ct.url, max_size=ct.max_size_bytes)
                                                      for ds in datastores)
                continue
            row = self.store.get("content_trees", ct.uuid)
            if row and row["layout"] and (row["resolved"] or {}).get("spec") == tree_spec(ct):
                for ds in datastores:
                    for sha, source in layout_sources(row["layout"], ds, ct.url).items():
                        found.setdefault(sha, []).append(source)
        return {sha: dataclasses.replace(sources[0], alternates=tuple(dict.fromkeys(
            s for s in sources[1:] if s != sources[0]))) for sha, sources in found.items()}

    def _sync_blobs(self, d: DesiredState, now: float, wanted: dict[str, BlobSource]) -> None:
        running = [k for k in list(self._tasks) if k.startswith("blob:") and self._busy(k) and not self._cancelled(k)]
        # Downloads per datastore (each counted on its first datastore; alternates are tried within it).
        per_store: dict[str, int] = {}
        for k in running:
            started = self._started_with.get(k)
            if started is not None:
                per_store[started[0].uuid] = per_store.get(started[0].uuid, 0) + 1
        epoch = self.credentials.epoch()
        for sha, source in wanted.items():
            key = f"blob:{sha}"
            if self._busy(key):
                continue
            row = self.store.get("blobs", sha)  # after _busy: what a download that just ended wrote is here
            if row is None:
                self.store.insert("blobs", sha256=sha, state=S.INITIAL, create_time=now, ref_change_time=now,
                                  size=source.expected_size or 0)
                row = self.store.get("blobs", sha)
                assert row is not None
            if self.cas.has(sha):
                self._started_with.pop(key, None)
                size = self.cas.size(sha) or 0
                self.store.update("blobs", (sha,), state=S.LOADED, progress=100, size=size, done_bytes=size,
                                  attempts=0, next_retry=0, error=None)
                continue
            if row["state"] == S.LOADED:
                log.warning("blob vanished from the store; fetching again", sha256=sha)
                self.store.update("blobs", (sha,), state=S.INITIAL, progress=0, done_bytes=0)
            inputs = self._source_changed(key, row, source.datastore, epoch)
            store_cap = d.settings.datastore_parallel(source.datastore.uuid)
            if (len(running) >= d.settings.parallel_downloads or not self._may_retry(key, row, now)
                    or (store_cap and per_store.get(source.datastore.uuid, 0) >= store_cap)):
                continue
            # Without a declared size, the size the server announced on an earlier attempt (after a full disk).
            need = (source.expected_size or source.max_size or row["size"] or 0) - row["done_bytes"]
            if not self._space_for("blobs", (sha,), row, need, d, "blob", sha, blob=sha):
                continue
            running.append(key)
            per_store[source.datastore.uuid] = per_store.get(source.datastore.uuid, 0) + 1
            self._started_with[key] = inputs
            self._submit(key, self.blobs.download, key, sha, source, d.settings, self.options.once,
                         cancel=self._cancel_event(key))

    def _sync_content_trees(self, d: DesiredState, now: float) -> None:
        for ct in d.content_trees.values():
            spec = tree_spec(ct)
            row = self.store.get("content_trees", ct.uuid)
            if row is None:
                self.store.insert("content_trees", uuid=ct.uuid, state=S.INITIAL, create_time=now,
                                  ref_change_time=now, spec=spec)
                row = self.store.get("content_trees", ct.uuid)
                assert row is not None
            elif row["spec"] != spec:
                # The content tree changed: fetch afresh (an errored download gets a new try now).
                self.store.update("content_trees", (ct.uuid,), spec=spec, attempts=0, next_retry=0, error=None,
                                  state=S.INITIAL, progress=0)
                self._failed_this_run.discard(f"tree:{ct.uuid}")
                if ct.sha256 and self.store.get("blobs", ct.sha256):
                    self.store.update("blobs", (ct.sha256,), next_retry=0, attempts=0)
                row = self.store.get("content_trees", ct.uuid)
                assert row is not None
            self.store.update("content_trees", (ct.uuid,), generation=ct.generation, display_name=ct.display_name)
            if ct.format.manifested:
                self._sync_container_tree(ct, row, d, now)
                continue
            assert ct.sha256 is not None
            blob = self.store.get("blobs", ct.sha256)
            fields: dict[str, Any] = {"sha256": ct.sha256, "component_shas": [ct.sha256]}
            if blob is None:
                fields.update(state=S.INITIAL, progress=0, cur_size=0, error=None)
            else:
                loaded = blob["state"] == S.LOADED
                fields.update(state=blob["state"], progress=blob["progress"], stopped_state=blob["stopped_state"],
                              cur_size=blob["size"] if loaded else blob["done_bytes"],
                              error=mirror_error(blob["error"], ObjectKind.CONTENT_TREE, ct.uuid,
                                                 ct.display_name, f"blob sha256:{ct.sha256[:12]}"))
            check = self._signature_gate(ct, row, ct.sha256, fields, now) \
                if blob is not None and blob["state"] == S.LOADED and ct.signature is not None else None
            self.store.update("content_trees", (ct.uuid,), **fields)
            if check is not None:  # after the update: the check's verdict must land on a VERIFYING tree
                self._submit(f"sig:{ct.uuid}", self.signatures.check, ct, d.datastores[ct.datastore_id], ct.sha256,
                             check, d.settings)
        for err in d.errors:
            if err.kind is ObjectKind.CONTENT_TREE and _is_uuid(err.object_id):
                record = error(f"invalid config: {err.message}", err.kind, err.object_id, err.name,
                               retry="fix the content tree in the config")
                existing = self.store.get("content_trees", err.object_id)
                if existing is None:
                    self.store.insert("content_trees", uuid=err.object_id, display_name=err.name,
                                      state=S.ERROR, create_time=now, ref_change_time=now, error=record)
                else:
                    self.store.update("content_trees", (err.object_id,), state=S.ERROR,
                                      error=standing(existing["error"], record))

    def _signature_gate(self, ct: Any, row: dict[str, Any], digest: str, fields: dict[str, Any],
                        now: float) -> str | None:
        """Hold a loaded signed tree in VERIFYING (or its signature's error) until its signature holds.

        Returns the verdict key when a check is to start now, else None.
        """
        key = check_key(ct, digest, self.options.content_trust)
        override = gate(row, key)
        if override is None:
            return None
        fields.update(override)
        if override["state"] == S.VERIFYING and not self._busy(f"sig:{ct.uuid}") and due(row, key, now):
            fields["error"] = None
            return key
        if override["state"] == S.VERIFYING:
            fields["error"] = row["error"]  # a transient failure's notice stays while its retry waits
        return None

    def _sync_container_tree(self, ct: Any, row: dict[str, Any], d: DesiredState, now: float) -> None:
        key = f"tree:{ct.uuid}"
        latched = (row["resolved"] or {}).get("spec") == tree_spec(ct)
        layout = row["layout"] if latched else None
        if layout is not None and not all(self.cas.has(b["digest"]) for b in layout["manifests"]):
            layout = None  # a manifest went missing from the store: walk the tree again
        if layout is None:
            ds = d.datastores[ct.datastore_id]
            if self._busy(key):
                return
            fresh = self.store.get("content_trees", ct.uuid) or row  # what a walk that just ended wrote
            if fresh["layout"] != row["layout"]:
                return  # it latched a layout meanwhile: the next pass (its end woke one) takes it from there
            row = fresh
            inputs = self._source_changed(key, row, ds, self.credentials.epoch())
            if self._may_retry(key, row, now):
                self._started_with[key] = inputs
                self._tree_specs[key] = tree_spec(ct)
                datastores = [ds, *(d.datastores[i] for i in ct.fallback_datastore_ids)]
                self._submit(key, self.resolver.resolve, key, ct, datastores, d.settings, self.options.once,
                             cancel=self._cancel_event(key))
            return
        blobs = {b["digest"]: self.store.get("blobs", b["digest"]) for b in layout_blobs(layout)}
        status = derive_status(layout, blobs)
        failed = status.pop("failed_blob")
        status["error"] = mirror_error(failed["error"], ObjectKind.CONTENT_TREE, ct.uuid, ct.display_name,
                                       f"blob sha256:{failed['sha256'][:12]}") if failed else None
        self.store.update("content_trees", (ct.uuid,), **status)

    def _sync_volumes(self, d: DesiredState, now: float) -> None:
        refresh_usage = now - self._last_usage >= d.settings.disk_scan_interval_seconds
        if refresh_usage:
            self._last_usage = now
        self._insert_new_volumes(d, now)
        on_disk = self.builder.on_disk()  # one directory listing, not a lookup per volume
        container_disks = _serving_containers(d)
        # One read of every row, not one query per volume: a row changes under the pass only by the pass
        # itself or by a task this run started, and those are read afresh.
        rows = {(r["uuid"], r["generation"]): r for r in self.store.all("volumes")}
        trees = {r["uuid"]: r for r in self.store.all("content_trees")}
        for v in d.volumes.values():
            key = f"volume:{v.uuid}#{v.generation}"
            if self._busy(key):
                continue
            spec = volume_spec(v)
            ident = (v.uuid, v.generation)
            # after _busy: what a task that just ended wrote is in the database
            row = self.store.get("volumes", *ident) if key in self._submitted else rows[ident]
            assert row is not None  # _insert_new_volumes made it
            if row["path"] is None:
                # A task of this run may have made the file after the listing (and crashed before recording it).
                adopted = self.builder.find(*ident) if key in self._submitted else on_disk.get(ident)
                if adopted is not None:  # created, then interrupted before the database knew
                    self.builder.record_created(ident, adopted, spec)
                    row = self.store.get("volumes", *ident)
                    assert row is not None
                elif v.adopts and adopt_implicit(self.store, self.reporter, v, spec, row):
                    continue  # a drive's volume taken over (transition phase 2), or refused with an error
            if row["path"]:
                if not Path(row["path"]).name.startswith(f"{v.uuid}#{v.generation}."):
                    settle_name(self.store, ident, Path(row["path"]))  # an adoption interrupted by a crash
                    row = self.store.get("volumes", *ident)
                    assert row is not None
                if row["spec"] is None:  # found on disk before the config named it (an orphan, a migrated disk)
                    self.store.update("volumes", ident, spec=spec, unreferenced_since=None)
                    row = self.store.get("volumes", *ident)
                    assert row is not None
                if not Path(row["path"]).exists():
                    log.warning("volume file vanished; creating it again", volume=key)
                    self.store.update("volumes", ident, path=None, state=S.INITIAL, progress=0)
                    continue
                if row["spec"] != spec:
                    was = row["spec"] or {}
                    changed = ", ".join(f"{k} changed from {was.get(k)} to {spec[k]}"
                                        for k in sorted(spec) if was.get(k) != spec[k])
                    # EVE's words (pkg/pillar/cmd/volumemgr/handlevolume.go, handleVolumeModify), then ours
                    record = error(
                        f"Need volume regeneration due to {changed} but generation counter not incremented: "
                        "the existing volume is kept as it was", ObjectKind.VOLUME, v.uuid, v.display_name,
                        retry="restore the previous settings or bump generationCount")
                    self.store.update("volumes", ident, display_name=v.display_name, state=S.ERROR,
                                      error=standing(row["error"], record))
                    continue
                fields: dict[str, Any] = {"display_name": v.display_name, "state": S.CREATED_VOLUME,
                                          "progress": 100, "error": None}
                if refresh_usage:
                    fields["cur_size"] = self.builder.allocated(Path(row["path"]))
                self._refresh(ident, row, fields)
                continue
            self._refresh(ident, row, {"display_name": v.display_name, "spec": spec, "max_size": v.max_size_bytes,
                                       "readonly": v.readonly})
            if v.origin is VolumeOrigin.BLANK:
                if self._may_retry(key, row, now) and self._volume_fits(v, None, row, d):
                    self._submit(key, self.builder.create, key, v, None, d.settings, v.uuid in container_disks,
                                 self.options.once)
                continue
            assert v.content_tree_id is not None
            ct = d.content_trees[v.content_tree_id]
            ct_row = trees.get(ct.uuid)
            if ct_row is None:
                continue
            if ct_row["state"] == S.LOADED:
                if (self._may_retry(key, row, now) or row["state"] != S.ERROR) and self._volume_fits(v, ct_row, row, d):
                    self._submit(key, self.builder.create, key, v, ct, d.settings, False, self.options.once)
            elif row["state"] != S.ERROR or ct_row["state"] == S.ERROR or key not in self._failed_this_run:
                self.store.update("volumes", ident, state=ct_row["state"], progress=ct_row["progress"],
                                  stopped_state=ct_row["stopped_state"],
                                  error=mirror_error(ct_row["error"], ObjectKind.VOLUME, v.uuid, v.display_name,
                                                     f"content tree {ct.display_name or ct.uuid}"))
        for err in d.errors:
            if err.kind is ObjectKind.VOLUME and _is_uuid(err.object_id):
                record = error(f"invalid config: {err.message}", err.kind, err.object_id, err.name,
                               retry="fix the volume in the config")
                rows = [r for r in self.store.all("volumes") if r["uuid"] == err.object_id]
                if not rows:
                    self.store.insert("volumes", uuid=err.object_id, generation=err.generation,
                                      display_name=err.name, state=S.ERROR, create_time=now,
                                      ref_change_time=now, error=record)
                for r in rows:  # an existing volume is kept, never touched by a bad config
                    self.store.update("volumes", (r["uuid"], r["generation"]), state=S.ERROR,
                                      error=standing(r["error"], record))

    def _refresh(self, ident: tuple[str, int], row: dict[str, Any], fields: dict[str, Any]) -> None:
        """Write ``fields`` unless the row in hand already holds them (the common case: nothing changed)."""
        if any(row.get(k) != v for k, v in fields.items()):
            self.store.update("volumes", ident, **fields)

    def _insert_new_volumes(self, d: DesiredState, now: float) -> None:
        """Rows for the volumes the config adds, a batch per commit (a new config may add thousands)."""
        known = {(r["uuid"], r["generation"]) for r in self.store.rows("volumes", "uuid", "generation")}
        new = [v for v in d.volumes.values() if (v.uuid, v.generation) not in known]

        def insert(chunk: list[Any]) -> None:
            for v in chunk:
                self.store.insert("volumes", uuid=v.uuid, generation=v.generation, display_name=v.display_name,
                                  state=S.INITIAL, max_size=v.max_size_bytes, readonly=v.readonly,
                                  create_time=now, ref_change_time=now, spec=volume_spec(v))

        for start in range(0, len(new), 1024):
            self.store.batch(lambda chunk=new[start:start + 1024]: insert(chunk))  # type: ignore[misc]

    def _space_for(self, table: str, key: tuple[Any, ...], row: dict[str, Any], need: int, d: DesiredState,
                   kind: str, ident: str, name: str = "", **which: Any) -> bool:
        """Admit a job only if it fits beside what is promised; otherwise the object waits in ERROR."""
        if need <= 0 or d.settings.ignore_disk_check:  # EVE: volumemgr blob.go, updatestatus.go skip the check
            return True
        verdict = self.space.check(need, d.settings.disk_reserve_bytes, thin=d.settings.thin_overcommit, **which)
        if verdict.ok:
            self.space.admit(need, **which)
            return True
        what = "volume" if kind == ObjectKind.VOLUME else "blob"
        self.store.update(table, key, state=S.ERROR, error=standing(row["error"], error(
            verdict.describe(what), kind, ident, name, retry="proceeds by itself once space is freed")))
        return False

    def _volume_fits(self, v: Any, ct_row: dict[str, Any] | None, row: dict[str, Any], d: DesiredState) -> bool:
        """Admit the volume's creation (its content is verified by now) if it fits.

        If it does not, but would once the older generations it replaces are
        gone, it is put in ``_purge_first``: the apps purging to it then let go
        of the old generation first (break-before-make, see sync_apps).
        """
        image = ct_row["cur_size"] if ct_row else 0
        writable_room = 0 if v.readonly or d.settings.thin_overcommit else v.max_size_bytes
        need = max(writable_room, image)
        ident = (v.uuid, v.generation)
        if self._space_for("volumes", ident, row, need, d, ObjectKind.VOLUME, v.uuid, v.display_name,
                           volume=ident):
            return True
        replaced = self._replaced_by_purge(v, d)
        if replaced and self.space.check(need, d.settings.disk_reserve_bytes, thin=d.settings.thin_overcommit,
                                         volume=ident, releasing=replaced).ok:
            self._purge_first.add(ident)
        return False

    def _replaced_by_purge(self, v: Any, d: DesiredState) -> list[tuple[str, int]]:
        """The older generations of ``v`` that every app using them is purging away to ``v``; else none.

        One app still meant to keep an old generation (no purge counter bump,
        or refs elsewhere) keeps it, and the new generation waits for space.
        """
        old = [(v.uuid, gen) for gen, path in self.store.generations(v.uuid) if gen != v.generation and path]
        if not old:
            return []
        for app_row in self.store.all("apps"):
            if not any(tuple(ref) in old for ref in app_row["refs"]):
                continue
            app = d.apps.get(app_row["uuid"])
            if (app is None or app.purge_counter <= app_row["purge_counter"]
                    or (v.uuid, v.generation) not in {(r.uuid, r.generation) for r in app.volume_refs}):
                return []
        return old

    def _sync_refcounts(self, d: DesiredState, now: float) -> None:
        """refCount = the config's own reference (while it names the object) + each user of it."""
        app_refs = app_references(self.store)
        tree_refs: dict[str, int] = {}
        for v in d.volumes.values():
            if v.content_tree_id:
                tree_refs[v.content_tree_id] = tree_refs.get(v.content_tree_id, 0) + 1
        for row in self.store.all("volumes"):
            wanted = d.volumes.get(row["uuid"])
            own = 1 if wanted is not None and wanted.generation == row["generation"] else 0
            count = own + app_refs.get((row["uuid"], row["generation"]), 0)
            self._set_refcount("volumes", (row["uuid"], row["generation"]), row, count, now)
        blob_refs: dict[str, int] = {}
        for row in self.store.all("content_trees"):
            own = 1 if row["uuid"] in d.content_trees else 0
            self._set_refcount("content_trees", (row["uuid"],), row, own + tree_refs.get(row["uuid"], 0), now)
            for sha in row["component_shas"] or []:
                blob_refs[sha] = blob_refs.get(sha, 0) + 1
        for row in self.store.all("volumes"):
            if row["backing_blob"]:  # a clone volume uses its backing blob directly
                blob_refs[row["backing_blob"]] = blob_refs.get(row["backing_blob"], 0) + 1
        for row in self.store.all("blobs"):
            if self._cancelled(f"blob:{row['sha256']}"):
                continue  # a stopped download: its row is left as it stood until it goes (or waits out the GC delay)
            self._set_refcount("blobs", (row["sha256"],), row, blob_refs.get(row["sha256"], 0), now)

    def _set_refcount(self, table: str, key: tuple[Any, ...], row: dict[str, Any], count: int, now: float) -> None:
        if row["ref_count"] != count:
            self.store.update(table, key, ref_count=count, ref_change_time=now)

    # -- convergence ------------------------------------------------------------
    def converged(self) -> bool:
        """True when every wanted object sits in a terminal state and no work is running."""
        if any(not f.done() for f in self._tasks.values()):
            return False
        d = self.desired
        volumes = {(r["uuid"], r["generation"]): r["state"] for r in self.store.rows("volumes", "uuid", "generation",
                                                                                     "state")}
        if any(volumes.get((v.uuid, v.generation)) not in TERMINAL for v in d.volumes.values()):
            return False
        trees = {r["uuid"]: r["state"] for r in self.store.rows("content_trees", "uuid", "state")}
        return all(trees.get(ct.uuid) in TERMINAL for ct in d.content_trees.values())

    def has_errors(self) -> bool:
        if self.desired.errors:
            return True
        tables = (("volumes", "state"), ("content_trees", "state"), ("blobs", "state"))
        if any(row[col] == S.ERROR for table, col in tables for row in self.store.all(table)):
            return True
        return any(row["error"] and row["error"]["severity"] == "error" for row in self.store.all("apps"))

    def _survive_full_disk(self, work: Callable[[], None]) -> bool:
        """Run part of a pass; a full data disk fails writes anywhere, the state database included, so the
        daemon logs it and carries on (each pass is idempotent) to resume by itself once space is freed."""
        try:
            work()
        except (OSError, sqlite3.OperationalError) as exc:
            if self.options.once or not disk_full(exc):
                raise
            if not self._disk_full:
                log.error("data disk full; reconcile passes stay incomplete until space is freed", error=str(exc))
            self._disk_full = True
            return False
        return True

    def run(self, poll: Callable[[], None] | None = None, interval: float = 0.5,
            stop: threading.Event | None = None) -> int:
        """Reconcile until converged (``once``) or until ``stop`` is set; returns an exit status."""
        stop = stop or threading.Event()
        while not stop.is_set():
            polled = poll is None or self._survive_full_disk(poll)
            stepped = self._survive_full_disk(self.step)  # even after a failed poll: the pass may free space
            if polled and stepped and self._disk_full:
                log.info("reconcile passes complete again")
                self._disk_full = False
            if self.options.once and self.converged():
                self.step()  # settle dependants of the last finished task and report them
                if self.converged():
                    return 1 if self.has_errors() else 0
            self.wake.wait(interval)
            self.wake.clear()
        return 1 if self.has_errors() else 0


def _is_uuid(value: str) -> bool:
    return len(value) == 36 and value.count("-") == 4


def _serving_containers(d: DesiredState) -> set[str]:
    """The volumes used by an app that runs from a container image: a blank one of them is a directory."""
    found: set[str] = set()
    for app in d.apps.values():
        refs = {r.uuid for r in app.volume_refs}
        for other in refs:
            vol = d.volumes.get(other)
            tree = d.content_trees.get(vol.content_tree_id or "") if vol else None
            if tree is not None and tree.format is ImageFormat.CONTAINER:
                found |= refs
                break
    return found
