"""EVE's own volume scenarios, replayed on edgevol: a real controller and a device in online mode.

Each test names the scenario it replays, from lf-edge/eden (``tests/volume/testdata/volumes_test.txt``,
``tests/eclient/testdata/eclients.txt``) or from the evetest suite in lf-edge/eve
(``evetest/tests/storage/volumes_test.go``, ``evetest/tests/apps/purge_after_power_cycle_test.go``),
and checks what those tools check, the way they read it:

* a volume's state as ``eden volume ls`` shows it (lf-edge/eden pkg/eve/volumes.go:108-160): a
  DOWNLOAD volume shows its content tree's state (DELIVERED once loaded), a BLANK one its own; an
  object whose last info message has no display name or state INVALID is gone;
* errors by substring, as ``eden.lim.test`` matches ``volumeErr:Remaining`` and ``appErr:Remaining``.

The device's data directory is a tmpfs of fixed size, so the space figures are exact. edgevol runs
no guests: where Eden waits for an app to be RUNNING, these tests wait for the app's volumes to be
CREATED_VOLUME and its error to be gone, which is what EVE needs before it boots one.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from typing import Any, Iterator

import pytest

from edgevol.api import messages as m
from edgevol.device.datastores.oci_manifest import host_platform
from edgevol.device.uplink.wiretrace import load_exchange
from edgevol.model.desired import Settings
from edgevol.tools.oci_image import Layer, build_image, push
from tests.configs import sha256_file
from tests.conftest import export_io, make_raw_image, open_guest
from tests.controller_fixture import Controller, DeviceAgent, controller_factory, onboard, wait_for  # noqa: F401
from tests.registry_fixture import RunningRegistry, registry  # noqa: F401  (fixture)

MiB = 1 << 20
RESERVE = Settings().disk_reserve_bytes  # the device never promises this much of its disk
USABLE = 96 * MiB  # what the scenarios may fill
S = m.ZSwState


@pytest.fixture
def persist(tmp_path: Path) -> Iterator[Path]:
    """The device's data directory: a tmpfs of exactly RESERVE + USABLE bytes (EVE's /persist)."""
    mnt = tmp_path / "persist"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={RESERVE + USABLE}", "tmpfs", str(mnt)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.fail(f"these tests mount a tmpfs (run as root, as CI does): {proc.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


class Eve:
    """One controller, one device on it (online mode, every exchange traced), and what Eden would see."""

    def __init__(self, ctrl: Controller, agent: DeviceAgent, trace: Path) -> None:
        self.ctrl, self.agent, self.trace = ctrl, agent, trace

    def admin(self, method: str, path: str, **kw: Any) -> Any:
        return self.ctrl.admin(method, f"/devices/eve{path}", **kw)

    def reported(self, kind: str) -> list[dict[str, Any]]:
        return list(self.admin("GET", "/reported", params={"kind": kind}))

    def volume_states(self) -> dict[str, str]:
        """``eden volume ls``: name -> EveState, for the volumes in the controller's config.

        pkg/eve/volumes.go:136-160: a DOWNLOAD volume takes its content tree's state, a BLANK one its own.
        """
        trees = {r["object_key"]: r["state_name"] for r in self.reported("content_tree")}
        vols: dict[str, dict[str, Any]] = {}
        for r in sorted(self.reported("volume"), key=lambda r: r["updated_at"]):
            vols[r["object_key"]] = r  # keyed by uuid only, the last message wins, as Eden's map
        out = {}
        for v in self.admin("GET", "/volumes"):
            if v["origin"] == "download":
                out[v["name"]] = trees.get(v["content_tree_uuid"], "UNKNOWN")
            else:
                out[v["name"]] = vols[v["uuid"]]["state_name"] if v["uuid"] in vols else "UNKNOWN"
        return out

    def volume(self, name: str) -> dict[str, Any] | None:
        """The controller's last report of the volume named ``name`` (any generation), or None."""
        found = [r for r in self.reported("volume") if r["display_name"] == name]
        assert len(found) <= 1, f"more than one report for {name}: {found}"
        return found[0] if found else None

    def app(self, name: str) -> dict[str, Any] | None:
        found = [r for r in self.reported("app") if r["display_name"] == name]
        return found[0] if found else None

    def sent_infos(self) -> list[Any]:
        """Every ZInfoMsg the controller accepted, in the order the device sent them."""
        out = []
        for path in sorted(self.trace.glob("*-POST-info.json")):
            ex = load_exchange(path)
            if ex["status"] == 201:
                out.append(m.ZInfoMsg.FromString(m.AuthContainer.FromString(ex["request_body"]).protectedPayload
                                                 .payload))
        return out

    def gone_messages(self, uuid: str) -> list[Any]:
        """The deletion notices for volume ``uuid``: what Eden takes as gone (volumes.go:124-125)."""
        return [i.vinfo for i in self.sent_infos() if i.WhichOneof("InfoContent") == "vinfo"
                and i.vinfo.uuid == uuid and (not i.vinfo.displayName or i.vinfo.state == S.INVALID)]

    def usable_now(self) -> int:
        """What the device can still promise: free space on its /persist less its reserve."""
        st = os.statvfs(self.agent.data_dir)
        return st.f_bavail * st.f_frsize - RESERVE


