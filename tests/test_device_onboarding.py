"""edgevol's device onboards as an EVE device does, against a real ``edgevol controller run``.

What is checked is on the wire (``device run --trace-wire``) and on disk (the
device's state database, the controller's database): the order of calls,
the integrity token carried, re-attestation after a 403, and that the token
survives a restart without a new attestation.
"""

from __future__ import annotations

import base64
import json
import sqlite3
from pathlib import Path

from sqlalchemy import text

from edgevol.api import messages as m
from edgevol.controller.store import ControllerStore
from edgevol.device.paths import DataDir
from tests.controller_fixture import (  # noqa: F401
    agent_factory,
    controller_factory,
    onboard,
    wait_for,
)

MiB = 1 << 20


def calls(trace: Path) -> list[tuple[str, int, dict[str, object]]]:
    """(last path part, status, the exchange) in call order."""
    out = []
    for f in sorted(trace.glob("*.json")):
        doc = json.loads(f.read_text())
        out.append((doc["path"].rsplit("/", 1)[-1], doc["status"], doc))
    return out


def request_payload(doc: dict[str, object]) -> bytes:
    return bytes(m.AuthContainer.FromString(base64.b64decode(str(doc["request_body"]))).protectedPayload.payload)


def device_token(data_dir: Path) -> bytes:
    db = sqlite3.connect(f"file:{DataDir(data_dir).state_db}?mode=ro", uri=True)
    try:
        (value,) = db.execute("SELECT value FROM meta WHERE key='integrity_token'").fetchone()
    finally:
        db.close()
    return bytes.fromhex(value)


def controller_token(db_url: str, device: str) -> bytes | None:
    store = ControllerStore(db_url)
    try:
        return store.integrity_token(device)
    finally:
        store.close()


def created(ctrl, device: str, name: str) -> bool:
    return any(r["display_name"] == name and r["state_name"] == "CREATED_VOLUME"
               for r in ctrl.admin("GET", f"/devices/{device}/reported", params={"kind": "volume"}))


def test_onboarding_sequence_reattest_on_403_and_token_kept_across_restart(tmp_path, controller_factory,  # noqa: F811
                                                                            agent_factory):  # noqa: F811
    ctrl = controller_factory()
    agent = agent_factory(ctrl, "dev1")
    dev = onboard(ctrl, agent, "dev1")
    ctrl.admin("POST", "/devices/dev1/volumes", json={"name": "one", "origin": "blank", "max_size_bytes": MiB})
    trace = tmp_path / "trace"
    agent.start("--trace-wire", str(trace))
    wait_for(lambda: created(ctrl, "dev1", "one"), 60, "volume one CREATED_VOLUME")

    # EVE's order: certs, register, uuid, attest (the ECDH cert, nonce, quote), config (client.go:265-417,
    # tpmmgr.go:1359-1361, zedagent attesttask.go:126-434, handleconfig.go:1199-1218).
    seq = calls(trace)
    assert [(name, status) for name, status, _ in seq[:7]] == [
        ("certs", 200), ("register", 201), ("uuid", 200), ("attest", 201), ("attest", 201), ("attest", 201),
        ("config", 200)]
    cert_req, nonce_req, quote_req = (m.ZAttestReq.FromString(request_payload(seq[i][2])) for i in (3, 4, 5))
    assert (cert_req.reqType, nonce_req.reqType, quote_req.reqType) == (
        m.ZAttestReqType.ATTEST_REQ_CERT, m.ZAttestReqType.ATTEST_REQ_NONCE, m.ZAttestReqType.ATTEST_REQ_QUOTE)
    assert [bytes(c.cert) for c in cert_req.certs] == [(agent.data_dir / "identity" / "ecdh.pem").read_bytes()]
    assert not quote_req.quote.pcr_values  # no TPM here
    token = controller_token(ctrl.db_url, dev["uuid"])
    assert token and device_token(agent.data_dir) == token
    cfg_req = m.ConfigRequest.FromString(request_payload(seq[6][2]))
    assert bytes(cfg_req.integrity_token) == token
    reg = m.ZRegisterMsg.FromString(request_payload(seq[1][2]))
    assert base64.b64decode(reg.pemCert) == (agent.data_dir / "identity" / "device.pem").read_bytes()
    assert reg.serial == agent.serial

    # The controller forgets the token (a controller restored from a backup, say): the next config is 403,
    # the device attests again (handleconfig.go:809-813) and carries on with the new token.
    engine_store = ControllerStore(ctrl.db_url)
    try:
        with engine_store.engine.begin() as conn:
            conn.execute(text("UPDATE devices SET integrity_token = NULL"))
    finally:
        engine_store.close()
    ctrl.admin("POST", "/devices/dev1/volumes", json={"name": "two", "origin": "blank", "max_size_bytes": MiB})
    wait_for(lambda: created(ctrl, "dev1", "two"), 60, "volume two CREATED_VOLUME after re-attestation")
    new_token = controller_token(ctrl.db_url, dev["uuid"])
    assert new_token and new_token != token and device_token(agent.data_dir) == new_token
    after = [(name, status) for name, status, _ in calls(trace)[len(seq):]]
    first_403 = after.index(("config", 403))
    # then config succeeds: 200, or 304 when the device polled before the new volume changed its config
    assert after[first_403 + 1:first_403 + 4] == [("attest", 201)] * 3 and after[first_403 + 4] in (
        ("config", 200), ("config", 304)), after

    # A restart keeps the token: no attestation, the next config carries it and succeeds.
    agent.stop()
    before_restart = len(calls(trace))
    ctrl.admin("POST", "/devices/dev1/volumes", json={"name": "three", "origin": "blank", "max_size_bytes": MiB})
    agent.start("--trace-wire", str(trace))
    wait_for(lambda: created(ctrl, "dev1", "three"), 60, "volume three CREATED_VOLUME after restart")
    restarted = calls(trace)[before_restart:]
    assert "attest" not in [name for name, _, _ in restarted] and "register" not in [n for n, _, _ in restarted]
    first_config = next(doc for name, _, doc in restarted if name == "config")
    assert bytes(m.ConfigRequest.FromString(request_payload(first_config)).integrity_token) == new_token
