"""Crash harness: ``kill -9`` the agent at random points of a mixed workload, then check nothing was lost.

The real CLI (``edgevol device run --config C --interval 0.1``, file-config
mode) works through a sequence of configs (see :class:`Workload`): blank
volumes, raw and qcow2 disks from a rate-limited HTTP datastore, a
multi-layer container image from a real docker-registry behind a slow link,
purges (generation bump + app purge counter) and deletions. The agent is
killed with SIGKILL after a seeded random delay once it holds its data dir
(about one kill in three is aimed instead: it comes moments after a volume
create starts, which a random delay rarely hits), and started again; a phase
advances when the previous one converged or after a few kills. At the end
one ``device run --once`` must converge, and the device must hold exactly
what the last config asks for, with the right bytes, nothing left over (no
partial, no unreferenced blob, no orphan volume file), every change reported
in the outbox (deletions included), no blob fetched again once it was
committed (unless it was collected while no config wanted it), no wanted
blob vanishing, and every download a kill interrupted resumed (HTTP ``Range``)
exactly where its partial stood.

``EDGEVOL_CRASH_SEED`` replays a kill schedule (the seed is printed and recorded).
"""

from __future__ import annotations

import json
import os
import random
import secrets
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from tests.configs import sha256_file
from tests.conftest import device_status, run_cli, start_agent
from tests.registry_fixture import registry  # noqa: F401  (fixture)
from tests.reliability.crash_workload import (
    MiB,
    Phase,
    ThrottledProxy,
    Workload,
    converged,
    expected_tree,
    file_chunks,
    guest_sha256,
    holds_data_dir_lock,
    padded_sha256,
    read_rows,
    tree_manifest,
    write_config,
)
from tests.reliability.figures import PROFILE, record, scale

KILLS = scale(10, 60)
PHASES = scale(4, 12)
HTTP_RATE = 3 * MiB  # bytes/s per download: a disk takes a few agent lifetimes
REGISTRY_RATE = 2 * MiB
MIN_DELAY, MAX_DELAY = 0.05, 1.5
AIMED_EVERY = 3  # about one kill in three is aimed at a volume create
AIMED_WINDOW = 4.0  # how long an aimed kill waits for a create to start
AIMED_MAX_LAG = 0.02  # and how long after it starts the kill comes


# -- the agent under fire --------------------------------------------------------------

def kill_after_start(agent: subprocess.Popen[bytes], data: Path, delay: float, log: Path,
                     aim: float | None = None) -> bool:
    """Wait until the agent holds its data dir (Python start-up is not what we test), then kill -9.

    The kill comes ``delay`` seconds later, or, when ``aim`` is given, ``aim``
    seconds after a volume is seen being built (a temp entry in volumes/),
    if one is within ``delay``: creates are short, and a uniformly random
    kill rarely lands in one. Returns whether a create was seen.
    """
    deadline = time.monotonic() + 60
    while not holds_data_dir_lock(agent.pid, data):
        assert agent.poll() is None, f"agent exited with {agent.returncode} at start-up:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, "agent did not take its data dir within 60 s"
        time.sleep(0.01)
    seen = False
    if aim is None:
        time.sleep(delay)
    else:
        until = time.monotonic() + delay
        while time.monotonic() < until and agent.poll() is None:
            if _volume_being_built(data):
                seen = True
                time.sleep(aim)
                break
            time.sleep(0.001)
    assert agent.poll() is None, f"agent exited by itself with {agent.returncode}:\n{log.read_text()[-3000:]}"
    agent.send_signal(signal.SIGKILL)
    agent.wait(timeout=30)
    assert agent.returncode == -signal.SIGKILL
    return seen


def _volume_being_built(data: Path) -> bool:
    try:
        return any(e.name.startswith(".tmp-") for e in os.scandir(data / "volumes"))
    except FileNotFoundError:
        return False


# -- what the servers were asked -------------------------------------------------------

def range_start(header: str | None) -> int:
    """0 for a whole-body request (no Range, or one from byte 0), else the resume offset."""
    if not header:
        return 0
    first = header.strip().removeprefix("bytes=").split("-", 1)[0]
    return int(first) if first.isdigit() else 0


def blob_requests(requests: list[tuple[str, str, str | None]], blob_paths: dict[str, str]) -> dict[str, list]:
    """sha256 -> its GETs as (path, Range), in order; ``blob_paths`` maps HTTP file or registry blob paths."""
    out: dict[str, list] = {sha: [] for sha in blob_paths.values()}
    for method, path, rng in requests:
        if method != "GET":
            continue
        for suffix, sha in blob_paths.items():
            if path == suffix or path.endswith(suffix):
                out[sha].append((path, rng))
    return out