@pytest.fixture
def eve(controller_factory, persist: Path, tmp_path: Path) -> Iterator[Eve]:  # noqa: F811
    ctrl = controller_factory(None)
    agent = DeviceAgent(persist, ctrl, serial="SN-eve")
    onboard(ctrl, agent, "eve")
    trace = tmp_path / "wire"
    agent.start("--trace-wire", str(trace))
    try:
        yield Eve(ctrl, agent, trace)
    finally:
        agent.stop()


def _http_datastore(eve: Eve, url: str) -> None:
    eve.ctrl.admin("POST", "/datastores", json={"name": "local", "type": "DsHttp", "fqdn": url})


def _container_image(registry: RunningRegistry, repo: str) -> tuple[str, list[str]]:  # noqa: F811
    """Push a small eclient-like image; its reference and its layer digests."""
    os_name, arch, variant = host_platform()
    layer = Layer.from_files({"etc/": ("dir",), "etc/issue": b"eclient\n", "root/": ("dir",),
                              "root/data.bin": os.urandom(512 * 1024)})
    push(registry.url, repo, "v1", build_image([layer], {"Cmd": ["/bin/sh"]}, os=os_name, arch=arch,
                                               variant=variant))
    return f"{repo}:v1", [layer.digest]


def _log_has(agent: DeviceAgent, text: str) -> bool:
    log = agent.data_dir.parent / f"agent-{agent.data_dir.name}.log"
    return text in log.read_text(errors="replace")


def _volume_files(agent: DeviceAgent) -> list[str]:
    vols = agent.data_dir / "volumes"
    return sorted(p.name for p in vols.iterdir()) if vols.exists() else []


# ---------------------------------------------------------------- every format, then deletion


