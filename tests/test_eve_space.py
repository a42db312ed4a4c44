"""Disk space admission as EVE's volumemgr does it, on a real tmpfs so the figures are exact.

EVE (lf-edge/eve, pkg/pillar) counts what volumes reserve in
``cmd/volumemgr/sizemgmt.go:17-83`` (getRemainingDiskSpace): every volume
from CREATING_VOLUME on reserves ``UsageFromStatus`` (sizemgmt.go:34-43),
which is the MaxVolSize of a writable volume and the CurrentSize of a
read-only one (``volumehandlers/commonhandler.go:32-58``); loaded content
reserves its CurrentSize (sizemgmt.go:22-30). A volume is admitted when the
remaining space covers its MaxVolSize (``cmd/volumemgr/updatestatus.go:552-556``,
"Remaining disk space N volume needs M"), a blob when it covers the blob's size
(``cmd/volumemgr/blob.go:27-33``).
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

from edgevol.api import messages as m
from edgevol.device.reconcile.agent import Agent, AgentOptions
from edgevol.device.volumes import qemu
from edgevol.model.parse import parse_config
from edgevol.tools.httpserve import RangeHTTPServer
from edgevol.tools.oci_image import Layer, build_image, push
from edgevol.device.datastores.oci_manifest import host_platform
from tests.configs import ConfigBuilder, sha256_file
from tests.conftest import make_qcow2_image, make_raw_image
from tests.registry_fixture import RunningRegistry, registry  # noqa: F401  (fixture)

MiB = 1 << 20
S = m.ZSwState
DEADLINE = 60.0


@pytest.fixture
def data(tmp_path: Path) -> Iterator[Path]:
    """The device's data dir on a fresh 64 MiB tmpfs (needs root, as CI has)."""
    mnt = tmp_path / "fs"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.fail(f"these tests mount a tmpfs (run as root, as CI does): {proc.stderr.strip()}")
    yield mnt / "data"
    subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.fixture
def agent(data: Path) -> Iterator[Agent]:
    a = Agent(data, AgentOptions())
    yield a
    a.close()


def base(slow_retry: int = 600) -> ConfigBuilder:
    return (ConfigBuilder().item("edgevol.disk.reserve.bytes", "0")
            .item("edgevol.download.slow.retry.seconds", str(slow_retry)))


def drive(agent: Agent, b: ConfigBuilder, done: Callable[[], bool], what: str, deadline: float = DEADLINE) -> float:
    """Run reconcile passes on ``b``'s config until ``done``; the seconds it took."""
    agent.set_desired(parse_config(b.cfg))
    start = time.monotonic()
    while not done():
        assert time.monotonic() - start < deadline, f"timed out waiting for {what}: {rows(agent)}"
        agent.step()
        time.sleep(0.05)
    return time.monotonic() - start


def rows(agent: Agent) -> dict[str, dict]:
    return {r["display_name"]: r for r in agent.store.all("volumes")}


def state(agent: Agent, name: str) -> int | None:
    row = rows(agent).get(name)
    return row["state"] if row else None


def error_text(agent: Agent, name: str) -> str:
    return ((rows(agent).get(name) or {}).get("error") or {}).get("description", "")


def waits_for_space(agent: Agent, name: str) -> bool:
    return "Remaining disk space" in error_text(agent, name)


def test_writable_volumes_reserve_their_maximum_read_only_what_they_use(
        agent: Agent, datastore_dir: Path, http_server: RangeHTTPServer) -> None:
    """Two writable blank volumes whose maxima (2 x 40 MiB) exceed the 64 MiB disk, though their use does not:
    the second waits with EVE's text (updatestatus.go:552-556, commonhandler.go:52-56 MaxVolSize for writable).
    A read-only downloaded volume reserves only its size (commonhandler.go:44-47 CurrentSize for ReadOnly)."""
    image = make_raw_image(datastore_dir / "ro.raw", 8)
    b = base()
    ds = b.datastore(http_server.url)
    ct = b.content_tree(ds, "ro.raw", sha256_file(image), "raw", name="ro")
    b.download_volume(ct, 40 * MiB, name="ro", readonly=True)
    b.blank_volume(40 * MiB, name="one")
    drive(agent, b, lambda: state(agent, "one") == S.CREATED_VOLUME and state(agent, "ro") == S.CREATED_VOLUME,
          "the first blank volume and the read-only one")
    one = rows(agent)["one"]
    assert one["cur_size"] < 4 * MiB  # sparse: it uses next to nothing, yet reserves its maximum
    # the read-only volume's 40 MiB maximum is no promise: only the writable one's growth room is
    assert agent.space.promised() == 40 * MiB - one["cur_size"]
    b.blank_volume(40 * MiB, name="two")
    drive(agent, b, lambda: waits_for_space(agent, "two"), "the second blank volume to wait for space")
    assert error_text(agent, "two").startswith("Remaining disk space ")
    assert f" volume needs {40 * MiB}" in error_text(agent, "two")
    assert rows(agent)["two"]["path"] is None


