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
from typing import Callable, Iterable, Literal, Sequence, TypeVar

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import (
    Prehashed,
    decode_dss_signature,
    encode_dss_signature,
)
from google.protobuf.message import DecodeError, Message

from edgevol.api import messages as m
from edgevol.trust.pki import (
    Credential,
    PrivateKey,
    TrustError,
    check_signing_key,
    der_hash,
    pem_hash,
    verify_chain,
)
from edgevol.trust.pki import public_key as cert_public_key

HASH_LENGTHS = {
    m.HashAlgorithm.HASH_ALGORITHM_SHA256_16BYTES: 16,
    m.HashAlgorithm.HASH_ALGORITHM_SHA256_32BYTES: 32,
}
SUPPORTED_ALGOS = tuple(HASH_LENGTHS)
SHA256_32 = m.HashAlgorithm.HASH_ALGORITHM_SHA256_32BYTES

# How a sender's certificate is hashed into senderCertHash: devices and onboarding
# certificates by DER, the controller's certificates by the PEM bytes listed in /certs.
HashForm = Literal["der", "pem"]
_HASHERS: dict[str, Callable[[bytes, int], bytes]] = {"der": der_hash, "pem": pem_hash}

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


def _coordinate_bytes(key: ec.EllipticCurvePublicKey) -> int:
    return (key.curve.key_size + 7) // 8


def sign_raw(payload: bytes, key: PrivateKey) -> bytes:
    """Sign sha256(payload) as EVE does.

    ECDSA: fixed-width big-endian r||s (64 bytes for P-256), never DER
    (pkg/pillar/controllerconn/authen.go, signAuthData/RSCombinedBytes).
    RSA: PKCS#1 v1.5 over SHA-256 (Adam's computeSignatureWithCertAndKey).
    """
    digest = hashlib.sha256(payload).digest()
    if isinstance(key, rsa.RSAPrivateKey):
        return key.sign(digest, padding.PKCS1v15(), Prehashed(hashes.SHA256()))
    der = key.sign(digest, ec.ECDSA(Prehashed(hashes.SHA256())))
    r, s = decode_dss_signature(der)
    width = _coordinate_bytes(key.public_key())
    return r.to_bytes(width, "big") + s.to_bytes(width, "big")


def _ecdsa_der(signature: bytes, width: int) -> bytes:
    """The DER form of an r||s signature; an ASN.1 one (which Adam also accepts) passes through."""
    if len(signature) == 2 * width:
        return encode_dss_signature(int.from_bytes(signature[:width], "big"),
                                    int.from_bytes(signature[width:], "big"))
    try:
        decode_dss_signature(signature)
    except ValueError:
        raise AuthError(403, f"signature is {len(signature)} bytes, expected {2 * width} (r||s)") from None
    return signature


def verify_raw(payload: bytes, signature: bytes, cert_pem: bytes) -> None:
    """Check a signature over sha256(payload) with the certificate's key (RSA or ECDSA); AuthError 403 if not.

    Both key types are accepted as EVE (authen.go, verifyAuthSig) and Adam
    (pkg/server/apiHandlerv2.go, verifySignature) accept them.
    """
    try:
        public_key = cert_public_key(bytes(cert_pem))
        check_signing_key(public_key, "sender certificate key")
    except TrustError as exc:
        raise AuthError(403, f"sender certificate unusable: {exc}") from exc
    digest = hashlib.sha256(payload).digest()
    try:
        if isinstance(public_key, rsa.RSAPublicKey):
            public_key.verify(signature, digest, padding.PKCS1v15(), Prehashed(hashes.SHA256()))
        else:
            assert isinstance(public_key, ec.EllipticCurvePublicKey)
            der = _ecdsa_der(signature, _coordinate_bytes(public_key))
            public_key.verify(der, digest, ec.ECDSA(Prehashed(hashes.SHA256())))
    except InvalidSignature:
        raise AuthError(403, "signature does not verify with the sender certificate") from None


# ---------------------------------------------------------------- envelope


