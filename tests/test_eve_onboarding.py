"""An EVE device onboarding to a real ``edgevol controller run``, every request built as EVE builds it.

The requests here are made from primitives (hashlib, ``cryptography``), not with
edgevol's own envelope code, so that a rule edgevol got wrong on both ends
cannot pass unnoticed. Each rule cites where EVE (lf-edge/eve, pkg/pillar) or
Adam (lf-edge/adam, pkg/server) has it. The sequence is the one EVE's client
and zedagent follow: certs, register, uuid, attest (nonce, quote), config,
config again (304), info, metrics, and the posts every EVE device sends.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import ssl
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from edgevol.api import messages as m
from edgevol.trust.pki import Credential, create_self_signed
from tests.controller_fixture import Controller, controller_factory  # noqa: F401
from tests.pg_fixture import db_url, pg_cluster  # noqa: F401

API = "/api/v2/edgedevice"
PROTO = "application/x-proto-binary"
H32 = m.HashAlgorithm.HASH_ALGORITHM_SHA256_32BYTES
H16 = m.HashAlgorithm.HASH_ALGORITHM_SHA256_16BYTES


def der_sha256(pem: bytes) -> bytes:
    # eve pkg/pillar/controllerconn/authen.go:491-503 (certToSha256): sha256 of the parsed cert's Raw (DER)
    return hashlib.sha256(x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)).digest()


def r_s(payload: bytes, key_pem: bytes) -> bytes:
    # eve authen.go:397-435 (signAuthData): ECDSA over sha256(payload), r and s left-padded to 32 bytes each
    key = serialization.load_pem_private_key(key_pem, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    r, s = decode_dss_signature(key.sign(payload, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def envelope(payload: bytes, cred: Credential, *, onboarding: bool = False) -> bytes:
    """eve authen.go:288-341 (AddAuthentication)."""
    c = m.AuthContainer()
    c.protectedPayload.payload = payload
    c.senderCertHash = der_sha256(cred.cert_pem)  # authen.go:307/316
    if onboarding:
        c.senderCert = base64.b64encode(cred.cert_pem)  # authen.go:308,360: base64 of the PEM file
    c.signatureHash = r_s(payload, cred.key_pem)
    c.algo = H32  # authen.go:329
    return c.SerializeToString()


@dataclass
class EveDevice:
    """What an EVE device keeps: its onboarding and device keys, and what the controller told it."""

    ctrl: Controller
    onboarding: Credential
    device: Credential
    serial: str
    soft_serial: str = ""
    uuid: str = ""
    signer_pem: bytes = b""
    token: bytes = b""
    config_hash: str = ""

    def http(self, method: str, path: str, body: bytes | None = None) -> httpx.Response:
        return httpx.request(method, f"{self.ctrl.url}{API}{path}", content=body, timeout=30,
                             verify=self.ctrl.verify, headers={"Content-Type": PROTO})

    def post(self, path: str, msg: Any) -> httpx.Response:
        return self.http("POST", f"/id/{self.uuid}/{path}" if self.uuid else f"/{path}",
                         envelope(msg if isinstance(msg, bytes) else msg.SerializeToString(), self.device))

    def unwrap(self, resp: httpx.Response, msg_type: Any) -> Any:
        """eve authen.go:127-187 (VerifyAuthContainer): hash of the signing cert, then its r||s signature."""
        # eve cmd/client/client.go:557-570 (myPost): a success answer must carry a known Content-Type
        assert resp.headers["content-type"].split(";")[0] in (PROTO, "application/json", "text/plain")
        c = m.AuthContainer.FromString(resp.content)
        assert c.algo in (H16, H32)
        full = hashlib.sha256(self.signer_pem).digest()  # authen.go:486: sha256 of the PEM as received
        assert bytes(c.senderCertHash) == (full if c.algo == H32 else full[:16])
        payload = bytes(c.protectedPayload.payload)
        sig = bytes(c.signatureHash)
        pub = x509.load_pem_x509_certificate(self.signer_pem).public_key()
        assert isinstance(pub, ec.EllipticCurvePublicKey) and len(sig) == 64  # authen.go:264-278
        pub.verify(encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")),
                   payload, ec.ECDSA(hashes.SHA256()))
        return msg_type.FromString(payload)

    # -- the sequence ------------------------------------------------------------

    def certs(self) -> m.ZControllerCert:
        resp = self.http("GET", "/certs")
        assert resp.status_code == 200
        certs = m.ZControllerCert.FromString(m.AuthContainer.FromString(resp.content).protectedPayload.payload)
        by_type: dict[int, list[bytes]] = {}
        for zc in certs.certs:
            by_type.setdefault(zc.type, []).append(bytes(zc.cert))
        # eve authen.go:553-627 (VerifyLeavesCertChain, requireECDH from :546): one signing cert, an
        # ECDH_EXCHANGE cert, both verified against the root with the intermediates listed
        assert len(by_type[m.ZCertType.CERT_TYPE_CONTROLLER_SIGNING]) == 1
        assert len(by_type[m.ZCertType.CERT_TYPE_CONTROLLER_ECDH_EXCHANGE]) >= 1
        assert set(by_type) <= {m.ZCertType.CERT_TYPE_CONTROLLER_SIGNING,
                                m.ZCertType.CERT_TYPE_CONTROLLER_INTERMEDIATE,
                                m.ZCertType.CERT_TYPE_CONTROLLER_ECDH_EXCHANGE}
        root = x509.load_pem_x509_certificate(self.ctrl.root_ca.read_bytes())
        for pem in (by_type[m.ZCertType.CERT_TYPE_CONTROLLER_SIGNING]
                    + by_type[m.ZCertType.CERT_TYPE_CONTROLLER_ECDH_EXCHANGE]):
            x509.load_pem_x509_certificate(pem).verify_directly_issued_by(root)
        self.signer_pem = by_type[m.ZCertType.CERT_TYPE_CONTROLLER_SIGNING][0]
        self.unwrap(resp, m.ZControllerCert)
        return certs

    def register(self) -> httpx.Response:
        # eve cmd/client/client.go:598-616 (selfRegister): pemCert = base64 of the device PEM, serial, softSerial
        msg = m.ZRegisterMsg(pemCert=base64.b64encode(self.device.cert_pem), serial=self.serial,
                             softSerial=self.soft_serial)
        return self.http("POST", "/register", envelope(msg.SerializeToString(), self.onboarding, onboarding=True))

    def get_uuid(self) -> str:
        # eve cmd/client/client.go:773-790 (doGetUUID) and parseuuid.go: POST /uuid, UuidResponse.uuid
        resp = self.http("POST", "/uuid", envelope(m.UuidRequest().SerializeToString(), self.device))
        assert resp.status_code == 200  # adam pkg/server/apiHandlerv2.go:725
        self.uuid = self.unwrap(resp, m.UuidResponse).uuid.strip()
        return self.uuid

    def attest(self) -> bytes:
        # eve cmd/zedagent/attesttask.go:126-195 (nonce) and :289-434 (quote; without a TPM no PCR values)
        nonce = self.post("attest", m.ZAttestReq(reqType=m.ZAttestReqType.ATTEST_REQ_NONCE))
        assert nonce.status_code == 201  # adam pkg/server/apiHandlerv2.go:572
        answer = self.unwrap(nonce, m.ZAttestResponse)
        assert answer.respType == m.ZAttestRespType.ATTEST_RESP_NONCE
        assert 12 <= len(answer.nonce.nonce) <= 32
        quote = self.post("attest", m.ZAttestReq(reqType=m.ZAttestReqType.ATTEST_REQ_QUOTE, quote=m.ZAttestQuote()))
        assert quote.status_code == 201
        qr = self.unwrap(quote, m.ZAttestResponse)
        assert qr.respType == m.ZAttestRespType.ATTEST_RESP_QUOTE_RESP
        assert qr.quoteResp.response == m.ZAttestResponseCode.Z_ATTEST_RESPONSE_CODE_SUCCESS
        self.token = bytes(qr.quoteResp.integrity_token)
        assert self.token
        return self.token

    def config(self) -> httpx.Response:
        # eve cmd/zedagent/handleconfig.go:1199-1218 (generateConfigRequest): last hash and the integrity token
        return self.post("config", m.ConfigRequest(configHash=self.config_hash, integrity_token=self.token))


def expect(ctrl: Controller, name: str, serial: str) -> tuple[str, Credential]:
    onboarding = create_self_signed(f"{name} onboarding")
    rec = ctrl.admin("POST", "/devices", json={"name": name, "serial": serial,
                                               "onboard_cert_pem": onboarding.cert_pem.decode()})
    return rec["uuid"], onboarding


def onboarded(ctrl: Controller, name: str) -> tuple[EveDevice, str, m.ZControllerCert]:
    """An EVE device that fetched /certs, registered and learnt its UUID: (device, uuid, the certs)."""
    dev_uuid, onboarding = expect(ctrl, name, f"SN-{name}")
    eve = EveDevice(ctrl, onboarding, create_self_signed(f"{name} device"), serial=f"SN-{name}")
    certs = eve.certs()
    assert eve.register().status_code == 201
    assert eve.get_uuid() == dev_uuid
    return eve, dev_uuid, certs


def with_secret_datastore(ctrl: Controller, dev_uuid: str, api_key: str, password: str) -> None:
    """A datastore with credentials, and a content tree from it on the device."""
    ctrl.admin("POST", "/datastores", json={"name": "secret", "type": "DsHttp", "fqdn": "http://127.0.0.1:9",
                                            "api_key": api_key, "password": password})
    ctrl.admin("POST", f"/devices/{dev_uuid}/content-trees", json={
        "name": "img", "datastore": "secret", "url": "img.raw", "format": "RAW", "sha256": "ab" * 32})


def test_an_eve_device_onboards_and_runs(db_url, controller_factory):  # noqa: F811
    ctrl = controller_factory(db_url)
    dev_uuid, onboarding = expect(ctrl, "eve-1", "HW-SERIAL-1")
    eve = EveDevice(ctrl, onboarding, create_self_signed("eve-1 device"), serial="HW-SERIAL-1")

    eve.certs()
    reg = eve.register()
    assert reg.status_code == 201 and reg.headers["content-type"] == PROTO  # client.go:534-558
    assert eve.register().status_code == 201  # a device that missed the answer registers again
    assert eve.get_uuid() == dev_uuid

    # adam pkg/server/commonHandler.go:75-78: no config before attestation (403), as Adam enforces it
    assert eve.config().status_code == 403
    token = eve.attest()
    first = eve.config()
    assert first.status_code == 200
    cfg = eve.unwrap(first, m.ConfigResponse)
    assert cfg.config.id.uuid == dev_uuid and cfg.configHash
    eve.config_hash = cfg.configHash
    assert eve.config().status_code == 304 and eve.config().content == b""

    # Attesting again keeps the token valid (adam attestation.go:263-271 keeps one token per device).
    assert eve.attest() == token
    assert eve.config().status_code == 304
    # A wrong token is refused again, and EVE's answer to that, attesting, works (handleconfig.go:809-813).
    eve.token = b"not the token"
    assert eve.config().status_code == 403
    eve.attest()
    assert eve.config().status_code == 304

    # A change reaches the device as 200 with a new hash.
    vol = ctrl.admin("POST", f"/devices/{dev_uuid}/volumes", json={"name": "data", "origin": "blank",
                                                                   "max_size_bytes": 1 << 20})
    changed = eve.config()
    assert changed.status_code == 200
    new_cfg = eve.unwrap(changed, m.ConfigResponse)
    assert new_cfg.configHash != eve.config_hash and [v.uuid for v in new_cfg.config.volumes] == [vol["uuid"]]

    info = m.ZInfoMsg(ztype=m.ZInfoTypes.ZiVolume, devId=dev_uuid)
    info.vinfo.uuid = vol["uuid"]
    info.vinfo.state = m.ZSwState.CREATED_VOLUME
    info.atTimeStamp.GetCurrentTime()
    assert eve.post("info", info).status_code == 201  # adam pkg/server/commonHandler.go:210
    metrics = m.ZMetricMsg(devID=dev_uuid)
    metrics.vm.add(uuid=vol["uuid"], totalBytes=1 << 20, usedBytes=4096)
    metrics.atTimeStamp.GetCurrentTime()
    assert eve.post("metrics", metrics).status_code == 201  # commonHandler.go:226
    [rep] = ctrl.admin("GET", f"/devices/{dev_uuid}/reported")
    assert (rep["object_key"], rep["state_name"]) == (vol["uuid"], "CREATED_VOLUME")
    [sample] = ctrl.admin("GET", f"/devices/{dev_uuid}/volumes/{vol['uuid']}/metrics")
    assert sample["used_bytes"] == 4096

    # The posts every EVE device makes are verified and accepted (adam apiHandlerv2.go:153-158; commonHandler.go
    # answers 201). newlogs is a gzip stream (eve cmd/loguploader/loguploader.go:805, adam commonHandler.go:256-288).
    app = "6c3f2a8e-2d5b-4b8f-9a51-0e4f3d2c1b0a"
    logs = gzip.compress(b'{"severity":"info","content":"hello"}\n')
    for path, body in (("newlogs", logs), ("logs", b"\x0a\x00"), ("flowlog", b""), ("hardwarehealth", b""),
                       (f"apps/instanceid/{app}/newlogs", logs), (f"apps/instances/id/{app}/logs", b"")):
        assert eve.post(path, body).status_code == 201, path
    # ... but only signed by the device: the same posts unsigned, or by a stranger, are refused.
    stranger = create_self_signed("stranger")
    for path in ("newlogs", "flowlog", "hardwarehealth", f"apps/instanceid/{app}/newlogs"):
        assert eve.http("POST", f"/id/{dev_uuid}/{path}", envelope(logs, stranger)).status_code == 401
        assert eve.http("POST", f"/id/{dev_uuid}/{path}", logs).status_code in (400, 401)
    assert eve.post("no-such-call", b"").status_code == 404


def test_register_tries_the_soft_serial(db_url, controller_factory):  # noqa: F811
    """adam pkg/server/commonHandler.go:141-150 (registerProcess): serial first, then softSerial."""
    ctrl = controller_factory(db_url)
    dev_uuid, onboarding = expect(ctrl, "soft", "SOFT-7")
    eve = EveDevice(ctrl, onboarding, create_self_signed("soft device"), serial="unknown-hw", soft_serial="SOFT-7")
    eve.certs()
    assert eve.register().status_code == 201
    assert eve.get_uuid() == dev_uuid
    nobody = EveDevice(ctrl, onboarding, create_self_signed("x"), serial="nope", soft_serial="nope-either")
    assert nobody.register().status_code == 403  # commonHandler.go:155-165: not pre-registered


def _served_names(ctrl: Controller) -> tuple[set[str], set[str]]:
    pem = ssl.get_server_certificate(("127.0.0.1", ctrl.port))
    san = x509.load_pem_x509_certificate(pem.encode()).extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value
    return set(san.get_values_for_type(x509.DNSName)), {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}


def test_tls_names_come_from_tls_san_not_the_listen_address(controller_factory):  # noqa: F811
    import socket

    anywhere = controller_factory(tls=True, listen_host="0.0.0.0")
    dns, ips = _served_names(anywhere)
    assert "0.0.0.0" not in ips
    assert "127.0.0.1" in ips and "localhost" in dns and socket.gethostname() in dns
    # a device dialling the host by name or loopback verifies the certificate
    eve = EveDevice(anywhere, create_self_signed("o"), create_self_signed("d"), serial="s")
    eve.certs()

    named = controller_factory(tls=True, listen_host="0.0.0.0",
                               args=("--tls-san", "ctrl.example.net", "--tls-san", "127.0.0.1"))
    dns, ips = _served_names(named)
    assert (dns, ips) == ({"ctrl.example.net"}, {"127.0.0.1"})
    EveDevice(named, create_self_signed("o"), create_self_signed("d"), serial="s").certs()


@pytest.mark.parametrize("bad", ["serial", "signature"])
def test_register_refusals_store_nothing(bad: str, controller_factory):  # noqa: F811
    ctrl = controller_factory()
    dev_uuid, onboarding = expect(ctrl, "r", "SN-R")
    eve = EveDevice(ctrl, onboarding, create_self_signed("r device"), serial="SN-R")
    if bad == "serial":
        eve.serial = "SN-other"
        assert eve.register().status_code == 403
    else:
        c = m.AuthContainer.FromString(envelope(m.ZRegisterMsg(pemCert=base64.b64encode(eve.device.cert_pem),
                                                               serial="SN-R").SerializeToString(),
                                                onboarding, onboarding=True))
        c.signatureHash = bytes(c.signatureHash)[:-1] + bytes([c.signatureHash[-1] ^ 1])
        assert eve.http("POST", "/register", c.SerializeToString()).status_code == 403
    assert ctrl.admin("GET", f"/devices/{dev_uuid}")["registered_at"] is None


def _ecdh_cert_signed_by(device: Credential, signer_key_pem: bytes | None = None) -> tuple[bytes, ec.EllipticCurvePrivateKey]:
    """EVE's soft ECDH certificate: a P-256 key certified by the device key (tpmmgr.go:1058-1125)."""
    import datetime as dt

    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    issuer = x509.load_pem_x509_certificate(device.cert_pem)
    signer = serialization.load_pem_private_key(signer_key_pem or device.key_pem, password=None)
    now = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ecdh")]))
            .issuer_name(issuer.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + dt.timedelta(days=30))
            .sign(signer, hashes.SHA256()))  # type: ignore[arg-type]
    return cert.public_bytes(serialization.Encoding.PEM), key


