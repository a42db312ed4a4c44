"""Controller and device over EVE API v2 on loopback: explicit volumes end to end."""

from __future__ import annotations

from tests.configs import sha256_file
from tests.conftest import make_raw_image
from tests.controller_fixture import agent_factory, controller_factory, onboard, wait_for  # noqa: F401

MiB = 1 << 20


def _reported(ctrl, device, kind="volume"):
    return {r["display_name"]: r for r in ctrl.admin("GET", f"/devices/{device}/reported", params={"kind": kind})}


def test_volumes_created_at_the_controller_appear_on_the_device(controller_factory, agent_factory,  # noqa: F811
                                                                 datastore_dir, http_server):
    ctrl = controller_factory(None)
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

    # delete at the controller: gone on the device and reported gone
    ctrl.admin("DELETE", "/devices/dev1/volumes/data")
    wait_for(lambda: "data" not in _reported(ctrl, "dev1"), 60, "data volume reported gone")
    assert "data" not in {v["display_name"] for v in agent.status()["volumes"]}
    assert dev["uuid"] == vols["root"]["device_uuid"]
