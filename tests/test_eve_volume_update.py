"""No silent edits (issue 12): a volume's size or read-only flag changes only with a new generation.

EVE's rules, from lf-edge/eve:

- pkg/pillar/cmd/volumemgr/handlevolume.go:48-59 (quantifyChanges at :408): a volume whose content
  tree, origin, MaxVolSize or ReadOnly changed without a generation bump is held in error, "Need
  volume regeneration due to ... but generation counter not incremented"; edgevol's device does the
  same. So the controller never sends such a change alone: with it go a new generation and a purge
  of the apps following the volume (what ``volume purge`` does), or the change is refused (409).
- pkg/pillar/cmd/volumemgr/handlecontent.go:53-62: a content tree whose URL, format or sha256
  changed is deleted and fetched again, keyed by uuid alone: no generation is needed, and the
  volumes already made from it stay as they are.

Everything runs for real: ``edgevol controller run``, ``edgevol device run --controller`` and the
``edgevol admin`` CLI as subprocesses.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import httpx

from tests.configs import sha256_file
from tests.conftest import make_raw_image
from tests.controller_fixture import agent_factory, controller_factory, onboard, wait_for  # noqa: F401
from tests.test_cli_admin import ok, refused

MiB = 1 << 20


def _volumes(ctrl: Any) -> dict[tuple[str, int], dict[str, Any]]:
    return {(r["display_name"], r["generation"]): r
            for r in ctrl.admin("GET", "/devices/dev1/reported", params={"kind": "volume"})}


def _virtual_size(path: str) -> int:
    out = subprocess.run(["qemu-img", "info", "-U", "--output=json", path], capture_output=True, text=True,
                         check=True).stdout
    return int(json.loads(out)["virtual-size"])


def test_volume_update_size_makes_a_new_generation_the_device_creates(controller_factory,  # noqa: F811
                                                                       agent_factory):  # noqa: F811
    ctrl = controller_factory(None)
    agent = agent_factory(ctrl, "dev1")
    onboard(ctrl, agent, "dev1")
    ctrl.admin("POST", "/devices/dev1/volumes", json={"name": "data", "origin": "blank", "max_size_bytes": 16 * MiB})
    ctrl.admin("POST", "/devices/dev1/apps", json={"name": "web", "volumes": ["data"]})
    agent.start()
    wait_for(lambda: _volumes(ctrl).get(("data", 0), {}).get("state_name") == "CREATED_VOLUME", 60,
             "generation 0 CREATED_VOLUME")

    def version() -> int:
        return int(ctrl.admin("GET", "/devices/dev1")["config_version"])

    # asked not to purge, a content change is refused (API and CLI) and nothing changes
    before = version()
    resp = httpx.patch(f"{ctrl.url}/api/v1/devices/dev1/volumes/data", params={"purge": "false"},
                       json={"max_size_bytes": 32 * MiB}, headers={"Authorization": f"Bearer {ctrl.token}"})
    assert resp.status_code == 409, resp.text
    assert "needs a new generation" in resp.json()["detail"] and "purge apps web" in resp.json()["detail"]
    err = refused(ctrl, "volume", "update", "data", "--device", "dev1", "--readonly", "--no-purge")
    assert "changing readonly from False to True needs a new generation" in err and "409" in err
    vol = ctrl.admin("GET", "/devices/dev1/volumes/data")
    assert (vol["max_size_bytes"], vol["readonly"], vol["generation_count"], version()) == (16 * MiB, False, 0, before)

    # a new name alone is no new generation
    renamed = ctrl.admin("PATCH", "/devices/dev1/volumes/data", json={"name": "store"})
    assert (renamed["generation_count"], renamed["regenerated_from"], renamed["purged_apps"]) == (0, None, [])
    assert ok(ctrl, "volume", "update", "store", "--device", "dev1", "--name", "data").strip() == \
        "volume 'data' updated"

    # a new size: a new generation, the app purged to it, and the CLI says so
    out = ok(ctrl, "volume", "update", "data", "--device", "dev1", "--size", "32MiB")
    assert "volume 'data' updated: new generation 0 -> 1" in out
    assert "the data in generation 0 is not carried over" in out and "apps purged to move to it: web" in out
    app = ctrl.admin("GET", "/devices/dev1/apps")[0]
    assert (app["purge_counter"], app["volume_refs"][0]["generation_count"]) == (1, 1)

    # the device ends with generation 1 CREATED_VOLUME at the new size, no error, generation 0 gone
    done = wait_for(lambda: (lambda v: v if set(v) == {("data", 1)} and v[("data", 1)]["state_name"] ==
                             "CREATED_VOLUME" else None)(_volumes(ctrl)), 90, "only generation 1, created")
    assert done[("data", 1)]["max_size_bytes"] == 32 * MiB and done[("data", 1)]["error"] is None
    [local] = agent.status()["volumes"]
    assert (local["generation_count"], local["state"], local["error"], local["max_size_bytes"]) == (
        1, "CREATED_VOLUME", None, 32 * MiB)
    assert _virtual_size(local["path"]) == 32 * MiB
    [app_report] = ctrl.admin("GET", "/devices/dev1/reported", params={"kind": "app"})
    assert app_report["error"] is None
    assert [a["volume_refs"] for a in agent.status()["apps"]] == [[{"uuid": local["uuid"], "generation_count": 1}]]


def test_content_tree_update_is_fetched_again_and_its_volume_kept(controller_factory, agent_factory,  # noqa: F811
                                                                  datastore_dir: Path, http_server):  # noqa: F811
    ctrl = controller_factory(None)
    agent = agent_factory(ctrl, "dev1")
    onboard(ctrl, agent, "dev1")
    v1 = make_raw_image(datastore_dir / "v1.raw", 2, seed=1)
    v2 = make_raw_image(datastore_dir / "v2.raw", 3, seed=2)
    ctrl.admin("POST", "/datastores", json={"name": "local", "type": "DsHttp", "fqdn": http_server.url})
    ctrl.admin("POST", "/devices/dev1/content-trees", json={"name": "os", "datastore": "local", "url": "v1.raw",
                                                            "format": "RAW", "sha256": sha256_file(v1)})
    ctrl.admin("POST", "/devices/dev1/volumes", json={"name": "root", "origin": "download", "content_tree": "os"})
    agent.start()
    wait_for(lambda: _volumes(ctrl).get(("root", 0), {}).get("state_name") == "CREATED_VOLUME", 60, "root created")
    [before] = agent.status()["volumes"]
    content = sha256_file(Path(before["path"]))

    out = ok(ctrl, "content-tree", "update", "os", "--device", "dev1", "--url", "v2.raw", "--sha256", sha256_file(v2))
    assert "the device fetches its content again" in out
    assert "volumes made from it keep their current content until purged: root" in out

    def fetched() -> dict[str, Any] | None:
        [tree] = [t for t in agent.status()["content_trees"] if t["display_name"] == "os"]
        return tree if tree["sha256"] == sha256_file(v2) and tree["state"] == "LOADED" else None

    tree = wait_for(fetched, 60, "the new content DELIVERED")
    assert tree["error"] is None and tree["reported_state"] == "DELIVERED"
    [after] = agent.status()["volumes"]  # the volume made from it: untouched, no error, no new generation
    assert (after["generation_count"], after["state"], after["error"], after["path"]) == (
        0, "CREATED_VOLUME", None, before["path"])
    assert sha256_file(Path(after["path"])) == content
    assert set(_volumes(ctrl)) == {("root", 0)} and _volumes(ctrl)[("root", 0)]["error"] is None
