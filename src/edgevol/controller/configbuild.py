"""Build the ``EdgeDevConfig`` a device downloads, and the hash that lets it skip a download.

Why a pure function of a snapshot: the store validates every change by
building the config it would hand out and running the device's own parser on
it, so the builder must not depend on a live store.

Datastore credentials go out in clear (``apiKey``/``password``) or encrypted
for the device (``cipherData`` plus an entry in ``cipherContexts``), as
:class:`CredentialEncryption` decides. The encryption is deterministic (see
:func:`edgevol.trust.cipher.encrypt_credentials`): equal inputs give equal
bytes, so the config hash of an unchanged config stays the same poll after
poll, and across controller restarts, without any cache.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from edgevol.api import messages as m
from edgevol.controller.records import ConfigSnapshot, Datastore, Device
from edgevol.log import get_logger
from edgevol.trust.cipher import SHA256_16, SHA256_32, CipherError, encrypt_credentials
from edgevol.trust.pki import Credential

log = get_logger("edgevol.controller.config")

_ORIGIN = {"blank": m.VolumeContentOriginType.VCOT_BLANK,
           "download": m.VolumeContentOriginType.VCOT_DOWNLOAD}


EncryptMode = Literal["auto", "always", "never"]
ENCRYPT_MODES: tuple[EncryptMode, ...] = ("auto", "always", "never")


class _SnapshotSource(Protocol):
    def config_snapshot(self, device: str) -> ConfigSnapshot: ...


@dataclass(frozen=True)
class CredentialEncryption:
    """Whether and how a datastore's apiKey/password reach a device encrypted.

    ``mode``: "never" sends them in clear; "auto" encrypts whenever it can
    and otherwise falls back to clear text, as Eden does
    (pkg/expect/encrypt.go:54-62); "always" never sends them in clear: a
    device that cannot get them encrypted gets no credentials at all (and
    the datastore refuses it), which is Eden's hard-error variant
    (pkg/expect/encrypt.go:64-67). The device API turns "auto" into "never"
    for a device that connects over loopback.

    ``ecdh`` is the controller's ECDH_EXCHANGE credential. ``hash_scheme`` is
    the one ``/certs`` lists its certificate with (sha256 of the PEM, 32
    bytes): the device finds the certificate by that exact hash.

    The device half of the exchange is the DEVICE_ECDH_EXCHANGE certificate
    the device sent in attest CERT, named by 16 bytes as EVE names it
    (eve pkg/pillar/cmd/tpmmgr/tpmmgr.go:1142-1185); that is the only key a
    real EVE device decrypts with (without it, EVE falls back to the clear
    fields, pkg/pillar/cmd/downloader/syncop.go:445-465). A device that sent
    none gets credentials encrypted for its registered device certificate.
    """

    ecdh: Credential
    mode: EncryptMode = "auto"
    hash_scheme: int = SHA256_32

    def apply(self, cfg: Any, entry: Any, ds: Datastore, device: Device) -> None:
        """Replace ``entry``'s clear credentials by ``cipherData`` (and a context in ``cfg``) if the mode says so."""
        if self.mode == "never" or not (ds.api_key or ds.password):
            return
        try:
            if not device.device_cert_pem:
                raise CipherError("the device is not registered, so there is no certificate to encrypt for")
            clear = m.EncryptionBlock(dsAPIKey=ds.api_key, dsPassword=ds.password)
            if device.device_ecdh_cert_pem:
                target, scheme = device.device_ecdh_cert_pem, SHA256_16
            else:
                target, scheme = device.device_cert_pem, self.hash_scheme
            context, block = encrypt_credentials(clear, target, self.ecdh, hash_scheme=scheme,
                                                 controller_hash_scheme=self.hash_scheme)
        except CipherError as exc:
            if self.mode == "auto":
                return
            log.warning("datastore credentials withheld: they cannot be encrypted for this device",
                        device=device.uuid, datastore=ds.uuid, reason=str(exc))
            entry.apiKey, entry.password = "", ""
            return
        # Eden's datastore rule: cipherData in, apiKey/password out (pkg/expect/encrypt.go:36-52).
        entry.apiKey, entry.password = "", ""
        entry.cipherData.CopyFrom(block)
        if all(c.contextId != context.contextId for c in cfg.cipherContexts):
            cfg.cipherContexts.append(context)


def config_from_snapshot(snap: ConfigSnapshot, credentials: CredentialEncryption | None = None) -> Any:
    """The device's desired state as the API message; objects in a stable order.

    Without ``credentials`` datastore credentials are sent in clear (the
    store's validation builds the config this way).
    """
    cfg = m.EdgeDevConfig()
    cfg.id.uuid = snap.device.uuid
    cfg.id.version = str(snap.device.config_version)
    for ds in snap.datastores:
        entry = cfg.datastores.add(id=ds.uuid, dType=ds.type, fqdn=ds.fqdn, apiKey=ds.api_key,
                                   password=ds.password, dpath=ds.dpath, region=ds.region,
                                   dsCertPEM=list(ds.ca_pems))
        if credentials is not None:
            credentials.apply(cfg, entry, ds, snap.device)
    for ct in snap.content_trees:
        # dsId for older devices, ds_ids_list for newer ones; both name the same datastore.
        entry = cfg.contentInfo.add(uuid=ct.uuid, dsId=ct.datastore_uuid, ds_ids_list=[ct.datastore_uuid],
                                    URL=ct.url, iformat=ct.format, sha256=ct.sha256 or "",
                                    maxSizeBytes=ct.max_size_bytes, displayName=ct.name,
                                    generation_count=ct.generation_count)
        if ct.signature:
            entry.siginfo.signercerturl = ct.signer_cert_url
            entry.siginfo.intercertsurl = ct.intermediate_cert_url
            entry.siginfo.signature = ct.signature
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


def build_config(store: _SnapshotSource, device_uuid: str, credentials: CredentialEncryption | None = None) -> Any:
    """The ``EdgeDevConfig`` for one device (raises the store's ``NotFound`` for an unknown one)."""
    return config_from_snapshot(store.config_snapshot(device_uuid), credentials)


def config_hash(cfg: Any) -> str:
    """sha256 hex of the deterministic serialisation: equal configs, equal hashes."""
    return hashlib.sha256(cfg.SerializeToString(deterministic=True)).hexdigest()
