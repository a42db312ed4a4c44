"""Encrypted datastore credentials (``cipherData``) exactly as EVE derives and checks them.

Every rule pinned here is cited from lf-edge/eve (pkg/pillar/...) or from
Eden, EVE's test controller. The known-answer tests recompute everything
with this file's own primitives (P-256 by hand, AES-CFB by hand from the
AES block function) so that code that only round-trips with itself, but
differs from EVE, fails them.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import uuid as uuidlib
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.x509.oid import NameOID

from edgevol.api import messages as m
from edgevol.api.codec import save_edge_dev_config
from edgevol.controller import records as r
from edgevol.controller.configbuild import CredentialEncryption, config_from_snapshot, config_hash
from edgevol.device.datastores.credentials import CredentialsError, DatastoreCredentials
from edgevol.device.uplink.identity import controller_certs_path, device_credential
from edgevol.model.parse import parse_config
from edgevol.tools.httpserve import serve
from edgevol.trust.cipher import (
    SHA256_16,
    SHA256_32,
    CipherError,
    IntegrityError,
    UndecodableClearText,
    UnknownCertificate,
    UnknownCipherContext,
    UnsupportedCipher,
    decrypt_credentials,
    encrypt_credentials,
)
from edgevol.trust.pki import Credential, create_root_ca, create_self_signed, issue
from tests.conftest import by_name, device_status, make_raw_image, open_guest, run_cli, start_agent
from tests.configs import ConfigBuilder, new_id, sha256_file
from tests.controller_fixture import agent_factory, controller_factory, onboard, wait_for  # noqa: F401

API_KEY, PASSWORD = "edge-user-7f3a", "pa55-XYZZY-9c1e"
CLEAR = m.EncryptionBlock(dsAPIKey=API_KEY, dsPassword=PASSWORD)
ECDH_CERT = m.ZCertType.CERT_TYPE_CONTROLLER_ECDH_EXCHANGE
MiB = 1 << 20

# ---------------------------------------------------------------- independent primitives (test-only)

# P-256 domain parameters (SEC 2 §2.4.2). EVE's soft ECDH is elliptic.P256().ScalarMult
# (pkg/pillar/evetpm/encryptdecypt.go:58); this is the same group law, written out.
P = 2**256 - 2**224 + 2**192 + 2**96 - 1
N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
G = (0x6B17D1F2E12C4247F8BCE6E563A440F277037D812DEB33A0F4A13945D898C296,
     0x4FE342E2FE1A7F9B8EE7EB4A7C0F9E162BCE33576B315ECECBB6406837BF51F5)


def _add(p: tuple[int, int] | None, q: tuple[int, int] | None) -> tuple[int, int] | None:
    if p is None:
        return q
    if q is None:
        return p
    if p[0] == q[0] and (p[1] + q[1]) % P == 0:
        return None
    if p == q:
        slope = (3 * p[0] * p[0] - 3) * pow(2 * p[1], -1, P) % P
    else:
        slope = (q[1] - p[1]) * pow(q[0] - p[0], -1, P) % P
    x = (slope * slope - p[0] - q[0]) % P
    return x, (slope * (p[0] - x) - p[1]) % P


def scalar_mult(k: int, point: tuple[int, int]) -> tuple[int, int]:
    acc: tuple[int, int] | None = None
    addend: tuple[int, int] | None = point
    while k:
        if k & 1:
            acc = _add(acc, addend)
        addend = _add(addend, addend)
        k >>= 1
    assert acc is not None
    return acc


def eve_aes_key(private_scalar: int, peer: tuple[int, int]) -> bytes:
    """EVE pkg/pillar/evetpm/encryptdecypt.go:58-59 + 101-131: sha256(X || Y), each left-padded to 32 bytes."""
    x, y = scalar_mult(private_scalar, peer)
    return hashlib.sha256(x.to_bytes(32, "big") + y.to_bytes(32, "big")).digest()


def cfb_by_hand(key: bytes, iv: bytes, data: bytes) -> bytes:
    """Go's cipher.NewCFBEncrypter (EVE evetpm/encryptdecypt.go:66-74): C_i = P_i xor AES_k(C_{i-1}), C_0 = IV.

    Built from the AES block function alone, so a CFB-8 or OFB implementation would not match it.
    """
    aes = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    out, feedback = b"", iv
    for i in range(0, len(data), 16):
        chunk = bytes(a ^ b for a, b in zip(data[i:i + 16], aes.update(feedback)))
        out, feedback = out + chunk, chunk
    return out


def point_of(key: ec.EllipticCurvePrivateKey) -> tuple[int, int]:
    nums = key.public_key().public_numbers()
    return nums.x, nums.y


def credential_for(key: ec.EllipticCurvePrivateKey, cn: str) -> Credential:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30)).sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return Credential(cert.public_bytes(serialization.Encoding.PEM), key_pem)


def zcert(pem: bytes, cert_type: int = ECDH_CERT, algo: int = SHA256_32) -> m.ZCert:
    """A /certs entry as our controller lists it: certHash = sha256 of the PEM bytes listed."""
    digest = hashlib.sha256(pem).digest()
    return m.ZCert(hashAlgo=algo, certHash=digest if algo == SHA256_32 else digest[:16], type=cert_type, cert=pem)


@pytest.fixture(scope="module")
def keys() -> SimpleNamespace:
    root = create_root_ca("test controller root CA")
    return SimpleNamespace(ecdh=issue(root, "test controller ECDH exchange", purpose="ecdh"),
                           signing=issue(root, "test controller signing"),
                           device=create_self_signed("test device"), other=create_self_signed("another device"))


def assert_no_secret(text: str) -> None:
    for secret in (API_KEY, PASSWORD, CLEAR.SerializeToString().hex()):
        assert secret not in text


# ---------------------------------------------------------------- (a) round trip


@pytest.mark.parametrize("scheme", [SHA256_16, SHA256_32])
def test_round_trip_and_context(keys, scheme):
    context, block = encrypt_credentials(CLEAR, keys.device.cert_pem, keys.ecdh, hash_scheme=scheme)
    size = 16 if scheme == SHA256_16 else 32
    # The context as EVE's parseCipherContext reads it (pkg/pillar/cmd/zedagent/handlecipherconfig.go:87-94).
    assert context.keyExchangeScheme == m.KeyExchangeScheme.KEA_ECDH
    assert context.encryptionScheme == m.EncryptionScheme.SA_AES_256_CFB
    assert context.hashScheme == scheme
    # EVE cmd/tpmmgr/tpmmgr.go:1150-1154: a device cert's id is sha256 over its PEM bytes (truncated).
    assert context.deviceCertHash == hashlib.sha256(keys.device.cert_pem).digest()[:size]
    # EVE cipher/handlecipher.go:103 + types/certinfotypes.go:25-27: the controller cert is found by its
    # /certs certHash, which our /certs makes sha256 of the PEM bytes listed.
    assert context.controllerCertHash == hashlib.sha256(keys.ecdh.cert_pem).digest()[:size]
    # Eden pkg/utils/cryptoConfig.go:57-60: context id = SHA-1 name-based UUID (nil namespace) of the hashes.
    assert context.contextId == str(uuidlib.UUID(bytes=hashlib.sha1(
        bytes(16) + context.controllerCertHash[:16] + context.deviceCertHash[:16]).digest()[:16], version=5))
    assert block.cipherContextId == context.contextId
    # EVE evetpm/encryptdecypt.go:71 (Go CFB wants a one-block IV); handlecipher.go:119 (IV not empty).
    assert len(block.initialValue) == 16
    # EVE cipher/handlecipher.go:166-175: clearTextSha256 is the full sha256 of the clear bytes.
    assert block.clearTextSha256 == hashlib.sha256(CLEAR.SerializeToString(deterministic=True)).digest()
    assert API_KEY.encode() not in block.SerializeToString() and PASSWORD.encode() not in block.SerializeToString()
    out = decrypt_credentials(block, context, keys.device, [zcert(keys.signing.cert_pem, 1),
                                                            zcert(keys.ecdh.cert_pem, algo=scheme)])
    assert (out.dsAPIKey, out.dsPassword) == (API_KEY, PASSWORD)


def test_encryption_is_deterministic_so_the_config_hash_is_stable(keys):
    first = encrypt_credentials(CLEAR, keys.device.cert_pem, keys.ecdh)
    assert encrypt_credentials(CLEAR, keys.device.cert_pem, keys.ecdh) == first
    other = encrypt_credentials(m.EncryptionBlock(dsAPIKey=API_KEY, dsPassword="other"), keys.device.cert_pem,
                                keys.ecdh)
    assert other[0] == first[0]  # one context per (controller cert, device cert) pair
    assert other[1].initialValue != first[1].initialValue  # no two credentials share a CFB key stream
    assert encrypt_credentials(CLEAR, keys.other.cert_pem, keys.ecdh)[1].cipherData != first[1].cipherData


def test_nothing_to_encrypt_is_refused(keys):
    # EVE cipher/handlecipher.go:168-169: an empty clear text never validates, so never send one.
    with pytest.raises(CipherError, match="no credentials"):
        encrypt_credentials(m.EncryptionBlock(), keys.device.cert_pem, keys.ecdh)


# ---------------------------------------------------------------- (b) known answer: EVE's exact derivation

# Fixed scalars; with them the shared point's X starts with a zero byte, so the vector
# also pins EVE's left-padding of each coordinate (evetpm/encryptdecypt.go:101-121).
D_CONTROLLER = 0x599CFBA385BC3C7C71859C7139AEBC45FCD3A620243222F9A46E4C9EEA8770EA
D_DEVICE = 0xD758BF360B302F32A3E35768C7EA24032874DA51CF73566D8031B6E38EFBC279
SHARED_X = "000e2e891d3e28c2d3a2f5ce7af46161be7a6be707b2b4b2602454456cefa1c8"
SHARED_Y = "059907fda8f549c3c631540082d6d09793d74ad88f9af187a0965d58a6239a08"
AES_KEY = "80e30bb24da409b0cddfef43a4b03a733397889f77bccb1f3f64d884aa7a41cd"


@pytest.fixture(scope="module")
def fixed() -> SimpleNamespace:
    ctrl_key = ec.derive_private_key(D_CONTROLLER, ec.SECP256R1())
    dev_key = ec.derive_private_key(D_DEVICE, ec.SECP256R1())
    return SimpleNamespace(controller=credential_for(ctrl_key, "kat controller ECDH"),
                           device=credential_for(dev_key, "kat device"),
                           ctrl_point=point_of(ctrl_key), dev_point=point_of(dev_key))


def test_known_answer_shared_secret_and_key(fixed):
    # The test's own curve arithmetic agrees with OpenSSL's public keys.
    assert scalar_mult(D_CONTROLLER, G) == fixed.ctrl_point and scalar_mult(D_DEVICE, G) == fixed.dev_point
    # EVE cmd/tpmmgr/tpmmgr.go:426-430 (controller: its private scalar times the device's point) and
    # evetpm/encryptdecypt.go:58 (device: its private scalar times the controller cert's point, passed as
    # cert.X, cert.Y by cipher/handlecipher.go:123) reach the same point.
    shared = scalar_mult(D_CONTROLLER, fixed.dev_point)
    assert shared == scalar_mult(D_DEVICE, fixed.ctrl_point)
    assert (shared[0].to_bytes(32, "big").hex(), shared[1].to_bytes(32, "big").hex()) == (SHARED_X, SHARED_Y)
    # EVE evetpm/encryptdecypt.go:123-131, Sha256FromECPoint: AES key = sha256(X32 || Y32), not sha256(X).
    assert eve_aes_key(D_DEVICE, fixed.ctrl_point).hex() == AES_KEY
    assert hashlib.sha256(bytes.fromhex(SHARED_X)).hexdigest() != AES_KEY


def test_known_answer_controller_side_matches_eve(fixed):
    """What encrypt_credentials sends is what EVE's rules produce from the same keys, byte for byte."""
    context, block = encrypt_credentials(CLEAR, fixed.device.cert_pem, fixed.controller)
    clear = CLEAR.SerializeToString(deterministic=True)
    # EVE evetpm/encryptdecypt.go:64-86: AES-256 (32-byte key) in full-block CFB with initialValue as IV.
    assert bytes(block.cipherData) == cfb_by_hand(bytes.fromhex(AES_KEY), bytes(block.initialValue), clear)
    assert bytes(block.clearTextSha256) == hashlib.sha256(clear).digest()  # handlecipher.go:166-175
    assert bytes(context.deviceCertHash) == hashlib.sha256(fixed.device.cert_pem).digest()
    assert bytes(context.controllerCertHash) == hashlib.sha256(fixed.controller.cert_pem).digest()


