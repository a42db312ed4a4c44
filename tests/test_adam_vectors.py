"""Replay of what edgevol's device and LF Edge Adam exchanged, without Adam.

tests/vectors/adam/ holds a run of scripts/adam_interop.py: the device onboarding
to Adam (certs, register, uuid, attest nonce and quote), getting its config
(404 before there was one, 200, 304), fetching /certs again as the config's
controllercert_confighash asks, and reporting both volumes CREATED_VOLUME
(info) and their metrics; plus Adam's public certificates and the device's.
manifest.json says which Adam ran and what each file is.

Every request must verify as the device (or, for register, the onboarding
certificate it embeds) signed it, every answer as Adam's signing certificate
from the recorded /certs signed it, chained to the recorded root, and each
payload must parse as the message for its path. Statuses and rules cite Adam's
source (lf-edge/adam at the commit in the manifest). Adam's certificates are
valid for one year from the recording, so certificate checks run on the
recording's clock.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import re
import types
from pathlib import Path
from typing import Any, Callable

import httpx
import pytest
from cryptography import x509

from edgevol.api import messages as m
from edgevol.device.state import StateStore
from edgevol.device.uplink.client import ControllerClient, ControllerError
from edgevol.device.uplink.online import Uplink, UplinkOptions
from edgevol.device.uplink.wiretrace import load_exchange
from edgevol.trust import pki
from edgevol.trust.envelope import AuthError, cert_lookup, open_container, open_controller_certs, open_message
from edgevol.trust.pki import create_self_signed, der_sha256, issue

VECTORS = Path(__file__).parent / "vectors" / "adam"
MANIFEST: dict[str, Any] = json.loads((VECTORS / "manifest.json").read_text())
ROWS: list[dict[str, Any]] = MANIFEST["exchanges"]
DEVICE_UUID: str = MANIFEST["device"]["uuid"]
VOLUMES = {v["uuid"]: v for v in MANIFEST["config"]["volumes"]}
H16 = m.HashAlgorithm.HASH_ALGORITHM_SHA256_16BYTES
H32 = m.HashAlgorithm.HASH_ALGORITHM_SHA256_32BYTES

# What each device request carries, by role (the register payload is checked on its own).
REQUEST_TYPES: dict[str, type] = {
    "uuid": m.UuidRequest, "attest-cert": m.ZAttestReq, "attest-nonce": m.ZAttestReq, "attest-quote": m.ZAttestReq,
    "config-404": m.ConfigRequest, "config-200": m.ConfigRequest, "config-304": m.ConfigRequest,
    "info": m.ZInfoMsg, "metrics": m.ZMetricMsg,
}
# What each signed answer carries.
ANSWER_TYPES: dict[str, type] = {
    "uuid": m.UuidResponse, "attest-cert": m.ZAttestResponse, "attest-nonce": m.ZAttestResponse, "attest-quote": m.ZAttestResponse,
    "config-200": m.ConfigResponse,
}


def pem(name: str) -> bytes:
    return (VECTORS / name).read_bytes()


def rows(role: str) -> list[dict[str, Any]]:
    return [r for r in ROWS if r["role"] == role]


def exchange(role: str) -> dict[str, Any]:
    (row,) = rows(role)
    return load_exchange(VECTORS / row["file"])


def device_lookup() -> Callable[[bytes], bytes | None]:
    return cert_lookup([pem("device.pem")], "der")


def signer() -> bytes:
    """Adam's signing certificate as /certs lists it (trimmed PEM), checked against the recorded root."""
    return open_controller_certs(exchange("certs")["response_body"], pem("root-ca.pem"))[1]


@pytest.fixture(autouse=True)
def recorded_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """Certificate validity is checked at the time /certs was recorded (adam pkg/x509/generate.go:40-41: one year)."""
    at = dt.datetime.fromisoformat(exchange("certs")["time"])

    class RecordedTime(dt.datetime):
        @classmethod
        def now(cls, tz: dt.tzinfo | None = None) -> dt.datetime:  # type: ignore[override]
            return at.astimezone(tz) if tz else at.replace(tzinfo=None)

    monkeypatch.setattr(pki, "dt", types.SimpleNamespace(datetime=RecordedTime, timezone=dt.timezone,
                                                          timedelta=dt.timedelta))


