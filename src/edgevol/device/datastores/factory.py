"""One client per configured datastore, and one way to fetch a blob from any of them.

Clients are kept for the life of the agent so connections (and registry
tokens) are reused across blobs; a datastore whose settings change in the
config gets a new client because the settings are part of the cache key.
Encrypted credentials are decrypted (by ``credentials``) only to open a
client, so the clear ones exist nowhere else.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from edgevol.device.datastores.bandwidth import Bandwidth
from edgevol.device.datastores.base import (
    BytesSink,
    Cancelled,
    Datastore,
    DatastoreError,
    PermanentError,
    ProgressFn,
    Sink,
    TransientError,
)
from edgevol.device.datastores.oci_refs import split_registry_address
from edgevol.device.datastores.provenance import SourceSink, source_key
from edgevol.log import get_logger
from edgevol.model.desired import Datastore as DatastoreSpec
from edgevol.model.desired import DatastoreKind, ProxySettings

if TYPE_CHECKING:  # each kind's client is imported when a datastore of that kind is first opened
    from edgevol.device.datastores.registry import RegistryClient


log = get_logger("edgevol.datastores")


@dataclass(frozen=True)
class BlobSource:
    """Where one blob comes from: a datastore and a locator inside it.

    For an HTTP datastore the locator is the content tree URL; for a registry
    it is the repository (the blob is addressed by its digest).
    """

    datastore: DatastoreSpec
    locator: str
    max_size: int | None = None
    expected_size: int | None = None
    # Other places with the same bytes, tried in order within an attempt when this one fails: the content
    # tree's fallback datastores (ds_ids_list), then other content trees naming the same sha256.
    alternates: tuple[BlobSource, ...] = ()

    def describe(self) -> str:
        return self.locator

    def all(self) -> list[BlobSource]:
        return [self, *self.alternates]


class DatastoreClients:
    def __init__(self, read_timeout: float = 30.0,
                 credentials: Callable[[DatastoreSpec], DatastoreSpec] | None = None) -> None:
        self._lock = threading.Lock()
        # Turns a spec with cipherData into one with clear credentials, or raises a PermanentError.
        self._credentials = credentials
        self._clients: dict[tuple[DatastoreSpec, float, ProxySettings], Datastore | RegistryClient] = {}
        # From the config (edgevol.download.read.timeout.seconds); part of the cache key, so a
        # change takes effect with the next attempt while attempts in flight keep their client.
        self.read_timeout = read_timeout
        # The download proxies (config over environment: proxy.effective); part of the cache key too.
        self.proxy = ProxySettings()
        # Ranged reads at once for one big object on a store that allows it (edgevol.download.parallel).
        self.range_streams = 1
        # Download caps (edgevol.download.*max.bytes.per.second): blob bytes only, never the controller link.
        self.bandwidth = Bandwidth()

    def _client(self, spec: DatastoreSpec) -> Datastore | RegistryClient:
        with self._lock:
            key = (spec, self.read_timeout, self.proxy)
            client = self._clients.get(key)
            if client is None:
                clear = self._credentials(spec) if self._credentials is not None else spec
                client = self._clients[key] = _open(clear, self.read_timeout, self.proxy)
            return client

    def set_caps(self, device: int, datastore_default: int, datastores: Mapping[str, int]) -> None:
        """Download caps in bytes per second (0: none); downloads in flight follow at once."""
        self.bandwidth.configure(device, datastore_default, datastores)

    def registry(self, spec: DatastoreSpec) -> RegistryClient:
        from edgevol.device.datastores.registry import RegistryClient

        client = self._client(spec)
        if not isinstance(client, RegistryClient):
            raise PermanentError(f"datastore {spec.uuid} is not a container registry")
        return client

    def fetch_blob(self, source: BlobSource, sha256: str, sink: Sink, *, progress: ProgressFn | None,
                   cancel: threading.Event | None) -> None:
        """One attempt to deliver the blob's bytes from ``sink.offset`` on, from ``source`` or, when that
        fails, from each of its alternates in turn (EVE's downloader walks a content tree's datastore list
        the same way, keeping every error: pkg/pillar/cmd/downloader/downloader.go:512-540). A failure of
        them all is transient if any one was, and names every datastore's error. Each source sees the
        partial through a ``SourceSink``, so it is only ever shown its own validator."""
        sources = source.all()
        errors: list[DatastoreError] = []
        for n, one in enumerate(sources, start=1):
            try:
                self._fetch_from(one, sha256, sink, progress=progress, cancel=cancel)
                return
            except DatastoreError as exc:
                errors.append(exc)
                if n < len(sources):
                    log.warning("datastore failed; trying the next one", sha256=sha256, datastore=one.datastore.uuid,
                                error=str(exc))
        if len(errors) == 1:
            raise errors[0]
        summary = "; ".join(f"datastore {s.datastore.uuid}: {e}" for s, e in zip(sources, errors))
        if any(e.retryable for e in errors):
            raise TransientError(f"every datastore failed: {summary}")
        raise PermanentError(f"every datastore failed: {summary}")

    def _fetch_from(self, source: BlobSource, sha256: str, sink: Sink, *, progress: ProgressFn | None,
                    cancel: threading.Event | None) -> None:
        client = self._client(source.datastore)
        if cancel is not None and cancel.is_set():
            raise Cancelled()
        # Charged to the datastore read from, so an alternate counts against its own cap; the validator the
        # source keeps goes through the throttle to the partial.
        sink = SourceSink(self.bandwidth.throttle(sink, source.datastore.uuid, cancel),
                          source_key(source.datastore, source.locator))
        if _is_registry(client):
            client.fetch_blob(source.locator, f"sha256:{sha256}", sink, max_size=source.max_size,
                              progress=progress, cancel=cancel, expected_size=source.expected_size)
        elif getattr(client, "parallel_ranges", False):
            client.fetch(source.locator, sink, max_size=source.max_size, progress=progress, cancel=cancel,
                         streams=self.range_streams)
        else:
            client.fetch(source.locator, sink, max_size=source.max_size, progress=progress, cancel=cancel)

    def fetch_small(self, spec: DatastoreSpec, suffix: str, limit: int) -> bytes:
        """One attempt to fetch a small file (a certificate) from an HTTP(S) datastore into memory."""
        client = self._client(spec)
        if _is_registry(client):
            raise PermanentError(f"datastore {spec.uuid} is a container registry, which serves no files")
        sink = BytesSink()
        client.fetch(suffix, sink, max_size=limit, progress=None, cancel=None)
        return sink.getvalue()

    def close(self) -> None:
        with self._lock:
            for client in self._clients.values():
                client.close()
            self._clients.clear()


def _is_registry(client: object) -> bool:
    """Without importing the registry client: a client of it exists only once its module was imported."""
    from edgevol.device.datastores.registry import RegistryClient

    return isinstance(client, RegistryClient)


def _open(spec: DatastoreSpec, read_timeout: float, proxy: ProxySettings) -> Datastore | RegistryClient:
    if spec.kind in (DatastoreKind.HTTP, DatastoreKind.HTTPS):
        from edgevol.device.datastores.http import HttpDatastore

        return HttpDatastore(spec.fqdn, spec.dpath, secure_default=spec.kind is DatastoreKind.HTTPS,
                             api_key=spec.api_key, password=spec.password, ca_pems=spec.ca_pems,
                             read_timeout=read_timeout, proxy=proxy)
    if spec.kind is DatastoreKind.CONTAINER_REGISTRY:
        from edgevol.device.datastores.registry import RegistryClient

        scheme, host, _path = split_registry_address(spec.fqdn)
        return RegistryClient(host, scheme, api_key=spec.api_key, password=spec.password, ca_pems=spec.ca_pems,
                              read_timeout=read_timeout, proxy=proxy)
    # Each cloud store's module imports its client library only when a device has such a datastore.
    if spec.kind is DatastoreKind.S3:
        from edgevol.device.datastores.s3 import S3Datastore

        return S3Datastore(spec.fqdn, spec.dpath, api_key=spec.api_key, password=spec.password, region=spec.region,
                           ca_pems=spec.ca_pems, read_timeout=read_timeout, proxy=proxy)
    if spec.kind is DatastoreKind.AZURE_BLOB:
        from edgevol.device.datastores.azure import AzureBlobDatastore

        return AzureBlobDatastore(spec.fqdn, spec.dpath, api_key=spec.api_key, password=spec.password,
                                  ca_pems=spec.ca_pems, read_timeout=read_timeout, proxy=proxy)
    if spec.kind is DatastoreKind.GOOGLE_STORAGE:
        from edgevol.device.datastores.gcs import GcsDatastore

        return GcsDatastore(spec.fqdn, spec.dpath, password=spec.password, ca_pems=spec.ca_pems,
                            read_timeout=read_timeout, proxy=proxy)
    if spec.kind is DatastoreKind.SFTP:
        from edgevol.device.datastores.sftp import SftpDatastore

        return SftpDatastore(spec.fqdn, spec.dpath, api_key=spec.api_key, password=spec.password,
                             read_timeout=read_timeout, proxy=proxy)
    raise PermanentError(f"datastore kind {spec.kind.value} is not supported by this device")