def test_known_answer_device_side_decrypts_what_eve_rules_make(fixed):
    """A block built here from EVE's rules alone (random IV, as tpmmgr.go:435-442) decrypts on the device."""
    clear = CLEAR.SerializeToString(deterministic=True)
    iv = os.urandom(16)
    digest16 = hashlib.sha256(fixed.controller.cert_pem).digest()[:16]
    context = m.CipherContext(contextId="kat-context", hashScheme=SHA256_16,
                              keyExchangeScheme=m.KeyExchangeScheme.KEA_ECDH,
                              encryptionScheme=m.EncryptionScheme.SA_AES_256_CFB,
                              deviceCertHash=hashlib.sha256(fixed.device.cert_pem).digest()[:16],
                              controllerCertHash=digest16)
    block = m.CipherBlock(cipherContextId="kat-context", initialValue=iv,
                          cipherData=cfb_by_hand(eve_aes_key(D_CONTROLLER, fixed.dev_point), iv, clear),
                          clearTextSha256=hashlib.sha256(clear).digest())
    # Adam lists certHash = sha256(PEM)[:16] (pkg/server/apiHandlerv2.go:248-252, 287-288): matched byte for byte.
    certs = [m.ZCert(hashAlgo=SHA256_16, certHash=digest16, type=ECDH_CERT, cert=fixed.controller.cert_pem)]
    out = decrypt_credentials(block, context, fixed.device, certs)
    assert (out.dsAPIKey, out.dsPassword) == (API_KEY, PASSWORD)
    # The same block keyed the way a plausible but wrong implementation would (sha256 of X only) is refused.
    wrong = modified(block, cipherData=cfb_by_hand(hashlib.sha256(bytes.fromhex(SHARED_X)).digest(), iv, clear))
    with pytest.raises(IntegrityError):
        decrypt_credentials(wrong, context, fixed.device, certs)


