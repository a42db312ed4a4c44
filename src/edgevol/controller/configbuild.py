"""Build the ``EdgeDevConfig`` a device downloads, and the hash that lets it skip a download.

Why a pure function of a snapshot: the store validates every change by
building the config it would hand out and running the device's own parser on
it, so the builder must not depend on a live store.
"""

from __future__ import annotations

import hashlib
from typing import Any, Protocol

from edgevol.api import messages as m
from edgevol.controller.records import ConfigSnapshot

_ORIGIN = {"blank": m.VolumeContentOriginType.VCOT_BLANK,
           "download": m.VolumeContentOriginType.VCOT_DOWNLOAD}


class _SnapshotSource(Protocol):
    def config_snapshot(self, device: str) -> ConfigSnapshot: ...


def config_from_snapshot(snap: ConfigSnapshot) -> Any:
    """The device's desired state as the API message; objects in a stable order."""
    cfg = m.EdgeDevConfig()
    cfg.id.uuid = snap.device.uuid
    cfg.id.version = str(snap.device.config_version)
    for ds in snap.datastores:
        cfg.datastores.add(id=ds.uuid, dType=ds.type, fqdn=ds.fqdn, apiKey=ds.api_key,
                           password=ds.password, dpath=ds.dpath, region=ds.region,
                           dsCertPEM=list(ds.ca_pems))
    for ct in snap.content_trees:
        # dsId for older devices, ds_ids_list for newer ones; both name the same datastore.
        cfg.contentInfo.add(uuid=ct.uuid, dsId=ct.datastore_uuid, ds_ids_list=[ct.datastore_uuid],
                            URL=ct.url, iformat=ct.format, sha256=ct.sha256 or "",
                            maxSizeBytes=ct.max_size_bytes, displayName=ct.name,
                            generation_count=ct.generation_count)
    for vol in snap.volumes:
        v = cfg.volumes.add(uuid=vol.uuid, generationCount=vol.generation_count,
                            maxsizebytes=vol.max_size_bytes, readonly=vol.readonly, displayName=vol.name)
        v.origin.type = _ORIGIN[vol.origin]
        if vol.content_tree_uuid:
            v.origin.downloadContentTreeID = vol.content_tree_uuid
    for app in snap.apps:
        a = cfg.apps.add(displayname=app.name, activate=app.activate)
        a.uuidandversion.uuid = app.uuid
        a.purge.counter = app.purge_counter
        for ref in app.volume_refs:
            a.volumeRefList.add(uuid=ref.volume_uuid, generationCount=ref.generation_count)
    return cfg


def build_config(store: _SnapshotSource, device_uuid: str) -> Any:
    """The ``EdgeDevConfig`` for one device (raises the store's ``NotFound`` for an unknown one)."""
    return config_from_snapshot(store.config_snapshot(device_uuid))


def config_hash(cfg: Any) -> str:
    """sha256 hex of the deterministic serialisation: equal configs, equal hashes."""
    return hashlib.sha256(cfg.SerializeToString(deterministic=True)).hexdigest()
