"""EVE API v2 on the wire against a real controller: configHash, signatures, and every refusal.

Requests are built by hand (``seal``/``seal_message``) or with the device's own
``ControllerClient``, so each test controls exactly which byte is wrong. A
refusal must leave nothing behind: the admin API and the controller's tables
are checked after each batch, and a correctly signed request at the end proves
the checks could have seen a stored report.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from edgevol.api import messages as m
from edgevol.controller.configbuild import config_hash
from edgevol.device.uplink.client import ControllerClient, ControllerError
from edgevol.trust.envelope import (
    AuthError,
    cert_lookup,
    open_controller_certs,
    open_message,
    seal,
    seal_message,
)
from edgevol.trust.pki import Credential, create_root_ca, create_self_signed, der_hash, verify_chain
from tests.controller_fixture import Controller, controller_factory  # noqa: F401
from tests.pg_fixture import db_url, pg_cluster  # noqa: F401

# db_url comes first in each test's arguments: fixtures are torn down in reverse, so the controller
# stops before its PostgreSQL database is dropped.

MiB = 1 << 20
SHA256_32 = m.HashAlgorithm.HASH_ALGORITHM_SHA256_32BYTES
REPORT_TABLES = ("reported_objects", "state_changes", "volume_metrics")


@dataclass
class Dev:
    """A device as the controller knows it after register: uuid, its certificate, its onboarding cert."""

    name: str
    uuid: str
    serial: str
    device: Credential
    onboarding: Credential
    token: bytes  # the integrity token from attestation, which config requests must carry


def expect_device(ctrl: Controller, name: str) -> tuple[str, Credential]:
    """The operator's half: the controller expects a device with this onboarding cert and serial."""
    onboarding = create_self_signed(f"{name} onboarding")
    rec = ctrl.admin("POST", "/devices", json={"name": name, "serial": f"SN-{name}",
                                               "onboard_cert_pem": onboarding.cert_pem.decode()})
    return rec["uuid"], onboarding


def registered(ctrl: Controller, name: str) -> Dev:
    """A device that has registered its own certificate and attested, as the agent does at first contact."""
    uuid, onboarding = expect_device(ctrl, name)
    device = create_self_signed(f"{name} device")
    client = ControllerClient(ctrl.url, ctrl.root_ca.read_bytes(), device)
    try:
        assert client.register(onboarding, f"SN-{name}") == 201
        assert client.uuid() == uuid
        token = client.attest(uuid)
    finally:
        client.close()
    return Dev(name, uuid, f"SN-{name}", device, onboarding, token)


def controller_signer(ctrl: Controller) -> bytes:
    """The signing certificate from GET /certs, accepted only because it chains to root-ca.pem."""
    resp = httpx.get(f"{ctrl.url}/api/v2/edgedevice/certs", timeout=30)
    assert resp.status_code == 200
    root = ctrl.root_ca.read_bytes()
    _certs, signer = open_controller_certs(resp.content, root)
    verify_chain(signer, root)
    # The same answer is refused by a device that was given another root CA.
    with pytest.raises(AuthError) as err:
        open_controller_certs(resp.content, create_root_ca("someone else").cert_pem)
    assert err.value.status == 403
    return signer


def stamp(msg: Any) -> Any:
    msg.atTimeStamp.GetCurrentTime()
    return msg


def volume_info(dev_uuid: str, vol_uuid: str) -> Any:
    info = m.ZInfoMsg(ztype=m.ZInfoTypes.ZiVolume, devId=dev_uuid)
    info.vinfo.uuid = vol_uuid
    info.vinfo.displayName = "data"
    info.vinfo.state = m.ZSwState.CREATED_VOLUME
    info.vinfo.progressPercentage = 100
    info.vinfo.resources.maxSizeBytes = MiB
    info.vinfo.resources.curSizeBytes = 4096
    return stamp(info)


def volume_metrics(dev_uuid: str, vol_uuid: str) -> Any:
    msg = m.ZMetricMsg(devID=dev_uuid)
    msg.vm.add(uuid=vol_uuid, displayName="data", totalBytes=MiB, usedBytes=4096, freeBytes=MiB - 4096)
    return stamp(msg)