def modified(msg: Any, **fields: object) -> Any:
    """A copy of the protobuf message ``msg`` with ``fields`` set."""
    out = type(msg)()
    out.CopyFrom(msg)
    for name, value in fields.items():
        setattr(out, name, value)
    return out


# ---------------------------------------------------------------- (c) every refusal has its own clear error


@pytest.fixture
def sealed(keys) -> SimpleNamespace:
    context, block = encrypt_credentials(CLEAR, keys.device.cert_pem, keys.ecdh)
    return SimpleNamespace(context=context, block=block, certs=[zcert(keys.ecdh.cert_pem)])


def _refused(exc_type: type[CipherError], match: str, block, context, device, certs) -> None:
    with pytest.raises(exc_type, match=match) as info:
        decrypt_credentials(block, context, device, certs)
    assert_no_secret(str(info.value))


def test_tampered_ciphertext(keys, sealed):
    data = bytearray(sealed.block.cipherData)
    data[3] ^= 0x01
    # EVE cipher/handlecipher.go:93-95: "Data Validation Failed" when the hash does not match.
    _refused(IntegrityError, "clearTextSha256", modified(sealed.block, cipherData=bytes(data)),
             sealed.context, keys.device, sealed.certs)


def test_wrong_clear_text_hash(keys, sealed):
    _refused(IntegrityError, "clearTextSha256", modified(sealed.block, clearTextSha256=bytes(32)),
             sealed.context, keys.device, sealed.certs)
    # An empty hash never validates either (handlecipher.go:168).
    _refused(IntegrityError, "clearTextSha256", modified(sealed.block, clearTextSha256=b""),
             sealed.context, keys.device, sealed.certs)