def seal(
    payload: bytes,
    sender: Credential,
    *,
    hash_form: HashForm = "der",
    algo: int = SHA256_32,
    include_cert: bool = False,
) -> m.AuthContainer:
    """Wrap and sign ``payload``.

    ``hash_form`` says how the receiver knows our certificate: "der" for a
    device or onboarding certificate, "pem" for the controller's. EVE always
    sends HASH_ALGORITHM_SHA256_32BYTES (authen.go, AddAuthentication).
    ``include_cert`` embeds base64 of the PEM for a receiver that cannot know
    us yet (register).
    """
    if algo not in SUPPORTED_ALGOS:
        raise ValueError(f"unsupported hash algorithm {algo}")
    container = m.AuthContainer(
        algo=algo,
        senderCertHash=_HASHERS[hash_form](sender.cert_pem, algo),
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


def pem_from_base64(raw: bytes) -> bytes:
    """A certificate field EVE fills with base64 of the PEM (senderCert, ZRegisterMsg.pemCert).

    A bare PEM is tolerated. ValueError when it is neither.
    """
    raw = bytes(raw)
    if raw.lstrip().startswith(b"-----BEGIN"):
        return raw
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("neither base64 of a PEM certificate nor a PEM certificate") from None


def _embedded_cert(container: m.AuthContainer) -> bytes:
    try:
        return pem_from_base64(container.senderCert)
    except ValueError:
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
    in senderCert (register); sha256 of that certificate's DER must match
    senderCertHash, as EVE computes it (authen.go, AddAuthentication with
    useOnboard: senderCertHash = certToSha256, senderCert = base64 of the PEM file).
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
        try:
            embedded_hash = der_hash(cert_pem, container.algo)
        except TrustError as exc:
            raise AuthError(401, f"embedded sender certificate is not a PEM certificate: {exc}") from None
        if embedded_hash != sender_hash:
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


def cert_lookup(pems: Iterable[bytes], hash_form: HashForm = "der") -> Callable[[bytes], bytes | None]:
    """A ``lookup`` over a fixed set of certificates, answering both hash lengths."""
    table: dict[bytes, bytes] = {}
    for pem in pems:
        for algo in SUPPORTED_ALGOS:
            table[_HASHERS[hash_form](pem, algo)] = bytes(pem)
    return table.get


# ---------------------------------------------------------------- controller certs


def controller_certs(signing: Credential, ecdh: Credential | None = None,
                     intermediates: Sequence[bytes] = ()) -> m.ZControllerCert:
    """The body of GET /certs: signing certificate, ECDH_EXCHANGE certificate and intermediates.

    EVE refuses a cert set without an ECDH_EXCHANGE certificate
    (pkg/pillar/controllerconn/authen.go, VerifyLeavesCertChain with requireECDH).
    Each certHash is sha256 of the PEM bytes listed, as Adam lists them.
    """
    def entry(pem: bytes, cert_type: int) -> m.ZCert:
        return m.ZCert(hashAlgo=SHA256_32, certHash=pem_hash(pem, SHA256_32), type=cert_type, cert=pem)

    certs = [entry(signing.cert_pem, m.ZCertType.CERT_TYPE_CONTROLLER_SIGNING)]
    if ecdh is not None:
        certs.append(entry(ecdh.cert_pem, m.ZCertType.CERT_TYPE_CONTROLLER_ECDH_EXCHANGE))
    certs += [entry(p, m.ZCertType.CERT_TYPE_CONTROLLER_INTERMEDIATE) for p in intermediates]
    return m.ZControllerCert(certs=certs)


def trusted_signer(certs: m.ZControllerCert, root_pem: bytes) -> bytes:
    """The controller signing certificate from ``certs``, only if it chains to ``root_pem``.

    As EVE checks it (authen.go, VerifyLeavesCertChainWithRootPEM): exactly one
    signing certificate; a type EVE does not know is refused; the signing and
    every ECDH_EXCHANGE certificate must chain to a root through the listed
    intermediates. Every entry's certHash, when present, must match. Unlike
    EVE, a set without an ECDH certificate is accepted: it only means that
    this controller cannot send encrypted credentials.
    """
    signing: list[bytes] = []
    ecdh: list[bytes] = []
    intermediates: list[bytes] = []
    for zc in certs.certs:
        pem = bytes(zc.cert)
        if zc.certHash:
            try:
                ok = pem_hash(pem, zc.hashAlgo) == bytes(zc.certHash)
            except ValueError:
                ok = False
            if not ok:
                raise TrustError("controller certificate entry does not match its certHash")
        if zc.type == m.ZCertType.CERT_TYPE_CONTROLLER_SIGNING:
            signing.append(pem)
        elif zc.type == m.ZCertType.CERT_TYPE_CONTROLLER_INTERMEDIATE:
            intermediates.append(pem)
        elif zc.type == m.ZCertType.CERT_TYPE_CONTROLLER_ECDH_EXCHANGE:
            ecdh.append(pem)
        else:
            raise TrustError(f"unknown controller certificate type {zc.type}")
    if len(signing) != 1:
        raise TrustError(f"expected exactly one controller signing certificate, got {len(signing)}")
    for pem in signing + ecdh:
        verify_chain(pem, root_pem, intermediates)
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
    open_container(data, cert_lookup([signer], "pem"))
    return certs, signer