def tampered(payload: bytes, sender: Credential, **kw: Any) -> bytes:
    """Sealed correctly, then one byte of the signed payload flipped in transit."""
    container = seal(payload, sender, **kw)
    data = bytearray(container.protectedPayload.payload)
    data[len(data) // 2] ^= 0x01
    container.protectedPayload.payload = bytes(data)
    return container.SerializeToString()


def signed_with_wrong_key(payload: bytes, claimed: Credential) -> bytes:
    """senderCertHash names ``claimed`` but another key made the signature."""
    impostor = create_self_signed("impostor")
    return seal(payload, Credential(claimed.cert_pem, impostor.key_pem)).SerializeToString()


def nothing_reported(ctrl: Controller, devs: list[Dev], vols: dict[str, str]) -> None:
    for dev in devs:
        assert ctrl.admin("GET", f"/devices/{dev.uuid}/reported") == []
        assert ctrl.admin("GET", f"/devices/{dev.uuid}/volumes/{vols[dev.name]}/metrics") == []
    assert {t: ctrl.count(t) for t in REPORT_TABLES} == {t: 0 for t in REPORT_TABLES}


# ---------------------------------------------------------------- configHash


def test_config_hash_304_until_a_change_and_answers_signed_by_the_controller(db_url,  # noqa: F811
                                                                             controller_factory):  # noqa: F811
    ctrl = controller_factory(db_url)
    a = registered(ctrl, "a")
    signer = controller_signer(ctrl)
    verify = cert_lookup([signer], "pem")

    def ask(known: str) -> Any:
        return ctrl.post(f"/id/{a.uuid}/config", seal_message(m.ConfigRequest(configHash=known,
                                                                              integrity_token=a.token), a.device))

    first = ask("")
    assert first.status_code == 200 and first.headers["content-type"] == "application/x-proto-binary"
    resp1, _ = open_message(first.content, m.ConfigResponse, verify)
    assert resp1.config.id.uuid == a.uuid and len(resp1.config.volumes) == 0
    hash1 = resp1.configHash
    assert len(hash1) == 64 and hash1 == config_hash(resp1.config)

    # Nothing changed: 304 with an empty body, as often as the device asks.
    for _ in range(2):
        again = ask(hash1)
        assert again.status_code == 304 and again.content == b""
    client = ControllerClient(ctrl.url, ctrl.root_ca.read_bytes(), a.device)
    try:
        assert client.config(a.uuid, hash1, a.token) is None
        # A change on another device leaves this device's hash alone.
        b = registered(ctrl, "b")
        ctrl.admin("POST", f"/devices/{b.uuid}/volumes", json={"name": "other", "origin": "blank",
                                                               "max_size_bytes": MiB})
        assert ask(hash1).status_code == 304

        # A change for this device: 200, a new hash, the new volume, signed by the controller.
        vol = ctrl.admin("POST", f"/devices/{a.uuid}/volumes", json={"name": "data", "origin": "blank",
                                                                     "max_size_bytes": 2 * MiB})
        changed = ask(hash1)
        assert changed.status_code == 200
        resp2, _ = open_message(changed.content, m.ConfigResponse, verify)
        assert resp2.configHash != hash1
        assert [(v.uuid, v.displayName, v.maxsizebytes) for v in resp2.config.volumes] == \
            [(vol["uuid"], "data", 2 * MiB)]
        assert resp2.config.id.version != resp1.config.id.version
        # The device's client, which checks the chain to root-ca.pem itself, sees the same answer.
        via_client = client.config(a.uuid, hash1, a.token)
        assert via_client is not None and via_client.configHash == resp2.configHash
        assert client.config(a.uuid, resp2.configHash, a.token) is None

        # The signature really covers the answer: one flipped byte and it no longer verifies.
        container = m.AuthContainer.FromString(changed.content)
        payload = bytearray(container.protectedPayload.payload)
        payload[-1] ^= 0x01
        container.protectedPayload.payload = bytes(payload)
        with pytest.raises(AuthError):
            open_message(container.SerializeToString(), m.ConfigResponse, verify)
        # ... and it is not the root CA's (or anyone else's) signature.
        with pytest.raises(AuthError):
            open_message(changed.content, m.ConfigResponse, cert_lookup([ctrl.root_ca.read_bytes()], "pem"))
    finally:
        client.close()

    # A controller restart keeps its keys and its devices: same root CA bytes, same signing certificate,
    # the registered device is still known (no new register) and its config hash still holds.
    pki = {p.name: p.read_bytes() for p in (ctrl.data_dir / "pki").iterdir()}
    registered_at = ctrl.admin("GET", f"/devices/{a.uuid}")["registered_at"]
    ctrl.stop()
    ctrl.start()
    assert {p.name: p.read_bytes() for p in (ctrl.data_dir / "pki").iterdir()} == pki
    assert controller_signer(ctrl) == signer
    assert ask(resp2.configHash).status_code == 304
    assert ctrl.admin("GET", f"/devices/{a.uuid}")["registered_at"] == registered_at


# ---------------------------------------------------------------- refusals


def test_refused_requests_store_nothing(db_url, controller_factory):  # noqa: F811
    ctrl = controller_factory(db_url)
    a, b = registered(ctrl, "a"), registered(ctrl, "b")
    vols = {d.name: ctrl.admin("POST", f"/devices/{d.uuid}/volumes",
                               json={"name": "data", "origin": "blank", "max_size_bytes": MiB})["uuid"]
            for d in (a, b)}
    info_a = volume_info(a.uuid, vols["a"]).SerializeToString()
    metrics_a = volume_metrics(a.uuid, vols["a"]).SerializeToString()
    stranger = create_self_signed("never registered")
    nobody = "0b7d3c1e-5a0f-4c55-9a43-0f7b8f2b2d11"
    unsigned = m.AuthContainer(algo=SHA256_32, senderCertHash=der_hash(a.device.cert_pem, SHA256_32))
    unsigned.protectedPayload.payload = info_a
    short_hash = seal(info_a, a.device)
    short_hash.senderCertHash = bytes(short_hash.senderCertHash)[:20]
    cfg_req = m.ConfigRequest(configHash="0" * 64, integrity_token=a.token).SerializeToString()

    cases: list[tuple[str, str, bytes, set[int]]] = [
        ("tampered info", f"/id/{a.uuid}/info", tampered(info_a, a.device), {403}),
        ("tampered metrics", f"/id/{a.uuid}/metrics", tampered(metrics_a, a.device), {403}),
        ("tampered config request", f"/id/{a.uuid}/config", tampered(cfg_req, a.device), {403}),
        ("A's cert, another key (info)", f"/id/{a.uuid}/info", signed_with_wrong_key(info_a, a.device), {403}),
        ("A's cert, another key (metrics)", f"/id/{a.uuid}/metrics",
         signed_with_wrong_key(metrics_a, a.device), {403}),
        ("A's cert, another key (config)", f"/id/{a.uuid}/config",
         signed_with_wrong_key(cfg_req, a.device), {403}),
        ("unknown device cert (info)", f"/id/{a.uuid}/info", seal_message(volume_info(a.uuid, vols["a"]),
                                                                         stranger), {401}),
        ("unknown device cert (config)", f"/id/{a.uuid}/config", seal_message(m.ConfigRequest(), stranger), {401}),
        ("A's info to B's URL", f"/id/{b.uuid}/info", seal_message(volume_info("", vols["a"]), a.device), {403}),
        ("A's info naming B, to B's URL", f"/id/{b.uuid}/info",
         seal_message(volume_info(b.uuid, vols["b"]), a.device), {403}),
        ("A's info naming B, to A's URL", f"/id/{a.uuid}/info",
         seal_message(volume_info(b.uuid, vols["b"]), a.device), {403}),
        ("A's metrics to B's URL", f"/id/{b.uuid}/metrics",
         seal_message(volume_metrics(b.uuid, vols["b"]), a.device), {403}),
        ("A asks for B's config", f"/id/{b.uuid}/config", seal_message(m.ConfigRequest(), a.device), {403}),
        ("info for a device that does not exist", f"/id/{nobody}/info", seal_message(
            volume_info("", vols["a"]), a.device), {404}),
        ("metrics for a device that does not exist", f"/id/{nobody}/metrics", seal_message(
            volume_metrics("", vols["a"]), a.device), {404}),
        ("config for a device that does not exist", f"/id/{nobody}/config",
         seal_message(m.ConfigRequest(), a.device), {404}),
        ("garbage body", f"/id/{a.uuid}/info", b"\xff\x00garbage\x13\x37" * 7, {400, 401}),
        ("empty body", f"/id/{a.uuid}/info", b"", {400, 401}),
        ("bare unsigned ZInfoMsg", f"/id/{a.uuid}/info", info_a, {400, 401}),
        ("envelope without signature", f"/id/{a.uuid}/info", unsigned.SerializeToString(), {401}),
        ("senderCertHash of the wrong length", f"/id/{a.uuid}/info", short_hash.SerializeToString(), {401}),
        # adam pkg/server/commonHandler.go:75-78: config without the current integrity token is 403
        ("config without integrity token", f"/id/{a.uuid}/config", seal_message(m.ConfigRequest(), a.device),
         {403}),
        ("config with B's integrity token", f"/id/{a.uuid}/config",
         seal_message(m.ConfigRequest(integrity_token=b.token), a.device), {403}),
    ]
    answers = {name: ctrl.post(path, body).status_code for name, path, body, _ in cases}
    wrong = {name: f"{answers[name]}, expected one of {sorted(ok)}" for name, _, _, ok in cases
             if answers[name] not in ok}
    assert wrong == {}
    nothing_reported(ctrl, [a, b], vols)
    check_register_rules(ctrl)
    nothing_reported(ctrl, [a, b], vols)

    # The control: the same messages, correctly signed, are stored, so the checks above could fail.
    assert ctrl.post(f"/id/{a.uuid}/info", seal_message(volume_info(a.uuid, vols["a"]), a.device)).status_code \
        in (200, 201)
    assert ctrl.post(f"/id/{a.uuid}/metrics", seal_message(volume_metrics(a.uuid, vols["a"]),
                                                          a.device)).status_code in (200, 201)
    [rep] = ctrl.admin("GET", f"/devices/{a.uuid}/reported")
    assert (rep["object_key"], rep["state_name"], rep["cur_size_bytes"]) == (vols["a"], "CREATED_VOLUME", 4096)
    [sample] = ctrl.admin("GET", f"/devices/{a.uuid}/volumes/{vols['a']}/metrics")
    assert sample["total_bytes"] == MiB and sample["used_bytes"] == 4096
    assert ctrl.admin("GET", f"/devices/{b.uuid}/reported") == []
    assert ctrl.count("reported_objects") == 1 and ctrl.count("volume_metrics") == 1


def check_register_rules(ctrl: Controller) -> None:
    """403 for an unknown onboarding cert, a wrong serial or a bad signature; idempotent; 409 for another cert."""
    uuid, onboarding = expect_device(ctrl, "c")
    first, second = create_self_signed("c device"), create_self_signed("c device, reinstalled")

    def register(signer: Credential, serial: str, device: Credential) -> int:
        msg = m.ZRegisterMsg(pemCert=base64.b64encode(device.cert_pem), serial=serial)
        return ctrl.post("/register", seal_message(msg, signer, include_cert=True)).status_code

    def device_cert() -> str | None:
        return ctrl.admin("GET", f"/devices/{uuid}")["device_cert_pem"]

    stranger = create_self_signed("unknown onboarding")
    assert register(stranger, "SN-c", first) == 403  # onboarding cert nobody expects
    assert register(onboarding, "SN-wrong", first) == 403  # right cert, wrong serial
    assert register(onboarding, "", first) == 403
    reg = m.ZRegisterMsg(pemCert=base64.b64encode(first.cert_pem), serial="SN-c").SerializeToString()
    assert ctrl.post("/register", tampered(reg, onboarding, include_cert=True)).status_code == 403
    # the expected onboarding certificate named, but another key signed (its cert riding along)
    forged = seal(reg, Credential(onboarding.cert_pem, stranger.key_pem), include_cert=True)
    assert ctrl.post("/register", forged.SerializeToString()).status_code == 403
    # an embedded certificate that is not the one senderCertHash names
    mismatched = seal(reg, stranger, include_cert=True)
    mismatched.senderCert = seal(reg, create_self_signed("third"), include_cert=True).senderCert
    assert ctrl.post("/register", mismatched.SerializeToString()).status_code == 403
    assert ctrl.post("/register", b"not a container").status_code in (400, 401, 403)
    assert device_cert() is None and ctrl.admin("GET", f"/devices/{uuid}")["registered_at"] is None

    # The real registration; again with the same cert (a device that missed the answer) is accepted.
    assert register(onboarding, "SN-c", first) == 201
    registered_at = ctrl.admin("GET", f"/devices/{uuid}")["registered_at"]
    assert device_cert() == first.cert_pem.decode() and registered_at
    assert register(onboarding, "SN-c", first) == 201
    # Another device certificate for the same onboarding cert and serial: a conflict, the first stays.
    assert register(onboarding, "SN-c", second) == 409
    assert device_cert() == first.cert_pem.decode()
    assert ctrl.admin("GET", f"/devices/{uuid}")["registered_at"] == registered_at
    # Only the registered certificate speaks for the device: it is known (403 until it attests, then 200),
    # the other one is not (401).
    assert ctrl.post(f"/id/{uuid}/config", seal_message(m.ConfigRequest(), first)).status_code == 403
    first_client = ControllerClient(ctrl.url, ctrl.root_ca.read_bytes(), first)
    try:
        token = first_client.attest(uuid)
    finally:
        first_client.close()
    ok = ctrl.post(f"/id/{uuid}/config", seal_message(m.ConfigRequest(integrity_token=token), first))
    assert ok.status_code == 200
    assert ctrl.post(f"/id/{uuid}/config", seal_message(m.ConfigRequest(integrity_token=token),
                                                        second)).status_code == 401
    # The agent's client hands back 409 instead of raising (the agent treats it as "registered"; a
    # reinstalled device with a new key then gets 401 on config, as above, until the operator acts).
    client = ControllerClient(ctrl.url, ctrl.root_ca.read_bytes(), second)
    try:
        assert client.register(onboarding, "SN-c") == 409
        with pytest.raises(ControllerError) as err:
            client.register(stranger, "SN-c")
        assert err.value.status == 403
    finally:
        client.close()