def test_unknown_context_id(keys, sealed):
    # EVE handlecipherconfig.go:130-143 + handlecipher.go:77-83: the context is looked up by id.
    _refused(UnknownCipherContext, "not in the config", sealed.block, None, keys.device, sealed.certs)
    _refused(UnknownCipherContext, "not in the config", sealed.block,
             modified(sealed.context, contextId="some-other-context"), keys.device, sealed.certs)


def test_controller_cert_the_device_does_not_have(keys, sealed):
    # EVE handlecipher.go:135-141: "Controller Certificate get fail" when no /certs entry has that hash.
    _refused(UnknownCertificate, "not among the controller's certificates", sealed.block, sealed.context,
             keys.device, [zcert(keys.signing.cert_pem, 1)])
    _refused(UnknownCertificate, "not among the controller's certificates", sealed.block, sealed.context,
             keys.device, [])
    # A truncated hash is not the listed 32-byte one: EVE compares the hex keys exactly (cipherinfotypes.go:35-37).
    _refused(UnknownCertificate, "not among", sealed.block, sealed.context, keys.device,
             [zcert(keys.ecdh.cert_pem, algo=SHA256_16)])


def test_context_for_another_device(keys, sealed):
    # EVE handlecipher.go:108-113: "Edge Node Certificate get fail".
    _refused(UnknownCertificate, "not this device's", sealed.block, sealed.context, keys.other, sealed.certs)


def test_unsupported_schemes(keys, sealed):
    # EVE handlecipher.go:84-98 (KEA_NONE, unknown) and 114-132 (SA_NONE, unknown).
    _refused(UnsupportedCipher, "KEA_NONE", sealed.block,
             modified(sealed.context, keyExchangeScheme=m.KeyExchangeScheme.KEA_NONE), keys.device,
             sealed.certs)
    _refused(UnsupportedCipher, "SA_NONE", sealed.block,
             modified(sealed.context, encryptionScheme=m.EncryptionScheme.SA_NONE), keys.device,
             sealed.certs)
    _refused(UnsupportedCipher, "hash scheme", sealed.block,
             modified(sealed.context, hashScheme=m.HashAlgorithm.HASH_ALGORITHM_INVALID), keys.device,
             sealed.certs)


def test_bad_initial_value_and_empty_payload(keys, sealed):
    _refused(CipherError, "initial value is 0 bytes", modified(sealed.block, initialValue=b""),
             sealed.context, keys.device, sealed.certs)  # handlecipher.go:119-121
    _refused(CipherError, "no encrypted data", modified(sealed.block, cipherData=b""),
             sealed.context, keys.device, sealed.certs)  # handlecipher.go:74-76


