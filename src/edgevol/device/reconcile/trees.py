"""Container content trees: resolve the tag, walk index → manifest → config + layers.

Resolution is latched: the digest a tag resolved to is stored with the
content tree's spec once its manifests have been read, so a restart or a
re-read config keeps the same image even if the tag moves, until the content
tree itself changes (URL, datastore, sha256 or generation_count). Manifests
are small; they are fetched here, checked against their digest and stored in
the CAS. Config and layers are ordinary blobs that the blob downloader
fetches in parallel.
"""

from __future__ import annotations

import dataclasses
import hashlib
import threading
import time
from typing import TYPE_CHECKING, Any, Callable

from edgevol.api import messages as m
from edgevol.device.cas import ContentStore
from edgevol.device.datastores.base import (
    Cancelled,
    ConfigError,
    ManifestDigestMismatch,
    NotFoundError,
    PermanentError,
    TransientError,
)
from edgevol.device.datastores.credentials import CredentialsError
from edgevol.device.datastores.factory import BlobSource, DatastoreClients
from edgevol.device.datastores.oci_refs import parse_image_ref
from edgevol.device.errors import error, human_bytes, next_attempt, slow_retry
from edgevol.device.retry import Backoff
from edgevol.device.state import StateStore
from edgevol.log import get_logger
from edgevol.model.desired import ContentTree, Datastore, DatastoreKind, ImageFormat, ObjectKind, Settings

if TYPE_CHECKING:  # the registry client (httpx) is imported when a device first talks to a registry
    from edgevol.device.datastores.registry import RegistryClient
# oci_manifest is imported by the functions that parse manifests: a config without container images or
# blob trees never loads it (start-up, see tests/test_startup_imports.py).

log = get_logger("edgevol.trees")
S = m.ZSwState
MAX_MANIFEST_BYTES = 4 << 20  # as the registry client caps a manifest


def _hex(digest: str) -> str:
    return digest.removeprefix("sha256:")


def tree_spec(ct: ContentTree) -> dict[str, Any]:
    """What identifies a content tree's content; a change means fetch again (and re-resolve)."""
    return {"datastore": ct.datastore_id, "url": ct.url, "format": ct.format.value, "sha256": ct.sha256,
            "max_size": ct.max_size_bytes, "generation": ct.generation}


def layout_blobs(layout: dict[str, Any]) -> list[dict[str, Any]]:
    """Every blob of a resolved image, in report order: manifests, config, layers."""
    return [*layout["manifests"], layout["config"], *layout["layers"]]


def layout_sources(layout: dict[str, Any], ds: Datastore, url: str) -> dict[str, BlobSource]:
    """Config and layers to download from ``ds``; each must arrive with exactly the size its descriptor states.

    From a registry a blob is addressed by its repository on that registry (a fallback
    registry may keep the image under another namespace) and its digest; from an OCI
    layout on an HTTP datastore by its path ``<layout>/blobs/sha256/<hex>``.
    """
    from_layout = layout.get("source") == "layout"
    repository = layout["repository"] if from_layout else parse_image_ref(ds.fqdn, ds.dpath, url).repository

    def locator(digest: str) -> str:
        return f"{repository}/blobs/sha256/{digest}" if from_layout else repository

    return {b["digest"]: BlobSource(ds, locator(b["digest"]), max_size=b["size"], expected_size=b["size"])
            for b in (layout["config"], *layout["layers"])}


def _layout(repository: str, manifests: list[dict[str, Any]], config: Any, layers: list[Any], *,
            blob_tree: bool) -> dict[str, Any]:
    """What a resolved tree is made of, as stored with its row; a BLOB_TREE's blobs carry their file names."""
    from edgevol.device.datastores.oci_manifest import TITLE_ANNOTATION

    def entry(d: Any) -> dict[str, Any]:
        out = {"digest": _hex(d.digest), "media_type": d.media_type, "size": d.size}
        if blob_tree:
            out["title"] = d.annotations[TITLE_ANNOTATION]
        return out

    return {"repository": repository, "manifests": manifests,
            "config": {"digest": _hex(config.digest), "media_type": config.media_type, "size": config.size},
            "layers": [entry(d) for d in layers]}