def test_volumes_of_every_format_are_delivered_created_and_reported_gone(
        eve: Eve, datastore_dir: Path, http_server, registry: RunningRegistry, tmp_path: Path) -> None:  # noqa: F811
    """lf-edge/eden tests/volume/testdata/volumes_test.txt:9-22 (one volume per format, wait DELIVERED) and
    :74-104 (delete them all, each reported gone); evetest storage/volumes_test.go phases 2 and 4.

    Eden's five (docker, qcow2, qcow, vmdk, vhdx) plus RAW, VHD and BLANK; each disk image is made from one
    random raw disk with qemu-img, and each volume must hold that disk's bytes (``qemu-img compare``)."""
    source = make_raw_image(tmp_path / "source.raw", 4, seed=21)
    disks = {"raw": ("RAW", "raw"), "qcow2": ("QCOW2", "qcow2"), "qcow": ("QCOW", "qcow"), "vmdk": ("VMDK", "vmdk"),
             "vhdx": ("VHDX", "vhdx"), "vhd": ("VHD", "vpc")}
    for name, (_fmt, driver) in disks.items():
        subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", driver, str(source),
                        str(datastore_dir / f"v.{name}")], check=True)
    ref, _ = _container_image(registry, "eden/eclient")
    _http_datastore(eve, http_server.url)
    eve.ctrl.admin("POST", "/datastores", json={"name": "registry", "type": "DsContainerRegistry",
                                                "fqdn": f"docker://{registry.host}"})
    trees = [(name, f"v.{name}", fmt, sha256_file(datastore_dir / f"v.{name}")) for name, (fmt, _) in disks.items()]
    for name, url, fmt, sha in [*trees, ("docker", ref, "CONTAINER", None)]:
        eve.admin("POST", "/content-trees", json={"name": name, "url": url, "format": fmt, "sha256": sha,
                                                  "datastore": "registry" if fmt == "CONTAINER" else "local"})
        eve.admin("POST", "/volumes", json={"name": f"v-{name}", "origin": "download", "content_tree": name,
                                            "max_size_bytes": 0})  # as big as the image, as Eden sizes them
    eve.admin("POST", "/volumes", json={"name": "v-blank", "origin": "blank", "max_size_bytes": 8 * MiB})
    names = [*(f"v-{n}" for n in disks), "v-docker"]

    # `test eden.vol.test DELIVERED v-qcow2 v-docker ...` (volumes_test.txt:22): Eden's view
    want = {**{n: "DELIVERED" for n in names}, "v-blank": "CREATED_VOLUME"}
    wait_for(lambda: eve.volume_states() == want, 90, "Eden's view: content DELIVERED, the blank volume created")
    vols = wait_for(lambda: (lambda r: r if len(r) == len(want) and all(v["state_name"] == "CREATED_VOLUME"
                                                                          for v in r) else None)(eve.reported("volume")),
                    60, "every volume CREATED_VOLUME")
    assert not any(v["error"] for v in vols)
    assert {t["state_name"] for t in eve.reported("content_tree")} == {"DELIVERED"}
    assert {b["state_name"] for b in eve.reported("blob")} == {"DELIVERED"}
    # the bytes: each disk volume holds the source disk, whatever its format
    local = {v["display_name"]: v for v in eve.agent.status()["volumes"]}
    for name, (_fmt, driver) in disks.items():
        path = local[f"v-{name}"]["path"]
        fmt = {"qcow2": "qcow2", "raw": "raw"}.get(Path(path).suffix.lstrip("."), driver)
        proc = subprocess.run(["qemu-img", "compare", "-U", "-f", "raw", "-F", fmt, str(source), path],
                              capture_output=True, text=True)
        assert proc.returncode == 0, f"v-{name} ({path}): {proc.stdout}{proc.stderr}"
    assert (Path(local["v-docker"]["path"]) / "rootfs" / "etc" / "issue").read_bytes() == b"eclient\n"

    # delete them all (volumes_test.txt:74-88), then their content
    for name in [*names, "v-blank"]:
        eve.admin("DELETE", f"/volumes/{name}")
    for name in [*disks, "docker"]:
        eve.admin("DELETE", f"/content-trees/{name}")
    # `test eden.vol.test - v-qcow2 v-docker ...` (volumes_test.txt:91): all gone
    wait_for(lambda: not eve.reported("volume") and not eve.reported("content_tree") and not eve.reported("blob"),
             90, "every volume, content tree and blob reported gone")
    for v in vols:  # exactly one uuid-only notice per deleted volume
        gone = eve.gone_messages(v["object_key"])
        assert len(gone) == 1 and gone[0].displayName == "" and gone[0].state == S.INVALID, gone
    assert _volume_files(eve.agent) == []
    assert not list((eve.agent.data_dir / "cas" / "blobs" / "sha256").glob("*"))


# ---------------------------------------------------------------- space: blocked, recovered, purged


