"""Certificates and keys for the controller and the device (ECDSA or RSA, SHA-256).

Why one module for both sides: the controller issues its signing and TLS
certificates from a root CA it creates on first start, the device makes its
own self-signed certificates (as EVE devices do) and checks the controller's
chain against a root CA it was given. Both need the same small, strict set of
operations; keeping them here means there is exactly one chain checker.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import ipaddress
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal, Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edgevol.api import messages as m
from edgevol.fsutil import atomic_write_bytes

Purpose = Literal["signing", "tls-server", "client", "ecdh"]
PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
# The curves EVE can sign with: its r||s encoding needs a whole number of 8-byte words per
# coordinate (pkg/pillar/controllerconn/authen.go, ecdsakeyBytes), which rules out P-521.
SIGNING_CURVES = (ec.SECP256R1, ec.SECP384R1)

# Backdating absorbs clock drift between a freshly started controller and a
# device whose clock is a little behind; without it a new cert is "not yet valid".
_BACKDATE = dt.timedelta(minutes=5)
_MAX_CHAIN_DEPTH = 8
# Parsed certificates and keys are kept by their exact bytes (so never stale): a controller
# verifies every request of thousands of devices, and parsing a PEM costs more than checking
# the signature. Sized for a fleet of 10,000 devices with room to spare.
_PARSED_CERTS = 32768
KEY_MODE = 0o600
CERT_MODE = 0o644


class TrustError(Exception):
    """A certificate, key or chain cannot be trusted; the message says why."""


@dataclass(frozen=True)
class Credential:
    """A certificate and its private key, both PEM.

    The key never appears in ``repr`` so logging a credential cannot leak it.
    """

    cert_pem: bytes
    key_pem: bytes = field(repr=False)

    def __repr__(self) -> str:
        try:
            name = common_name(self.cert_pem)
        except TrustError:
            name = "?"
        return f"Credential(cn={name!r}, fingerprint={fingerprint_or_none(self.cert_pem)})"

    def certificate(self) -> x509.Certificate:
        return load_cert(self.cert_pem)

    def private_key(self) -> PrivateKey:
        return _load_key(bytes(self.key_pem))


# ---------------------------------------------------------------- parsing


def load_cert(cert_pem: bytes) -> x509.Certificate:
    """Parse the first PEM certificate in ``cert_pem``; TrustError if it is not one.

    Certificates are immutable, so one parsed object per distinct PEM is shared.
    """
    return _parse_cert(bytes(cert_pem))


@functools.lru_cache(maxsize=_PARSED_CERTS)
def _parse_cert(cert_pem: bytes) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(cert_pem)
    except (ValueError, TypeError) as exc:
        raise TrustError(f"not a PEM certificate: {exc}") from exc


@functools.lru_cache(maxsize=_PARSED_CERTS)
def public_key(cert_pem: bytes) -> object:
    """The certificate's public key, parsed once per distinct PEM (TrustError if it is not a certificate)."""
    return load_cert(cert_pem).public_key()


def load_certs(pem_bundle: bytes) -> list[x509.Certificate]:
    """Every certificate of a PEM bundle (a root CA file may hold several); TrustError if none."""
    try:
        certs = x509.load_pem_x509_certificates(bytes(pem_bundle))
    except (ValueError, TypeError) as exc:
        raise TrustError(f"not a PEM certificate bundle: {exc}") from exc
    return certs


def check_signing_key(public_key: object, what: str) -> None:
    """Refuse a key EVE could not sign or verify with: RSA, or ECDSA on P-256/P-384."""
    if isinstance(public_key, rsa.RSAPublicKey):
        return
    if isinstance(public_key, ec.EllipticCurvePublicKey) and isinstance(public_key.curve, SIGNING_CURVES):
        return
    raise TrustError(f"{what} is neither RSA nor ECDSA P-256/P-384")


@functools.lru_cache(maxsize=64)
def _load_key(key_pem: bytes) -> PrivateKey:
    """Parsed once per distinct PEM: the controller signs every answer with the same key."""
    try:
        key = serialization.load_pem_private_key(bytes(key_pem), password=None)
    except (ValueError, TypeError) as exc:
        raise TrustError(f"not an unencrypted PEM private key: {exc}") from exc
    if not isinstance(key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey)):
        raise TrustError("private key is neither ECDSA nor RSA")
    check_signing_key(key.public_key(), "private key")
    return key


def common_name(cert_pem: bytes) -> str:
    """The subject CN, or "" when the certificate has none."""
    attrs = load_cert(cert_pem).subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else ""


def fingerprint(cert_pem: bytes) -> str:
    """Hex SHA-256 of the DER encoding: stable across PEM whitespace differences."""
    der = load_cert(cert_pem).public_bytes(serialization.Encoding.DER)
    return hashlib.sha256(der).hexdigest()


def fingerprint_or_none(cert_pem: bytes) -> str | None:
    try:
        return fingerprint(cert_pem)
    except TrustError:
        return None


