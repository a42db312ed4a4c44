"""Input checks for the store: names, UUIDs, sizes, digests, enums, certificates.

Why reuse the device's validators (``edgevol.model.parse``): the controller
should refuse exactly what a device would refuse, with the same words.
"""

from __future__ import annotations

import uuid as uuidlib
from collections.abc import Iterable
from typing import Any

from cryptography import x509

from edgevol.api import messages as m
from edgevol.controller.db.errors import Invalid
from edgevol.controller.db.models import NAME_LEN
from edgevol.model import parse

MAX_NAME = NAME_LEN
INT64_MAX = (1 << 63) - 1


def check_name(value: str, what: str) -> str:
    """Names are what operators type and see: non-empty, bounded, printable."""
    if not isinstance(value, str) or not value.strip():
        raise Invalid(f"{what} name must not be empty")
    if len(value) > MAX_NAME:
        raise Invalid(f"{what} name is longer than {MAX_NAME} characters")
    if any(ord(c) < 0x20 or c == "\x7f" for c in value):
        raise Invalid(f"{what} name {value!r} contains control characters")
    return value


def new_uuid(value: str | None, what: str) -> str:
    """A fresh uuid4, or the caller's one in canonical form (for imports)."""
    if value is None:
        return str(uuidlib.uuid4())
    try:
        return parse.canonical_uuid(value, f"{what} uuid")
    except parse.Invalid as exc:
        raise Invalid(str(exc)) from None


def is_uuid(ref: str) -> bool:
    try:
        parse.canonical_uuid(ref)
        return True
    except parse.Invalid:
        return False


def check_size(value: int, what: str) -> int:
    """A byte size or counter: an int, not negative, not absurd."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise Invalid(f"{what} must be an integer, not {value!r}")
    try:
        return parse.check_size(value, what)
    except parse.Invalid as exc:
        raise Invalid(str(exc)) from None


def check_sha256(value: str | None) -> str | None:
    """Lowercase hex digest, or ``None`` for none."""
    try:
        return parse.canonical_sha256(value or "")
    except parse.Invalid as exc:
        raise Invalid(str(exc)) from None


def enum_number(wrapper: Any, value: int | str, what: str) -> int:
    """Accept an enum's number or name (``2``, ``"DsHttps"``); refuse unknown and 0 (unspecified)."""
    try:
        number = wrapper.Value(value) if isinstance(value, str) else int(value)
        wrapper.Name(number)
    except (ValueError, TypeError):
        raise Invalid(f"{what} {value!r} is unknown (known: {', '.join(wrapper.keys()[1:])})") from None
    if number == 0:
        raise Invalid(f"{what} must not be {wrapper.Name(0)}")
    return number


def format_number(value: int | str) -> int:
    """A content format by number or name, eve-api's or edgevol's BLOB_TREE; never FmtUnknown or PVC."""
    from edgevol.api.formats import format_number as number_of

    try:
        number = number_of(value)
    except (ValueError, TypeError):
        known = [n for n in m.Format.keys()[1:] if n != "PVC"] + ["BLOB_TREE"]
        raise Invalid(f"format {value!r} is unknown (known: {', '.join(known)})") from None
    if number == 0:
        raise Invalid("format must not be FmtUnknown")
    return number


def check_cert_pem(pem: bytes, what: str) -> bytes:
    """Parse to be sure it is a certificate, but keep the exact bytes: their sha256 is the identity."""
    if not isinstance(pem, bytes) or not pem:
        raise Invalid(f"{what} must be PEM bytes")
    try:
        x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        raise Invalid(f"{what} is not a PEM X.509 certificate: {exc}") from None
    return pem


def check_ca_pems(pems: Iterable[bytes | str]) -> list[str]:
    """Datastore CA certificates, kept as PEM text (JSON column)."""
    out = []
    for pem in pems:
        text = pem.decode("ascii", "replace") if isinstance(pem, bytes) else pem
        if "\ufffd" in text or "-----BEGIN CERTIFICATE-----" not in text:
            raise Invalid("a datastore CA certificate must be an ASCII PEM certificate")
        check_cert_pem(text.encode("ascii"), "datastore CA certificate")
        out.append(text)
    return out


def prefix_range(column: Any, prefix: bytes) -> Any:
    """``column`` starts with ``prefix``, written as a range so the index is used."""
    return (column >= prefix) & (column < prefix_end(prefix))


def prefix_end(prefix: bytes) -> bytes:
    """The least value above every value starting with ``prefix`` (blobs compare bytewise, then by length)."""
    upper = bytearray(prefix)
    while upper and upper[-1] == 0xFF:
        upper.pop()
    if not upper:
        return b"\xff" * (len(prefix) + 1)
    upper[-1] += 1
    return bytes(upper)


def clamp(value: int) -> int:
    """uint64 from the wire into a signed 64-bit column."""
    return min(int(value), INT64_MAX)


def siginfo(sha256: str | None, signature: bytes | None, signer_cert_url: str, intermediate_cert_url: str,
            sign_key_pem: bytes | None) -> tuple[str, str, bytes | None]:
    """(signer URL, intermediate URL, signature) for a content tree; with ``sign_key_pem`` the controller
    signs the content's sha256 itself (the key is used here and never stored)."""
    from edgevol.trust.content import sign_content
    from edgevol.trust.pki import TrustError

    if sign_key_pem is not None:
        if signature:
            raise Invalid("give a signature or a key to sign with, not both")
        if not sha256:
            raise Invalid("signing needs the content's sha256")
        try:
            signature = sign_content(sha256, sign_key_pem)
        except TrustError as exc:
            raise Invalid(str(exc)) from None
    if signature and not signer_cert_url:
        raise Invalid("a signature needs the signer's certificate URL (signer_cert_url)")
    if not signature and (signer_cert_url or intermediate_cert_url):
        raise Invalid("certificate URLs without a signature sign nothing")
    return signer_cert_url, intermediate_cert_url, signature or None
