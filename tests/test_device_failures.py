"""The device agent under failure, end to end: the real CLI against the real loopback HTTP server.

Every test drives ``edgevol device run`` (as a subprocess) with a config file
and then checks what a user sees: ``device status -o json``, the outbox, the
bytes in the CAS and in the volume files, and what the server was asked for.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

from tests.conftest import (by_name, device_status, make_qcow2_image, make_raw_image, open_guest, run_cli,
                            start_agent, volume_sha256)
from tests.configs import ConfigBuilder, new_id, sha256_file

MiB = 1 << 20
GiB = 1 << 30


# -- helpers ------------------------------------------------------------------

def run_once(data: Path, cfg: Path) -> subprocess.CompletedProcess[str]:
    return run_cli("device", "run", "--data-dir", str(data), "--config", str(cfg), "--once", "--no-progress",
                   timeout=60)


def wait_for(what: str, check: Callable[[], Any], timeout: float = 15.0, every: float = 0.05) -> Any:
    """Poll ``check`` until it returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


def gets(server: Any, name: str) -> list[tuple[str, str, str | None]]:
    """The GET requests the server saw for the file ``name`` at its root."""
    return [r for r in server.requests if r[0] == "GET" and r[1] == f"/{name}"]


def cas_entries(data: Path, digest: str) -> list[Path]:
    """Anything the CAS holds for ``digest``: committed blob, partial, lock."""
    cas = data / "cas"
    return sorted([*(cas / "blobs" / "sha256").glob(f"{digest}*"), *(cas / "ingest").glob(f"{digest}*")])


def outbox(data: Path) -> dict[str, dict[str, Any]]:
    proc = run_cli("device", "outbox", "--data-dir", str(data), "-o", "json", check=True)
    return {item["key"]: item["message"] for item in json.loads(proc.stdout)}


def file_sha256_and_inode(path: Path) -> tuple[str, int]:
    return sha256_file(path), path.stat().st_ino


def find(items: list[dict[str, Any]], ident: str, key: str = "uuid") -> dict[str, Any]:
    found = [i for i in items if i[key] == ident]
    assert len(found) == 1, f"expected one object {ident} in {items}"
    return found[0]


# -- 1. wrong digest ----------------------------------------------------------

def test_wrong_sha256_ends_in_error_after_bounded_retries(tmp_path, datastore_dir, http_server):
    bad_src = make_raw_image(datastore_dir / "bad.raw", 2, seed=3)
    good_src = make_raw_image(datastore_dir / "good.raw", 2, seed=4)
    wrong = hashlib.sha256(b"not the bytes the server has").hexdigest()
    assert wrong != sha256_file(bad_src)
    b = ConfigBuilder().fast_retries(3)
    ds = b.datastore(http_server.url)
    ct_bad = b.content_tree(ds, "bad.raw", wrong, "raw", name="bad-image")
    ct_good = b.content_tree(ds, "good.raw", sha256_file(good_src), "raw", name="good-image")
    v_bad = b.download_volume(ct_bad, 4 * MiB, name="bad-disk")
    b.download_volume(ct_good, 4 * MiB, name="good-disk")
    data = tmp_path / "dev"

    proc = run_once(data, b.save(tmp_path / "c.json"))
    assert proc.returncode == 1, proc.stderr

    assert len(gets(http_server, "bad.raw")) == 3  # exactly max.attempts, then it stops
    assert cas_entries(data, wrong) == []  # the wrong bytes never stay anywhere in the store
    st = device_status(data)
    blob = find(st["blobs"], wrong, key="sha256")
    assert blob["state"] == "ERROR"
    desc = blob["error"]["description"]
    assert "digest mismatch" in desc and wrong in desc and sha256_file(bad_src) in desc
    assert "gave up after 3 attempts" in desc and "bad.raw" in desc
    assert blob["error"]["severity"] == "error"
    assert "not retried in --once mode" in blob["error"]["retry_condition"]
    tree = by_name(st["content_trees"], "bad-image")
    assert tree["state"] == "ERROR" and "digest mismatch" in tree["error"]["description"]
    bad = by_name(st["volumes"], "bad-disk")
    assert bad["state"] == "ERROR" and bad["path"] is None
    assert "digest mismatch" in bad["error"]["description"] and "bad-image" in bad["error"]["description"]
    good = by_name(st["volumes"], "good-disk")
    assert good["state"] == "CREATED_VOLUME"
    with open_guest(good["path"]) as f:
        assert f.read(2 * MiB) == good_src.read_bytes()
    # the controller is told the same thing, as EVE tells it: the state where progress stopped (the digest is
    # checked while VERIFYING) with the error beside it; EVE has no ERROR SwState (pkg/pillar/types/types.go:120)
    vinfo = outbox(data)[f"volume/{v_bad}#0"]["vinfo"]
    assert vinfo["state"] == "VERIFYING" and "digest mismatch" in vinfo["volumeErr"]["description"]