def test_blank_volume_blocked_by_space_recovers_when_another_is_deleted(eve: Eve) -> None:
    """lf-edge/eden tests/volume/testdata/volumes_test.txt:24-47; evetest storage/volumes_test.go phase 3a-d.

    blank-vol-1 leaves less than half the disk; blank-vol-2 (half) waits with volumeErr "Remaining" in
    state INITIAL (never ERROR); deleting blank-vol-1 lets it reach CREATED_VOLUME and clears the error."""
    usable = eve.usable_now()
    half = usable // 2 // MiB * MiB
    eve.admin("POST", "/volumes", json={"name": "blank-vol-1", "origin": "blank",
                                        "max_size_bytes": usable - half + 4 * MiB})
    wait_for(lambda: eve.volume_states().get("blank-vol-1") == "CREATED_VOLUME", 60, "blank-vol-1")
    eve.admin("POST", "/volumes", json={"name": "blank-vol-2", "origin": "blank", "max_size_bytes": half})
    # `eden.lim.test ... 'InfoContent.vinfo.volumeErr:Remaining' 'InfoContent.vinfo.displayName:blank-vol-2'`
    waiting = wait_for(lambda: (lambda v: v if v and v["error"] and "Remaining" in v["error"]["description"]
                                else None)(eve.volume("blank-vol-2")), 60, "blank-vol-2's volumeErr: Remaining")
    assert waiting["state_name"] == "INITIAL"
    assert waiting["error"]["description"].startswith(f"Remaining disk space ")
    assert f" volume needs {half}" in waiting["error"]["description"]
    wire = [i.vinfo for i in eve.sent_infos() if i.WhichOneof("InfoContent") == "vinfo"]
    assert S.ERROR not in {v.state for v in wire}  # EVE's volumes never report ERROR

    eve.admin("DELETE", "/volumes/blank-vol-1")
    # `test eden.vol.test - blank-vol-1` then `CREATED_VOLUME blank-vol-2` (volumes_test.txt:44-45)
    wait_for(lambda: eve.volume("blank-vol-1") is None, 60, "blank-vol-1 reported gone")
    created = wait_for(lambda: (lambda v: v if v and v["state_name"] == "CREATED_VOLUME" else None)(
        eve.volume("blank-vol-2")), 60, "blank-vol-2 created")
    assert created["error"] is None and created["max_size_bytes"] == half


