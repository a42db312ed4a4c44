"""Datastore credentials encrypted for one device: EVE's ``CipherContext`` and ``CipherBlock``.

A controller that does not want to send a datastore's apiKey/password in
clear puts them in an ``EncryptionBlock``, encrypts its bytes for one device
(``DatastoreConfig.cipherData``) and describes the key exchange in a
``CipherContext`` (``EdgeDevConfig.cipherContexts``). Every rule here is
EVE's (lf-edge/eve, pkg/pillar) unless it says otherwise:

* Key agreement: ECDH on P-256 between the controller certificate the
  context names and the device's key. The device multiplies the controller
  certificate's public point by its own private scalar
  (cipher/handlecipher.go:123, evetpm/encryptdecypt.go:49-59); the controller
  does the mirror multiplication with its private key and the device's
  public point (cmd/tpmmgr/tpmmgr.go:426-430, "Controller Part").
* AES key = sha256(X || Y) of the shared point, each coordinate left-padded
  to 32 bytes (evetpm/encryptdecypt.go:101-131, Sha256FromECPoint).
* Cipher: AES-256 in CFB mode with full 16-byte segments (Go's
  ``cipher.NewCFBEncrypter``), the IV in ``initialValue``, which must not be
  empty (evetpm/encryptdecypt.go:64-86, cipher/handlecipher.go:118-130).
* ``clearTextSha256`` = the full sha256 of the clear ``EncryptionBlock``
  bytes; an empty clear text or a mismatch fails (handlecipher.go:93-95,
  166-175). Only then is the ``EncryptionBlock`` decoded (cipher/cipher.go:48-55).
* The controller certificate is the one whose ``certHash`` as listed in
  ``/certs`` equals ``controllerCertHash`` byte for byte (handlecipher.go:103,
  135-141; types/cipherinfotypes.go:35-37; types/certinfotypes.go:25-27), of
  any type; its first PEM certificate must carry an ECDSA key
  (handlecipher.go:142-163).
* ``deviceCertHash`` = sha256 of the device certificate's PEM bytes, cut to
  what the context's ``hashScheme`` says (types/cipherinfotypes.go:40-42;
  cmd/tpmmgr/tpmmgr.go:1142-1154, getCertHash over the PEM file).

The device half of the exchange is, as on an EVE device, a separate
"device ECDH" key whose certificate is signed by the device key and reaches
the controller in an attest CERT request as CERT_TYPE_DEVICE_ECDH_EXCHANGE,
named by the first 16 bytes of sha256 of its PEM (tpmmgr.go:1058-1125,
1142-1180, 1359-1361). A controller that never received one encrypts for the
device certificate itself; the arithmetic is the same either way, and the
context's ``deviceCertHash`` says which key the device must use. The controller side takes its context id and the idea of a
derived IV from Eden, EVE's test controller (pkg/utils/cryptoConfig.go:48-70,
pkg/utils/cipher.go:48-65); see :func:`encrypt_credentials` for the IV.

Nothing secret ever appears in an exception message: they name context ids,
certificate hashes and scheme numbers, which the config carries in clear.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from typing import Any, Iterable

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from google.protobuf.message import DecodeError

try:  # cryptography >= 47 keeps CFB among the "decrepit" modes
    from cryptography.hazmat.decrepit.ciphers.modes import CFB
except ImportError:  # pragma: no cover - older cryptography
    from cryptography.hazmat.primitives.ciphers.modes import CFB  # type: ignore[assignment]

from edgevol.api import messages as m
from edgevol.trust.pki import Credential, TrustError, load_cert, pem_hash

SHA256_16 = m.HashAlgorithm.HASH_ALGORITHM_SHA256_16BYTES
SHA256_32 = m.HashAlgorithm.HASH_ALGORITHM_SHA256_32BYTES
IV_BYTES = 16  # the AES block: Go's NewCFBDecrypter refuses any other IV length

# P-256 (SEC 2, 2.4.2): y^2 = x^3 - 3x + b over GF(p), n points.
_P = 0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF
_B = 0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B
_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


class CipherError(Exception):
    """Encrypted credentials cannot be used; the message says why and never holds a secret."""


class UnknownCipherContext(CipherError):
    """The block names a cipher context the config does not carry."""


class UnknownCertificate(CipherError):
    """The context names a controller or device certificate this side does not have."""


class UnsupportedCipher(CipherError):
    """A key exchange, encryption or hash scheme, or a key type, EVE does not use."""


class IntegrityError(CipherError):
    """The decrypted bytes do not hash to ``clearTextSha256``: tampered data or another key."""


class UndecodableClearText(CipherError):
    """The decrypted, hash-checked bytes are not an ``EncryptionBlock``."""


def cert_hash(cert_pem: bytes, hash_scheme: int) -> bytes:
    """sha256 of the certificate's PEM bytes, cut to 16 or 32 bytes per ``hash_scheme``."""
    try:
        return pem_hash(cert_pem, hash_scheme)
    except ValueError:
        raise UnsupportedCipher(f"certificate hash scheme {_hash_name(hash_scheme)} is not supported "
                                "(want HASH_ALGORITHM_SHA256_16BYTES or _32BYTES)") from None