def test_credentials_are_encrypted_for_the_ecdh_certificate_an_eve_device_sends(controller_factory):  # noqa: F811
    """An EVE device decrypts datastore credentials only with its ECDH key, announced in attest CERT."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    from tests.test_cipher import scalar_mult

    ctrl = controller_factory(args=("--encrypt-credentials",))
    eve, dev_uuid, certs = onboarded(ctrl, "enc")
    # tpmmgr.go:1158-1185 (publishEdgeNodeCertToController): SHA256_16BYTES of the PEM file, DEVICE_ECDH_EXCHANGE
    foreign_pem, _ = _ecdh_cert_signed_by(eve.device, create_self_signed("not the device").key_pem)
    ecdh_pem, ecdh_key = _ecdh_cert_signed_by(eve.device)

    def cert_request(pem: bytes) -> m.ZAttestReq:
        return m.ZAttestReq(reqType=m.ZAttestReqType.ATTEST_REQ_CERT, certs=[m.ZCert(
            hashAlgo=H16, certHash=hashlib.sha256(pem).digest()[:16],
            type=m.ZCertType.CERT_TYPE_DEVICE_ECDH_EXCHANGE, cert=pem)])

    assert eve.post("attest", cert_request(foreign_pem)).status_code == 400  # not certified by the device
    answer = eve.post("attest", cert_request(ecdh_pem))
    assert answer.status_code == 201
    assert eve.unwrap(answer, m.ZAttestResponse).respType == m.ZAttestRespType.ATTEST_RESP_CERT
    eve.attest()
    with_secret_datastore(ctrl, dev_uuid, "alice", "s3cret-Pa55")
    cfg = eve.unwrap(eve.config(), m.ConfigResponse).config
    [ds] = cfg.datastores
    assert (ds.apiKey, ds.password) == ("", "") and b"s3cret" not in cfg.SerializeToString()
    [context] = cfg.cipherContexts
    assert context.contextId == ds.cipherData.cipherContextId
    # handlecipher.go:103-113: EdgeNodeCertKey and ControllerCertKey are looked up byte for byte
    assert bytes(context.deviceCertHash) == hashlib.sha256(ecdh_pem).digest()[:16]
    listed = {bytes(zc.certHash): zc for zc in certs.certs}
    assert listed[bytes(context.controllerCertHash)].type == m.ZCertType.CERT_TYPE_CONTROLLER_ECDH_EXCHANGE
    # Decrypt as EVE does, from primitives: AES-256-CFB with key sha256(X||Y) of ecdh_key * controller point
    # (evetpm/encryptdecypt.go:58-131), then the clear-text hash check (handlecipher.go:166-175).
    controller_pub = x509.load_pem_x509_certificate(bytes(listed[bytes(context.controllerCertHash)].cert)).public_key()
    assert isinstance(controller_pub, ec.EllipticCurvePublicKey)
    nums = controller_pub.public_numbers()
    x, y = scalar_mult(ecdh_key.private_numbers().private_value, (nums.x, nums.y))
    key = hashlib.sha256(x.to_bytes(32, "big") + y.to_bytes(32, "big")).digest()
    aes = Cipher(algorithms.AES(key), modes.ECB()).encryptor()  # Go's CFB decrypter, block by block
    clear, feedback, ciphertext = b"", bytes(ds.cipherData.initialValue), bytes(ds.cipherData.cipherData)
    for i in range(0, len(ciphertext), 16):
        chunk = ciphertext[i:i + 16]
        clear += bytes(a ^ b for a, b in zip(chunk, aes.update(feedback)))
        feedback = chunk
    assert hashlib.sha256(clear).digest() == bytes(ds.cipherData.clearTextSha256)
    block = m.EncryptionBlock.FromString(clear)
    assert (block.dsAPIKey, block.dsPassword) == ("alice", "s3cret-Pa55")


def test_auto_mode_sends_clear_credentials_to_a_loopback_device(controller_factory):  # noqa: F811
    ctrl = controller_factory()  # --encrypt-credentials not given: "auto"
    eve, dev_uuid, _ = onboarded(ctrl, "lo")
    eve.attest()
    with_secret_datastore(ctrl, dev_uuid, "bob", "pw")
    cfg = eve.unwrap(eve.config(), m.ConfigResponse).config
    assert [(d.apiKey, d.password, d.HasField("cipherData")) for d in cfg.datastores] == [("bob", "pw", False)]