def test_app_volume_waits_for_space_then_the_app_is_purged_at_half_the_disk(
        eve: Eve, registry: RunningRegistry) -> None:  # noqa: F811
    """lf-edge/eden tests/volume/testdata/volumes_test.txt:49-72; evetest storage/volumes_test.go phase 3e-h.

    An app whose volume is half the disk waits with appErr "Remaining" while blank-vol-2 holds the
    other half; once blank-vol-2 is deleted its volume is created; ``eden pod purge`` then recreates a
    volume that cannot fit beside the old one, so the old generation goes first (break-before-make)."""
    ref, _ = _container_image(registry, "eden/eclient")
    eve.ctrl.admin("POST", "/datastores", json={"name": "registry", "type": "DsContainerRegistry",
                                                "fqdn": f"docker://{registry.host}"})
    eve.admin("POST", "/content-trees", json={"name": "eclient", "datastore": "registry", "url": ref,
                                              "format": "CONTAINER"})
    usable = eve.usable_now()
    half = usable // 2 // MiB * MiB
    app_size = half + 8 * MiB  # Eden's is half the disk; a margin makes "two do not fit" certain here
    assert 2 * app_size > usable
    eve.admin("POST", "/volumes", json={"name": "blank-vol-2", "origin": "blank", "max_size_bytes": half})
    wait_for(lambda: eve.volume_states().get("blank-vol-2") == "CREATED_VOLUME", 60, "blank-vol-2")
    eve.admin("POST", "/volumes", json={"name": "eclient-mount", "origin": "download", "content_tree": "eclient",
                                        "max_size_bytes": app_size})
    eve.admin("POST", "/apps", json={"name": "eclient-mount", "volumes": ["eclient-mount"]})
    # `eden.lim.test ... 'InfoContent.ainfo.appErr:Remaining' 'InfoContent.ainfo.appName:eclient-mount'`
    app = wait_for(lambda: (lambda a: a if a and a["error"] and "Remaining" in a["error"]["description"]
                            else None)(eve.app("eclient-mount")), 90, "the app's appErr: Remaining")
    # EVE checks the space (cmd/volumemgr/updatestatus.go:538-560) before its volume follows the content
    # tree's state (:629), so a volume without room stays INITIAL, and the app at its volumes' minimum
    assert app["state_name"] == "INITIAL"
    assert eve.volume_states()["eclient-mount"] == "DELIVERED"  # what Eden shows: the content is there

    eve.admin("DELETE", "/volumes/blank-vol-2")
    wait_for(lambda: eve.volume("blank-vol-2") is None, 60, "blank-vol-2 reported gone")
    app = wait_for(lambda: (lambda a: a if a and a["state_name"] == "CREATED_VOLUME" and not a["error"] else None)(
        eve.app("eclient-mount")), 90, "the app's volume created and its error gone")
    first = eve.volume("eclient-mount")
    assert first is not None and first["generation"] == 0

    # `eden pod purge eclient-mount` (volumes_test.txt:63-67): a new generation of its volume
    eve.admin("POST", "/volumes/eclient-mount/purge")
    done = wait_for(lambda: (lambda v: v if v and v["generation"] == 1 and v["state_name"] == "CREATED_VOLUME"
                             else None)(eve.volume("eclient-mount")), 90, "generation 1 created")
    assert done["error"] is None and done["object_key"] == first["object_key"]
    assert _log_has(eve.agent, "old generations released before the new ones are created")
    wait_for(lambda: not eve.agent.outbox(), 60, "every report delivered")
    gone = eve.gone_messages(first["object_key"])
    assert [g.generation_count for g in gone] == [0]
    last = [i.vinfo for i in eve.sent_infos() if i.WhichOneof("InfoContent") == "vinfo"
            and i.vinfo.uuid == first["object_key"]][-1]
    assert (last.state, last.generation_count) == (S.CREATED_VOLUME, 1)  # the controller hears the live one last
    app = eve.app("eclient-mount")
    assert app is not None and app["state_name"] == "CREATED_VOLUME" and not app["error"]

    # `eden pod delete eclient-mount` (volumes_test.txt:71-72), then its volume
    eve.admin("DELETE", "/apps/eclient-mount")
    wait_for(lambda: eve.app("eclient-mount") is None, 60, "the app reported gone")
    eve.admin("DELETE", "/volumes/eclient-mount")
    wait_for(lambda: eve.volume("eclient-mount") is None, 60, "its volume reported gone")
    assert _volume_files(eve.agent) == []


# ---------------------------------------------------------------- purge across a power cycle