def encrypt_credentials(clear: Any, device_cert_pem: bytes, controller: Credential, *,
                        hash_scheme: int = SHA256_32, controller_hash_scheme: int | None = None) -> tuple[Any, Any]:
    """Controller side: ``(CipherContext, CipherBlock)`` carrying ``clear`` (an ``EncryptionBlock``).

    ``controller`` is the ECDH_EXCHANGE credential. ``hash_scheme`` names the
    device certificate (and is the context's ``hashScheme``);
    ``controller_hash_scheme`` (default: the same) must be the one ``/certs``
    lists the controller certificate with, because the device finds that
    certificate by this exact hash. EVE matches both hashes byte for byte
    against what it knows (handlecipher.go:103-113), so they may differ in
    length: an EVE device names its ECDH certificate by 16 bytes.

    The result is a pure function of its inputs, so a config built twice
    from the same data has the same hash and an unchanged config stays a 304.
    The context id is Eden's: a name-based UUID (SHA-1, nil namespace) of the
    first 16 bytes of the controller and device certificate hashes
    (Eden pkg/utils/cryptoConfig.go:57-60). The IV is derived too, like
    Eden's (pkg/utils/cipher.go:49-54), but from the key *and* the clear
    text: HMAC-SHA256(aes key, clear)[:16], a synthetic IV. Unlike Eden's
    one-IV-per-key-pair, two different credentials never share a CFB key
    stream; equal credentials encrypt equally, which reveals only that they
    are equal. The device does not care how the IV was chosen.
    """
    clear_bytes = clear.SerializeToString(deterministic=True)
    if not clear_bytes:
        # EVE refuses an empty clear text as "Data Validation Failed" (handlecipher.go:168-169).
        raise CipherError("there are no credentials to encrypt")
    device_hash = cert_hash(device_cert_pem, hash_scheme)
    controller_hash = cert_hash(controller.cert_pem, hash_scheme if controller_hash_scheme is None
                                else controller_hash_scheme)
    key = _aes_key(_p256_private(controller.private_key(), "the controller ECDH key"),
                   _p256_public(device_cert_pem, "the device certificate"))
    iv = hmac.new(key, clear_bytes, hashlib.sha256).digest()[:IV_BYTES]
    context_id = str(uuid.UUID(bytes=hashlib.sha1(bytes(16) + controller_hash[:16] + device_hash[:16])
                               .digest()[:16], version=5))
    context = m.CipherContext(contextId=context_id, hashScheme=hash_scheme,
                              keyExchangeScheme=m.KeyExchangeScheme.KEA_ECDH,
                              encryptionScheme=m.EncryptionScheme.SA_AES_256_CFB,
                              deviceCertHash=device_hash, controllerCertHash=controller_hash)
    block = m.CipherBlock(cipherContextId=context_id, initialValue=iv, cipherData=_cfb(key, iv, clear_bytes, True),
                          clearTextSha256=hashlib.sha256(clear_bytes).digest())
    return context, block


def decrypt_credentials(block: Any, context: Any | None, device: Credential,
                        controller_certs: Iterable[Any]) -> Any:
    """Device side: the ``EncryptionBlock`` inside ``block``, or a :class:`CipherError` saying why not.

    ``context`` is the config's ``CipherContext`` with the block's
    ``cipherContextId`` (None when the config has none); ``controller_certs``
    are the ``ZCert`` entries of the controller's verified ``/certs``. The
    checks come in EVE's order (handlecipher.go, DecryptCipherBlock).
    """
    if not block.cipherData:
        raise CipherError("the cipher block carries no encrypted data")  # handlecipher.go:74-76
    block_id = block.cipherContextId
    if context is None or not block_id or context.contextId != block_id:
        raise UnknownCipherContext(f"cipher context {block_id!r} is not in the config")  # handlecipher.go:77-83
    if context.keyExchangeScheme != m.KeyExchangeScheme.KEA_ECDH:  # handlecipher.go:84-98
        raise UnsupportedCipher(f"cipher context {block_id!r}: key exchange scheme "
                                f"{_enum_name(m.KeyExchangeScheme, context.keyExchangeScheme)} is not supported "
                                "(want KEA_ECDH)")
    controller_pem = _controller_cert(controller_certs, bytes(context.controllerCertHash), block_id)
    device_hash = cert_hash(device.cert_pem, context.hashScheme)
    if bytes(context.deviceCertHash) != device_hash:  # handlecipher.go:108-113
        raise UnknownCertificate(f"cipher context {block_id!r} was made for device certificate "
                                 f"{bytes(context.deviceCertHash).hex() or '(none)'}, not this device's "
                                 f"({device_hash.hex()})")
    if context.encryptionScheme != m.EncryptionScheme.SA_AES_256_CFB:  # handlecipher.go:114-132
        raise UnsupportedCipher(f"cipher context {block_id!r}: encryption scheme "
                                f"{_enum_name(m.EncryptionScheme, context.encryptionScheme)} is not supported "
                                "(want SA_AES_256_CFB)")
    iv = bytes(block.initialValue)
    if len(iv) != IV_BYTES:  # handlecipher.go:119-121; Go's CFB wants exactly one block
        raise CipherError(f"the cipher block's initial value is {len(iv)} bytes, not {IV_BYTES}")
    key = _aes_key(_p256_private(device.private_key(), "the device key"),
                   _p256_public(controller_pem, "the controller certificate"))
    clear_bytes = _cfb(key, iv, bytes(block.cipherData), False)
    expected = bytes(block.clearTextSha256)
    if not expected or not hmac.compare_digest(hashlib.sha256(clear_bytes).digest(), expected):
        raise IntegrityError("the decrypted credentials do not match clearTextSha256: the cipher block was "
                             "altered or encrypted for another key")  # handlecipher.go:93-95, 166-175
    try:
        return m.EncryptionBlock.FromString(clear_bytes)  # cipher.go:48-55
    except DecodeError:
        raise UndecodableClearText("the decrypted credentials are not an EncryptionBlock") from None