def test_download_volume_with_max_size_zero_is_as_big_as_its_image(
        agent: Agent, datastore_dir: Path, http_server: RangeHTTPServer) -> None:
    """maxsizebytes 0 on a DOWNLOAD volume: the volume has the image's virtual size and reports it, as EVE
    fills MaxVolSize from the created volume (cmd/volumemgr/handlevolume.go:171-173)."""
    image = make_qcow2_image(datastore_dir / "img.qcow2", 12)
    b = base()
    ds = b.datastore(http_server.url)
    ct = b.content_tree(ds, "img.qcow2", sha256_file(image), "qcow2", name="img")
    b.download_volume(ct, 0, name="sized-by-image")
    drive(agent, b, lambda: state(agent, "sized-by-image") == S.CREATED_VOLUME, "the volume")
    row = rows(agent)["sized-by-image"]
    assert row["max_size"] == 12 * MiB
    path = Path(row["path"])
    virtual = path.stat().st_size if path.suffix == ".raw" else qemu.image_info(path, "qcow2").virtual_size
    assert virtual == 12 * MiB
    # a writable volume reserves its maximum, the image's size, and nothing more
    assert agent.space.promised() == max(12 * MiB - row["cur_size"], 0)


def test_container_volume_with_max_size_zero_does_not_starve_later_downloads(
        agent: Agent, datastore_dir: Path, http_server: RangeHTTPServer,
        registry: RunningRegistry) -> None:  # noqa: F811
    """A directory volume with maxsizebytes 0 reserves what its content uses, as EVE sizes a container
    volume by its snapshot's usage (volumehandlers/containerhandler.go:28-45, handlevolume.go:171-173),
    never the whole filesystem: a 24 MiB blob downloaded after it still fits on the 64 MiB disk."""
    os_name, arch, variant = host_platform()
    layer = Layer.from_files({"data/": ("dir",), "data/content.bin": b"x" * (4 * MiB)})
    push(registry.url, "space/app", "v1", build_image([layer], {"Cmd": ["/bin/true"]}, os=os_name, arch=arch,
                                                       variant=variant))
    b = base()
    reg = b.registry(registry.host)
    ct = b.content_tree(reg, "space/app:v1", "", "container", name="app")
    b.download_volume(ct, 0, name="rootfs")
    drive(agent, b, lambda: state(agent, "rootfs") == S.CREATED_VOLUME, "the container volume")
    row = rows(agent)["rootfs"]
    assert 4 * MiB <= row["max_size"] < 8 * MiB  # its content, not the filesystem
    image = make_raw_image(datastore_dir / "later.raw", 24)
    ds = b.datastore(http_server.url)
    later = b.content_tree(ds, "later.raw", sha256_file(image), "raw", name="later")
    b.download_volume(later, 24 * MiB, name="later", readonly=True)
    drive(agent, b, lambda: state(agent, "later") == S.CREATED_VOLUME, "the later download")
    assert not waits_for_space(agent, "later")


def test_deleting_a_volume_readmits_a_waiting_one_at_once(agent: Agent) -> None:
    """Eden's "blank volume blocked by space recovers when another is deleted"
    (lf-edge/eden tests/volume/testdata/volumes_test.txt:27-47): blank-vol-2 waits with "Remaining";
    deleting blank-vol-1 lets it reach CREATED_VOLUME, here within seconds though the slow retry is 600 s."""
    b = base(slow_retry=600)
    b.blank_volume(40 * MiB, name="blank-vol-1")
    drive(agent, b, lambda: state(agent, "blank-vol-1") == S.CREATED_VOLUME, "blank-vol-1")
    b.blank_volume(40 * MiB, name="blank-vol-2")
    drive(agent, b, lambda: waits_for_space(agent, "blank-vol-2"), "blank-vol-2 to wait for space")
    # let it sit waiting over several passes, as on a device
    for _ in range(10):
        agent.step()
    assert waits_for_space(agent, "blank-vol-2")
    del b.cfg.volumes[0]
    took = drive(agent, b, lambda: state(agent, "blank-vol-2") == S.CREATED_VOLUME,
                 "blank-vol-2 once blank-vol-1 is deleted", deadline=10)
    assert state(agent, "blank-vol-1") is None
    assert took < 5
    assert not error_text(agent, "blank-vol-2")