def test_clear_text_that_is_not_an_encryption_block(fixed):
    # Hash-correct bytes that protobuf cannot decode: EVE cipher/cipher.go:48-55 (UnmarshalFailed).
    clear = b"\x0a\x05ab"  # field 1, length 5, only 2 bytes follow
    iv = bytes(range(16))
    context, _ = encrypt_credentials(CLEAR, fixed.device.cert_pem, fixed.controller)
    block = m.CipherBlock(cipherContextId=context.contextId, initialValue=iv,
                          cipherData=cfb_by_hand(bytes.fromhex(AES_KEY), iv, clear),
                          clearTextSha256=hashlib.sha256(clear).digest())
    _refused(UndecodableClearText, "not an EncryptionBlock", block, context, fixed.device,
             [zcert(fixed.controller.cert_pem)])


def test_keys_off_p256_are_refused(keys, sealed):
    # EVE's ECDH is elliptic.P256() only (evetpm/encryptdecypt.go:58) and wants an ECDSA key (handlecipher.go:157-162).
    p384 = credential_for(ec.generate_private_key(ec.SECP384R1()), "p384 device")
    with pytest.raises(UnsupportedCipher, match="P-256"):
        encrypt_credentials(CLEAR, p384.cert_pem, keys.ecdh)
    _refused(UnsupportedCipher, "P-256", sealed.block, modified(
        sealed.context, controllerCertHash=hashlib.sha256(p384.cert_pem).digest()), keys.device, [zcert(p384.cert_pem)])


# ---------------------------------------------------------------- the device's model carries it, untouched


def _config_with(keys, *, context_ok: bool = True, clear: tuple[str, str] = ("", "")) -> tuple[m.EdgeDevConfig, str]:
    context, block = encrypt_credentials(CLEAR, keys.device.cert_pem, keys.ecdh)
    b = ConfigBuilder()
    ds_id = b.datastore("http://127.0.0.1:1", apiKey=clear[0], password=clear[1])
    b.cfg.datastores[0].cipherData.CopyFrom(block)
    if context_ok:
        b.cfg.cipherContexts.append(context)
    return b.cfg, ds_id


def test_parse_keeps_cipher_data_and_its_context(keys):
    cfg, ds_id = _config_with(keys)
    ds = parse_config(cfg).datastores[ds_id]
    assert ds.encrypted is not None and (ds.api_key, ds.password) == ("", "")
    assert m.CipherBlock.FromString(ds.encrypted.block) == cfg.datastores[0].cipherData
    assert m.CipherContext.FromString(ds.encrypted.context) == cfg.cipherContexts[0]
    assert "encrypted" not in repr(ds) and cfg.datastores[0].cipherData.cipherData.hex() not in repr(ds)
    missing, missing_id = _config_with(keys, context_ok=False)
    assert parse_config(missing).datastores[missing_id].encrypted.context is None  # fails at decryption, as EVE
    # EVE handlecipherconfig.go:119-126: a block without data or context id is not treated as encrypted.
    cfg.datastores[0].cipherData.cipherContextId = ""
    assert parse_config(cfg).datastores[ds_id].encrypted is None


def test_device_resolves_credentials_only_for_the_client(tmp_path, keys):
    data = tmp_path / "dev"
    device = device_credential(data)
    resolver = DatastoreCredentials(data)
    context, block = encrypt_credentials(CLEAR, device.cert_pem, keys.ecdh)
    b = ConfigBuilder()
    ds_id = b.datastore("http://127.0.0.1:1")
    b.cfg.datastores[0].cipherData.CopyFrom(block)
    b.cfg.cipherContexts.append(context)
    spec = parse_config(b.cfg).datastores[ds_id]
    # No controller certificates yet: said so, in EVE's terms.
    with pytest.raises(CredentialsError, match="not received the controller's certificates yet"):
        resolver.resolve(spec)
    write_controller_certs(data, keys.ecdh)
    clear = resolver.resolve(spec)
    assert (clear.api_key, clear.password, clear.encrypted) == (API_KEY, PASSWORD, None)
    assert_no_secret(repr(clear))
    unencrypted = replace(spec, encrypted=None)
    assert resolver.resolve(unencrypted) is unencrypted
    broken = replace(spec, encrypted=replace(spec.encrypted, context=None))
    with pytest.raises(CredentialsError, match=f"datastore {ds_id}: .*cipher context .* is not in the config") as info:
        resolver.resolve(broken)
    assert_no_secret(str(info.value))
    # EVE pkg/pillar/cmd/downloader/syncop.go:451-464: clear credentials, when present, are the fallback.
    fallback = resolver.resolve(replace(broken, api_key="clear-user", password="clear-pw"))
    assert (fallback.api_key, fallback.password, fallback.encrypted) == ("clear-user", "clear-pw", None)