def truncate_hash(digest: bytes, algo: int) -> bytes:
    """A sha256 digest cut to what ``algo`` (a HashAlgorithm) names: 16 or 32 bytes."""
    if algo == m.HashAlgorithm.HASH_ALGORITHM_SHA256_16BYTES:
        return digest[:16]
    if algo == m.HashAlgorithm.HASH_ALGORITHM_SHA256_32BYTES:
        return digest
    raise ValueError(f"unsupported hash algorithm {algo}")


def der_sha256(cert_pem: bytes) -> bytes:
    """sha256 of the certificate's DER form: how EVE and Adam identify a device or onboarding certificate.

    EVE's device hashes ``x509.Certificate.Raw`` (pkg/pillar/controllerconn/authen.go,
    certToSha256) and Adam looks registered devices up by sha256 of the same DER
    (pkg/driver/file/device_manager_file.go, DeviceCheckCertHash); PEM whitespace
    therefore never changes a device's identity.
    """
    return _der_sha256(bytes(cert_pem))


@functools.lru_cache(maxsize=_PARSED_CERTS)
def _der_sha256(cert_pem: bytes) -> bytes:
    return hashlib.sha256(load_cert(cert_pem).public_bytes(serialization.Encoding.DER)).digest()


def der_hash(cert_pem: bytes, algo: int) -> bytes:
    """The senderCertHash of a device or onboarding certificate (DER, truncated per ``algo``)."""
    return truncate_hash(der_sha256(cert_pem), algo)


def pem_hash(cert_pem: bytes, algo: int) -> bytes:
    """The hash of a controller certificate: sha256 of the exact PEM bytes it lists in ``/certs``.

    EVE keeps the signing certificate's hash as sha256 of the PEM it received
    (pkg/pillar/controllerconn/authen.go, StoreServerSigningCert) and Adam hashes
    the trimmed PEM block it lists (pkg/server/apiHandlerv2.go, getCertChain).
    """
    return truncate_hash(hashlib.sha256(bytes(cert_pem)).digest(), algo)


# ---------------------------------------------------------------- creating


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _validity(days: int, not_before: dt.datetime | None) -> tuple[dt.datetime, dt.datetime]:
    start = not_before if not_before is not None else dt.datetime.now(dt.timezone.utc) - _BACKDATE
    return start, start + dt.timedelta(days=days)


