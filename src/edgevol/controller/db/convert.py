"""ORM rows to the frozen records the store hands out."""

from __future__ import annotations

from edgevol.controller import records as r
from edgevol.controller.db import models as db


def device_rec(d: db.Device) -> r.Device:
    return r.Device(uuid=d.uuid, name=d.name, serial=d.serial, created_at=d.created_at,
                    config_version=d.config_version, onboard_cert_hash=d.onboard_cert_hash,
                    device_cert_hash=d.device_cert_hash, registered_at=d.registered_at,
                    last_seen_at=d.last_seen_at, onboard_cert_pem=d.onboard_cert_pem,
                    device_cert_pem=d.device_cert_pem, device_ecdh_cert_pem=d.device_ecdh_cert_pem,
                    config_acked_version=d.config_acked_version)


def ds_rec(d: db.Datastore) -> r.Datastore:
    return r.Datastore(uuid=d.uuid, name=d.name, type=d.type, fqdn=d.fqdn, dpath=d.dpath, region=d.region,
                       created_at=d.created_at, api_key=d.api_key, password=d.password,
                       ca_pems=tuple(p.encode("ascii") for p in d.ca_pems))


def ct_rec(c: db.ContentTree) -> r.ContentTree:
    return r.ContentTree(uuid=c.uuid, device_uuid=c.device_uuid, name=c.name, datastore_uuid=c.datastore_uuid,
                         url=c.url, format=c.format, sha256=c.sha256, max_size_bytes=c.max_size_bytes,
                         generation_count=c.generation_count, created_at=c.created_at,
                         signer_cert_url=c.signer_cert_url or "", intermediate_cert_url=c.intermediate_cert_url or "",
                         signature=c.signature)


def vol_rec(v: db.Volume) -> r.Volume:
    return r.Volume(uuid=v.uuid, device_uuid=v.device_uuid, name=v.name, origin=v.origin,
                    content_tree_uuid=v.content_tree_uuid, max_size_bytes=v.max_size_bytes,
                    readonly=v.readonly, generation_count=v.generation_count, created_at=v.created_at)


def reported_rec(o: db.ReportedObject) -> r.Reported:
    return r.Reported(device_uuid=o.device_uuid, kind=o.kind, object_key=o.object_key,
                      generation=o.generation, display_name=o.display_name, state=o.state,
                      progress=o.progress, max_size_bytes=o.max_size_bytes, cur_size_bytes=o.cur_size_bytes,
                      ref_count=o.ref_count, error=r.ReportedError.from_json(o.error),
                      updated_at=o.updated_at, reported_at=o.reported_at, payload=o.payload)
