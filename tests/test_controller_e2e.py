"""Controller and device over EVE API v2 on loopback: explicit volumes end to end.

Real processes throughout: ``edgevol controller run`` (SQLite or PostgreSQL)
and ``edgevol device run --controller``; the tests stop, kill and restart them
and look at what a user sees: files on the device, ``device status``,
``device outbox`` and the controller's admin API.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

from edgevol.trust.pki import create_root_ca
from tests.configs import sha256_file
from tests.conftest import make_raw_image
from tests.controller_fixture import (  # noqa: F401
    Controller,
    DeviceAgent,
    agent_factory,
    controller_factory,
    controller_view,
    device_view,
    onboard,
    wait_for,
)
from tests.pg_fixture import db_url, pg_cluster  # noqa: F401

MiB = 1 << 20


def _reported(ctrl, device, kind="volume"):
    return {r["display_name"]: r for r in ctrl.admin("GET", f"/devices/{device}/reported", params={"kind": kind})}


def test_volumes_created_at_the_controller_appear_on_the_device(db_url, controller_factory,  # noqa: F811
                                                                 agent_factory, datastore_dir, http_server):  # noqa: F811
    ctrl = controller_factory(db_url)
    agent = agent_factory(ctrl, "dev1")
    dev = onboard(ctrl, agent, "dev1")
    raw = make_raw_image(datastore_dir / "disk.raw", 4)
    ctrl.admin("POST", "/datastores", json={"name": "local", "type": "DsHttp", "fqdn": http_server.url})
    ctrl.admin("POST", "/devices/dev1/content-trees", json={"name": "disk", "datastore": "local", "url": "disk.raw",
                                                            "format": "RAW", "sha256": sha256_file(raw)})
    ctrl.admin("POST", "/devices/dev1/volumes", json={"name": "data", "origin": "blank", "max_size_bytes": 64 * MiB})
    ctrl.admin("POST", "/devices/dev1/volumes", json={"name": "root", "origin": "download", "content_tree": "disk",
                                                      "max_size_bytes": 8 * MiB})
    agent.start()

    vols = wait_for(lambda: (lambda r: r if {v["state_name"] for v in r.values()} == {"CREATED_VOLUME"}
                             and len(r) == 2 else None)(_reported(ctrl, "dev1")), 60, "both volumes CREATED_VOLUME")
    assert vols["data"]["max_size_bytes"] == 64 * MiB and vols["root"]["max_size_bytes"] == 8 * MiB
    assert vols["root"]["cur_size_bytes"] > 0
    local = {v["display_name"]: v for v in agent.status()["volumes"]}
    assert local["root"]["state"] == "CREATED_VOLUME" and local["root"]["uuid"] == vols["root"]["object_key"]

    # metrics arrive for each volume
    vol_uuid = vols["data"]["object_key"]
    metrics = wait_for(lambda: ctrl.admin("GET", f"/devices/dev1/volumes/{vol_uuid}/metrics"), 30, "metrics")
    assert metrics[-1]["total_bytes"] == 64 * MiB

    # the fleet view: the device runs the current config once it asks again with its hash (a 304)
    def fleet_row() -> dict[str, Any]:
        [row] = [d for d in ctrl.admin("GET", "/fleet") if d["name"] == "dev1"]
        return row

    row = wait_for(lambda: (lambda d: d if d["config_acked_version"] == d["config_version"] else None)(fleet_row()),
                   30, "the config acknowledged")
    assert row["registered"] and row["last_seen_at"] and row["errors"] == 0
    assert row["counts"]["volume"] == {"CREATED_VOLUME": 2} and sum(row["counts"]["content_tree"].values()) == 1

    # delete at the controller: gone on the device and reported gone
    ctrl.admin("DELETE", "/devices/dev1/volumes/data")
    assert fleet_row()["config_version"] == row["config_version"] + 1  # not yet taken
    wait_for(lambda: "data" not in _reported(ctrl, "dev1"), 60, "data volume reported gone")
    assert "data" not in {v["display_name"] for v in agent.status()["volumes"]}
    assert dev["uuid"] == vols["root"]["device_uuid"]
    wait_for(lambda: fleet_row()["config_acked_version"] == row["config_version"] + 1, 30, "the new config taken")
    # an object in error counts in the fleet view
    ctrl.admin("POST", "/devices/dev1/content-trees", json={"name": "ghost", "datastore": "local",
                                                            "url": "missing.raw", "format": "RAW",
                                                            "sha256": "ab" * 32})
    wait_for(lambda: fleet_row()["errors"] >= 1, 60, "the missing file counted as an error")

    def errors_agree() -> bool:  # the blob's error may arrive between two reads: compare until they settle
        in_error = [o for o in ctrl.admin("GET", "/devices/dev1/reported") if o["error"]]
        return fleet_row()["errors"] == len(in_error) and "ghost" in {o["display_name"] for o in in_error}

    wait_for(errors_agree, 30, "the fleet view to count every object in error")


# ---------------------------------------------------------------- helpers for the longer stories


def outbox_by_key(agent: DeviceAgent) -> dict[str, dict[str, Any]]:
    items = agent.outbox()
    keys = [it["key"] for it in items]
    assert len(keys) == len(set(keys)), f"outbox holds more than one message for an object: {keys}"
    return {it["key"]: it for it in items}


def outbox_state(item: dict[str, Any]) -> str:
    body = item["message"]
    content = body.get("vinfo") or body.get("cinfo") or body.get("binfo", {}).get("blob", [{}])[0]
    return content.get("state", "INVALID")


def volume_files(agent: DeviceAgent) -> dict[str, str]:
    """display name -> sha256 of the volume's file on the device."""
    return {v["display_name"]: sha256_file(Path(v["path"])) for v in agent.status()["volumes"]
            if v["path"] and Path(v["path"]).is_file()}