# -- 2. dropped connection, resumed with Range ----------------------------------

def test_dropped_connection_resumes_with_range(tmp_path, datastore_dir, http_server):
    src = make_raw_image(datastore_dir / "big.raw", 8, seed=5)
    size = src.stat().st_size
    http_server.drop_after = 3 * MiB + 12345
    http_server.drops_remaining = 1
    b = ConfigBuilder().fast_retries(3)
    ds = b.datastore(http_server.url)
    ct = b.content_tree(ds, "big.raw", sha256_file(src), "raw", name="big")
    b.download_volume(ct, 8 * MiB, name="disk")
    data = tmp_path / "dev"

    proc = run_once(data, b.save(tmp_path / "c.pb"))
    assert proc.returncode == 0, proc.stderr

    reqs = gets(http_server, "big.raw")
    assert len(reqs) == 2, reqs
    assert reqs[0][2] is None
    assert reqs[1][2] is not None and reqs[1][2].startswith("bytes=")
    resumed_from = int(reqs[1][2].removeprefix("bytes=").rstrip("-"))
    assert 0 < resumed_from <= http_server.drop_after
    assert http_server.wait_idle()
    assert http_server.bytes_served < 1.5 * size
    st = device_status(data)
    assert by_name(st["content_trees"], "big")["state"] == "LOADED"
    assert sha256_file(data / "cas" / "blobs" / "sha256" / sha256_file(src)) == sha256_file(src)
    vol = by_name(st["volumes"], "disk")
    assert vol["state"] == "CREATED_VOLUME"
    assert volume_sha256(Path(vol["path"])) == sha256_file(src)
    assert not list((data / "cas" / "ingest").glob("*.partial"))


# -- 3. kill -9 mid-download, restart -------------------------------------------

def test_kill_9_mid_download_then_restart_converges_without_refetching(tmp_path, datastore_dir, http_server):
    small = make_raw_image(datastore_dir / "small.raw", 2, seed=6)
    big = make_raw_image(datastore_dir / "big.raw", 12, seed=7)
    small_sha, big_sha = sha256_file(small), sha256_file(big)
    b = ConfigBuilder().fast_retries(3)
    ds = b.datastore(http_server.url)
    b.download_volume(b.content_tree(ds, "small.raw", small_sha, "raw", name="small"), 2 * MiB, name="v-small")
    b.download_volume(b.content_tree(ds, "big.raw", big_sha, "raw", name="big"), 12 * MiB, name="v-big")
    cfg = b.save(tmp_path / "c.json")
    data = tmp_path / "dev"
    partial = data / "cas" / "ingest" / f"{big_sha}.partial"
    blobs = data / "cas" / "blobs" / "sha256"

    http_server.rate_limit_bytes_per_sec = 2 * MiB  # the big one would take ~6 s
    agent = start_agent(data, cfg, tmp_path / "agent.log")
    try:
        wait_for("small blob committed and big download under way",
                 lambda: (blobs / small_sha).is_file() and partial.is_file() and partial.stat().st_size > 3 * MiB)
    finally:
        agent.send_signal(signal.SIGKILL)
        agent.wait(timeout=10)
    assert agent.returncode == -signal.SIGKILL
    held = partial.stat().st_size
    assert 0 < held < big.stat().st_size
    # nothing under blobs/ is ever a partial file: each is complete and matches its name
    for blob in blobs.iterdir():
        assert sha256_file(blob) == blob.name
    assert not (blobs / big_sha).exists()

    http_server.rate_limit_bytes_per_sec = None
    assert http_server.wait_idle()
    small_gets, big_gets = len(gets(http_server, "small.raw")), len(gets(http_server, "big.raw"))
    http_server.bytes_served = 0
    proc = run_once(data, cfg)
    assert proc.returncode == 0, proc.stderr

    assert len(gets(http_server, "small.raw")) == small_gets == 1  # complete before the kill: not fetched again
    resumed = gets(http_server, "big.raw")[big_gets:]
    assert [r[2] for r in resumed] == [f"bytes={held}-"]
    assert http_server.wait_idle()
    assert http_server.bytes_served == big.stat().st_size - held
    st = device_status(data)
    for name, src in (("v-small", small), ("v-big", big)):
        vol = by_name(st["volumes"], name)
        assert vol["state"] == "CREATED_VOLUME", vol
        assert volume_sha256(Path(vol["path"])) == sha256_file(src)
    assert sha256_file(blobs / big_sha) == big_sha
    assert not list((data / "cas" / "ingest").glob("*.partial"))


