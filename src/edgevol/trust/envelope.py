"""The AuthContainer that wraps every API v2 message, and the controller cert set.

Why a strict order in ``open_container``: the payload is attacker-controlled
until the signature over it has been checked, so nothing here parses it, and
nothing is returned before the signature verifies. Status codes ride on
``AuthError`` so HTTP handlers can answer without re-deciding them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from typing import Callable, Iterable, Sequence, TypeVar

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    Prehashed,
    decode_dss_signature,
    encode_dss_signature,
)
from google.protobuf.message import DecodeError, Message

from edgevol.api import messages as m
from edgevol.trust.pki import Credential, TrustError, cert_hash, load_cert, verify_chain

HASH_LENGTHS = {
    m.HashAlgorithm.HASH_ALGORITHM_SHA256_16BYTES: 16,
    m.HashAlgorithm.HASH_ALGORITHM_SHA256_32BYTES: 32,
}
SUPPORTED_ALGOS = tuple(HASH_LENGTHS)
_P256_BYTES = 32  # one coordinate / one of r, s

Lookup = Callable[[bytes], bytes | None]
M = TypeVar("M", bound=Message)


class AuthError(Exception):
    """A request that fails authentication; ``status`` is the HTTP answer.

    401: unsigned, malformed envelope or unknown sender. 403: the sender is
    known but the signature is wrong (or, raised by callers, the wrong device).
    400: signed correctly but the payload is not the expected message.
    """

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status}: {reason}")
        self.status = status
        self.reason = reason


# ---------------------------------------------------------------- signatures


def sign_raw(payload: bytes, key: ec.EllipticCurvePrivateKey) -> bytes:
    """ECDSA over sha256(payload), as fixed-width big-endian r||s (64 bytes for P-256)."""
    digest = hashlib.sha256(payload).digest()
    der = key.sign(digest, ec.ECDSA(Prehashed(hashes.SHA256())))
    r, s = decode_dss_signature(der)
    return r.to_bytes(_P256_BYTES, "big") + s.to_bytes(_P256_BYTES, "big")


def verify_raw(payload: bytes, signature: bytes, cert_pem: bytes) -> None:
    """Check an r||s signature over sha256(payload) with the certificate's key; AuthError 403 if not."""
    try:
        public_key = load_cert(cert_pem).public_key()
    except TrustError as exc:
        raise AuthError(403, f"sender certificate unusable: {exc}") from exc
    if not isinstance(public_key, ec.EllipticCurvePublicKey) or not isinstance(
        public_key.curve, ec.SECP256R1
    ):
        raise AuthError(403, "sender certificate key is not ECDSA P-256")
    if len(signature) != 2 * _P256_BYTES:
        raise AuthError(403, f"signature is {len(signature)} bytes, expected {2 * _P256_BYTES}")
    r = int.from_bytes(signature[:_P256_BYTES], "big")
    s = int.from_bytes(signature[_P256_BYTES:], "big")
    digest = hashlib.sha256(payload).digest()
    try:
        public_key.verify(encode_dss_signature(r, s), digest, ec.ECDSA(Prehashed(hashes.SHA256())))
    except InvalidSignature:
        raise AuthError(403, "signature does not verify with the sender certificate") from None


# ---------------------------------------------------------------- envelope


def seal(
    payload: bytes,
    sender: Credential,
    *,
    algo: int = m.HashAlgorithm.HASH_ALGORITHM_SHA256_32BYTES,
    include_cert: bool = False,
) -> m.AuthContainer:
    """Wrap and sign ``payload``; ``include_cert`` embeds the PEM for a receiver that cannot know us yet."""
    if algo not in SUPPORTED_ALGOS:
        raise ValueError(f"unsupported hash algorithm {algo}")
    container = m.AuthContainer(
        algo=algo,
        senderCertHash=cert_hash(sender.cert_pem, algo),
        signatureHash=sign_raw(payload, sender.private_key()),
    )
    container.protectedPayload.SetInParent()
    container.protectedPayload.payload = payload
    if include_cert:
        container.senderCert = base64.b64encode(sender.cert_pem)
    return container


def seal_message(msg: Message, sender: Credential, **kw: object) -> bytes:
    """Serialize ``msg``, seal it, and serialize the container: the HTTP body."""
    return seal(msg.SerializeToString(), sender, **kw).SerializeToString()  # type: ignore[arg-type]


def _embedded_cert(container: m.AuthContainer) -> bytes:
    """Decode senderCert (base64 PEM per the API; a bare PEM is tolerated)."""
    raw = bytes(container.senderCert)
    if raw.lstrip().startswith(b"-----BEGIN"):
        return raw
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise AuthError(401, "embedded sender certificate is not base64") from None


