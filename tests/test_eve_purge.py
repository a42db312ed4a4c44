"""Purge when both generations do not fit: break-before-make, as EVE does it, crash-safe at every step.

EVE purges an app in three phases (lf-edge/eve pkg/pillar/cmd/zedmanager/updatestatus.go:207-252):
DownloadAndVerify (the new volumes only go as far as LOADED: content verified, nothing created,
:556-563), then BringDown and ``purgeCmdDone`` (:1007-1040) drop the old volume refs so volumemgr
deletes the old volumes, then RecreateVolumes creates the new ones. Eden purges an app whose volume
holds half the disk (lf-edge/eden tests/volume/testdata/volumes_test.txt:54-72, ``eden pod purge
eclient-mount``) and expects RUNNING again.

edgevol keeps make-before-break when the new generation fits beside the old one (the old keeps
serving until the new one is ready: tests/test_device_lifecycle.py); only when it does not fit, and
would once the old generation is gone, does it let go of the old one first. Everything here runs on
a 64 MiB tmpfs so the space figures are exact.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
from pathlib import Path

import pytest

from edgevol.api import messages as m
from edgevol.device.crashpoints import CRASH_AT_ENV
from edgevol.device.reconcile.agent import Agent
from edgevol.device.state import StateStore
from edgevol.tools.httpserve import RangeHTTPServer
from tests.configs import ConfigBuilder, sha256_file
from tests.conftest import EDGEVOL, by_name, device_status, guest_bytes, make_raw_image
from tests.test_eve_space import MiB, S, agent, base, data, drive, error_text, rows  # noqa: F401  (fixtures)

ROOT_SIZE = 36 * MiB  # with its 4 MiB image, two of these do not fit on the 64 MiB disk; one does


def gens(agent: Agent, name: str) -> dict[int, dict]:
    return {r["generation"]: r for r in agent.store.all("volumes") if r["display_name"] == name}


def app_refs(agent: Agent, name: str) -> list[list]:
    return next(r["refs"] for r in agent.store.all("apps") if r["display_name"] == name)


def app_error(agent: Agent, name: str) -> str:
    row = next(r for r in agent.store.all("apps") if r["display_name"] == name)
    return (row["error"] or {}).get("description", "")


def purge(b: ConfigBuilder, vol_index: int = 0, app_index: int = 0, ct: str | None = None) -> None:
    """What a controller sends to purge: the volume's generation and the app's purge counter bumped."""
    v = b.cfg.volumes[vol_index]
    v.generationCount += 1
    if ct is not None:
        v.origin.downloadContentTreeID = ct
    a = b.cfg.apps[app_index]
    for ref in a.volumeRefList:
        if ref.uuid == v.uuid:
            ref.generationCount = v.generationCount
    a.purge.counter += 1


def half_disk(datastore_dir: Path, http_server: RangeHTTPServer) -> tuple[ConfigBuilder, Path, str]:
    image = make_raw_image(datastore_dir / "os.raw", 4, seed=7)
    b = base()
    ds = b.datastore(http_server.url)
    ct = b.content_tree(ds, "os.raw", sha256_file(image), "raw", name="os")
    vol = b.download_volume(ct, ROOT_SIZE, name="root")
    b.app([vol], name="eclient-mount")
    return b, image, ds


def deploy_generation_0(agent: Agent, b: ConfigBuilder) -> Path:
    """Run the config until the "root" volume's generation 0 is created; its path."""
    drive(agent, b, lambda: gens(agent, "root").get(0, {}).get("state") == S.CREATED_VOLUME, "generation 0")
    return Path(gens(agent, "root")[0]["path"])


def test_half_disk_purge_removes_the_old_generation_before_creating_the_new(
        agent: Agent, datastore_dir: Path, http_server: RangeHTTPServer) -> None:
    b, image, _ = half_disk(datastore_dir, http_server)
    old = deploy_generation_0(agent, b)
    purge(b)
    seen_both = []

    def done() -> bool:
        g = gens(agent, "root")
        seen_both.append(all(r["path"] and Path(r["path"]).exists() for r in g.values()) and len(g) == 2)
        # the app's error follows its volumes' at the next pass
        return set(g) == {1} and g[1]["state"] == S.CREATED_VOLUME and app_error(agent, "eclient-mount") == ""

    drive(agent, b, done, "generation 1 to replace generation 0")
    assert not any(seen_both)  # they never both existed: the old went first
    assert not old.exists()
    new = gens(agent, "root")[1]
    assert guest_bytes(Path(new["path"]))[:4 * MiB] == image.read_bytes()  # from the (verified) content
    assert new["max_size"] == ROOT_SIZE and not new["error"]
    assert app_refs(agent, "eclient-mount") == [[b.cfg.volumes[0].uuid, 1]]
    assert app_error(agent, "eclient-mount") == ""


