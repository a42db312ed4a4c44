"""The device's certificates: an onboarding certificate and its own device certificate.

Like an EVE device, the agent creates its device key pair at first start and
never lets the private key leave ``DATA/identity`` (0600). The onboarding
certificate is either provided by the operator (shared by a batch of
devices) or created here, to be registered at the controller before the
device is switched on.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the PKI (cryptography) is imported when a credential is needed, not with the paths
    from edgevol.trust.pki import Credential


def identity_dir(data_dir: Path) -> Path:
    return data_dir / "identity"


def controller_certs_path(data_dir: Path) -> Path:
    """The controller's certificates (a serialized ``ZControllerCert``) as last fetched and verified.

    The uplink writes it atomically after ``/certs`` chains to the root CA, as
    EVE keeps its ``controllercerts`` checkpoint: the device needs the
    controller's ECDH_EXCHANGE certificate to decrypt credentials even while
    the controller is unreachable.
    """
    return identity_dir(data_dir) / "controller-certs.pb"


def device_credential(data_dir: Path) -> Credential:
    from edgevol.trust.pki import create_self_signed, load_or_create

    return load_or_create(identity_dir(data_dir), "device", lambda: create_self_signed("edgevol device"))


def ecdh_credential(data_dir: Path) -> Credential:
    """The device's ECDH key, certified by the device key, as EVE makes it without a TPM.

    EVE's tpmmgr creates a P-256 key and a certificate for it signed by the
    device key (pkg/pillar/cmd/tpmmgr/tpmmgr.go:1058-1125, createEcdhCertSoft)
    and hands that certificate to the controller in attest CERT; controllers
    encrypt datastore credentials for it.
    """
    from edgevol.trust.pki import issue, load_or_create

    return load_or_create(identity_dir(data_dir), "ecdh",
                          lambda: issue(device_credential(data_dir), "edgevol device ECDH exchange", purpose="ecdh"))


def onboarding_credential(data_dir: Path, cert: Path | None = None, key: Path | None = None) -> Credential:
    from edgevol.trust.pki import create_self_signed, load_credential, load_or_create

    if cert is not None and key is not None:
        return load_credential(cert, key)
    return load_or_create(identity_dir(data_dir), "onboard", lambda: create_self_signed("edgevol onboarding"))
