"""A writable file volume used by more than one app gets a warning (issue 12).

EVE's rule, from lf-edge/eve:

- pkg/pillar/cmd/volumemgr/handlevolumeref.go:250-263 (checkReferences): when a volume's RefCount is
  above 2 (the config's own reference plus more than one app), it is not a container volume
  (VolumeStatus.IsContainer, types/volumetypes.go:169-171) and not ReadOnly, the error is
  "Multiple app instances (N) are trying to use the same file-based volume NAME", N = RefCount-1;
  it is cleared as soon as that no longer holds.

EVE sets it on each app's volume ref (so in appErr, zedmanager/updatestatus.go:503-515) with the
default severity, ERROR (types/errortime.go:104), and only for apps not yet running. edgevol runs
no apps: the volume reports it in volumeErr with severity WARNING (the volume is as configured),
and the apps using it carry it in appErr through their volumes' errors. It puts nothing in ERROR and
``device run --once`` still exits 0. Read-only volumes and directory volumes may be shared.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgevol.tools.oci_image import Layer, build_image, push
from tests.configs import ConfigBuilder, sha256_file
from tests.conftest import by_name, device_status, make_raw_image, run_cli
from tests.controller_fixture import agent_factory, controller_factory, onboard, wait_for  # noqa: F401
from tests.registry_fixture import registry  # noqa: F401  (fixture)
from tests.test_cli_admin import ok

MiB = 1 << 20
EVE_WORDS = "Multiple app instances (2) are trying to use the same file-based volume shared"


def _run_once(cfg: Path, data: Path) -> int:
    proc = run_cli("device", "run", "--data-dir", str(data), "--config", str(cfg), "--once", timeout=120)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.returncode


def _outbox_vinfo(data: Path) -> dict[str, dict[str, Any]]:
    """display name -> the ZInfoVolume queued for the controller (protobuf JSON)."""
    import json

    items = json.loads(run_cli("device", "outbox", "--data-dir", str(data), "-o", "json", check=True).stdout)
    return {it["message"]["vinfo"].get("displayName", ""): it["message"]["vinfo"]
            for it in items if "vinfo" in it["message"]}


def test_a_writable_file_volume_of_two_apps_is_warned_about_and_nothing_else(tmp_path, datastore_dir,
                                                                            http_server, registry):  # noqa: F811
    image = build_image([Layer.from_files({"app/bin": ("file", b"app", 0o755)})])
    push(registry.url, "shared/app", "v1", image)
    disk = make_raw_image(datastore_dir / "disk.raw", 2)
    b = ConfigBuilder()
    http, reg = b.datastore(http_server.url), b.registry(registry.host)
    shared = b.blank_volume(16 * MiB, name="shared")  # a qcow2 file: warned
    ro = b.download_volume(b.content_tree(http, "disk.raw", sha256_file(disk), "raw"), 0, name="ro", readonly=True)
    root = b.download_volume(b.content_tree(reg, "shared/app:v1", "", "container"), 8 * MiB, name="ctr-root")
    scratch = b.blank_volume(16 * MiB, name="ctr-data")  # a directory, as its apps run from a container image
    b.app([shared, ro], name="a")
    b.app([shared, ro], name="b")
    b.app([root, scratch], name="c")
    b.app([root, scratch], name="d")
    cfg, data = tmp_path / "config.json", tmp_path / "data"

    assert _run_once(b.save(cfg), data) == 0  # a warning is no reason to fail

    st = device_status(data)
    vol = by_name(st["volumes"], "shared")
    assert (vol["state"], vol["error"], vol["ref_count"]) == ("CREATED_VOLUME", None, 3)
    assert Path(vol["path"]).is_file() and vol["warning"]["severity"] == "warning"
    assert vol["warning"]["description"].startswith(EVE_WORDS + ": apps a, b would write to one disk image")
    for name in ("ro", "ctr-root", "ctr-data"):
        other = by_name(st["volumes"], name)
        assert (other["state"], other["error"], other["warning"]) == ("CREATED_VOLUME", None, None), other
    assert Path(by_name(st["volumes"], "ctr-data")["path"]).is_dir()
    for app in ("a", "b"):  # the apps carry it, as EVE's appErr does, still a warning
        err = by_name(st["apps"], app)["error"]
        assert err["severity"] == "warning" and err["description"].startswith(EVE_WORDS)
    assert [by_name(st["apps"], app)["error"] for app in ("c", "d")] == [None, None]
    wire = _outbox_vinfo(data)
    assert wire["shared"]["state"] == "CREATED_VOLUME"
    assert wire["shared"]["volumeErr"]["severity"] == "SEVERITY_WARNING"
    assert wire["shared"]["volumeErr"]["description"].startswith(EVE_WORDS)
    assert wire["shared"]["volumeErr"]["entities"][0]["entity"] == "ENTITY_VOLUME"
    assert all("volumeErr" not in wire[name] for name in ("ro", "ctr-root", "ctr-data"))

    # one app lets go of it: the warning goes, on the device and on the wire
    del b.cfg.apps[1]
    assert _run_once(b.save(cfg), data) == 0
    st = device_status(data)
    assert by_name(st["volumes"], "shared")["warning"] is None and by_name(st["apps"], "a")["error"] is None
    assert "volumeErr" not in _outbox_vinfo(data)["shared"]


def test_the_controller_hears_the_warning_and_its_end(controller_factory, agent_factory):  # noqa: F811
    ctrl = controller_factory(None)
    agent = agent_factory(ctrl, "dev1")
    onboard(ctrl, agent, "dev1")
    ctrl.admin("POST", "/devices/dev1/volumes", json={"name": "shared", "origin": "blank", "max_size_bytes": 16 * MiB})
    ctrl.admin("POST", "/devices/dev1/apps", json={"name": "a", "volumes": ["shared"]})
    ctrl.admin("POST", "/devices/dev1/apps", json={"name": "b", "volumes": ["shared"]})
    agent.start()

    def reported(kind: str) -> dict[str, dict[str, Any]]:
        return {r["display_name"]: r for r in ctrl.admin("GET", "/devices/dev1/reported", params={"kind": kind})}

    vol = wait_for(lambda: (lambda v: v if v and v["state_name"] == "CREATED_VOLUME" and v["error"] else None)(
        reported("volume").get("shared")), 60, "the shared volume created, with its warning")
    assert vol["error"]["severity"] == 2 and vol["error"]["description"].startswith(EVE_WORDS)  # SEVERITY_WARNING
    apps = wait_for(lambda: (lambda a: a if len(a) == 2 and all(x["error"] for x in a.values()) else None)(
        reported("app")), 30, "both apps with the warning in appErr")
    assert {x["error"]["severity"] for x in apps.values()} == {2}
    assert "warning: " + EVE_WORDS in ok(ctrl, "reported", "--device", "dev1", "--kind", "volume")
    assert [v["state"] for v in agent.status()["volumes"]] == ["CREATED_VOLUME"]

    ok(ctrl, "app", "delete", "b", "--device", "dev1")
    wait_for(lambda: reported("volume")["shared"]["error"] is None, 60, "the warning cleared at the controller")
    wait_for(lambda: set(reported("app")) == {"a"} and reported("app")["a"]["error"] is None, 30, "appErr cleared")