# ---------------------------------------------------------------- the recording itself


def test_manifest_names_the_run_and_only_public_material_is_kept() -> None:
    assert re.fullmatch(r"[0-9a-f]{40}", MANIFEST["adam"]["source_commit"])
    assert {"certs", "register", "uuid", "attest-cert", "attest-nonce", "attest-quote", "config-200", "config-304",
            "certs-again", "info", "metrics"} <= {r["role"] for r in ROWS}
    assert [r["file"] for r in ROWS] == sorted(r["file"] for r in ROWS)  # in call order
    files = list(VECTORS.iterdir())
    assert not [p.name for p in files if b"PRIVATE KEY" in p.read_bytes()]
    assert sum(p.stat().st_size for p in files) < 64 * 1024
    for row in ROWS:
        ex = load_exchange(VECTORS / row["file"])
        assert (ex["method"], ex["path"], ex["status"]) == (row["method"], row["path"], row["status"])
        assert ex["status"] == MANIFEST["expected_status"][row["role"]]


# ---------------------------------------------------------------- Adam's answers


def test_certs_answer_chains_to_the_recorded_root_and_lists_adams_certificates() -> None:
    ex = exchange("certs")
    assert ex["status"] == 200  # adam pkg/server/apiHandlerv2.go:312
    certs, signing = open_controller_certs(ex["response_body"], pem("root-ca.pem"))
    # /certs lists each file's certificate trimmed of surrounding whitespace (apiHandlerv2.go:241-247).
    assert signing == pem("adam-signing.pem").strip()
    by_type = {zc.type: zc for zc in certs.certs}
    assert set(by_type) == {m.ZCertType.CERT_TYPE_CONTROLLER_SIGNING, m.ZCertType.CERT_TYPE_CONTROLLER_ECDH_EXCHANGE}
    assert bytes(by_type[m.ZCertType.CERT_TYPE_CONTROLLER_ECDH_EXCHANGE].cert) == pem("adam-encrypt.pem").strip()
    for zc in certs.certs:  # sha256 of the listed PEM, cut to 16 bytes (apiHandlerv2.go:248, 287-288)
        assert zc.hashAlgo == H16 and len(zc.certHash) == 16
    # The envelope itself names the signer by all 32 bytes (apiHandlerv2.go:419-420).
    assert m.AuthContainer.FromString(ex["response_body"]).algo == H32
    # Fetched again, the same certificates (Adam builds the list from a Go map, so their order may differ:
    # apiHandlerv2.go:137-160 getAllCerts, 281-293).
    again, _ = open_controller_certs(exchange("certs-again")["response_body"], pem("root-ca.pem"))
    assert sorted(zc.SerializeToString() for zc in again.certs) == sorted(zc.SerializeToString() for zc in certs.certs)


def test_certs_answer_is_refused_under_another_root() -> None:
    # Adam's TLS certificate alone does not vouch for its self-signed signing certificate.
    with pytest.raises(AuthError) as err:
        open_controller_certs(exchange("certs")["response_body"], pem("adam-server.pem"))
    assert err.value.status == 403


@pytest.mark.parametrize("role", sorted(ANSWER_TYPES))
def test_answers_verify_as_signed_by_adam_and_parse(role: str) -> None:
    msg, sender = open_message(exchange(role)["response_body"], ANSWER_TYPES[role], cert_lookup([signer()], "pem"))
    assert sender == signer()
    assert msg.ListFields()