def log_count(agent: DeviceAgent, text: str) -> int:
    path = agent.data_dir.parent / f"agent-{agent.data_dir.name}.log"
    return path.read_text(errors="replace").count(text) if path.exists() else 0


UNREACHABLE = "controller unreachable or refusing"


def restart_offline(agent: DeviceAgent, sig: int) -> None:
    """Stop the agent with ``sig`` and start it again; return once it has tried the (down) controller."""
    before = log_count(agent, UNREACHABLE)
    agent.stop(sig)
    agent.start()
    wait_for(lambda: log_count(agent, UNREACHABLE) > before, 30, "restarted agent to try the controller")
    time.sleep(1)  # a few reconcile passes, in which it could (wrongly) requeue or drop messages


def all_created(ctrl: Controller, device: str, names: set[str]) -> dict[str, Any] | None:
    rep = _reported(ctrl, device)
    ok = set(rep) == names and all(v["state_name"] == "CREATED_VOLUME" for v in rep.values())
    return rep if ok else None


# ---------------------------------------------------------------- controller down, device and controller restarts


def test_controller_outage_device_restarts_and_controller_restart(controller_factory, agent_factory,  # noqa: F811
                                                                   datastore_dir, http_server):
    """The device side of an outage, on SQLite only: what is tested here lives on the device.

    (A controller restart on PostgreSQL, keys and devices kept, is in test_controller_wire.py.)
    """
    ctrl = controller_factory(None)
    agent = agent_factory(ctrl, "dev1")
    onboard(ctrl, agent, "dev1")
    raw = make_raw_image(datastore_dir / "disk.raw", 4)
    http_server.rate_limit_bytes_per_sec = 256 * 1024  # slow enough to still be downloading when things break
    ctrl.admin("POST", "/datastores", json={"name": "local", "type": "DsHttp", "fqdn": http_server.url})
    ctrl.admin("POST", "/devices/dev1/content-trees", json={"name": "disk", "datastore": "local", "url": "disk.raw",
                                                            "format": "RAW", "sha256": sha256_file(raw)})
    ctrl.admin("POST", "/devices/dev1/volumes", json={"name": "data", "origin": "blank", "max_size_bytes": 16 * MiB})
    ctrl.admin("POST", "/devices/dev1/volumes", json={"name": "root", "origin": "download", "content_tree": "disk",
                                                      "max_size_bytes": 8 * MiB})
    agent.start()
    wait_for(lambda: _reported(ctrl, "dev1").get("data", {}).get("state_name") == "CREATED_VOLUME", 60,
             "data volume created")
    wait_for(lambda: any(b["state"] == "DOWNLOAD_STARTED" and b["progress"] > 0 for b in agent.status()["blobs"]),
             60, "download under way")
    device_before = ctrl.admin("GET", "/devices/dev1")
    keys_before = {p.name: p.read_bytes() for p in (ctrl.data_dir / "pki").glob("*.pem")}

    # ---- the controller goes away in the middle of the download
    ctrl.stop()
    files = volume_files(agent)
    assert set(files) == {"data"}
    wait_for(lambda: any(k.startswith("blob/") for k in outbox_by_key(agent)), 30,
             "download progress queued while the controller is down")
    wait_for(lambda: agent.status()["config_source_error"], 30, "the outage noticed")

    # ---- killed mid-download; comes back from the checkpointed config alone and finishes the job
    root_local = {v["display_name"]: v for v in agent.status()["volumes"]}["root"]
    assert root_local["state"] != "CREATED_VOLUME", "the download finished too early for this test"
    restart_offline(agent, signal.SIGKILL)
    http_server.rate_limit_bytes_per_sec = None
    wait_for(lambda: {v["display_name"]: v["state"] for v in agent.status()["volumes"]}
             == {"data": "CREATED_VOLUME", "root": "CREATED_VOLUME"}, 60, "root volume created while offline")
    done_files = volume_files(agent)
    assert set(done_files) == {"data", "root"} and done_files["data"] == files["data"]

    # latest wins: one message per object, each carrying the object's current state (the report is queued at
    # the end of the pass that changed the state, so wait for that pass)
    def outbox_matches_state() -> dict[str, Any] | None:
        queued = outbox_by_key(agent)
        local_states = {f"{kind}/{ident}" + (f"#{gen}" if kind == "volume" else ""): state
                        for (kind, ident, gen), (state, _) in device_view(agent).items()}
        same = {k: outbox_state(it) for k, it in queued.items()} == {k: local_states.get(k) for k in queued}
        return queued if same else None

    queued = wait_for(outbox_matches_state, 30, "the outbox to carry every object's current state")
    root = {v["display_name"]: v for v in agent.status()["volumes"]}["root"]
    assert outbox_state(queued[f"volume/{root['uuid']}#{root['generation_count']}"]) == "CREATED_VOLUME"
    assert {k.split("/")[0] for k in queued} >= {"volume", "content_tree", "blob"}

    # ---- restarts while still offline lose nothing that was queued (same messages, same sequence numbers)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        restart_offline(agent, sig)
        after = outbox_by_key(agent)
        assert {k: (it["seq"], it["message"]) for k, it in after.items() if k in queued} == \
            {k: (it["seq"], it["message"]) for k, it in queued.items()}
        assert volume_files(agent) == done_files

    # ---- the controller is back (a restart on the same data dir and database): same keys, same device
    ctrl.start()
    assert {p.name: p.read_bytes() for p in (ctrl.data_dir / "pki").glob("*.pem")} == keys_before
    wait_for(lambda: not agent.outbox() and controller_view(ctrl, "dev1") == device_view(agent), 60,
             "queued info delivered")
    assert _reported(ctrl, "dev1")["root"]["state_name"] == "CREATED_VOLUME"
    after = ctrl.admin("GET", "/devices/dev1")
    assert (after["registered_at"], after["device_cert_pem"]) == \
        (device_before["registered_at"], device_before["device_cert_pem"])

    # and the device keeps taking config from the restarted controller
    ctrl.admin("POST", "/devices/dev1/volumes", json={"name": "extra", "origin": "blank", "max_size_bytes": 4 * MiB})
    wait_for(lambda: all_created(ctrl, "dev1", {"data", "root", "extra"}), 60, "new volume after controller restart")
    assert agent.status()["config_source_error"] is None
    assert {k: v for k, v in volume_files(agent).items() if k != "extra"} == done_files