def test_purge_issued_while_the_device_is_down_completes_after_it_restarts(
        eve: Eve, datastore_dir: Path, http_server) -> None:
    """lf-edge/eve evetest/tests/apps/purge_after_power_cycle_test.go (phases 1-6, the kvm variant): the
    device is powered off hard, the purge is issued meanwhile, and after boot the purge completes: one
    volume at the new generation, the old generation's disk gone and no volume file nobody owns."""
    image = make_raw_image(datastore_dir / "vm.raw", 4, seed=31)
    _http_datastore(eve, http_server.url)
    eve.admin("POST", "/content-trees", json={"name": "vm", "datastore": "local", "url": "vm.raw", "format": "RAW",
                                              "sha256": sha256_file(image)})
    eve.admin("POST", "/volumes", json={"name": "vm-root", "origin": "download", "content_tree": "vm",
                                        "max_size_bytes": 8 * MiB})
    eve.admin("POST", "/apps", json={"name": "vm", "volumes": ["vm-root"]})
    wait_for(lambda: (eve.app("vm") or {}).get("state_name") == "CREATED_VOLUME", 90, "app-is-running")
    [local] = [v for v in eve.agent.status()["volumes"] if v["display_name"] == "vm-root"]
    old = Path(local["path"])
    # the running app's task writes through the volume's export (the daemon holds the image's write lock)
    [export] = wait_for(lambda: [e for e in eve.agent.cli_json("exports") if e["state"] == "running"], 30,
                        "the volume exported to the app")
    wrote = export_io(export, "write -P 0x47 0 4k", "flush")
    assert wrote.returncode == 0 and "wrote 4096" in wrote.stdout, wrote.stdout + wrote.stderr

    eve.agent.stop(signal.SIGKILL)  # device-powered-off
    eve.admin("POST", "/volumes/vm-root/purge")  # purge-issued-while-down
    eve.agent.start("--trace-wire", str(eve.trace))  # device-powered-on

    done = wait_for(lambda: (lambda v: v if v and v["generation"] == 1 and v["state_name"] == "CREATED_VOLUME"
                             else None)(eve.volume("vm-root")), 90, "app-is-running-again at generation 1")
    assert done["error"] is None
    st = eve.agent.status()
    [app] = st["apps"]
    assert app["volume_refs"] == [{"uuid": done["object_key"], "generation_count": 1}]
    vols = [v for v in st["volumes"] if v["display_name"] == "vm-root"]
    assert [v["generation_count"] for v in vols] == [1]
    assert not old.exists()
    assert _volume_files(eve.agent) == [Path(vols[0]["path"]).name]  # no disk nobody owns
    with open_guest(vols[0]["path"]) as f:
        assert f.read(4 * MiB) == image.read_bytes()  # fresh from the content: the guest's write is gone


# ---------------------------------------------------------------- two apps, one content tree


def test_two_apps_share_one_content_tree(eve: Eve, registry: RunningRegistry) -> None:  # noqa: F811
    """lf-edge/eden tests/eclient/testdata/eclients.txt (EDEN_TEST_APPS apps deployed from one eclient
    image): the image is fetched once, each app gets its own volume from it, and removing one app
    leaves the other's volume and the shared content untouched."""
    ref, layers = _container_image(registry, "eden/eclients")
    eve.ctrl.admin("POST", "/datastores", json={"name": "registry", "type": "DsContainerRegistry",
                                                "fqdn": f"docker://{registry.host}"})
    eve.admin("POST", "/content-trees", json={"name": "eclient", "datastore": "registry", "url": ref,
                                              "format": "CONTAINER"})
    for n in (1, 2):
        eve.admin("POST", "/volumes", json={"name": f"app{n}-root", "origin": "download",
                                            "content_tree": "eclient"})
        eve.admin("POST", "/apps", json={"name": f"app{n}", "volumes": [f"app{n}-root"]})
    for n in (1, 2):
        wait_for(lambda n=n: (eve.app(f"app{n}") or {}).get("state_name") == "CREATED_VOLUME", 90, f"app{n}")
    assert all(len(registry.blob_gets(d)) == 1 for d in layers)  # one download for both apps
    [tree] = eve.reported("content_tree")
    assert tree["state_name"] == "DELIVERED"
    wait_for(lambda: eve.reported("content_tree")[0]["ref_count"] == 3, 30, "refCount: config + two volumes")
    local = {v["display_name"]: Path(v["path"]) for v in eve.agent.status()["volumes"]}
    assert local["app1-root"] != local["app2-root"]
    marker = local["app2-root"] / "rootfs" / "root" / "app2-was-here"
    marker.write_bytes(b"app2's own data")

    eve.admin("DELETE", "/apps/app1")
    eve.admin("DELETE", "/volumes/app1-root")
    wait_for(lambda: eve.volume("app1-root") is None and eve.app("app1") is None, 60, "app1 and its volume gone")
    wait_for(lambda: eve.reported("content_tree")[0]["ref_count"] == 2, 30, "refCount: config + one volume")
    assert marker.read_bytes() == b"app2's own data" and not local["app1-root"].exists()
    assert (eve.app("app2") or {}).get("state_name") == "CREATED_VOLUME"
    assert eve.reported("content_tree")[0]["state_name"] == "DELIVERED"
    assert {b["state_name"] for b in eve.reported("blob")} == {"DELIVERED"}
