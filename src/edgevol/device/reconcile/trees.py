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
import threading
import time
from typing import Any, Callable

import structlog

from edgevol.api import messages as m
from edgevol.device.cas import ContentStore
from edgevol.device.datastores.base import ConfigError, NotFoundError, PermanentError, TransientError
from edgevol.device.datastores.credentials import CredentialsError
from edgevol.device.datastores.factory import BlobSource, DatastoreClients
from edgevol.device.datastores.oci_manifest import INDEX_MEDIA_TYPES, parse_index, parse_manifest, select_platform
from edgevol.device.datastores.oci_refs import parse_image_ref
from edgevol.device.datastores.registry import ManifestDigestMismatch, RegistryClient
from edgevol.device.errors import error, human_bytes
from edgevol.device.retry import Backoff
from edgevol.device.state import StateStore
from edgevol.model.desired import ContentTree, Datastore, ObjectKind, Settings

log = structlog.get_logger("edgevol.trees")
S = m.ZSwState


def _hex(digest: str) -> str:
    return digest.removeprefix("sha256:")


def tree_spec(ct: ContentTree) -> dict[str, Any]:
    """What identifies a content tree's content; a change means fetch again (and re-resolve)."""
    return {"datastore": ct.datastore_id, "url": ct.url, "format": ct.format.value, "sha256": ct.sha256,
            "max_size": ct.max_size_bytes, "generation": ct.generation}


def layout_blobs(layout: dict[str, Any]) -> list[dict[str, Any]]:
    """Every blob of a resolved image, in report order: manifests, config, layers."""
    return [*layout["manifests"], layout["config"], *layout["layers"]]