# ---------------------------------------------------------------- a controller the device must not trust


def test_device_refuses_config_not_signed_under_its_root_ca(controller_factory, agent_factory):  # noqa: F811
    real = controller_factory(None)
    agent = agent_factory(real, "dev1")
    onboard(real, agent, "dev1")
    real.admin("POST", "/devices/dev1/volumes", json={"name": "data", "origin": "blank", "max_size_bytes": 8 * MiB})
    agent.start()
    wait_for(lambda: all_created(real, "dev1", {"data"}), 60, "data volume created")
    files = volume_files(agent)
    agent.stop()
    real.stop()

    # Another controller with the same database but its own keys: it knows the device and says
    # "delete data, create other"; the device only trusts the first controller's root CA.
    impostor = controller_factory(real.db_url)
    assert impostor.root_ca.read_bytes() != real.root_ca.read_bytes()
    impostor.admin("DELETE", "/devices/dev1/volumes/data")
    impostor.admin("POST", "/devices/dev1/volumes", json={"name": "other", "origin": "blank",
                                                          "max_size_bytes": 4 * MiB})
    agent.controller = impostor
    received = log_count(agent, "config received")
    stored = {t: impostor.count(t) for t in ("reported_objects", "volume_metrics")}
    agent.start(root_ca=real.root_ca)
    err = wait_for(lambda: agent.status()["config_source_error"], 30, "config refused")
    assert "not trusted" in err
    time.sleep(2)  # several more poll and reconcile passes: nothing may change
    assert {v["display_name"]: v["state"] for v in agent.status()["volumes"]} == {"data": "CREATED_VOLUME"}
    assert volume_files(agent) == files
    assert log_count(agent, "config received") == received
    # nor does it report to a controller it does not trust (metrics go out every second)
    assert {t: impostor.count(t) for t in stored} == stored
    assert "not trusted" in agent.status()["config_source_error"]
    agent.stop()

    # The control: given the root CA that does sign this config, the same device applies it.
    agent.start(root_ca=impostor.root_ca)
    wait_for(lambda: {v["display_name"] for v in agent.status()["volumes"]} == {"other"}, 60,
             "config applied under the right root CA")
    assert agent.status()["config_source_error"] is None