# ---------------------------------------------------------------- the controller's config


def _snapshot(device_cert: bytes | None, *datastores: r.Datastore) -> r.ConfigSnapshot:
    now = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    dev = r.Device(uuid=new_id(), name="dev1", serial="SN-1", created_at=now, config_version=3,
                   device_cert_pem=device_cert)
    trees = tuple(r.ContentTree(uuid=new_id(), device_uuid=dev.uuid, name=f"img-{ds.name}", datastore_uuid=ds.uuid,
                                url=f"{ds.name}.raw", format=m.Format.RAW, sha256=None, max_size_bytes=0,
                                generation_count=0, created_at=now) for ds in datastores)
    return r.ConfigSnapshot(device=dev, datastores=tuple(datastores), content_trees=trees, volumes=(), apps=())


def _datastore(name: str, url: str, api_key: str = "", password: str = "") -> r.Datastore:
    return r.Datastore(uuid=new_id(), name=name, type=m.DsType.DsHttp, fqdn=url, dpath="", region="",
                       created_at=dt.datetime(2030, 1, 1, tzinfo=dt.UTC), api_key=api_key, password=password)


def test_controller_config_modes(keys):
    secure, open_ = _datastore("secure", "http://127.0.0.1:1", API_KEY, PASSWORD), _datastore("open", "http://x:1")
    second = _datastore("second", "http://127.0.0.1:2", "u2", "p2")
    snap = _snapshot(keys.device.cert_pem, secure, open_, second)
    wire = {name: config_from_snapshot(snap, CredentialEncryption(keys.ecdh, name)) for name in ("auto", "always")}
    for cfg in wire.values():
        entries = {d.id: d for d in cfg.datastores}
        enc = entries[secure.uuid]
        # Eden pkg/expect/encrypt.go:36-52: credentials go in cipherData, apiKey/password are emptied.
        assert (enc.apiKey, enc.password) == ("", "") and enc.HasField("cipherData")
        assert not entries[open_.uuid].HasField("cipherData")  # nothing to hide
        assert len(cfg.cipherContexts) == 1  # one context per device and controller certificate
        assert entries[second.uuid].cipherData.cipherContextId == cfg.cipherContexts[0].contextId
        raw = cfg.SerializeToString()
        assert API_KEY.encode() not in raw and PASSWORD.encode() not in raw
        out = decrypt_credentials(enc.cipherData, cfg.cipherContexts[0], keys.device, [zcert(keys.ecdh.cert_pem)])
        assert (out.dsAPIKey, out.dsPassword) == (API_KEY, PASSWORD)
    # The same snapshot gives the same hash, poll after poll: an unchanged config stays a 304.
    again = config_from_snapshot(snap, CredentialEncryption(keys.ecdh, "auto"))
    assert config_hash(again) == config_hash(wire["auto"])
    clear = config_from_snapshot(snap, CredentialEncryption(keys.ecdh, "never"))
    assert clear == config_from_snapshot(snap) and clear.datastores[0].apiKey == API_KEY
    assert not clear.cipherContexts
    # Without a registered certificate: "auto" falls back to clear text, "always" withholds the credentials.
    unregistered = _snapshot(None, secure)
    assert config_from_snapshot(unregistered, CredentialEncryption(keys.ecdh, "auto")).datastores[0].password == \
        PASSWORD
    withheld = config_from_snapshot(unregistered, CredentialEncryption(keys.ecdh, "always")).datastores[0]
    assert (withheld.apiKey, withheld.password, withheld.HasField("cipherData")) == ("", "", False)
    # A new device certificate (re-registration) changes the config, and so its hash.
    rekeyed = replace(snap, device=replace(snap.device, device_cert_pem=keys.other.cert_pem))
    assert config_hash(config_from_snapshot(rekeyed, CredentialEncryption(keys.ecdh))) != config_hash(wire["auto"])


# ---------------------------------------------------------------- (d) end to end: controller config → device agent


def _device_with_identity(data: Path, ecdh: Credential, *, certs: bool = True) -> Credential:
    """A device data dir with its identity and, like the uplink leaves it, the verified controller certs."""
    device = device_credential(data)
    if certs:
        write_controller_certs(data, ecdh)
    return device


def write_controller_certs(data: Path, ecdh: Credential) -> None:
    path = controller_certs_path(data)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(m.ZControllerCert(certs=[zcert(ecdh.cert_pem)]).SerializeToString(deterministic=True))
    tmp.rename(path)  # atomically, as the uplink writes it