def test_one_pass_admits_two_volumes_only_if_both_fit(agent: Agent) -> None:
    """A pass admits many jobs before any of them starts: each one admitted counts against the next, so two
    volumes that fit alone but not together are never both started on the same free bytes."""
    b = base()
    b.blank_volume(40 * MiB, name="first")
    b.blank_volume(40 * MiB, name="second")
    agent.set_desired(parse_config(b.cfg))
    agent.step()  # one pass: both are decided before either volume's task has run
    assert not waits_for_space(agent, "first") and waits_for_space(agent, "second"), rows(agent)
    drive(agent, b, lambda: state(agent, "first") == S.CREATED_VOLUME, "the first volume")
    assert waits_for_space(agent, "second") and state(agent, "second") == S.ERROR


def test_deleting_a_volume_readmits_one_that_met_a_full_disk_before_its_slow_retry(agent: Agent) -> None:
    """The same scenario when the waiting volume's create met ENOSPC itself (a disk filled behind the
    agent's back): the builder leaves it on the 600 s slow retry (reconcile/builders.py, create); a deletion
    wakes it at once all the same."""
    b = base(slow_retry=600)
    b.blank_volume(40 * MiB, name="blank-vol-1")
    v2 = b.blank_volume(40 * MiB, name="blank-vol-2")
    drive(agent, b, lambda: waits_for_space(agent, "blank-vol-2"), "blank-vol-2 to wait for space")
    key = f"volume:{v2}#0"
    error = dict(rows(agent)["blank-vol-2"]["error"], description="creating volume: no space left on the device")
    agent.store.update("volumes", (v2, 0), next_retry=time.time() + 600, error=error)  # as builders.py leaves it
    agent._failed_this_run.add(key)
    for _ in range(10):
        agent.step()
    assert state(agent, "blank-vol-2") != S.CREATED_VOLUME
    del b.cfg.volumes[0]
    took = drive(agent, b, lambda: state(agent, "blank-vol-2") == S.CREATED_VOLUME,
                 "blank-vol-2 once blank-vol-1 is deleted", deadline=10)
    assert took < 5


def test_deleting_a_volume_readmits_a_blob_whose_download_met_a_full_disk(
        agent: Agent, datastore_dir: Path, http_server: RangeHTTPServer) -> None:
    """A download that met ENOSPC is left on its 600 s slow retry (reconcile/blobs.py); a deletion elsewhere
    re-admits it at once too, as EVE re-checks waiting blobs when space frees up (volumemgr blob.go:27-33)."""
    image = make_raw_image(datastore_dir / "late.raw", 8)
    b = base(slow_retry=600)
    b.blank_volume(56 * MiB, name="hog")  # leaves less than the blob's 8 MiB
    drive(agent, b, lambda: state(agent, "hog") == S.CREATED_VOLUME, "the hog volume")
    ds = b.datastore(http_server.url)
    sha = sha256_file(image)
    ct = b.content_tree(ds, "late.raw", sha, "raw", max_size=8 * MiB, name="late")  # its size, known up front
    b.download_volume(ct, 8 * MiB, name="late", readonly=True)

    def blob_waits() -> bool:
        row = agent.store.get("blobs", sha)
        return row is not None and "Remaining disk space" in ((row["error"] or {}).get("description", ""))

    drive(agent, b, blob_waits, "the blob to wait for space")
    # as blobs.py leaves a download that filled the disk: ERROR, on the slow retry, failed in this run
    agent.store.update("blobs", (sha,), next_retry=time.time() + 600, error=dict(
        agent.store.get("blobs", sha)["error"], description="downloading: no space left on the device"))
    agent._failed_this_run.add(f"blob:{sha}")
    for _ in range(10):
        agent.step()
    assert agent.store.get("blobs", sha)["state"] == S.ERROR
    del b.cfg.volumes[0]
    took = drive(agent, b, lambda: state(agent, "late") == S.CREATED_VOLUME, "the download once hog is deleted",
                 deadline=15)
    assert took < 10
