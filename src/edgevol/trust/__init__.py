"""Trust layer shared by controller and device: keys, certificates, signed API v2 envelopes.

Why shared: both ends must agree byte-for-byte on how a message is signed and
how a sender is identified, so there is one implementation used by both.
"""

from __future__ import annotations

from edgevol.trust.envelope import (
    AuthError,
    cert_lookup,
    controller_certs,
    open_container,
    open_controller_certs,
    open_message,
    seal,
    seal_message,
    sign_raw,
    trusted_signer,
    verify_raw,
)
from edgevol.trust.pki import (
    Credential,
    TrustError,
    common_name,
    create_root_ca,
    create_self_signed,
    der_hash,
    der_sha256,
    fingerprint,
    issue,
    load_cert,
    load_credential,
    load_or_create,
    pem_hash,
    save_credential,
    verify_chain,
)

__all__ = [
    "AuthError",
    "Credential",
    "TrustError",
    "cert_lookup",
    "common_name",
    "controller_certs",
    "create_root_ca",
    "create_self_signed",
    "der_hash",
    "der_sha256",
    "fingerprint",
    "issue",
    "load_cert",
    "load_credential",
    "load_or_create",
    "open_container",
    "open_controller_certs",
    "open_message",
    "pem_hash",
    "save_credential",
    "seal",
    "seal_message",
    "sign_raw",
    "trusted_signer",
    "verify_chain",
    "verify_raw",
]