class Ledger:
    """What the servers were asked between two stops of the agent, against what the disk held at each stop.

    At every stop (a kill, or the end of the final run) it notes which blobs
    are committed and how long each partial is. Later requests for a committed
    blob are re-fetches (a broken guarantee); the first request for a blob
    after a stop that left a partial must resume exactly at its length. A
    committed blob may only vanish (be collected) while the config the agent
    ran did not want it; once it has, fetching it again is no re-fetch.
    """

    def __init__(self, data: Path, http_server: Any, proxy: ThrottledProxy, blob_paths: dict[str, str]) -> None:
        self.data, self.http, self.proxy, self.blob_paths = data, http_server, proxy, blob_paths
        self.committed: set[str] = set()  # blobs committed at the last stop
        self.partials: dict[str, int] = {}  # sha -> partial length at the last stop
        self.marks: list[tuple[int, int]] = [(0, 0)]  # (HTTP requests, proxy requests) at each stop
        self.refetched: list[tuple[str, str | None]] = []
        self.lost: list[tuple[str, int]] = []  # (sha, stop): committed, wanted, and gone
        self.collected = 0
        self.ever_committed: set[str] = set()
        self.bad_resumes: list[tuple[str, int, str | None]] = []
        self.resumes_checked = 0
        self.kills_mid_download = 0

    def after_stop(self, wanted: set[str]) -> None:
        """Account for one agent lifetime that ran a config wanting the blobs ``wanted``."""
        assert self.http.wait_idle()
        mark = (len(self.http.requests), len(self.proxy.requests))
        prev = self.marks[-1]
        gets: dict[str, list[str | None]] = {}
        for reqs in (self.http.requests[prev[0]:mark[0]], self.proxy.requests[prev[1]:mark[1]]):
            for sha, found in blob_requests(reqs, self.blob_paths).items():
                gets.setdefault(sha, []).extend(r for _, r in found)
        for sha, ranges in gets.items():
            if ranges and sha in self.committed:
                self.refetched.extend((sha[:12], r) for r in ranges)
            held = self.partials.get(sha, 0)
            if ranges and held:
                self.resumes_checked += 1
                if range_start(ranges[0]) != held:
                    self.bad_resumes.append((sha[:12], held, ranges[0]))
        stop = len(self.marks)
        self.marks.append(mark)
        cas = self.data / "cas"
        blobs = cas / "blobs" / "sha256"
        on_disk = {p.name for p in blobs.iterdir()} if blobs.is_dir() else set()
        for sha in self.committed - on_disk:
            if sha in wanted:
                self.lost.append((sha[:12], stop))
            else:
                self.collected += 1
        self.committed = on_disk
        self.ever_committed |= on_disk
        self.partials = {p.name[:64]: p.stat().st_size for p in (cas / "ingest").glob("*.partial")} \
            if (cas / "ingest").is_dir() else {}
        if any(self.partials.values()):
            self.kills_mid_download += 1


# -- the scenario ----------------------------------------------------------------------

def test_kill_9_at_random_points_loses_nothing(tmp_path, datastore_dir, http_server, registry):  # noqa: F811
    seed = int(os.environ.get("EDGEVOL_CRASH_SEED") or secrets.randbits(32))
    print(f"crash harness seed={seed} (replay with EDGEVOL_CRASH_SEED={seed})")
    rng = random.Random(seed)
    started = time.monotonic()
    proxy = ThrottledProxy(registry.host)
    try:
        _scenario(tmp_path, datastore_dir, http_server, registry, proxy, seed, rng, started)
    finally:
        proxy.stop()