# -- 4. one broken object does not stop the rest ---------------------------------

def test_broken_objects_get_their_own_errors_and_the_rest_applies(tmp_path, datastore_dir, http_server):
    src = make_qcow2_image(datastore_dir / "ok.qcow2", 4, seed=8)
    b = ConfigBuilder()
    ds = b.datastore(http_server.url)
    ct_ok = b.content_tree(ds, "ok.qcow2", sha256_file(src), "qcow2", name="ok-image")
    ct_short_sha = b.content_tree(ds, "ok.qcow2", sha256_file(src)[:63], "qcow2", name="short-sha")
    missing_ds = new_id()
    ct_no_ds = b.content_tree(missing_ds, "ok.qcow2", sha256_file(src), "qcow2", name="no-datastore")
    b.blank_volume(1 * GiB, name="bad-uuid", vol_id="not-a-uuid")
    missing_ct = new_id()
    v_no_ct = b.download_volume(missing_ct, 8 * MiB, name="no-tree")
    v_on_bad_ct = b.download_volume(ct_short_sha, 8 * MiB, name="on-short-sha")
    dup = b.blank_volume(1 * GiB, name="dup-a")
    b.blank_volume(2 * GiB, name="dup-b", vol_id=dup)
    b.blank_volume(1 * GiB, name="scratch")
    b.download_volume(ct_ok, 8 * MiB, name="root")
    data = tmp_path / "dev"

    proc = run_once(data, b.save(tmp_path / "c.json"))
    assert proc.returncode == 1, proc.stderr

    st = device_status(data)
    for name in ("scratch", "root"):
        assert by_name(st["volumes"], name)["state"] == "CREATED_VOLUME"
    assert by_name(st["content_trees"], "ok-image")["state"] == "LOADED"

    def row_error(rows: list[dict[str, Any]], uuid: str) -> str:
        row = find(rows, uuid)
        assert row["state"] == "ERROR", row
        return row["error"]["description"]

    assert row_error(st["content_trees"], ct_short_sha) == (
        f"invalid config: sha256 '{sha256_file(src)[:63]}' is not 64 hexadecimal characters")
    assert row_error(st["content_trees"], ct_no_ds) == f"invalid config: datastore {missing_ds} is not in the config"
    assert row_error(st["volumes"], v_no_ct) == f"invalid config: content tree {missing_ct} is not in the config"
    assert row_error(st["volumes"], dup) == "invalid config: duplicate volume uuid"
    assert find(st["volumes"], dup)["path"] is None and not list((data / "volumes").glob(f"{dup}*"))
    desc = row_error(st["volumes"], v_on_bad_ct)
    assert desc.startswith(f"invalid config: content tree {ct_short_sha} is invalid") and "sha256" in desc
    # an id that is not a UUID cannot be a row: it is listed with the config errors
    errors = {(e["kind"], e["id"]): e["message"] for e in st["config_errors"]}
    assert "is not a UUID" in errors[("volume", "not-a-uuid")]
    assert set(errors) == {("volume", "not-a-uuid"), ("volume", v_no_ct), ("volume", v_on_bad_ct),
                           ("volume", dup), ("content_tree", ct_short_sha), ("content_tree", ct_no_ds)}
    assert {r["display_name"] for r in st["volumes"]} == {"scratch", "root", "no-tree", "on-short-sha", "dup-b"}
    assert [r[1] for r in http_server.requests] == ["/ok.qcow2"]  # only the valid tree was fetched


# -- 5. URL suffixes that try to leave the datastore -------------------------------