@pytest.fixture
def two_datastores(tmp_path):
    """An HTTP datastore that demands Basic auth (apiKey/password) and an open one, each with a raw image."""
    dirs = [tmp_path / "secure-ds", tmp_path / "open-ds"]
    for d in dirs:
        d.mkdir()
    images = [make_raw_image(dirs[0] / "secure.raw", 3, seed=11), make_raw_image(dirs[1] / "open.raw", 2, seed=12)]
    servers = [serve(d) for d in dirs]
    servers[0].auth = (API_KEY, PASSWORD)
    yield SimpleNamespace(secure=servers[0], open=servers[1], secure_image=images[0], open_image=images[1])
    for s in servers:
        s.shutdown()


def _controller_config(keys, device: Credential, stores) -> m.EdgeDevConfig:
    """The config our controller builds for the device with encryption forced on, plus two volumes."""
    secure = _datastore("secure", stores.secure.url, API_KEY, PASSWORD)
    open_ = _datastore("open", stores.open.url)
    snap = _snapshot(device.cert_pem, secure, open_)
    snap = replace(snap, content_trees=(
        replace(snap.content_trees[0], url="secure.raw", sha256=sha256_file(stores.secure_image)),
        replace(snap.content_trees[1], url="open.raw", sha256=sha256_file(stores.open_image))))
    now = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    snap = replace(snap, volumes=tuple(
        r.Volume(uuid=new_id(), device_uuid=snap.device.uuid, name=f"vol-{ct.name}", origin="download",
                 content_tree_uuid=ct.uuid, max_size_bytes=4 * MiB, readonly=False, generation_count=0,
                 created_at=now) for ct in snap.content_trees))
    cfg = config_from_snapshot(snap, CredentialEncryption(keys.ecdh, "always"))
    b = ConfigBuilder(cfg.id.uuid)
    b.cfg.CopyFrom(cfg)
    b.fast_retries()
    return b.cfg


def _secure_entry(cfg: m.EdgeDevConfig) -> m.DatastoreConfig:
    return next(d for d in cfg.datastores if d.HasField("cipherData"))


def _files_hold(root: Path, secret: bytes) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and secret in p.read_bytes()]


def test_device_downloads_with_credentials_decrypted_from_the_controller_config(tmp_path, keys, two_datastores):
    data = tmp_path / "dev"
    device = _device_with_identity(data, keys.ecdh)
    cfg = _controller_config(keys, device, two_datastores)
    # On the wire: no clear credentials, a cipherData and its context.
    entry = _secure_entry(cfg)
    assert (entry.apiKey, entry.password) == ("", "") and len(cfg.cipherContexts) == 1
    assert PASSWORD.encode() not in cfg.SerializeToString() and API_KEY.encode() not in cfg.SerializeToString()
    path = tmp_path / "config.pb"
    save_edge_dev_config(path, cfg)

    proc = run_cli("device", "run", "--data-dir", str(data), "--config", str(path), "--once")
    assert proc.returncode == 0, proc.stderr
    st = device_status(data)
    for name, image in (("secure", two_datastores.secure_image), ("open", two_datastores.open_image)):
        vol = by_name(st["volumes"], f"vol-img-{name}")
        assert vol["state"] == "CREATED_VOLUME" and vol["error"] is None
        assert by_name(st["content_trees"], f"img-{name}")["sha256"] == sha256_file(image)
        with open_guest(vol["path"]) as f:
            assert f.read(image.stat().st_size) == image.read_bytes()
    assert two_datastores.secure.requests  # the guarded datastore was asked, and let the device in
    # Decrypted only inside the datastore client: never logged, never stored.
    assert_no_secret(proc.stderr + proc.stdout)
    assert _files_hold(data, PASSWORD.encode()) == [] and _files_hold(data, API_KEY.encode()) == []


def test_tampered_cipher_block_is_a_clear_error_and_the_rest_still_works(tmp_path, keys, two_datastores):
    data = tmp_path / "dev"
    device = _device_with_identity(data, keys.ecdh)
    cfg = _controller_config(keys, device, two_datastores)
    block = _secure_entry(cfg).cipherData
    block.cipherData = bytes([block.cipherData[0] ^ 0x80]) + block.cipherData[1:]
    path = tmp_path / "config.pb"
    save_edge_dev_config(path, cfg)

    proc = run_cli("device", "run", "--data-dir", str(data), "--config", str(path), "--once")
    assert proc.returncode == 1, proc.stderr
    st = device_status(data)
    err = by_name(st["content_trees"], "img-secure")["error"]
    assert err is not None and "encrypted credentials (cipherData) cannot be used" in err["description"]
    assert "clearTextSha256" in err["description"]
    assert "new controller certificates" in err["retry_condition"]
    assert by_name(st["volumes"], "vol-img-secure")["error"] is not None
    assert by_name(st["volumes"], "vol-img-open")["state"] == "CREATED_VOLUME"
    assert two_datastores.secure.requests == []  # without credentials the device does not even ask
    assert_no_secret(proc.stderr + proc.stdout + str(st))