def _scenario(tmp_path: Path, datastore_dir: Path, http_server: Any, registry: Any, proxy: ThrottledProxy,
              seed: int, rng: random.Random, started: float) -> None:
    w = Workload(datastore_dir, http_server.url, registry.url, proxy.host, PHASES)
    phases = [w.phase(k) for k in range(PHASES)]
    data, cfg, logs = tmp_path / "dev", tmp_path / "config.json", tmp_path / "logs"
    logs.mkdir()
    # every blob the device downloads: HTTP files, and registry blobs (config, layers). Manifests are
    # not blobs to the registry and are left out: one committed just before a kill, with its row not
    # yet written, is fetched again (small, harmless).
    blob_paths = {f"/{d.file.name}": d.sha256 for d in w.disks}
    for c in w.containers:
        blob_paths.update({f"/blobs/sha256:{sha}": sha for sha in c.blob_digests[1:]})

    http_server.rate_limit_bytes_per_sec = HTTP_RATE
    proxy.rate_limit_bytes_per_sec = REGISTRY_RATE
    per_phase = max(2, KILLS // PHASES)  # kills after which a phase that has not converged gives way
    phase, kills, kills_in_phase = 0, 0, 0
    write_config(phases[0], cfg)
    seen: set[str] = set()  # outbox keys of every object a restart could find in the state database
    ledger = Ledger(data, http_server, proxy, blob_paths)
    mid_volume, aimed_kills, creates_seen = 0, 0, 0
    phase_log: list[dict[str, Any]] = []
    while kills < KILLS or phase < PHASES - 1 or kills_in_phase < 2:
        log = logs / f"run-{kills:03d}.log"
        agent = start_agent(data, cfg, log)
        # one kill in AIMED_EVERY waits for a volume create (within a longer window) instead of a random time
        aimed = rng.random() < 1 / AIMED_EVERY
        if aimed:
            aimed_kills += 1
            creates_seen += kill_after_start(agent, data, AIMED_WINDOW, log, aim=rng.uniform(0, AIMED_MAX_LAG))
        else:
            kill_after_start(agent, data, rng.uniform(MIN_DELAY, MAX_DELAY), log)
        kills += 1
        kills_in_phase += 1
        ledger.after_stop(w.wanted_blobs(phases[phase]))
        if _volume_being_built(data):
            mid_volume += 1
        rows = read_rows(data)
        seen |= rows.keys()
        done = converged(rows, phases[phase])
        if phase < PHASES - 1 and (done or kills_in_phase >= per_phase):
            phase_log.append({"phase": phase, "kills": kills_in_phase, "converged": done})
            phase, kills_in_phase = phase + 1, 0
            write_config(phases[phase], cfg)
    phase_log.append({"phase": phase, "kills": kills_in_phase, "converged": converged(read_rows(data), phases[-1])})

    # -- the last run, unhurried: it must converge --------------------------------------
    http_server.rate_limit_bytes_per_sec = None
    proxy.rate_limit_bytes_per_sec = None
    final_started = time.monotonic()
    proc = run_cli("device", "run", "--data-dir", str(data), "--config", str(cfg), "--once", "--no-progress",
                   timeout=180)
    final_seconds = time.monotonic() - final_started
    (logs / "final.log").write_text(proc.stderr)
    ledger.after_stop(w.wanted_blobs(phases[-1]))
    assert proc.returncode == 0, f"seed={seed}: final --once run exited {proc.returncode}\n{proc.stderr[-4000:]}"
    for run_log in sorted(logs.iterdir()):
        text = run_log.read_text(errors="replace")
        assert "task crashed" not in text and "Traceback" not in text, f"seed={seed}: {run_log.name}\n{text[-4000:]}"

    st = device_status(data)
    last = phases[-1]
    check_objects(st, w, last)
    check_volume_bytes(st, w, last, tmp_path)
    check_cas(st, data)
    check_volume_dir(st, data)
    deleted = check_outbox(st, data, seen)

    # -- no completed blob fetched again; every interrupted one resumed where its partial stood --
    assert ledger.lost == [], f"seed={seed}: committed blobs gone while the config wanted them: {ledger.lost}"
    assert ledger.refetched == [], f"seed={seed}: blobs fetched again after their commit: {ledger.refetched}"
    assert ledger.bad_resumes == [], f"seed={seed}: downloads not resumed from their partial: {ledger.bad_resumes}"
    http_gets = blob_requests(http_server.requests, blob_paths)
    proxy_gets = blob_requests(proxy.requests, blob_paths)
    # the registry's own log agrees with what the proxy forwarded, and each blob was fetched at least once
    for c in w.containers:
        for sha in c.blob_digests[1:]:
            logged = registry.blob_gets(f"sha256:{sha}")
            assert len(logged) == len(proxy_gets[sha]), (sha, logged, proxy_gets[sha])
    for sha in {b["sha256"] for b in st["blobs"]} & set(blob_paths.values()):
        assert http_gets.get(sha) or proxy_gets.get(sha), f"blob {sha[:12]} is held but was never fetched"
    all_gets = [r for gets in (*http_gets.values(), *proxy_gets.values()) for _, r in gets]
    whole = sum(1 for r in all_gets if range_start(r) == 0)
    resumed = sum(1 for r in all_gets if range_start(r) > 0)
    whole_per_blob = {sha[:12]: sum(1 for _, r in gets if range_start(r) == 0)
                      for sha, gets in (*http_gets.items(), *proxy_gets.items()) if gets}

    # the kills must have hit the agent at work, or this test proves little
    mid_download = ledger.kills_mid_download
    assert mid_download >= 1, f"seed={seed}: no kill landed during a download (rates too high?)"
    if PROFILE == "long":  # ~20 aimed kills: some must land inside a create (a handful may come too late)
        assert mid_volume >= 1, f"seed={seed}: no kill landed during a volume create ({creates_seen} seen)"
    assert phase == PHASES - 1

    elapsed = time.monotonic() - started
    counts = {"kills": kills, "restarts": kills, "phases": PHASES, "resumed_downloads": resumed,
              "resumes_checked": ledger.resumes_checked, "whole_body_gets": whole,
              "kills_mid_download": mid_download, "kills_mid_volume_create": mid_volume,
              "kills_aimed_at_volume_create": aimed_kills,
              "blobs_committed": len(ledger.ever_committed), "blobs_collected": ledger.collected,
              "objects_deleted": len(deleted),
              "volumes_final": len(st["volumes"]), "seconds": round(elapsed)}
    print(json.dumps({"seed": seed, **counts, "final_run_seconds": round(final_seconds, 1),
                      "phase_log": phase_log, "whole_body_gets_per_blob": whole_per_blob}, indent=1))
    record("crash-kill-9", counts=counts, result="pass",
           details={"seed": seed, "phases": phase_log, "final_run_seconds": round(final_seconds, 1),
                    "whole_body_gets_per_blob": whole_per_blob})


# -- the checks ------------------------------------------------------------------------

def check_objects(st: dict[str, Any], w: Workload, last: Phase) -> None:
    """Exactly the objects of the last config exist, all done; apps sit on the purged generations."""
    vols = {(v["uuid"], v["generation_count"]): v for v in st["volumes"]}
    assert set(vols) == set(last.volumes), "volumes other than the last config's"
    for v in vols.values():
        assert v["state"] == "CREATED_VOLUME" and v["error"] is None and v["progress"] == 100, v
    trees = {t["uuid"]: t for t in st["content_trees"]}
    assert set(trees) == last.trees
    for t in trees.values():
        assert t["state"] == "LOADED" and t["error"] is None, t
    for c in w.containers:
        if c.ct_id in last.trees:
            assert trees[c.ct_id]["sha256"] == c.blob_digests[0]
            assert trees[c.ct_id]["component_sha_list"] == c.blob_digests
    blobs = {b["sha256"]: b for b in st["blobs"]}
    assert set(blobs) == w.wanted_blobs(last)
    for b in blobs.values():
        assert b["state"] == "LOADED" and b["error"] is None, b
    apps = {a["uuid"]: a for a in st["apps"]}
    assert set(apps) == set(last.apps)
    for app_id, (counter, refs) in last.apps.items():
        assert apps[app_id]["purge_counter"] == counter and apps[app_id]["error"] is None, apps[app_id]
        assert [(r["uuid"], r["generation_count"]) for r in apps[app_id]["volume_refs"]] == refs


def check_volume_bytes(st: dict[str, Any], w: Workload, last: Phase, scratch: Path) -> None:
    """Every volume holds exactly what its origin says, as a guest or a container would see it."""
    by_uuid = {v["uuid"]: v for v in st["volumes"]}
    for d in w.disks:
        if d.vol_id not in by_uuid:
            continue
        vol = by_uuid[d.vol_id]
        path = Path(vol["path"])
        # A clone (edgevol.volume.clone=backing, the default) is a qcow2 overlay on the disk's own CAS blob;
        # a copy keeps the content's format.
        backing = json.loads(subprocess.run(["qemu-img", "info", "-U", "--output=json", str(path)], check=True,
                                            capture_output=True, text=True).stdout).get("backing-filename")
        if backing is not None:
            assert path.name.endswith(".qcow2") and Path(backing).name == sha256_file(d.file), (path, backing)
        else:
            assert path.name.endswith(f".{d.fmt}"), path
        if d.fmt == "raw":
            if backing is None:
                assert path.stat().st_size == d.max_size
                assert sha256_file(path) == padded_sha256(file_chunks(d.file), d.max_size), f"{d.name}: wrong bytes"
            else:
                expected = padded_sha256(file_chunks(d.file), d.max_size)
                assert guest_sha256(path, "qcow2", scratch) == expected, f"{d.name}: wrong guest bytes"
        else:
            raw = scratch / f"src-{d.name}.raw"
            subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(d.file), str(raw)], check=True)
            expected = padded_sha256(file_chunks(raw), d.max_size)
            raw.unlink()
            assert guest_sha256(path, "qcow2", scratch) == expected, f"{d.name}: wrong guest bytes"
        assert (path.stat().st_mode & 0o777) == (0o444 if d.readonly else 0o644), d.name
    scratch_vol = Path(by_uuid[w.scratch]["path"])
    assert scratch_vol.name.endswith(".qcow2")
    assert guest_sha256(scratch_vol, "qcow2", scratch) == padded_sha256(iter(()), 16 * MiB)
    ctr_data = Path(by_uuid[w.ctr_data]["path"])
    assert ctr_data.name.endswith(".container") and os.listdir(ctr_data / "rootfs") == []
    for c in w.containers:
        if c.vol_id not in by_uuid:
            continue
        path = Path(by_uuid[c.vol_id]["path"])
        assert path.name.endswith(".container"), path
        assert tree_manifest(path / "rootfs") == expected_tree(c.layer_files), f"{c.name}: wrong rootfs"
        assert (path / "image-config.json").read_bytes() == c.image.config