def test_url_traversal_is_refused_before_any_fetch(tmp_path, datastore_dir, http_server):
    (datastore_dir / "pub").mkdir()
    secret = make_raw_image(datastore_dir / "secret.raw", 1, seed=9)
    sha = sha256_file(secret)
    urls = ["../secret.raw", "%2e%2e/secret.raw", "a/%2E%2e/../secret.raw", "a?/../../secret.raw",
            f"{http_server.url}/secret.raw", "//127.0.0.1/secret.raw"]
    b = ConfigBuilder()
    ds = b.datastore(http_server.url, dpath="pub")
    trees = {url: b.content_tree(ds, url, sha, "raw", name=f"t{i}") for i, url in enumerate(urls)}
    vols = {url: b.download_volume(ct, 4 * MiB, name=f"v{i}") for i, (url, ct) in enumerate(trees.items())}
    b.blank_volume(64 * MiB, name="scratch")
    data = tmp_path / "dev"

    proc = run_once(data, b.save(tmp_path / "c.json"))
    assert proc.returncode == 1, proc.stderr

    assert http_server.requests == []
    st = device_status(data)
    assert by_name(st["volumes"], "scratch")["state"] == "CREATED_VOLUME"
    for url, ct in trees.items():
        tree = find(st["content_trees"], ct)
        assert tree["state"] == "ERROR", tree
        desc = tree["error"]["description"]
        assert desc.startswith("invalid config: URL") and repr(url) in desc, desc
        vol = find(st["volumes"], vols[url])
        assert vol["state"] == "ERROR" and vol["path"] is None
    assert st["blobs"] == []
    assert list((data / "cas" / "blobs" / "sha256").iterdir()) == []


# -- 6. maxSizeBytes --------------------------------------------------------------

def _big_file(path: Path, mib: int) -> Path:
    block = os.urandom(MiB)
    with open(path, "wb") as f:
        for i in range(mib):
            f.write(block[i:] + block[:i])
    return path


def test_announced_size_over_max_size_fails_at_once(tmp_path, datastore_dir, http_server):
    src = _big_file(datastore_dir / "huge.raw", 32)
    b = ConfigBuilder().fast_retries(3)
    ds = b.datastore(http_server.url)
    ct = b.content_tree(ds, "huge.raw", sha256_file(src), "raw", max_size=1 * MiB, name="huge")
    b.download_volume(ct, 64 * MiB, name="disk")
    data = tmp_path / "dev"

    proc = run_once(data, b.save(tmp_path / "c.json"))
    assert proc.returncode == 1, proc.stderr

    assert len(gets(http_server, "huge.raw")) == 1  # not retried: waiting cannot help
    assert http_server.wait_idle()
    assert http_server.bytes_served < src.stat().st_size // 4
    st = device_status(data)
    tree = by_name(st["content_trees"], "huge")
    assert tree["state"] == "ERROR"
    desc = tree["error"]["description"]
    assert f"server announces {32 * MiB} bytes, more than maxSizeBytes {MiB}" in desc
    assert by_name(st["volumes"], "disk")["state"] == "ERROR"
    assert cas_entries(data, sha256_file(src)) == []


def test_unannounced_size_is_cut_off_at_max_size(tmp_path, datastore_dir, http_server):
    src = _big_file(datastore_dir / "huge.raw", 48)
    http_server.omit_content_length = True
    b = ConfigBuilder().fast_retries(3)
    ds = b.datastore(http_server.url)
    ct = b.content_tree(ds, "huge.raw", sha256_file(src), "raw", max_size=4 * MiB, name="huge")
    b.download_volume(ct, 64 * MiB, name="disk")
    data = tmp_path / "dev"

    proc = run_once(data, b.save(tmp_path / "c.json"))
    assert proc.returncode == 1, proc.stderr

    assert len(gets(http_server, "huge.raw")) == 1
    assert http_server.wait_idle()
    assert http_server.bytes_served < src.stat().st_size // 2  # stopped near the limit, not at the end
    st = device_status(data)
    tree = by_name(st["content_trees"], "huge")
    assert tree["state"] == "ERROR"
    desc = tree["error"]["description"]
    assert f"content is larger than maxSizeBytes {4 * MiB}" in desc, desc
    stopped_after = int(desc.split("stopped after ")[1].split(" bytes")[0])
    assert stopped_after <= 4 * MiB
    assert by_name(st["volumes"], "disk")["state"] == "ERROR"
    assert cas_entries(data, sha256_file(src)) == []


# -- 7. the config file goes bad while the agent runs --------------------------------