def test_new_content_is_verified_before_the_old_generation_goes(
        agent: Agent, datastore_dir: Path, http_server: RangeHTTPServer) -> None:
    """A purge onto new content that cannot be fetched yet leaves the old generation serving the app."""
    b, _, ds = half_disk(datastore_dir, http_server)
    b.item("edgevol.download.max.attempts", "1").item("edgevol.download.slow.retry.seconds", "0.2")
    old = deploy_generation_0(agent, b)
    new_image = datastore_dir / "os2.raw"
    sha = sha256_file(make_raw_image(datastore_dir / "staging.raw", 4, seed=8))
    ct2 = b.content_tree(ds, "os2.raw", sha, "raw", name="os2")
    purge(b, ct=ct2)
    drive(agent, b, lambda: "404" in error_text(agent, "root") or "Not Found" in error_text(agent, "root"),
          "the new generation to report that its content cannot be fetched")
    for _ in range(10):
        agent.step()
    assert old.exists() and set(gens(agent, "root")) == {0, 1}
    assert app_refs(agent, "eclient-mount") == [[b.cfg.volumes[0].uuid, 0]]
    (datastore_dir / "staging.raw").rename(new_image)  # the content appears at the datastore
    drive(agent, b, lambda: gens(agent, "root").get(1, {}).get("state") == S.CREATED_VOLUME and
          set(gens(agent, "root")) == {1}, "generation 1 from the new content")
    assert not old.exists()
    assert hashlib.sha256(guest_bytes(Path(gens(agent, "root")[1]["path"]))[:4 * MiB]).hexdigest() == sha


def test_no_break_when_the_new_generation_would_not_fit_anyway(
        agent: Agent, datastore_dir: Path, http_server: RangeHTTPServer) -> None:
    """Removing the old generation must buy the room; if it cannot, nothing is destroyed for nothing."""
    b, _, _ = half_disk(datastore_dir, http_server)
    old = deploy_generation_0(agent, b)
    purge(b)
    b.cfg.volumes[0].maxsizebytes = 62 * MiB  # more than the disk holds beside the 4 MiB image
    drive(agent, b, lambda: "Remaining disk space" in error_text(agent, "root"), "generation 1 to wait")
    for _ in range(10):
        agent.step()
    assert old.exists() and gens(agent, "root")[1]["path"] is None
    assert app_refs(agent, "eclient-mount") == [[b.cfg.volumes[0].uuid, 0]]
    # the app says why, as EVE's appErr does (zedmanager/updatestatus.go:503-515; eden volumes_test.txt:52)
    err = app_error(agent, "eclient-mount")
    assert err.startswith("purge: waiting for") and "\n\nRemaining disk space " in err


def test_no_break_while_another_app_still_uses_the_old_generation(
        agent: Agent, datastore_dir: Path, http_server: RangeHTTPServer) -> None:
    b, _, _ = half_disk(datastore_dir, http_server)
    vol = b.cfg.volumes[0].uuid
    b.app([vol], name="other")  # shares the volume and is not purged
    old = deploy_generation_0(agent, b)
    purge(b)  # eclient-mount only; "other" is left naming generation 0
    drive(agent, b, lambda: "Remaining disk space" in error_text(agent, "root"), "generation 1 to wait")
    for _ in range(10):
        agent.step()
    assert old.exists() and app_refs(agent, "other") == [[vol, 0]]
    assert app_refs(agent, "eclient-mount") == [[vol, 0]]