def layout_sources(layout: dict[str, Any], ds: Datastore) -> dict[str, BlobSource]:
    """Config and layers to download; each must arrive with exactly the size its descriptor states."""
    return {b["digest"]: BlobSource(ds, layout["repository"], max_size=b["size"], expected_size=b["size"])
            for b in (layout["config"], *layout["layers"])}


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

    def resolve(self, key: str, ct: ContentTree, ds: Datastore, settings: Settings, once: bool) -> None:
        row = self.store.get("content_trees", ct.uuid)
        if row is None:
            return
        spec = tree_spec(ct)
        attempt = row["attempts"] + 1
        try:
            ref = parse_image_ref(ds.fqdn, ds.dpath, ct.url)
            if ct.sha256:
                ref = dataclasses.replace(ref, digest=f"sha256:{ct.sha256}")
            client = self.clients.registry(ds)
            resolved = row["resolved"]
            fresh = not resolved or resolved.get("spec") != spec
            if fresh:
                digest = ref.digest
                if digest is None:
                    self.store.update("content_trees", (ct.uuid,), state=S.RESOLVING_TAG, progress=0)
                    digest = client.resolve(ref).digest
                    log.info("tag resolved", content_tree=ct.uuid, reference=str(ref), digest=digest)
                resolved = {"digest": digest, "reference": str(ref), "spec": spec}
                self.store.update("content_trees", (ct.uuid,), sha256=_hex(digest), state=S.RESOLVED_TAG)
            try:
                layout = self._walk(client, ref.repository, resolved["digest"], ct)
            except NotFoundError as exc:
                if not fresh or ref.digest is not None:
                    raise
                # The digest came from hashing the tag's answer (no Docker-Content-Digest): a byte
                # damaged in transit, or a tag moved in between, names a manifest that is not there.
                raise TransientError(f"{exc}; the tag {ref} will be resolved again") from exc
        except (TransientError, ManifestDigestMismatch) as exc:  # bytes damaged in transit: retry, bounded
            backoff = Backoff(settings.retry_base_seconds, settings.retry_cap_seconds,
                              settings.download_max_attempts)
            if backoff.exhausted(attempt):
                self._fail(key, ct, attempt, f"{exc} (gave up after {attempt} attempts)", settings, once)
            else:
                delay = getattr(exc, "retry_after", None) or backoff.delay(attempt)
                self.store.update("content_trees", (ct.uuid,), attempts=attempt, next_retry=time.time() + delay,
                                  error=error(str(exc), ObjectKind.CONTENT_TREE, ct.uuid, ct.display_name,
                                              severity="warning", retry=f"attempt {attempt + 1} of "
                                              f"{backoff.max_attempts} in {delay:.1f}s"))
            return
        except CredentialsError as exc:
            self._fail(key, ct, attempt, str(exc), settings, once,
                       hint=exc.retry_hint)
            return
        except (PermanentError, ConfigError, ValueError) as exc:
            self._fail(key, ct, attempt, str(exc), settings, once)
            return
        # Latched only now, with the walked layout: a digest whose manifests could not be read is
        # never kept, so the next attempt resolves the tag afresh.
        self.store.update("content_trees", (ct.uuid,), resolved=resolved, layout=layout, attempts=0, next_retry=0,
                          error=None, component_shas=[b["digest"] for b in layout_blobs(layout)])

    def _walk(self, client: RegistryClient, repository: str, digest: str, ct: ContentTree) -> dict[str, Any]:
        """Fetch (or read back from the CAS) the manifests and work out config and layers."""
        media_type, body = self._manifest(client, repository, digest, None)
        manifests = [{"digest": _hex(digest), "media_type": media_type, "size": len(body)}]
        if media_type in INDEX_MEDIA_TYPES:
            chosen = select_platform(parse_index(body, media_type))
            media_type, body = self._manifest(client, repository, chosen.digest, chosen.media_type)
            manifests.append({"digest": _hex(chosen.digest), "media_type": media_type, "size": len(body)})
        config, layers = parse_manifest(body, media_type)
        layout = {
            "repository": repository,
            "manifests": manifests,
            "config": {"digest": _hex(config.digest), "media_type": config.media_type, "size": config.size},
            "layers": [{"digest": _hex(l.digest), "media_type": l.media_type, "size": l.size} for l in layers],
        }
        total = sum(b["size"] for b in layout_blobs(layout))
        if ct.max_size_bytes and total > ct.max_size_bytes:
            raise PermanentError(f"image {digest} needs {human_bytes(total)} ({total} bytes), more than "
                                 f"maxSizeBytes {ct.max_size_bytes}")
        return layout

    def _manifest(self, client: RegistryClient, repository: str, digest: str,
                  media_type: str | None) -> tuple[str, bytes]:
        hexd = _hex(digest)
        with self._guard:
            lock = self._digest_locks.setdefault(hexd, threading.Lock())
        with lock:
            return self._manifest_locked(client, repository, digest, hexd, media_type)

    def _manifest_locked(self, client: RegistryClient, repository: str, digest: str, hexd: str,
                         media_type: str | None) -> tuple[str, bytes]:
        row = self.store.get("blobs", hexd)
        if self.cas.has(hexd) and row is not None and row["media_type"]:
            return row["media_type"], self.cas.blob_path(hexd).read_bytes()
        fetched_type, body = client.fetch_manifest(repository, digest)
        media_type = fetched_type or media_type or ""
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
        return media_type, body

    def _fail(self, key: str, ct: ContentTree, attempt: int, desc: str, settings: Settings, once: bool,
              hint: str = "") -> None:
        slow = settings.slow_retry_seconds
        log.error("content tree failed", content_tree=ct.uuid, error=desc)
        self.on_failure(key)
        retry = "not retried in --once mode" if once else f"retried in {slow:.0f}s"
        self.store.update("content_trees", (ct.uuid,), state=S.ERROR, attempts=attempt,
                          next_retry=time.time() + slow, error=error(
                              desc, ObjectKind.CONTENT_TREE, ct.uuid, ct.display_name,
                              retry=f"{hint}; {retry}" if hint else retry))