def test_malformed_config_keeps_volumes_then_fix_applies(tmp_path, datastore_dir, http_server):
    src = make_raw_image(datastore_dir / "a.raw", 2, seed=10)
    b = ConfigBuilder()
    ds = b.datastore(http_server.url)
    ct = b.content_tree(ds, "a.raw", sha256_file(src), "raw", name="a")
    b.download_volume(ct, 4 * MiB, name="first")
    cfg = b.save(tmp_path / "c.json")
    data = tmp_path / "dev"

    def volume_state(name: str) -> Callable[[], dict[str, Any] | None]:
        def check() -> dict[str, Any] | None:
            if not (data / "state.db").exists():
                return None
            st = device_status(data)
            rows = [v for v in st["volumes"] if v["display_name"] == name]
            return st if rows and rows[0]["state"] == "CREATED_VOLUME" else None
        return check

    agent = start_agent(data, cfg, tmp_path / "agent.log")
    try:
        st = wait_for("the first volume", volume_state("first"), every=0.1)
        first = by_name(st["volumes"], "first")
        before = file_sha256_and_inode(Path(first["path"]))

        cfg.write_text('{"volumes": [ this is not json')
        st = wait_for("the source error in status",
                      lambda: (s := device_status(data))["config_source_error"] and s, every=0.1)
        assert "c.json" in st["config_source_error"]
        assert by_name(st["volumes"], "first")["state"] == "CREATED_VOLUME"
        assert file_sha256_and_inode(Path(first["path"])) == before
        assert agent.poll() is None

        b.blank_volume(64 * MiB, name="second")
        b.save(cfg)
        st = wait_for("the second volume", volume_state("second"), every=0.1)
        assert st["config_source_error"] is None
        assert by_name(st["volumes"], "first")["state"] == "CREATED_VOLUME"
        assert file_sha256_and_inode(Path(first["path"])) == before
    finally:
        agent.send_signal(signal.SIGTERM)
        try:
            agent.wait(timeout=15)
        except subprocess.TimeoutExpired:
            agent.kill()
            agent.wait()
    assert agent.returncode == 0, (tmp_path / "agent.log").read_text()
    assert len(gets(http_server, "a.raw")) == 1


# -- 8. a volume removed from the config ---------------------------------------------

def test_removed_volume_is_deleted_and_its_content_collected(tmp_path, datastore_dir, http_server):
    gone_src = make_raw_image(datastore_dir / "gone.raw", 2, seed=11)
    kept_src = make_raw_image(datastore_dir / "kept.raw", 2, seed=12)
    gone_sha, kept_sha = sha256_file(gone_src), sha256_file(kept_src)
    b = ConfigBuilder()
    ds = b.datastore(http_server.url)
    ct_kept = b.content_tree(ds, "kept.raw", kept_sha, "raw", name="kept")
    b.download_volume(ct_kept, 4 * MiB, name="v-kept")
    before_removal = ConfigBuilder(b.cfg.id.uuid)
    before_removal.cfg.CopyFrom(b.cfg)
    ct_gone = b.content_tree(ds, "gone.raw", gone_sha, "raw", name="gone")
    v_gone = b.download_volume(ct_gone, 4 * MiB, name="v-gone", generation=2)
    cfg = b.save(tmp_path / "c.json")
    data = tmp_path / "dev"
    assert run_once(data, cfg).returncode == 0
    st = device_status(data)
    gone_path = Path(by_name(st["volumes"], "v-gone")["path"])
    assert gone_path.is_file() and (data / "cas" / "blobs" / "sha256" / gone_sha).is_file()

    proc = run_once(data, before_removal.save(cfg))
    assert proc.returncode == 0, proc.stderr

    assert not gone_path.exists()
    st = device_status(data)
    assert [v["display_name"] for v in st["volumes"]] == ["v-kept"]
    assert by_name(st["volumes"], "v-kept")["state"] == "CREATED_VOLUME"
    assert [c["uuid"] for c in st["content_trees"]] == [ct_kept]
    assert [bl["sha256"] for bl in st["blobs"]] == [kept_sha]
    assert cas_entries(data, gone_sha) == []
    assert (data / "cas" / "blobs" / "sha256" / kept_sha).is_file()
    roots = json.loads((data / "cas" / "index.json").read_text())
    assert [d["digest"] for d in roots["manifests"]] == [f"sha256:{kept_sha}"]
    box = outbox(data)
    # "deleted" is the object once more with only its identity set
    assert box[f"volume/{v_gone}#2"]["vinfo"] == {"uuid": v_gone, "generation_count": "2"}
    assert box[f"content_tree/{ct_gone}"]["cinfo"] == {"uuid": ct_gone}
    assert box[f"blob/{gone_sha}"]["binfo"]["blob"] == [{"sha256": gone_sha}]
    assert len(gets(http_server, "kept.raw")) == 1