# ---------------------------------------------------------------- TLS


def test_tls_controller_with_its_root_ca_and_a_device_with_another(controller_factory, agent_factory,  # noqa: F811
                                                                    tmp_path):
    ctrl = controller_factory(None, tls=True)
    assert ctrl.url.startswith("https://127.0.0.1:")
    good = agent_factory(ctrl, "good")
    onboard(ctrl, good, "good")
    ctrl.admin("POST", "/devices/good/volumes", json={"name": "data", "origin": "blank", "max_size_bytes": 4 * MiB})
    stranger_root = tmp_path / "other-root-ca.pem"
    stranger_root.write_bytes(create_root_ca("not the controller's CA").cert_pem)
    bad = agent_factory(ctrl, "bad")
    onboard(ctrl, bad, "bad")
    ctrl.admin("POST", "/devices/bad/volumes", json={"name": "data", "origin": "blank", "max_size_bytes": 4 * MiB})

    good.start()
    bad.start(root_ca=stranger_root)
    wait_for(lambda: all_created(ctrl, "good", {"data"}), 60, "volume created over TLS")
    assert ctrl.admin("GET", "/devices/good")["registered_at"]

    err = wait_for(lambda: bad.status()["config_source_error"], 30, "TLS failure reported")
    assert "CERTIFICATE_VERIFY_FAILED" in err or "certificate verify failed" in err
    assert bad.status()["volumes"] == []
    # nothing reached the controller from the device that could not verify it
    assert ctrl.admin("GET", "/devices/bad")["registered_at"] is None
    assert ctrl.admin("GET", "/devices/bad/reported") == []
