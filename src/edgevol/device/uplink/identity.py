"""The device's certificates: an onboarding certificate and its own device certificate.

Like an EVE device, the agent creates its device key pair at first start and
never lets the private key leave ``DATA/identity`` (0600). The onboarding
certificate is either provided by the operator (shared by a batch of
devices) or created here, to be registered at the controller before the
device is switched on.
"""

from __future__ import annotations

from pathlib import Path

from edgevol.trust.pki import Credential, create_self_signed, load_credential, load_or_create


def identity_dir(data_dir: Path) -> Path:
    return data_dir / "identity"


def device_credential(data_dir: Path) -> Credential:
    return load_or_create(identity_dir(data_dir), "device", lambda: create_self_signed("edgevol device"))


def onboarding_credential(data_dir: Path, cert: Path | None = None, key: Path | None = None) -> Credential:
    if cert is not None and key is not None:
        return load_credential(cert, key)
    return load_or_create(identity_dir(data_dir), "onboard", lambda: create_self_signed("edgevol onboarding"))