def test_retried_when_controller_certs_or_a_new_config_arrive(tmp_path, keys, two_datastores):
    data = tmp_path / "dev"
    device = _device_with_identity(data, keys.ecdh, certs=False)  # the uplink has not fetched /certs yet
    good = _controller_config(keys, device, two_datastores)
    bad = m.EdgeDevConfig()
    bad.CopyFrom(good)
    _secure_entry(bad).cipherData.clearTextSha256 = bytes(32)
    path = tmp_path / "config.pb"
    save_edge_dev_config(path, bad)
    agent = start_agent(data, path, tmp_path / "agent.log")
    try:
        def tree_error(text: str):
            def check():
                trees = device_status(data)["content_trees"] if (data / "state.db").exists() else []
                err = trees and by_name(trees, "img-secure")["error"]
                return err if err and text in err["description"] else None
            return check

        wait_for(tree_error("not among the controller's certificates"), 60, "unknown controller certificate")
        # The settings say 600 s between slow retries; the new certificates are tried at once.
        write_controller_certs(data, keys.ecdh)
        wait_for(tree_error("clearTextSha256"), 30, "a new try with the controller certificates")
        save_edge_dev_config(path, good)  # a corrected config, tried at once too
        wait_for(lambda: by_name(device_status(data)["volumes"], "vol-img-secure")["state"] == "CREATED_VOLUME",
                 60, "the secure volume once the config is right")
    finally:
        agent.terminate()
        agent.wait(30)
    assert by_name(device_status(data)["volumes"], "vol-img-open")["state"] == "CREATED_VOLUME"
    assert_no_secret((tmp_path / "agent.log").read_text())


# ---------------------------------------------------------------- (d) the same through a real controller


def test_real_controller_sends_encrypted_credentials_the_device_uses(tmp_path, controller_factory, agent_factory,
                                                                     two_datastores):
    # "auto" would send clear credentials to a device on loopback, as this one is: force encryption.
    ctrl = controller_factory(None, args=("--encrypt-credentials",))
    agent = agent_factory(ctrl, "dev1")
    onboard(ctrl, agent, "dev1")
    ctrl.admin("POST", "/datastores", json={"name": "secure", "type": "DsHttp", "fqdn": two_datastores.secure.url,
                                            "api_key": API_KEY, "password": PASSWORD})
    ctrl.admin("POST", "/datastores", json={"name": "open", "type": "DsHttp", "fqdn": two_datastores.open.url})
    for name, image in (("secure", two_datastores.secure_image), ("open", two_datastores.open_image)):
        ctrl.admin("POST", "/devices/dev1/content-trees", json={"name": f"img-{name}", "datastore": name,
                                                                "url": image.name, "format": "RAW",
                                                                "sha256": sha256_file(image)})
        ctrl.admin("POST", "/devices/dev1/volumes", json={"name": f"vol-img-{name}", "origin": "download",
                                                          "content_tree": f"img-{name}", "max_size_bytes": 4 * MiB})
    agent.start()
    wait_for(lambda: (agent.data_dir / "state.db").exists() and
             {v["display_name"]: v["state"] for v in agent.status()["volumes"]} ==
             {"vol-img-secure": "CREATED_VOLUME", "vol-img-open": "CREATED_VOLUME"}, 90, "both volumes created")
    # On the wire (the device keeps the config exactly as it received it): cipherData, no clear credentials.
    received = m.EdgeDevConfig.FromString((agent.data_dir / "checkpoint" / "config.pb").read_bytes())
    entry = _secure_entry(received)
    assert (entry.apiKey, entry.password) == ("", "") and len(received.cipherContexts) == 1
    assert received.cipherContexts[0].controllerCertHash == hashlib.sha256(
        (ctrl.data_dir / "pki" / "ecdh.pem").read_bytes()).digest()
    # Encrypted for the device's own ECDH certificate, which it announced in attest CERT and names by
    # 16 bytes of sha256 of its PEM, as EVE's tpmmgr does (tpmmgr.go:1142-1185).
    ecdh_pem = (agent.data_dir / "identity" / "ecdh.pem").read_bytes()
    assert received.cipherContexts[0].deviceCertHash == hashlib.sha256(ecdh_pem).digest()[:16]
    assert received.cipherContexts[0].hashScheme == m.HashAlgorithm.HASH_ALGORITHM_SHA256_16BYTES
    assert PASSWORD.encode() not in received.SerializeToString()
    vol = by_name(agent.status()["volumes"], "vol-img-secure")
    with open_guest(vol["path"]) as f:
        assert f.read(two_datastores.secure_image.stat().st_size) == two_datastores.secure_image.read_bytes()
    assert _files_hold(agent.data_dir, PASSWORD.encode()) == []
    assert PASSWORD not in (tmp_path / "agent-device-dev1.log").read_text(errors="replace")
