"""Clear datastore credentials from encrypted ones (``cipherData``), with the device's own key.

The device decrypts when it opens a datastore, so the clear apiKey/password
live only inside the datastore client, never in the model, the state
database or a log line. The controller's certificates come from the verified
copy of ``/certs`` the uplink keeps (:func:`controller_certs_path`).

A failure is a :class:`CredentialsError`, a permanent datastore error: every
download from that datastore reports it, and the agent tries again as soon
as the config or the controller's certificates change (:meth:`epoch`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

from google.protobuf.message import DecodeError

from edgevol.api import messages as m
from edgevol.device.datastores.base import PermanentError
from edgevol.device.uplink.identity import controller_certs_path, device_credential, ecdh_credential, identity_dir
from edgevol.log import get_logger
from edgevol.model.desired import Datastore

if TYPE_CHECKING:  # cryptography is imported only when a datastore has encrypted credentials
    from edgevol.trust.pki import Credential

log = get_logger("edgevol.credentials")


class CredentialsError(PermanentError):
    """A datastore's encrypted credentials cannot be decrypted; the message says why (no secret in it)."""

    retry_hint = "tried again when a new config or new controller certificates arrive"


class DatastoreCredentials:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir)

    def epoch(self) -> tuple[int, int, int] | None:
        """Changes whenever the controller's certificates file is replaced (it is written atomically)."""
        try:
            st = controller_certs_path(self.data_dir).stat()
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def resolve(self, spec: Datastore) -> Datastore:
        """``spec`` with its decrypted credentials in ``api_key``/``password`` (unchanged without cipherData).

        As EVE's downloader: the decrypted block replaces the clear fields;
        when decryption fails and the config also has clear credentials, those
        are used (pkg/pillar/cmd/downloader/syncop.go:445-465); otherwise the
        datastore cannot be used and :class:`CredentialsError` says why.
        """
        if spec.encrypted is None:
            return spec
        from edgevol.trust.cipher import CipherError

        try:
            clear = self._decrypt(spec)
        except CipherError as exc:
            if spec.api_key or spec.password:
                log.warning("encrypted datastore credentials unusable; using the clear ones", datastore=spec.uuid,
                            reason=str(exc))
                return dataclasses.replace(spec, encrypted=None)
            raise CredentialsError(f"datastore {spec.uuid}: its encrypted credentials (cipherData) cannot be "
                                   f"used: {exc}") from None
        return dataclasses.replace(spec, api_key=clear.dsAPIKey, password=clear.dsPassword, encrypted=None)

    def _decrypt(self, spec: Datastore) -> m.EncryptionBlock:
        from edgevol.trust.cipher import CipherError, UnknownCertificate, decrypt_credentials
        from edgevol.trust.pki import TrustError

        assert spec.encrypted is not None
        block = m.CipherBlock.FromString(spec.encrypted.block)
        context = m.CipherContext.FromString(spec.encrypted.context) if spec.encrypted.context is not None else None
        path = controller_certs_path(self.data_dir)
        try:
            certs = m.ZControllerCert.FromString(path.read_bytes()).certs
        except FileNotFoundError:
            certs = None  # checked in EVE's order: an unknown context is still reported as such
        except (OSError, DecodeError) as exc:
            raise CipherError(f"the controller certificates in {path} cannot be read: "
                              f"{getattr(exc, 'strerror', None) or exc}") from None
        try:
            device = self._device_half(context)
        except (OSError, TrustError) as exc:
            raise CipherError(f"the device key cannot be used: {exc}") from None
        try:
            return decrypt_credentials(block, context, device, certs or [])
        except UnknownCertificate as exc:
            if certs is None:
                raise UnknownCertificate(f"{exc} (the device has not received the controller's certificates "
                                         "yet)") from None
            raise

    def _device_half(self, context: m.CipherContext | None) -> Credential:
        """The key the context was made for: the device's ECDH key (as EVE's controllers use it) or its device key.

        ``deviceCertHash`` names the certificate (sha256 of its PEM, cut per
        ``hashScheme``); an unknown one falls to the device key, and the
        decryption then reports the mismatch.
        """
        from edgevol.trust.pki import pem_hash

        ecdh_path = identity_dir(self.data_dir) / "ecdh.pem"
        if context is not None and ecdh_path.exists():
            ecdh = ecdh_credential(self.data_dir)
            try:
                if pem_hash(ecdh.cert_pem, context.hashScheme) == bytes(context.deviceCertHash):
                    return ecdh
            except ValueError:
                pass
        return device_credential(self.data_dir)