def _key_usage(*, sign: bool = True, cert_sign: bool = False, agree: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=agree,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _builder(
    subject: str,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    days: int,
    not_before: dt.datetime | None,
) -> x509.CertificateBuilder:
    start, end = _validity(days, not_before)
    return (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def create_root_ca(common_name: str, days: int = 3650) -> Credential:
    """A self-signed root CA: the controller's trust anchor, made once on first start."""
    key = _new_key()
    builder = (
        _builder(common_name, _name(common_name), key.public_key(), days, None)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
    )
    cert = builder.sign(key, hashes.SHA256())
    return Credential(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def issue(
    ca: Credential,
    common_name: str,
    *,
    days: int = 825,
    is_ca: bool = False,
    purpose: Purpose = "signing",
    san_ips: Sequence[str] = (),
    san_dns: Sequence[str] = (),
    not_before: dt.datetime | None = None,
) -> Credential:
    """A new key and a certificate for it signed by ``ca``.

    ``purpose`` selects the key usage: "signing" (API envelope signatures,
    no EKU), "tls-server" (serverAuth), "client" (clientAuth) or "ecdh"
    (key agreement only: the controller's ECDH_EXCHANGE certificate).
    ``not_before`` exists so tests can build certificates whose validity lies
    in the past or future.
    """
    if purpose not in ("signing", "tls-server", "client", "ecdh"):
        raise ValueError(f"unknown certificate purpose {purpose!r}")
    ca_cert = ca.certificate()
    ca_key = ca.private_key()
    key = _new_key()
    builder = (
        _builder(common_name, ca_cert.subject, key.public_key(), days, not_before)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
        .add_extension(_key_usage(sign=purpose != "ecdh", cert_sign=is_ca, agree=purpose == "ecdh"),
                       critical=True)
    )
    if not is_ca and purpose in ("tls-server", "client"):
        oid = ExtendedKeyUsageOID.SERVER_AUTH if purpose == "tls-server" else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([oid]), critical=False)
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in san_dns]
    sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in san_ips]
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return Credential(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def create_self_signed(common_name: str, days: int = 3650 * 2) -> Credential:
    """A self-signed end-entity certificate, as EVE devices make for their device and onboarding keys.

    Not a CA: the controller trusts it by hash (registration), never as an issuer.
    """
    key = _new_key()
    builder = (
        _builder(common_name, _name(common_name), key.public_key(), days, None)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    )
    cert = builder.sign(key, hashes.SHA256())
    return Credential(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


# ---------------------------------------------------------------- files


def save_credential(cred: Credential, cert_path: Path, key_path: Path) -> None:
    """Write key (0600) then certificate (0644), each atomically.

    Key first: a crash in between leaves a key without a certificate, which
    ``load_or_create`` treats as "not created yet", never a certificate whose
    key is lost.
    """
    atomic_write_bytes(Path(key_path), cred.key_pem, mode=KEY_MODE)
    atomic_write_bytes(Path(cert_path), cred.cert_pem, mode=CERT_MODE)


def load_credential(cert_path: Path, key_path: Path) -> Credential:
    """Read a credential and check the key belongs to the certificate."""
    cred = Credential(Path(cert_path).read_bytes(), Path(key_path).read_bytes())
    cert_pub = cred.certificate().public_key()
    key_pub = cred.private_key().public_key()
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if cert_pub.public_bytes(*fmt) != key_pub.public_bytes(*fmt):
        raise TrustError(f"key {key_path} does not belong to certificate {cert_path}")
    return cred


def _check_key_mode(key_path: Path) -> None:
    mode = stat.S_IMODE(os.stat(key_path).st_mode)
    if mode & 0o077:
        raise TrustError(
            f"private key {key_path} is readable by others (mode {mode:04o}); "
            f"run 'chmod 600 {key_path}'"
        )


def load_or_create(directory: Path, name: str, factory: Callable[[], Credential]) -> Credential:
    """``<name>.pem``/``<name>.key`` in ``directory``, created by ``factory`` on first use.

    Idempotent: once created the same credential is returned on every start.
    Refuses a key file that group or others can read, rather than using a
    key that may already have leaked.
    """
    directory = Path(directory)
    cert_path = directory / f"{name}.pem"
    key_path = directory / f"{name}.key"
    if cert_path.exists():
        if not key_path.exists():
            raise TrustError(f"{cert_path} exists but its key {key_path} is missing")
        _check_key_mode(key_path)
        return load_credential(cert_path, key_path)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    cred = factory()
    save_credential(cred, cert_path, key_path)
    return cred


# ---------------------------------------------------------------- chains


def _check_dates(cert: x509.Certificate, what: str, now: dt.datetime) -> None:
    if now < cert.not_valid_before_utc:
        raise TrustError(f"{what} is not valid before {cert.not_valid_before_utc.isoformat()}")
    if now > cert.not_valid_after_utc:
        raise TrustError(f"{what} expired on {cert.not_valid_after_utc.isoformat()}")


def _describe(cert: x509.Certificate) -> str:
    attrs = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return f"certificate {attrs[0].value!r}" if attrs else f"certificate {cert.subject.rfc4514_string()!r}"


def _check_issuer_role(issuer: x509.Certificate, cas_below: int) -> None:
    """An issuer must be a CA allowed to sign certificates at this depth."""
    try:
        bc = issuer.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        raise TrustError(f"issuer {_describe(issuer)} is not a CA (no basic constraints)") from None
    if not bc.ca:
        raise TrustError(f"issuer {_describe(issuer)} is not a CA")
    if bc.path_length is not None and cas_below > bc.path_length:
        raise TrustError(f"issuer {_describe(issuer)} path length {bc.path_length} exceeded")
    try:
        ku = issuer.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return
    if not ku.key_cert_sign:
        raise TrustError(f"issuer {_describe(issuer)} may not sign certificates")


def _signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def verify_chain(
    cert_pem: bytes,
    root_pem: bytes,
    intermediates: Sequence[bytes] = (),
    *,
    at: dt.datetime | None = None,
) -> None:
    """Check ``cert_pem`` chains to a root CA in ``root_pem`` through ``intermediates``.

    ``root_pem`` may hold several roots (an operator's bundle); any valid one
    will do, RSA or ECDSA. Checks every signature, every validity window (at ``at``, default now)
    and that every issuer is a CA. Raises TrustError naming the first failure.
    """
    now = at if at is not None else dt.datetime.now(dt.timezone.utc)
    roots = load_certs(root_pem)
    pool = [load_cert(p) for p in intermediates]
    current = load_cert(cert_pem)
    valid_roots = [r for r in roots if r.not_valid_before_utc <= now <= r.not_valid_after_utc]
    if not valid_roots:
        _check_dates(roots[0], f"root CA {_describe(roots[0])}", now)
    if current in valid_roots:
        return
    used: list[x509.Certificate] = []
    while len(used) <= _MAX_CHAIN_DEPTH:
        _check_dates(current, _describe(current), now)
        root = next((r for r in valid_roots if current.issuer == r.subject and _signed_by(current, r)), None)
        if root is not None:
            _check_issuer_role(root, len(used))
            return
        issuer = next(
            (c for c in pool if c not in used and c.subject == current.issuer and _signed_by(current, c)),
            None,
        )
        if issuer is None:
            raise TrustError(
                f"{_describe(current)} does not chain to root {_describe(roots[0])}"
                f"{f' (or {len(roots) - 1} more)' if len(roots) > 1 else ''}: "
                f"no trusted issuer {current.issuer.rfc4514_string()!r} verifies its signature"
            )
        _check_issuer_role(issuer, len(used))
        used.append(issuer)
        current = issuer
    raise TrustError(f"certificate chain longer than {_MAX_CHAIN_DEPTH}")