def _check_size(layout: dict[str, Any], ct: ContentTree) -> None:
    total = sum(b["size"] for b in layout_blobs(layout))
    if ct.max_size_bytes and total > ct.max_size_bytes:
        raise PermanentError(f"{ct.url} needs {human_bytes(total)} ({total} bytes), more than "
                             f"maxSizeBytes {ct.max_size_bytes}")


def derive_status(layout: dict[str, Any], blobs: dict[str, dict[str, Any] | None]) -> dict[str, Any]:
    """A resolved tree's state, progress and size from its blobs' rows."""
    rows = [blobs.get(b["digest"]) for b in layout_blobs(layout)]
    total = sum(b["size"] for b in layout_blobs(layout)) or 1
    done = sum((r["size"] if r["state"] == S.LOADED else r["done_bytes"]) for r in rows if r)
    failed = next((r for r in rows if r and r["state"] == S.ERROR), None)
    if failed is not None:
        state = S.ERROR
    elif all(r and r["state"] == S.LOADED for r in rows):
        state = S.LOADED
    else:
        state = S.DOWNLOAD_STARTED
    return {"state": state, "progress": 100 if state == S.LOADED else min(99, done * 100 // total),
            "cur_size": done, "failed_blob": failed}


class ContainerResolver:
    def __init__(self, store: StateStore, cas: ContentStore, clients: DatastoreClients,
                 on_failure: Callable[[str], None]) -> None:
        self.store = store
        self.cas = cas
        self.clients = clients
        self.on_failure = on_failure
        # Trees naming the same image walk the same manifests at once: one fetch and store per digest.
        self._guard = threading.Lock()
        self._digest_locks: dict[str, threading.Lock] = {}

    def resolve(self, key: str, ct: ContentTree, datastores: list[Datastore], settings: Settings,
                once: bool, cancel: threading.Event | None = None) -> None:
        """Resolve the tag and walk the manifests from the tree's datastores in order (ds_ids_list), the
        first that answers winning, as EVE's downloader walks them (downloader.go:512-540).

        ``cancel`` (the tree left the config, or changed) is looked at before every request and every
        write: once set, the walk ends after the request in flight and writes nothing more."""
        try:
            self._resolve(key, ct, datastores, settings, once, cancel or threading.Event())
        except Cancelled:
            log.info("tree walk stopped", content_tree=ct.uuid)

    def _resolve(self, key: str, ct: ContentTree, datastores: list[Datastore], settings: Settings,
                 once: bool, cancel: threading.Event) -> None:
        row = self.store.get("content_trees", ct.uuid)
        if row is None:
            return
        spec = tree_spec(ct)
        attempt = row["attempts"] + 1
        failures: list[tuple[Datastore, PermanentError | TransientError]] = []
        for n, ds in enumerate(datastores, start=1):
            try:
                if ds.kind is DatastoreKind.CONTAINER_REGISTRY:
                    resolved, layout = self._from_registry(ct, ds, row["resolved"], spec, cancel)
                else:  # a BLOB_TREE in an OCI image layout on an HTTP(S) datastore
                    resolved, layout = self._from_layout(ct, ds, spec, cancel)
                break
            except (TransientError, PermanentError) as exc:
                failures.append((ds, exc))
                if n < len(datastores):
                    log.warning("datastore failed; trying the next one", content_tree=ct.uuid, datastore=ds.uuid,
                                error=str(exc))
            except ValueError as exc:  # an unusable reference
                failures.append((ds, ConfigError(str(exc))))
        else:
            _check(cancel)
            self._failed(key, ct, attempt, _combined(failures), settings, once)
            return
        _check(cancel)
        # Latched only now, with the walked layout: a digest whose manifests could not be read is
        # never kept, so the next attempt resolves the tag afresh.
        self.store.update("content_trees", (ct.uuid,), resolved=resolved, layout=layout, attempts=0, next_retry=0,
                          error=None, component_shas=[b["digest"] for b in layout_blobs(layout)])

    def _failed(self, key: str, ct: ContentTree, attempt: int, exc: PermanentError | TransientError,
                settings: Settings, once: bool) -> None:
        if isinstance(exc, (TransientError, ManifestDigestMismatch)):  # bytes damaged in transit: retry, bounded
            backoff = Backoff(settings.retry_base_seconds, settings.retry_cap_seconds,
                              settings.download_max_attempts)
            if backoff.exhausted(attempt):
                self._fail(key, ct, attempt, f"{exc} (gave up after {attempt} attempts)", settings, once)
            else:
                delay = getattr(exc, "retry_after", None) or backoff.delay(attempt)
                self.store.update("content_trees", (ct.uuid,), attempts=attempt, next_retry=time.time() + delay,
                                  error=error(str(exc), ObjectKind.CONTENT_TREE, ct.uuid, ct.display_name,
                                              severity="warning",
                                              retry=next_attempt(attempt, backoff.max_attempts, delay)))
        elif isinstance(exc, CredentialsError):
            self._fail(key, ct, attempt, str(exc), settings, once, hint=exc.retry_hint)
        else:
            self._fail(key, ct, attempt, str(exc), settings, once)

    def _from_registry(self, ct: ContentTree, ds: Datastore, resolved: dict[str, Any] | None,
                       spec: dict[str, Any], cancel: threading.Event) -> tuple[dict[str, Any], dict[str, Any]]:
        """Resolve the tag (unless latched) and walk the manifests: (resolved, layout)."""
        ref = parse_image_ref(ds.fqdn, ds.dpath, ct.url)
        if ct.sha256:
            ref = dataclasses.replace(ref, digest=f"sha256:{ct.sha256}")
        client = self.clients.registry(ds)
        fresh = not resolved or resolved.get("spec") != spec
        if fresh:
            digest = ref.digest
            if digest is None:
                _check(cancel)
                self.store.update("content_trees", (ct.uuid,), state=S.RESOLVING_TAG, progress=0)
                digest = client.resolve(ref).digest
                _check(cancel)
                log.info("tag resolved", content_tree=ct.uuid, reference=str(ref), digest=digest)
            resolved = {"digest": digest, "reference": str(ref), "spec": spec}
            _check(cancel)
            self.store.update("content_trees", (ct.uuid,), sha256=_hex(digest), state=S.RESOLVED_TAG)
        try:
            layout = self._walk(client, ref.repository, resolved["digest"], ct, cancel)
        except NotFoundError as exc:
            if not fresh or ref.digest is not None:
                raise
            # The digest came from hashing the tag's answer (no Docker-Content-Digest): a byte
            # damaged in transit, or a tag moved in between, names a manifest that is not there.
            raise TransientError(f"{exc}; the tag {ref} will be resolved again") from exc
        return resolved, layout

    def _from_layout(self, ct: ContentTree, ds: Datastore, spec: dict[str, Any],
                     cancel: threading.Event) -> tuple[dict[str, Any], dict[str, Any]]:
        """A BLOB_TREE served as an OCI image layout: the manifest is ``URL/blobs/sha256/<sha256>``."""
        from edgevol.device.datastores.oci_manifest import MEDIA_OCI_MANIFEST, parse_artifact

        assert ct.sha256 is not None
        base = ct.url.rstrip("/")
        hexd = ct.sha256
        with self._guard:
            lock = self._digest_locks.setdefault(hexd, threading.Lock())
        with lock:  # a tree naming the same manifest in a registry may be storing it right now
            row = self.store.get("blobs", hexd)
            if self.cas.has(hexd) and row is not None and row["media_type"]:
                body = self.cas.blob_path(hexd).read_bytes()
            else:
                _check(cancel)
                body = self.clients.fetch_small(ds, f"{base}/blobs/sha256/{hexd}", MAX_MANIFEST_BYTES)
                if hashlib.sha256(body).hexdigest() != hexd:
                    raise ManifestDigestMismatch(f"the manifest at {base}/blobs/sha256/{hexd[:12]}... hashes to "
                                                 f"{hashlib.sha256(body).hexdigest()[:12]}...")
                _check(cancel)
                self._store_manifest(hexd, MEDIA_OCI_MANIFEST, body, row)
        config, files = parse_artifact(body)
        layout = _layout(base, [{"digest": hexd, "media_type": MEDIA_OCI_MANIFEST, "size": len(body)}], config,
                         files, blob_tree=True)
        layout["source"] = "layout"
        _check_size(layout, ct)
        return {"digest": f"sha256:{hexd}", "reference": ct.url, "spec": spec}, layout

    def _walk(self, client: RegistryClient, repository: str, digest: str, ct: ContentTree,
              cancel: threading.Event) -> dict[str, Any]:
        """Fetch (or read back from the CAS) the manifests and work out config and layers (or files)."""
        from edgevol.device.datastores.oci_manifest import (
            INDEX_MEDIA_TYPES,
            parse_artifact,
            parse_index,
            parse_manifest,
            select_platform,
        )

        blob_tree = ct.format is ImageFormat.BLOB_TREE
        media_type, body = self._manifest(client, repository, digest, None, cancel)
        manifests = [{"digest": _hex(digest), "media_type": media_type, "size": len(body)}]
        if media_type in INDEX_MEDIA_TYPES:
            if blob_tree:
                raise PermanentError(f"{digest} is an image index; a BLOB_TREE is one artifact manifest")
            chosen = select_platform(parse_index(body, media_type))
            media_type, body = self._manifest(client, repository, chosen.digest, chosen.media_type, cancel)
            manifests.append({"digest": _hex(chosen.digest), "media_type": media_type, "size": len(body)})
        config, layers = parse_artifact(body, media_type) if blob_tree else parse_manifest(body, media_type)
        layout = _layout(repository, manifests, config, layers, blob_tree=blob_tree)
        _check_size(layout, ct)
        return layout

    def _manifest(self, client: RegistryClient, repository: str, digest: str,
                  media_type: str | None, cancel: threading.Event) -> tuple[str, bytes]:
        hexd = _hex(digest)
        with self._guard:
            lock = self._digest_locks.setdefault(hexd, threading.Lock())
        with lock:
            return self._manifest_locked(client, repository, digest, hexd, media_type, cancel)

    def _manifest_locked(self, client: RegistryClient, repository: str, digest: str, hexd: str,
                         media_type: str | None, cancel: threading.Event) -> tuple[str, bytes]:
        row = self.store.get("blobs", hexd)
        if self.cas.has(hexd) and row is not None and row["media_type"]:
            return row["media_type"], self.cas.blob_path(hexd).read_bytes()
        _check(cancel)
        fetched_type, body = client.fetch_manifest(repository, digest)
        media_type = fetched_type or media_type or ""
        _check(cancel)
        self._store_manifest(hexd, media_type, body, row)
        return media_type, body

    def _store_manifest(self, hexd: str, media_type: str, body: bytes, row: dict[str, Any] | None) -> None:
        """A manifest checked against its digest goes into the CAS as a LOADED blob."""
        if not self.cas.has(hexd):
            with self.cas.ingest(hexd, expected_size=len(body)) as ingest:
                ingest.write(body)
                ingest.commit()
        now = time.time()
        fields = dict(state=S.LOADED, progress=100, size=len(body), done_bytes=len(body), media_type=media_type)
        if row is None:
            self.store.insert("blobs", sha256=hexd, create_time=now, ref_change_time=now, **fields)
        else:
            self.store.update("blobs", (hexd,), **fields)

    def _fail(self, key: str, ct: ContentTree, attempt: int, desc: str, settings: Settings, once: bool,
              hint: str = "") -> None:
        slow = settings.slow_retry_seconds
        log.error("content tree failed", content_tree=ct.uuid, error=desc)
        self.on_failure(key)
        self.store.update("content_trees", (ct.uuid,), state=S.ERROR, attempts=attempt,
                          next_retry=time.time() + slow, error=error(
                              desc, ObjectKind.CONTENT_TREE, ct.uuid, ct.display_name,
                              retry=slow_retry(attempt, slow, once, hint)))


def _check(cancel: threading.Event) -> None:
    if cancel.is_set():
        raise Cancelled()


def _combined(failures: list[tuple[Datastore, PermanentError | TransientError]]) -> PermanentError | TransientError:
    """One datastore's error as it is; several named each, transient if waiting may help any of them."""
    if len(failures) == 1:
        return failures[0][1]
    summary = "; ".join(f"datastore {ds.uuid}: {exc}" for ds, exc in failures)
    if any(isinstance(exc, (TransientError, ManifestDigestMismatch)) for _, exc in failures):
        return TransientError(f"every datastore failed: {summary}")
    return PermanentError(f"every datastore failed: {summary}")