# ---------------------------------------------------------------- internals


def _controller_cert(certs: Iterable[Any], wanted: bytes, context_id: str) -> bytes:
    for zc in certs:
        if wanted and bytes(zc.certHash) == wanted:
            return bytes(zc.cert)
    raise UnknownCertificate(f"cipher context {context_id!r} names controller certificate "
                             f"{wanted.hex() or '(none)'}, which is not among the controller's certificates")


def _p256_public(cert_pem: bytes, what: str) -> ec.EllipticCurvePublicKey:
    try:
        key = load_cert(cert_pem).public_key()  # the first certificate of the PEM, as EVE takes it
    except TrustError as exc:
        raise UnsupportedCipher(f"{what} cannot be read: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        # EVE's ECDH runs on elliptic.P256() only (evetpm/encryptdecypt.go:58).
        raise UnsupportedCipher(f"{what} has no ECDSA P-256 key, which ECDH needs")
    return key


def _p256_private(key: object, what: str) -> ec.EllipticCurvePrivateKey:
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise UnsupportedCipher(f"{what} is not an ECDSA P-256 key, which ECDH needs")
    return key


def _aes_key(private: ec.EllipticCurvePrivateKey, peer: ec.EllipticCurvePublicKey) -> bytes:
    """sha256(X || Y) of private·peer, each coordinate 32 bytes (Sha256FromECPoint)."""
    x = private.exchange(ec.ECDH(), peer)  # OpenSSL gives only X, already 32 bytes
    return hashlib.sha256(x + _shared_y(private, peer, int.from_bytes(x, "big")).to_bytes(32, "big")).digest()


def _shared_y(private: ec.EllipticCurvePrivateKey, peer: ec.EllipticCurvePublicKey, x: int) -> int:
    """Y of S = d·Q, given its X: one of ±sqrt(x³ - 3x + b); the right one makes S + Q = (d+1)·Q.

    The scalar multiplications stay in OpenSSL; only a square root and one
    point addition are done here.
    """
    y = pow((x * x * x - 3 * x + _B) % _P, (_P + 1) // 4, _P)  # p ≡ 3 (mod 4)
    d = private.private_numbers().private_value
    q = peer.public_numbers()
    if x == q.x:  # S = ±Q: d = ±1, never a real key
        raise UnsupportedCipher("the private key cannot be used for ECDH")
    next_x = int.from_bytes(ec.derive_private_key((d + 1) % _N, ec.SECP256R1()).exchange(ec.ECDH(), peer), "big")
    for candidate in (y, _P - y):
        slope = (q.y - candidate) * pow(q.x - x, -1, _P) % _P
        if (slope * slope - x - q.x) % _P == next_x:
            return candidate
    raise CipherError("ECDH gave a point that is not on P-256")  # cannot happen with a valid peer key


def _cfb(key: bytes, iv: bytes, data: bytes, encrypt: bool) -> bytes:
    cipher = Cipher(algorithms.AES(key), CFB(iv))  # CFB with 128-bit segments, as Go's
    op = cipher.encryptor() if encrypt else cipher.decryptor()
    return op.update(data) + op.finalize()


def _enum_name(enum: Any, value: int) -> str:
    try:
        return str(enum.Name(value))
    except ValueError:
        return str(value)


def _hash_name(value: int) -> str:
    return _enum_name(m.HashAlgorithm, value)