def check_cas(st: dict[str, Any], data: Path) -> None:
    """Only whole, referenced blobs; no partial or temp file; index.json names the loaded trees."""
    cas = data / "cas"
    referenced: set[str] = set()
    for t in st["content_trees"]:
        referenced |= set(t["component_sha_list"]) | ({t["sha256"]} if t["sha256"] else set())
    held = {p.name for p in (cas / "blobs" / "sha256").iterdir()}
    assert held == {b["sha256"] for b in st["blobs"]}, "CAS and status disagree"
    assert held <= referenced, f"unreferenced blobs: {held - referenced}"
    for name in held:
        assert sha256_file(cas / "blobs" / "sha256" / name) == name, f"blob {name} does not hash to its name"
    # everything is done: no partial, no lock of an interrupted ingest, no temp file
    assert sorted(p.name for p in (cas / "ingest").iterdir()) == []
    assert not [p.name for p in cas.iterdir() if p.name.startswith(".tmp-")]
    roots = json.loads((cas / "index.json").read_text())["manifests"]
    assert sorted(r["annotations"]["io.edgevol.content-tree"] for r in roots) == sorted(
        t["uuid"] for t in st["content_trees"])


def check_volume_dir(st: dict[str, Any], data: Path) -> None:
    """volumes/ holds exactly the volumes status lists: no orphan, no temp left by a killed create."""
    on_disk = sorted(p.name for p in (data / "volumes").iterdir())
    assert on_disk == sorted(Path(v["path"]).name for v in st["volumes"])