@pytest.mark.parametrize("role", sorted(ANSWER_TYPES))
def test_answers_do_not_verify_with_the_wrong_hash_form_or_a_changed_byte(role: str) -> None:
    body = exchange(role)["response_body"]
    with pytest.raises(AuthError) as err:  # Adam hashes its certificate's PEM, not its DER
        open_message(body, ANSWER_TYPES[role], cert_lookup([signer()], "der"))
    assert err.value.status == 401
    container = m.AuthContainer.FromString(body)
    payload = bytearray(container.protectedPayload.payload)
    payload[len(payload) // 2] ^= 0x01
    container.protectedPayload.payload = bytes(payload)
    with pytest.raises(AuthError) as err:
        open_message(container.SerializeToString(), ANSWER_TYPES[role], cert_lookup([signer()], "pem"))
    assert err.value.status == 403


# ---------------------------------------------------------------- the device's requests


def test_register_is_signed_by_the_embedded_onboarding_certificate() -> None:
    ex = exchange("register")
    assert ex["status"] == 201  # adam pkg/server/commonHandler.go:194, sent at apiHandlerv2.go:494
    assert ex["response_body"] == b""
    msg, sender = open_message(ex["request_body"], m.ZRegisterMsg, lambda _h: None, allow_embedded_cert=True)
    # Adam base64-decodes senderCert and verifies the signature with it (apiHandlerv2.go:454-476).
    assert der_sha256(sender) == der_sha256(pem("onboard.pem"))
    assert msg.serial == MANIFEST["device"]["serial"]
    # pemCert is base64 of the device certificate's PEM (commonHandler.go:172-180).
    assert der_sha256(base64.b64decode(msg.pemCert)) == der_sha256(pem("device.pem"))
    with pytest.raises(AuthError) as err:  # the device key did not sign it
        open_container(ex["request_body"], device_lookup())
    assert err.value.status == 401


@pytest.mark.parametrize("role", sorted(REQUEST_TYPES))
def test_device_requests_verify_by_the_sha256_of_the_device_certificate_der(role: str) -> None:
    for row in rows(role):
        body = load_exchange(VECTORS / row["file"])["request_body"]
        # Adam finds the device by sha256 of the DER it registered, all 32 bytes
        # (pkg/driver/file/device_manager_file.go:400-416) and then checks the signature (apiHandlerv2.go:111-131).
        container = m.AuthContainer.FromString(body)
        assert container.algo == H32
        assert bytes(container.senderCertHash) == der_sha256(pem("device.pem"))
        msg, _ = open_message(body, REQUEST_TYPES[role], device_lookup())
        if role in ("info", "metrics"):
            assert (msg.devId if role == "info" else msg.devID) == DEVICE_UUID
        with pytest.raises(AuthError) as err:  # a PEM-form lookup cannot find the device
            open_message(body, REQUEST_TYPES[role], cert_lookup([pem("device.pem")], "pem"))
        assert err.value.status == 401


def test_uuid_answer_names_the_device() -> None:
    ex = exchange("uuid")
    assert ex["status"] == 200  # apiHandlerv2.go:725
    answer, _ = open_message(ex["response_body"], m.UuidResponse, cert_lookup([signer()], "pem"))
    assert answer.uuid == DEVICE_UUID
    assert all(DEVICE_UUID in r["path"] for r in ROWS if "/id/" in r["path"])


def test_attestation_without_tpm_gives_a_nonce_then_an_integrity_token() -> None:
    lookup = cert_lookup([signer()], "pem")
    nonce_ex, quote_ex = exchange("attest-nonce"), exchange("attest-quote")
    assert nonce_ex["status"] == quote_ex["status"] == 201  # apiHandlerv2.go:572
    req, _ = open_message(nonce_ex["request_body"], m.ZAttestReq, device_lookup())
    assert req.reqType == m.ZAttestReqType.ATTEST_REQ_NONCE
    nonce, _ = open_message(nonce_ex["response_body"], m.ZAttestResponse, lookup)
    assert nonce.respType == m.ZAttestRespType.ATTEST_RESP_NONCE
    assert 12 <= len(nonce.nonce.nonce) <= 32  # Adam: 12 characters (apiHandlerv2.go:56, attestation.go:233-240)

    req, _ = open_message(quote_ex["request_body"], m.ZAttestReq, device_lookup())
    assert req.reqType == m.ZAttestReqType.ATTEST_REQ_QUOTE
    assert not req.quote.pcr_values  # no TPM: Adam skips quote validation (attestation.go:279-289)
    quote, _ = open_message(quote_ex["response_body"], m.ZAttestResponse, lookup)
    assert quote.respType == m.ZAttestRespType.ATTEST_RESP_QUOTE_RESP
    assert quote.quoteResp.response == m.ZAttestResponseCode.Z_ATTEST_RESPONSE_CODE_SUCCESS
    assert len(quote.quoteResp.integrity_token) == 128  # apiHandlerv2.go:57, attestation.go:264-277


def integrity_token() -> bytes:
    quote, _ = open_message(exchange("attest-quote")["response_body"], m.ZAttestResponse, cert_lookup([signer()], "pem"))
    return bytes(quote.quoteResp.integrity_token)


def test_the_device_announces_its_ecdh_certificate_as_eve_does_and_adam_takes_it() -> None:
    ex = exchange("attest-cert")
    assert ex["status"] == 201  # adam pkg/server/attestation.go:241-251 stores the certs, answers CERT
    req, _ = open_message(ex["request_body"], m.ZAttestReq, device_lookup())
    [zc] = req.certs
    # eve pkg/pillar/cmd/tpmmgr/tpmmgr.go:1150-1185: 16 bytes of sha256 of the PEM, DEVICE_ECDH_EXCHANGE
    assert (zc.type, zc.hashAlgo) == (m.ZCertType.CERT_TYPE_DEVICE_ECDH_EXCHANGE, H16)
    assert bytes(zc.certHash) == hashlib.sha256(bytes(zc.cert)).digest()[:16]
    # tpmmgr.go:1058-1125: a P-256 key certified by the device key
    ecdh = x509.load_pem_x509_certificate(bytes(zc.cert))
    ecdh.verify_directly_issued_by(x509.load_pem_x509_certificate(pem("device.pem")))
    answer, _ = open_message(ex["response_body"], m.ZAttestResponse, cert_lookup([signer()], "pem"))
    assert answer.respType == m.ZAttestRespType.ATTEST_RESP_CERT


def test_every_config_request_carries_the_token_the_quote_answer_gave() -> None:
    # Adam answers 403 to any other token (commonHandler.go:75-79).
    token = integrity_token()
    for role in ("config-404", "config-200", "config-304"):
        for row in rows(role):
            req, _ = open_message(load_exchange(VECTORS / row["file"])["request_body"], m.ConfigRequest,
                                  device_lookup())
            assert bytes(req.integrity_token) == token


def test_config_before_any_was_set_is_404() -> None:
    ex = exchange("config-404")  # the script records the device's polls before the config is PUT
    assert ex["status"] == 404  # apiHandlerv2.go:513-518
    assert open_message(ex["request_body"], m.ConfigRequest, device_lookup())[0].configHash == ""


def test_config_answer_holds_the_volumes_and_the_same_hash_then_gives_304() -> None:
    ex = exchange("config-200")
    assert ex["status"] == 200  # apiHandlerv2.go:549
    resp, _ = open_message(ex["response_body"], m.ConfigResponse, cert_lookup([signer()], "pem"))
    cfg = resp.config
    assert cfg.id.uuid == DEVICE_UUID
    # configHash: base64url of a sha256 (commonHandler.go:117-122); controllercert_confighash set (:91).
    assert len(base64.urlsafe_b64decode(resp.configHash)) == 32
    assert cfg.controllercert_confighash
    tree = MANIFEST["config"]["content_tree"]
    assert [(c.uuid, c.sha256, c.URL) for c in cfg.contentInfo] == [(tree["uuid"], tree["sha256"], tree["url"])]
    origins = {v.uuid: (m.VolumeContentOriginType.Name(v.origin.type), v.origin.downloadContentTreeID)
               for v in cfg.volumes}
    assert origins == {u: (v["origin"], tree["uuid"] if v["origin"] == "VCOT_DOWNLOAD" else "")
                       for u, v in VOLUMES.items()}
    assert {r.uuid for r in cfg.apps[0].volumeRefList} == set(VOLUMES)

    again = exchange("config-304")
    req, _ = open_message(again["request_body"], m.ConfigRequest, device_lookup())
    assert req.configHash == resp.configHash
    assert again["status"] == 304 and again["response_body"] == b""  # commonHandler.go:124-128, apiHandlerv2.go:537-539


def test_info_reports_both_volumes_created_and_adam_accepted_it() -> None:
    states: dict[str, int] = {}
    for row in rows("info"):
        ex = load_exchange(VECTORS / row["file"])
        assert ex["status"] == 201  # commonHandler.go:210
        msg, _ = open_message(ex["request_body"], m.ZInfoMsg, device_lookup())
        if msg.ztype == m.ZInfoTypes.ZiVolume:
            states[msg.vinfo.uuid] = msg.vinfo.state
        # eve pkg/pillar/types/types.go:142: loaded content goes out as DELIVERED; ERROR never does
        for state in ([msg.cinfo.state] if msg.ztype == m.ZInfoTypes.ZiContentTree else []) + \
                ([b.state for b in msg.binfo.blob] if msg.ztype == m.ZInfoTypes.ZiBlobList else []):
            assert state not in (m.ZSwState.LOADED, m.ZSwState.ERROR)
    assert states == {u: m.ZSwState.Value(v["expected_state"]) for u, v in VOLUMES.items()}


def test_metrics_cover_both_volumes_and_adam_accepted_them() -> None:
    ex = exchange("metrics")
    assert ex["status"] == 201  # commonHandler.go:226
    msg, _ = open_message(ex["request_body"], m.ZMetricMsg, device_lookup())
    assert {v.uuid for v in msg.vm} == set(VOLUMES)
    assert all(v.totalBytes > 0 for v in msg.vm)


# ---------------------------------------------------------------- today's device against Adam's answers


class RecordedAdam:
    """An httpx transport answering as Adam did in the recording; keeps what the device sent.

    Like Adam it checks who signed each request first: register by the certificate it
    embeds, everything else by the sha256 of the device certificate's DER, 401 otherwise
    (apiHandlerv2.go:107-131, 454-481).
    """

    def __init__(self, device_pem: bytes, register_status: int = 201) -> None:
        self.seen: list[tuple[str, str, bytes]] = []
        self.device_lookup = cert_lookup([device_pem], "der")
        self.register_status = register_status
        self.config_hash = open_message(exchange("config-200")["response_body"], m.ConfigResponse,
                                        cert_lookup([signer()], "pem"))[0].configHash

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = request.read()
        kind = request.url.path.rsplit("/", 1)[-1]
        self.seen.append((request.method, kind, body))
        if request.method == "POST":
            try:
                open_container(body, (lambda _h: None) if kind == "register" else self.device_lookup,
                               allow_embedded_cert=kind == "register")
            except AuthError:
                return httpx.Response(401)
        if kind == "register" and self.register_status != 201:
            return httpx.Response(self.register_status)
        if kind == "attest":
            req = m.ZAttestReq.FromString(m.AuthContainer.FromString(body).protectedPayload.payload)
            role = {m.ZAttestReqType.ATTEST_REQ_CERT: "attest-cert",
                    m.ZAttestReqType.ATTEST_REQ_NONCE: "attest-nonce"}.get(req.reqType, "attest-quote")
        elif kind == "config":
            req = m.ConfigRequest.FromString(m.AuthContainer.FromString(body).protectedPayload.payload)
            role = "config-304" if req.configHash == self.config_hash else "config-200"
        else:
            role = kind
        ex = exchange(role)
        return httpx.Response(ex["status"], content=ex["response_body"], headers=ex["response_headers"])


def replaying_uplink(tmp_path: Path, root_ca: bytes, register_status: int = 201,
                     known: bool = True) -> tuple[Uplink, RecordedAdam]:
    """An uplink whose controller is RecordedAdam; ``known=False``: Adam knows another device certificate."""
    device = create_self_signed("replay device")
    adam = RecordedAdam(device.cert_pem if known else create_self_signed("another device").cert_pem,
                        register_status)
    client = ControllerClient("https://adam.invalid", root_ca, device,
                              certs_path=tmp_path / "controller-certs.pb", transport=httpx.MockTransport(adam))
    uplink = Uplink(client, StateStore(tmp_path / "state.db"), create_self_signed("replay onboarding"),
                    tmp_path / "config.pb", UplinkOptions(serial=MANIFEST["device"]["serial"]),
                    ecdh=issue(device, "replay device ECDH", purpose="ecdh"))
    return uplink, adam


def test_the_device_walks_adams_recorded_answers_to_the_config(tmp_path: Path) -> None:
    uplink, adam = replaying_uplink(tmp_path, pem("root-ca.pem"))
    uplink._sync_config()  # one poll: onboard, then the config
    assert [(meth, kind) for meth, kind, _ in adam.seen] == [
        ("GET", "certs"), ("POST", "register"), ("POST", "uuid"), ("POST", "attest"), ("POST", "attest"),
        ("POST", "attest"), ("POST", "config"), ("GET", "certs")]  # certs again: the config named a
    # controllercert_confighash
    assert uplink.device_uuid == DEVICE_UUID
    config_req = m.ConfigRequest.FromString(m.AuthContainer.FromString(adam.seen[6][2]).protectedPayload.payload)
    assert bytes(config_req.integrity_token) == integrity_token()
    desired = uplink.poll()
    assert desired is not None and set(desired.volumes) == set(VOLUMES)
    assert (tmp_path / "controller-certs.pb").exists()

    adam.seen.clear()
    uplink._sync_config()  # next poll: same configHash, Adam's 304, nothing new
    assert [(meth, kind) for meth, kind, _ in adam.seen] == [("POST", "config")]
    assert uplink.poll() is None
    uplink.client.close()


def test_the_device_refuses_adam_under_a_root_that_does_not_pin_its_signing_certificate(tmp_path: Path) -> None:
    uplink, adam = replaying_uplink(tmp_path, pem("adam-server.pem"))
    with pytest.raises(ControllerError) as err:
        uplink._sync_config()
    assert err.value.status == 495
    assert [kind for _, kind, _ in adam.seen] == ["certs"]  # nothing signed was sent
    uplink.client.close()


def test_a_taken_serial_counts_as_registered_only_once_uuid_knows_the_device(tmp_path: Path) -> None:
    # Adam answers 409 to a serial already used (commonHandler.go:166-167). EVE then asks /uuid and
    # registers again later if that fails too (pkg/pillar/cmd/client/client.go:305-321).
    uplink, adam = replaying_uplink(tmp_path / "same", pem("root-ca.pem"), register_status=409)
    uplink._sync_config()
    assert [kind for _, kind, _ in adam.seen][:3] == ["certs", "register", "uuid"]
    assert uplink.device_uuid == DEVICE_UUID and uplink.poll() is not None
    uplink.client.close()

    uplink, adam = replaying_uplink(tmp_path / "other", pem("root-ca.pem"), register_status=409, known=False)
    for _ in range(2):
        with pytest.raises(ControllerError) as err:
            uplink._sync_config()
        assert err.value.status == 401  # Adam does not know this device certificate (apiHandlerv2.go:111-116)
    assert [kind for _, kind, _ in adam.seen] == ["certs", "register", "uuid", "register", "uuid"]
    assert uplink.store.meta_get("registered") is None and uplink.device_uuid is None
    uplink.client.close()