# -- 9. a size change without a generation bump ----------------------------------------

def test_size_change_without_generation_bump_keeps_the_volume(tmp_path, datastore_dir, http_server):
    src = make_raw_image(datastore_dir / "a.raw", 2, seed=13)
    b = ConfigBuilder()
    ds = b.datastore(http_server.url)
    ct = b.content_tree(ds, "a.raw", sha256_file(src), "raw", name="a")
    vol = b.download_volume(ct, 4 * MiB, name="disk")
    b.blank_volume(64 * MiB, name="scratch")
    cfg = b.save(tmp_path / "c.json")
    data = tmp_path / "dev"
    assert run_once(data, cfg).returncode == 0
    path = Path(by_name(device_status(data)["volumes"], "disk")["path"])
    before = file_sha256_and_inode(path)

    original = b.cfg.SerializeToString()
    b.cfg.volumes[0].maxsizebytes = 8 * MiB
    proc = run_once(data, b.save(cfg))
    assert proc.returncode == 1, proc.stderr

    st = device_status(data)
    disk = find(st["volumes"], vol)
    assert disk["state"] == "ERROR" and disk["path"] == str(path)
    assert disk["error"]["description"] == (
        "Need volume regeneration due to max_size changed from 4194304 to 8388608 but generation counter "
        "not incremented: the existing volume is kept as it was")
    assert disk["error"]["retry_condition"] == "restore the previous settings or bump generationCount"
    assert disk["max_size_bytes"] == 4 * MiB
    assert file_sha256_and_inode(path) == before and len(open_guest(path).getvalue()) == 4 * MiB
    assert by_name(st["volumes"], "scratch")["state"] == "CREATED_VOLUME"
    assert "max_size changed" in outbox(data)[f"volume/{vol}#0"]["vinfo"]["volumeErr"]["description"]

    b.cfg.ParseFromString(original)
    proc = run_once(data, b.save(cfg))
    assert proc.returncode == 0, proc.stderr
    disk = find(device_status(data)["volumes"], vol)
    assert disk["state"] == "CREATED_VOLUME" and disk["error"] is None and disk["path"] == str(path)
    assert file_sha256_and_inode(path) == before
    assert len(gets(http_server, "a.raw")) == 1


# -- errors are reported once, not on every pass ------------------------------------------

def test_standing_errors_are_not_requeued_on_every_pass(tmp_path, datastore_dir, http_server):
    src = make_raw_image(datastore_dir / "a.raw", 2, seed=14)
    b = ConfigBuilder()
    ds = b.datastore(http_server.url)
    ct = b.content_tree(ds, "a.raw", sha256_file(src), "raw", name="a")
    disk = b.download_volume(ct, 4 * MiB, name="disk")
    cfg = b.save(tmp_path / "c.json")
    data = tmp_path / "dev"

    agent = start_agent(data, cfg, tmp_path / "agent.log")
    try:
        wait_for("the volume", lambda: (data / "state.db").exists() and any(
            v["state"] == "CREATED_VOLUME" for v in device_status(data)["volumes"]), every=0.1)
        b.cfg.volumes[0].maxsizebytes = 8 * MiB  # no generation bump
        dangling = b.download_volume(new_id(), MiB, name="dangling")
        bad_url = b.content_tree(ds, "../a.raw", sha256_file(src), "raw", name="bad-url")
        container = b.content_tree(ds, "library/alpine:3", "", "container", name="oci")
        dup = b.blank_volume(MiB, name="dup-a")
        b.blank_volume(2 * MiB, name="dup-b", vol_id=dup)
        b.save(cfg)
        keys = [f"volume/{disk}#0", f"volume/{dangling}#0", f"content_tree/{bad_url}", f"content_tree/{container}",
                f"volume/{dup}#0"]
        first = wait_for("every error in the outbox", lambda: (box := outbox(data)) and all(
            "volumeErr" in box.get(k, {}).get("vinfo", {}) or "err" in box.get(k, {}).get("cinfo", {})
            for k in keys) and box, every=0.1)
        time.sleep(1.0)  # ten reconcile passes at --interval 0.1
        again = outbox(data)
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(timeout=15)
    # an unchanged error is the same message: same payload, not queued again
    for key in keys:
        assert again[key] == first[key], key
    assert "max_size changed" in again[f"volume/{disk}#0"]["vinfo"]["volumeErr"]["description"]
    assert agent.returncode == 1  # it stopped with objects in ERROR