def check_outbox(st: dict[str, Any], data: Path, seen: set[str]) -> set[str]:
    """Every object's latest state is queued, and every object that ever existed and went has its 'gone'."""
    proc = run_cli("device", "outbox", "--data-dir", str(data), "-o", "json", check=True)
    box = {item["key"]: item["message"] for item in json.loads(proc.stdout)}
    existing: dict[str, str] = {}
    for v in st["volumes"]:
        existing[f"volume/{v['uuid']}#{v['generation_count']}"] = v["reported_state"]
    for t in st["content_trees"]:
        existing[f"content_tree/{t['uuid']}"] = t["reported_state"]
    for b in st["blobs"]:
        existing[f"blob/{b['sha256']}"] = b["reported_state"]
    for a in st["apps"]:  # apps are reported too (ZiApp), each under its uuid
        key = f"app/{a['uuid']}"
        assert box.get(key, {}).get("ainfo", {}).get("AppID") == a["uuid"], f"no app report for {key}"
        existing[key] = ""
    for key, state in existing.items():
        if key.startswith("app/"):
            continue
        assert key in box, f"no info message for {key}"
        msg = box[key]
        content = msg.get("vinfo") or msg.get("cinfo") or msg["binfo"]["blob"][0]
        assert content.get("state") == state, f"{key}: outbox says {content.get('state')}, status reports {state}"
    deleted = seen - set(existing)
    for key in set(box) - set(existing):
        assert _is_gone(key, box[key]), f"{key} is not in status, but its last message is not a deletion: {box[key]}"
    for key in deleted:
        assert key in box, f"{key} existed, then went, and the controller would never hear of it"
    return deleted


def _is_gone(key: str, msg: dict[str, Any]) -> bool:
    """A deletion message: the object once more with nothing but its identity."""
    kind, ident = key.split("/", 1)
    if kind == "volume":
        uuid, generation = ident.split("#")
        want = {"uuid": uuid} | ({"generation_count": generation} if generation != "0" else {})
        return msg.get("vinfo") == want
    if kind == "content_tree":
        return msg.get("cinfo") == {"uuid": ident}
    if kind == "app":
        return msg.get("ainfo") == {"AppID": ident}
    return msg.get("binfo") == {"blob": [{"sha256": ident}]}