def open_container(
    data: bytes,
    lookup: Lookup,
    *,
    allow_embedded_cert: bool = False,
) -> tuple[bytes, bytes]:
    """Verify an AuthContainer and return (payload, sender certificate PEM).

    ``lookup`` maps a senderCertHash to a known certificate PEM or None.
    With ``allow_embedded_cert`` an unknown sender may bring its certificate
    in senderCert (register); that certificate must hash to senderCertHash.
    The caller still decides whether that certificate is acceptable.
    """
    try:
        container = m.AuthContainer.FromString(bytes(data))
    except DecodeError:
        raise AuthError(401, "body is not an AuthContainer") from None
    if container.algo not in SUPPORTED_ALGOS:
        raise AuthError(401, f"unsupported sender hash algorithm {container.algo}")
    sender_hash = bytes(container.senderCertHash)
    expected_len = HASH_LENGTHS[container.algo]
    if len(sender_hash) != expected_len:
        raise AuthError(401, f"senderCertHash is {len(sender_hash)} bytes, expected {expected_len}")
    if not container.signatureHash:
        raise AuthError(401, "message is not signed")
    cert_pem = lookup(sender_hash)
    if cert_pem is None:
        if not (allow_embedded_cert and container.senderCert):
            raise AuthError(401, f"unknown sender certificate {sender_hash.hex()}")
        cert_pem = _embedded_cert(container)
        if cert_hash(cert_pem, container.algo) != sender_hash:
            raise AuthError(403, "embedded sender certificate does not match senderCertHash")
    payload = bytes(container.protectedPayload.payload)
    verify_raw(payload, bytes(container.signatureHash), cert_pem)
    return payload, cert_pem


def open_message(
    data: bytes,
    msg_type: type[M],
    lookup: Lookup,
    **kw: bool,
) -> tuple[M, bytes]:
    """``open_container`` then parse the verified payload as ``msg_type`` (AuthError 400 if it is not one)."""
    payload, cert_pem = open_container(data, lookup, **kw)
    msg = msg_type()
    try:
        msg.ParseFromString(payload)
    except DecodeError:
        raise AuthError(400, f"signed payload is not a {msg_type.DESCRIPTOR.full_name}") from None
    return msg, cert_pem


def cert_lookup(pems: Iterable[bytes]) -> Callable[[bytes], bytes | None]:
    """A ``lookup`` over a fixed set of certificates, answering both hash lengths."""
    table: dict[bytes, bytes] = {}
    for pem in pems:
        for algo in SUPPORTED_ALGOS:
            table[cert_hash(pem, algo)] = bytes(pem)
    return table.get


# ---------------------------------------------------------------- controller certs


def controller_certs(signing: Credential, intermediates: Sequence[bytes] = ()) -> m.ZControllerCert:
    """The body of GET /certs: the signing certificate plus the intermediates it chains through."""
    def entry(pem: bytes, cert_type: int) -> m.ZCert:
        algo = m.HashAlgorithm.HASH_ALGORITHM_SHA256_32BYTES
        return m.ZCert(hashAlgo=algo, certHash=cert_hash(pem, algo), type=cert_type, cert=pem)

    certs = [entry(signing.cert_pem, m.ZCertType.CERT_TYPE_CONTROLLER_SIGNING)]
    certs += [entry(p, m.ZCertType.CERT_TYPE_CONTROLLER_INTERMEDIATE) for p in intermediates]
    return m.ZControllerCert(certs=certs)


def trusted_signer(certs: m.ZControllerCert, root_pem: bytes) -> bytes:
    """The controller signing certificate from ``certs``, only if it chains to ``root_pem``.

    Exactly one signing certificate is accepted: with several, which one signs
    would be ambiguous. Every entry's certHash, when present, must match.
    """
    signing: list[bytes] = []
    intermediates: list[bytes] = []
    for zc in certs.certs:
        pem = bytes(zc.cert)
        if zc.certHash:
            try:
                ok = cert_hash(pem, zc.hashAlgo) == bytes(zc.certHash)
            except ValueError:
                ok = False
            if not ok:
                raise TrustError("controller certificate entry does not match its certHash")
        if zc.type == m.ZCertType.CERT_TYPE_CONTROLLER_SIGNING:
            signing.append(pem)
        elif zc.type == m.ZCertType.CERT_TYPE_CONTROLLER_INTERMEDIATE:
            intermediates.append(pem)
    if len(signing) != 1:
        raise TrustError(f"expected exactly one controller signing certificate, got {len(signing)}")
    verify_chain(signing[0], root_pem, intermediates)
    return signing[0]


def open_controller_certs(data: bytes, root_pem: bytes) -> tuple[m.ZControllerCert, bytes]:
    """Device side of GET /certs: (certs, signing cert PEM) after chain and signature checks.

    The one place the payload is read before its signature is checked: the
    signer is only learnt from the payload. Nothing from it is returned until
    the signing cert chains to ``root_pem`` and the envelope verifies with it.
    """
    try:
        container = m.AuthContainer.FromString(bytes(data))
        certs = m.ZControllerCert.FromString(container.protectedPayload.payload)
    except DecodeError:
        raise AuthError(401, "certs body is not a signed ZControllerCert") from None
    try:
        signer = trusted_signer(certs, root_pem)
    except TrustError as exc:
        raise AuthError(403, f"controller certificate not trusted: {exc}") from exc
    open_container(data, cert_lookup([signer]))
    return certs, signer
