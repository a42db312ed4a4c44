"""Trust layer: real ECDSA and RSA keys, real X.509 chains, real signed envelopes.

Wire rules are EVE's (lf-edge/eve pkg/pillar/controllerconn/authen.go) and
Adam's (lf-edge/adam pkg/server/apiHandlerv2.go); each test cites the line.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from edgevol.api import messages as m
from edgevol.trust import (
    AuthError,
    Credential,
    TrustError,
    cert_lookup,
    common_name,
    controller_certs,
    create_root_ca,
    create_self_signed,
    der_hash,
    fingerprint,
    issue,
    load_credential,
    load_or_create,
    open_container,
    open_controller_certs,
    open_message,
    pem_hash,
    save_credential,
    seal,
    seal_message,
    trusted_signer,
    verify_chain,
)

H16 = m.HashAlgorithm.HASH_ALGORITHM_SHA256_16BYTES
H32 = m.HashAlgorithm.HASH_ALGORITHM_SHA256_32BYTES
PAST = dt.datetime(2001, 1, 1, tzinfo=dt.timezone.utc)


@pytest.fixture(scope="module")
def root() -> Credential:
    return create_root_ca("edgevol test root")


@pytest.fixture(scope="module")
def inter(root: Credential) -> Credential:
    return issue(root, "edgevol intermediate", is_ca=True)


@pytest.fixture(scope="module")
def signer(inter: Credential) -> Credential:
    return issue(inter, "controller signing")


@pytest.fixture(scope="module")
def dev_a() -> Credential:
    return create_self_signed("device-a")


@pytest.fixture(scope="module")
def dev_b() -> Credential:
    return create_self_signed("device-b")


def knows(*creds: Credential):
    return cert_lookup(c.cert_pem for c in creds)


def resealed(data: bytes, **changes: object) -> bytes:
    c = m.AuthContainer.FromString(data)
    for k, v in changes.items():
        if k == "payload":
            c.protectedPayload.payload = v  # type: ignore[assignment]
        else:
            setattr(c, k, v)
    return c.SerializeToString()


# ---------------------------------------------------------------- envelope


@pytest.mark.parametrize("algo,length", [(H16, 16), (H32, 32)])
def test_seal_open_round_trip(dev_a: Credential, dev_b: Credential, algo: int, length: int) -> None:
    payload = b"\x00volume config\xff" * 100
    container = seal(payload, dev_a, algo=algo)
    assert container.algo == algo
    assert bytes(container.senderCertHash) == der_hash(dev_a.cert_pem, algo)[:length]
    assert not container.senderCert
    got, pem = open_container(container.SerializeToString(), knows(dev_b, dev_a))
    assert got == payload
    assert pem == dev_a.cert_pem


def test_empty_payload_round_trips(dev_a: Credential) -> None:
    got, _ = open_container(seal(b"", dev_a).SerializeToString(), knows(dev_a))
    assert got == b""


def test_open_message_parses_only_verified_payload(dev_a: Credential) -> None:
    msg = m.ZRegisterMsg(onBoardKey="k", pemCert=dev_a.cert_pem, serial="SN-1")
    body = seal_message(msg, dev_a, algo=H16)
    got, pem = open_message(body, m.ZRegisterMsg, knows(dev_a))
    assert got == msg and pem == dev_a.cert_pem
    bad = seal(b"\xff\xff\xff", dev_a).SerializeToString()
    with pytest.raises(AuthError) as e:
        open_message(bad, m.ZRegisterMsg, knows(dev_a))
    assert e.value.status == 400


def test_tampered_payload_is_403(dev_a: Credential) -> None:
    body = seal(b"serial=1", dev_a).SerializeToString()
    with pytest.raises(AuthError) as e:
        open_container(resealed(body, payload=b"serial=2"), knows(dev_a))
    assert e.value.status == 403


def test_cert_of_a_signed_with_key_of_b_is_403(dev_a: Credential, dev_b: Credential) -> None:
    forged = Credential(cert_pem=dev_a.cert_pem, key_pem=dev_b.key_pem)
    body = seal(b"i am a", forged).SerializeToString()
    with pytest.raises(AuthError) as e:
        open_container(body, knows(dev_a, dev_b))
    assert e.value.status == 403
    assert "signature" in e.value.reason


def test_unknown_sender_is_401(dev_a: Credential, dev_b: Credential) -> None:
    body = seal(b"x", dev_a).SerializeToString()
    with pytest.raises(AuthError) as e:
        open_container(body, knows(dev_b))
    assert e.value.status == 401


def test_truncated_signature_is_403(dev_a: Credential) -> None:
    body = seal(b"x", dev_a).SerializeToString()
    sig = bytes(m.AuthContainer.FromString(body).signatureHash)
    with pytest.raises(AuthError) as e:
        open_container(resealed(body, signatureHash=sig[:63]), knows(dev_a))
    assert e.value.status == 403


@pytest.mark.parametrize(
    "changes",
    [
        {"signatureHash": b""},  # unsigned
        {"algo": m.HashAlgorithm.HASH_ALGORITHM_INVALID},
        {"senderCertHash": b"\x01" * 20},
    ],
)
def test_unsigned_or_unidentified_is_401(dev_a: Credential, changes: dict) -> None:
    body = seal(b"x", dev_a).SerializeToString()
    with pytest.raises(AuthError) as e:
        open_container(resealed(body, **changes), knows(dev_a))
    assert e.value.status == 401


def test_garbage_body_is_401(dev_a: Credential) -> None:
    with pytest.raises(AuthError) as e:
        open_container(b"\xff\xff\xff\xff not a protobuf", knows(dev_a))
    assert e.value.status == 401


def test_embedded_cert_only_when_allowed(dev_a: Credential, dev_b: Credential) -> None:
    container = seal(b"register me", dev_a, include_cert=True)
    assert base64.b64decode(container.senderCert) == dev_a.cert_pem
    body = container.SerializeToString()
    nobody = knows()
    with pytest.raises(AuthError) as e:
        open_container(body, nobody)
    assert e.value.status == 401
    got, pem = open_container(body, nobody, allow_embedded_cert=True)
    assert (got, pem) == (b"register me", dev_a.cert_pem)
    # an embedded cert that is not the one the hash names is refused, even
    # when its own key made a valid signature (B claiming A's identity)
    b_body = seal(b"register me", dev_b, include_cert=True).SerializeToString()
    claims_a = resealed(b_body, senderCertHash=der_hash(dev_a.cert_pem, H32))
    with pytest.raises(AuthError) as e:
        open_container(claims_a, nobody, allow_embedded_cert=True)
    assert e.value.status == 403
    assert "senderCertHash" in e.value.reason
    # the embedded cert does not make a forged signature acceptable
    forged = seal(b"register me", Credential(dev_a.cert_pem, dev_b.key_pem), include_cert=True)
    with pytest.raises(AuthError) as e:
        open_container(forged.SerializeToString(), nobody, allow_embedded_cert=True)
    assert e.value.status == 403


def test_signature_is_raw_r_s_over_sha256_of_payload(dev_a: Credential) -> None:
    payload = b"independent check"
    sig = bytes(seal(payload, dev_a).signatureHash)
    assert len(sig) == 64
    r, s = int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")
    pub = x509.load_pem_x509_certificate(dev_a.cert_pem).public_key()
    assert isinstance(pub, ec.EllipticCurvePublicKey)
    pub.verify(encode_dss_signature(r, s), payload, ec.ECDSA(hashes.SHA256()))


def test_foreign_signature_with_leading_zero_byte_verifies(dev_a: Credential) -> None:
    """A signer that zero-pads r||s (as Go's EVE does) must be accepted; find r or s < 2**248."""
    key = dev_a.private_key()
    for i in range(5000):
        payload = b"pad-%d" % i
        r, s = decode_dss_signature(key.sign(payload, ec.ECDSA(hashes.SHA256())))
        if r < 2**248 or s < 2**248:
            break
    else:  # pragma: no cover - probability about 1e-17
        pytest.fail("no short r/s found")
    raw = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    assert len(raw) == 64 and (raw[0] == 0 or raw[32] == 0)
    c = m.AuthContainer(algo=H32, senderCertHash=der_hash(dev_a.cert_pem, H32), signatureHash=raw)
    c.protectedPayload.payload = payload
    got, _ = open_container(c.SerializeToString(), knows(dev_a))
    assert got == payload


def test_device_cert_hash_is_sha256_of_der(dev_a: Credential) -> None:
    """EVE names a device or onboarding cert by sha256 of its DER (authen.go:491-503, certToSha256);
    Adam looks devices up by sha256 of cert.Raw (adam pkg/driver/file/device_manager_file.go:400-415)."""
    der = x509.load_pem_x509_certificate(dev_a.cert_pem).public_bytes(Encoding.DER)
    full = hashlib.sha256(der).digest()
    assert der_hash(dev_a.cert_pem, H16) == full[:16]
    assert der_hash(dev_a.cert_pem, H32) == full
    assert full != hashlib.sha256(dev_a.cert_pem).digest()
    # PEM whitespace is not identity: the same certificate re-wrapped hashes the same
    rewrapped = b"\r\n".join(dev_a.cert_pem.splitlines()) + b"\r\n\r\n"
    assert der_hash(rewrapped, H32) == full
    for bad in (m.HashAlgorithm.HASH_ALGORITHM_INVALID, 3):
        with pytest.raises(ValueError):
            der_hash(dev_a.cert_pem, bad)


def test_controller_cert_hash_is_sha256_of_the_listed_pem(signer: Credential) -> None:
    """EVE keeps the controller signing cert's hash as sha256 of the PEM bytes (authen.go:486);
    Adam lists certHash = sha256 of the trimmed PEM (adam pkg/server/apiHandlerv2.go:248)."""
    assert pem_hash(signer.cert_pem, H32) == hashlib.sha256(signer.cert_pem).digest()
    assert pem_hash(signer.cert_pem, H16) == hashlib.sha256(signer.cert_pem).digest()[:16]
    assert pem_hash(signer.cert_pem.strip(), H32) != pem_hash(signer.cert_pem, H32)


def test_a_device_envelope_is_named_by_der_and_a_controller_one_by_pem(dev_a: Credential,
                                                                        signer: Credential) -> None:
    """EVE sends algo SHA256_32BYTES with senderCertHash = DER hash (authen.go:316,329)."""
    dev = seal(b"p", dev_a)
    assert dev.algo == H32 and bytes(dev.senderCertHash) == der_hash(dev_a.cert_pem, H32)
    ctrl = seal(b"p", signer, hash_form="pem")
    assert bytes(ctrl.senderCertHash) == hashlib.sha256(signer.cert_pem).digest()
    # the receiver's lookup must use the same form, or the sender is unknown
    with pytest.raises(AuthError) as e:
        open_container(ctrl.SerializeToString(), cert_lookup([signer.cert_pem]))
    assert e.value.status == 401
    assert open_container(ctrl.SerializeToString(), cert_lookup([signer.cert_pem], "pem"))[0] == b"p"


def _rsa_credential(ca: Credential | None, cn: str, *, is_ca: bool = False) -> Credential:
    """An RSA certificate (a controller that signs with RSA, or an RSA root)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    issuer_key = key if ca is None else ca.private_key()
    issuer = name if ca is None else x509.load_pem_x509_certificate(ca.cert_pem).subject
    now = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
            .sign(issuer_key, hashes.SHA256()))  # type: ignore[arg-type]
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return Credential(cert.public_bytes(Encoding.PEM), key_pem)


def test_rsa_signatures_are_pkcs1_v15_over_sha256() -> None:
    """Adam signs with an RSA key by PKCS#1 v1.5 and verifies it so (apiHandlerv2.go:186-190, 373-379);
    EVE verifies RSA the same way (authen.go:258-263)."""
    from cryptography.hazmat.primitives.asymmetric import padding

    rsa_root = _rsa_credential(None, "rsa root", is_ca=True)
    rsa_signer = _rsa_credential(rsa_root, "rsa controller signing")
    body = seal(b"rsa payload", rsa_signer, hash_form="pem")
    sig = bytes(body.signatureHash)
    assert len(sig) == 256
    x509.load_pem_x509_certificate(rsa_signer.cert_pem).public_key().verify(  # type: ignore[union-attr]
        sig, b"rsa payload", padding.PKCS1v15(), hashes.SHA256())
    got, _ = open_container(body.SerializeToString(), cert_lookup([rsa_signer.cert_pem], "pem"))
    assert got == b"rsa payload"
    # an RSA root vouches for an RSA controller's cert set
    certs = controller_certs(rsa_signer)
    assert trusted_signer(certs, rsa_root.cert_pem) == rsa_signer.cert_pem
    tampered = resealed(body.SerializeToString(), payload=b"rsa payloaD")
    with pytest.raises(AuthError) as e:
        open_container(tampered, cert_lookup([rsa_signer.cert_pem], "pem"))
    assert e.value.status == 403


def test_asn1_ecdsa_signatures_are_accepted_as_adam_accepts_them(dev_a: Credential) -> None:
    """Adam tries an ASN.1 ECDSA signature before r||s (apiHandlerv2.go:211)."""
    der_sig = dev_a.private_key().sign(b"asn1", ec.ECDSA(hashes.SHA256()))  # type: ignore[call-arg]
    c = m.AuthContainer(algo=H32, senderCertHash=der_hash(dev_a.cert_pem, H32), signatureHash=der_sig)
    c.protectedPayload.payload = b"asn1"
    assert open_container(c.SerializeToString(), knows(dev_a))[0] == b"asn1"


def test_p384_keys_sign_48_byte_coordinates(tmp_path: Path) -> None:
    """EVE sizes r||s by the curve: keyBytes = bits/8 (authen.go:506-517): 96 bytes on P-384."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "p384 device")])
    now = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    cred = Credential(cert.public_bytes(Encoding.PEM), key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    body = seal(b"384", cred)
    assert len(bytes(body.signatureHash)) == 96
    assert open_container(body.SerializeToString(), knows(cred))[0] == b"384"


# ---------------------------------------------------------------- chains


def test_verify_chain_through_intermediate(root: Credential, inter: Credential, signer: Credential) -> None:
    verify_chain(signer.cert_pem, root.cert_pem, [inter.cert_pem])
    verify_chain(inter.cert_pem, root.cert_pem)
    verify_chain(root.cert_pem, root.cert_pem)


def test_verify_chain_missing_intermediate(root: Credential, signer: Credential) -> None:
    with pytest.raises(TrustError, match="does not chain"):
        verify_chain(signer.cert_pem, root.cert_pem)


def test_verify_chain_wrong_root(inter: Credential, signer: Credential) -> None:
    other = create_root_ca("edgevol test root")  # same name, different key
    with pytest.raises(TrustError, match="does not chain"):
        verify_chain(signer.cert_pem, other.cert_pem, [inter.cert_pem])


def test_verify_chain_expired_leaf(root: Credential) -> None:
    old = issue(root, "old signer", days=30, not_before=PAST)
    with pytest.raises(TrustError, match="expired"):
        verify_chain(old.cert_pem, root.cert_pem)


def test_verify_chain_expired_intermediate(root: Credential) -> None:
    old_ca = issue(root, "old intermediate", is_ca=True, days=30, not_before=PAST)
    leaf = issue(old_ca, "leaf")
    with pytest.raises(TrustError, match="old intermediate.*expired"):
        verify_chain(leaf.cert_pem, root.cert_pem, [old_ca.cert_pem])


def test_verify_chain_not_yet_valid(root: Credential) -> None:
    future = issue(root, "future", not_before=dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=2))
    with pytest.raises(TrustError, match="not valid before"):
        verify_chain(future.cert_pem, root.cert_pem)


def test_verify_chain_non_ca_issuer(root: Credential) -> None:
    not_ca = issue(root, "plain leaf")
    leaf = issue(not_ca, "issued by a leaf")
    with pytest.raises(TrustError, match="not a CA"):
        verify_chain(leaf.cert_pem, root.cert_pem, [not_ca.cert_pem])


def test_self_signed_device_cert_is_not_a_trust_anchor_for_others(dev_a: Credential) -> None:
    other = issue(dev_a, "child of device")
    with pytest.raises(TrustError, match="not a CA"):
        verify_chain(other.cert_pem, dev_a.cert_pem)


def test_issue_tls_server_sans_and_names(root: Credential) -> None:
    tls = issue(root, "controller", purpose="tls-server", san_ips=["127.0.0.1"], san_dns=["localhost"])
    cert = tls.certificate()
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert x509.oid.ExtendedKeyUsageOID.SERVER_AUTH in eku
    assert common_name(tls.cert_pem) == "controller"
    assert fingerprint(tls.cert_pem) == hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()
    with pytest.raises(ValueError):
        issue(root, "x", purpose="bogus")  # type: ignore[arg-type]


# ---------------------------------------------------------------- files


def test_load_or_create_is_idempotent_and_private(tmp_path: Path) -> None:
    made: list[Credential] = []

    def factory() -> Credential:
        made.append(create_root_ca("first start"))
        return made[-1]

    d = tmp_path / "pki"
    first = load_or_create(d, "root", factory)
    second = load_or_create(d, "root", factory)
    assert len(made) == 1
    assert first == second == made[0]
    assert stat.S_IMODE((d / "root.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((d / "root.pem").stat().st_mode) == 0o644
    assert (d / "root.pem").read_bytes() == first.cert_pem
    assert not [p for p in d.iterdir() if p.name.startswith(".tmp-")]


def test_load_or_create_refuses_open_key(tmp_path: Path) -> None:
    load_or_create(tmp_path, "dev", lambda: create_self_signed("dev"))
    (tmp_path / "dev.key").chmod(0o644)
    with pytest.raises(TrustError, match="0644"):
        load_or_create(tmp_path, "dev", lambda: pytest.fail("must not recreate"))


def test_load_or_create_recreates_after_crash_before_cert(tmp_path: Path) -> None:
    half = create_self_signed("half")
    (tmp_path / "dev.key").write_bytes(half.key_pem)  # crash between key and cert writes
    cred = load_or_create(tmp_path, "dev", lambda: create_self_signed("dev"))
    assert common_name(cred.cert_pem) == "dev"
    assert load_credential(tmp_path / "dev.pem", tmp_path / "dev.key") == cred


def test_load_credential_rejects_mismatched_key(tmp_path: Path, dev_a: Credential, dev_b: Credential) -> None:
    save_credential(Credential(dev_a.cert_pem, dev_b.key_pem), tmp_path / "c.pem", tmp_path / "c.key")
    with pytest.raises(TrustError, match="does not belong"):
        load_credential(tmp_path / "c.pem", tmp_path / "c.key")


def test_repr_hides_key(dev_a: Credential) -> None:
    body = b"".join(dev_a.key_pem.splitlines()[1:-1]).decode()
    for text in (repr(dev_a), str(dev_a), f"{dev_a!r}"):
        assert "PRIVATE" not in text
        assert body[:16] not in text
        assert "device-a" in text


# ---------------------------------------------------------------- controller certs


def test_controller_certs_and_trusted_signer(root: Credential, inter: Credential, signer: Credential) -> None:
    zc = controller_certs(signer, intermediates=[inter.cert_pem])
    types = [c.type for c in zc.certs]
    assert types == [m.ZCertType.CERT_TYPE_CONTROLLER_SIGNING, m.ZCertType.CERT_TYPE_CONTROLLER_INTERMEDIATE]
    assert all(c.hashAlgo == H32 and bytes(c.certHash) == hashlib.sha256(c.cert).digest() for c in zc.certs)
    wire = m.ZControllerCert.FromString(zc.SerializeToString())
    assert trusted_signer(wire, root.cert_pem) == signer.cert_pem


def test_trusted_signer_rejects_other_root(inter: Credential, signer: Credential) -> None:
    zc = controller_certs(signer, intermediates=[inter.cert_pem])
    with pytest.raises(TrustError):
        trusted_signer(zc, create_root_ca("someone else").cert_pem)


def test_trusted_signer_rejects_bad_hash_or_no_signer(root: Credential, inter: Credential, signer: Credential) -> None:
    zc = controller_certs(signer, intermediates=[inter.cert_pem])
    zc.certs[1].certHash = b"\x00" * 32
    with pytest.raises(TrustError, match="certHash"):
        trusted_signer(zc, root.cert_pem)
    only_inter = m.ZControllerCert(certs=[controller_certs(signer, intermediates=[inter.cert_pem]).certs[1]])
    with pytest.raises(TrustError, match="exactly one"):
        trusted_signer(only_inter, root.cert_pem)


def test_open_controller_certs(root: Credential, inter: Credential, signer: Credential) -> None:
    body = seal_message(controller_certs(signer, intermediates=[inter.cert_pem]), signer, hash_form="pem")
    certs, pem = open_controller_certs(body, root.cert_pem)
    assert pem == signer.cert_pem and len(certs.certs) == 2
    # a man in the middle with his own CA: chain fails -> 403
    evil_root = create_root_ca("edgevol test root")
    evil = issue(evil_root, "controller signing")
    with pytest.raises(AuthError) as e:
        open_controller_certs(seal_message(controller_certs(evil), evil, hash_form="pem"), root.cert_pem)
    assert e.value.status == 403
    # the genuine cert list re-signed by someone else: signature fails -> 403
    forged = seal_message(controller_certs(signer, intermediates=[inter.cert_pem]), Credential(signer.cert_pem, evil.key_pem),
                          hash_form="pem")
    with pytest.raises(AuthError) as e:
        open_controller_certs(forged, root.cert_pem)
    assert e.value.status == 403


def test_ecdh_certificate_is_listed_and_must_chain(root: Credential, inter: Credential, signer: Credential) -> None:
    """EVE wants an ECDH_EXCHANGE cert in /certs (authen.go:606) and checks it chains like the signer
    (authen.go:613-623); a type it does not know is refused (authen.go:593-596)."""
    ecdh = issue(inter, "controller ecdh", purpose="ecdh")
    zc = controller_certs(signer, ecdh, [inter.cert_pem])
    assert [c.type for c in zc.certs] == [m.ZCertType.CERT_TYPE_CONTROLLER_SIGNING,
                                          m.ZCertType.CERT_TYPE_CONTROLLER_ECDH_EXCHANGE,
                                          m.ZCertType.CERT_TYPE_CONTROLLER_INTERMEDIATE]
    assert trusted_signer(zc, root.cert_pem) == signer.cert_pem
    ku = x509.load_pem_x509_certificate(ecdh.cert_pem).extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.key_agreement and not ku.digital_signature
    stranger = issue(create_root_ca("elsewhere"), "foreign ecdh", purpose="ecdh")
    with pytest.raises(TrustError, match="does not chain"):
        trusted_signer(controller_certs(signer, stranger, [inter.cert_pem]), root.cert_pem)
    odd = controller_certs(signer, ecdh, [inter.cert_pem])
    odd.certs[1].type = m.ZCertType.CERT_TYPE_DEVICE_ONBOARDING
    with pytest.raises(TrustError, match="unknown controller certificate type"):
        trusted_signer(odd, root.cert_pem)


def test_a_root_file_may_hold_several_roots(root: Credential, inter: Credential, signer: Credential) -> None:
    """A device's root CA file is a bundle; EVE appends all of it to its pool (authen.go:644-649)."""
    other = create_root_ca("another controller").cert_pem
    rsa_root = _rsa_credential(None, "rsa root in bundle", is_ca=True).cert_pem
    bundle = other + rsa_root + root.cert_pem
    verify_chain(signer.cert_pem, bundle, [inter.cert_pem])
    with pytest.raises(TrustError, match=r"or 1 more"):
        verify_chain(signer.cert_pem, other + rsa_root, [inter.cert_pem])
