"""Signed content: a signature over a content tree's sha256 by a certificate that chains to trusted roots.

As EVE 5.6's verifier did it (lf-edge/eve 5.6.0, pkg/pillar/cmd/verifier/verifier.go:648-785,
``verifyObjectShaSignature``): the signer's certificate must chain to the device's
roots through the intermediates; the signature is over the image's sha256 digest
itself (the 32 bytes, not a hash of them); an RSA key verifies PKCS#1 v1.5 with
SHA-256; an ECDSA key verifies r||s, which EVE read as the *base64 text* of the
64 bytes (:755-770). edgevol also accepts the raw r||s and an ASN.1 DER
signature, any curve size, because controllers and signing tools differ.

Both ends use this module: the device to verify, the controller to sign with a
key the operator gives it.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
from typing import Sequence

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, decode_dss_signature, encode_dss_signature

from edgevol.trust.pki import TrustError, load_cert, verify_chain


def _digest(sha256_hex: str) -> bytes:
    try:
        digest = bytes.fromhex(sha256_hex.lower().removeprefix("sha256:"))
    except ValueError:
        raise TrustError(f"sha256 {sha256_hex!r} is not hexadecimal") from None
    if len(digest) != 32:
        raise TrustError(f"sha256 {sha256_hex!r} is not 32 bytes")
    return digest


def _ecdsa_candidates(signature: bytes, width: int) -> list[bytes]:
    """The DER signatures ``signature`` may stand for: base64 text of r||s (EVE 5.6), raw r||s, or DER."""
    raws = [signature]
    try:
        raws.insert(0, base64.b64decode(signature, validate=True))
    except (binascii.Error, ValueError):
        pass
    out = []
    for raw in raws:
        if len(raw) == 2 * width:
            out.append(encode_dss_signature(int.from_bytes(raw[:width], "big"), int.from_bytes(raw[width:], "big")))
        else:
            try:
                decode_dss_signature(raw)
            except ValueError:
                continue
            out.append(raw)
    return out


def verify_content_signature(sha256_hex: str, signature: bytes, signer_pem: bytes, roots_pem: bytes,
                             intermediates: Sequence[bytes] = (), *, at: dt.datetime | None = None) -> None:
    """Raise :class:`TrustError` saying why unless ``signature`` over ``sha256_hex`` is good and trusted."""
    if not roots_pem.strip():
        raise TrustError("the device has no trust anchors for signed content (no controller root CA and no "
                         "--content-trust bundle)")
    try:
        verify_chain(signer_pem, roots_pem, intermediates, at=at)
    except TrustError as exc:
        raise TrustError(f"signer certificate not trusted: {exc}") from exc
    digest = _digest(sha256_hex)
    key = load_cert(signer_pem).public_key()
    if isinstance(key, rsa.RSAPublicKey):
        try:
            key.verify(signature, digest, padding.PKCS1v15(), Prehashed(hashes.SHA256()))
        except InvalidSignature:
            raise TrustError("rsa signature does not verify over the content's sha256 with the signer "
                             "certificate") from None
        return
    if isinstance(key, ec.EllipticCurvePublicKey):
        width = (key.curve.key_size + 7) // 8
        for der in _ecdsa_candidates(signature, width):
            try:
                key.verify(der, digest, ec.ECDSA(Prehashed(hashes.SHA256())))
                return
            except InvalidSignature:
                continue
        raise TrustError("ecdsa signature does not verify over the content's sha256 with the signer certificate")
    raise TrustError(f"signer certificate has a {type(key).__name__}; only RSA and ECDSA keys sign content")


def sign_content(sha256_hex: str, key_pem: bytes) -> bytes:
    """The ``siginfo.signature`` for content ``sha256_hex``, in the form EVE 5.6 read it.

    RSA: PKCS#1 v1.5 over the digest. ECDSA: base64 text of fixed-width r||s.
    """
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise TrustError(f"signing key unreadable: {exc}") from None
    digest = _digest(sha256_hex)
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(digest, padding.PKCS1v15(), Prehashed(hashes.SHA256()))
    if isinstance(key, ec.EllipticCurvePrivateKey):
        r, s = decode_dss_signature(key.sign(digest, ec.ECDSA(Prehashed(hashes.SHA256()))))
        width = (key.curve.key_size + 7) // 8
        return base64.b64encode(r.to_bytes(width, "big") + s.to_bytes(width, "big"))
    raise TrustError(f"a {type(key).__name__} cannot sign content; use an RSA or ECDSA key")