def test_purge_that_fits_keeps_the_old_generation_serving_until_the_new_one_is_ready(
        agent: Agent, datastore_dir: Path, http_server: RangeHTTPServer) -> None:
    """Make-before-break when both fit (the seed: "the old one keeps serving until the new one is ready";
    EVE's DownloadAndVerify keeps the app on its volumes while the new ones load, updatestatus.go:207-252):
    the purge onto new, slowly downloading content leaves the app on generation 0 throughout, both
    generations exist side by side, and the app moves only once generation 1 is CREATED_VOLUME."""
    b, _, ds = half_disk(datastore_dir, http_server)
    b.cfg.volumes[0].maxsizebytes = 8 * MiB  # small: both generations fit
    old = deploy_generation_0(agent, b)
    new_image = make_raw_image(datastore_dir / "os2.raw", 4, seed=9)
    ct2 = b.content_tree(ds, "os2.raw", sha256_file(new_image), "raw", name="os2")
    purge(b, ct=ct2)
    http_server.rate_limit_bytes_per_sec = 2 * MiB  # two seconds of download
    vol = b.cfg.volumes[0].uuid
    seen: list[tuple[bool, int | None, list]] = []

    def done() -> bool:
        g = gens(agent, "root")
        refs = app_refs(agent, "eclient-mount")
        seen.append((old.exists(), g.get(1, {}).get("state"), refs))
        return refs == [[vol, 1]] and 0 not in g

    try:
        drive(agent, b, done, "the app on generation 1 and generation 0 gone")
    finally:
        http_server.rate_limit_bytes_per_sec = None
    before_ready = [s for s in seen if s[1] != S.CREATED_VOLUME]
    assert len(before_ready) > 5, "the new generation was ready too soon to tell"
    assert all(exists and refs == [[vol, 0]] for exists, _, refs in before_ready)  # old serves meanwhile
    assert any(exists and state == S.CREATED_VOLUME for exists, state, _ in seen)  # both at once
    assert all(state == S.CREATED_VOLUME for _, state, refs in seen if refs == [[vol, 1]])  # moved when ready


def test_an_app_whose_volume_waits_for_space_reports_where_it_stopped(agent: Agent) -> None:
    """The app's ZInfoApp state is the lowest of its volumes' wire states (zedmanager/updatestatus.go:503-527),
    never ERROR: a volume waiting for room is INITIAL on the wire, so is the app."""
    b = base()
    vol = b.blank_volume(200 * MiB, name="too-big")  # more than the 64 MiB disk
    app = b.app([vol], name="waiting")
    drive(agent, b, lambda: "Remaining disk space" in error_text(agent, "too-big"), "the volume to wait")
    sent = {k: m.ZInfoMsg.FromString(p) for k, _, p in agent.store.outbox_items()}
    ainfo = sent[f"app/{app}"].ainfo
    assert ainfo.state == S.INITIAL and "Remaining disk space" in ainfo.appErr[0].description


# ---------------------------------------------------------------- kill -9 at every step


CRASH_POINTS = ["app.refs.moved", "volume.deleted", "volume.temp.written", "volume.committed"]


def _run_once(data: Path, cfg: Path, crash_at: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != CRASH_AT_ENV}
    if crash_at:
        env[CRASH_AT_ENV] = crash_at
    return subprocess.run([*EDGEVOL, "device", "run", "--data-dir", str(data), "--config", str(cfg), "--once"],
                          capture_output=True, text=True, timeout=120, env=env)


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_half_disk_purge_survives_kill_9_at_every_step(point: str, data: Path, tmp_path: Path,  # noqa: F811
                                                       datastore_dir: Path, http_server: RangeHTTPServer) -> None:
    b, image, _ = half_disk(datastore_dir, http_server)
    cfg = tmp_path / "config.pb"
    b.save(cfg)
    first = _run_once(data, cfg)
    assert first.returncode == 0, first.stderr[-3000:]
    st = device_status(data)
    vol = by_name(st["volumes"], "root")
    old = Path(vol["path"])
    purge(b)
    b.save(cfg)

    killed = _run_once(data, cfg, crash_at=point)
    assert killed.returncode == -signal.SIGKILL, f"never reached {point}: rc={killed.returncode}\n{killed.stderr[-3000:]}"
    after = _run_once(data, cfg)
    assert after.returncode == 0, after.stderr[-3000:]
    assert "Traceback" not in after.stderr

    st = device_status(data)
    vols = [v for v in st["volumes"] if v["display_name"] == "root"]
    assert [(v["generation_count"], v["state"]) for v in vols] == [(1, "CREATED_VOLUME")]
    assert not old.exists()
    assert guest_bytes(Path(vols[0]["path"]))[:4 * MiB] == image.read_bytes()
    leftovers = [p.name for p in Path(vols[0]["path"]).parent.iterdir() if p.name != Path(vols[0]["path"]).name]
    assert leftovers == []  # no temp file, no second copy
    assert by_name(st["apps"], "eclient-mount")["volume_refs"] == [{"uuid": vol["uuid"], "generation_count": 1}]
    # the controller hears generation 0 is gone, and after that what generation 1 is
    store = StateStore(data / "state.db")
    items = [(k, m.ZInfoMsg.FromString(p)) for k, _, p in store.outbox_items()]
    store.close()
    keys = [k for k, _ in items]
    gone, live = f"volume/{vol['uuid']}#0", f"volume/{vol['uuid']}#1"
    assert gone in keys and live in keys and keys.index(gone) < keys.index(live)
    assert dict(items)[gone].vinfo.state == 0 and dict(items)[live].vinfo.state == S.CREATED_VOLUME
