"""Download control: what happens to transfers when the config stops needing them, how many run at once
from one datastore, and what an operator sees while a failed download waits for its next attempt.

Every test runs the real agent (``edgevol device run``) against a real HTTP server on loopback, and
changes its config file while it runs, as a controller's new config would.
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from edgevol.api import messages as m
from edgevol.device.state import StateStore
from tests.conftest import by_name, device_status, make_raw_image, run_cli, start_agent
from tests.configs import ConfigBuilder, sha256_file
from tests.controller_fixture import wait_for
from tests.registry_fixture import registry  # noqa: F401  (fixture)

MiB = 1 << 20


def partial(data: Path, sha: str) -> Path:
    return data / "cas" / "ingest" / f"{sha}.partial"


def partial_size(data: Path, sha: str) -> int:
    try:
        return partial(data, sha).stat().st_size
    except FileNotFoundError:
        return 0


def rows(data: Path, table: str) -> list[dict[str, Any]]:
    """The agent's state rows, read while it runs (WAL: readers never block it)."""
    store = StateStore(data / "state.db")
    try:
        return store.all(table)
    finally:
        store.close()


def outbox(data: Path) -> dict[str, m.ZInfoMsg]:
    """The latest queued info message per object, as the controller will receive it."""
    con = sqlite3.connect(data / "state.db")
    try:
        found = con.execute("SELECT key, payload FROM outbox").fetchall()
    finally:
        con.close()
    return {key: m.ZInfoMsg.FromString(payload) for key, payload in found}


def log_events(log: Path, event: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text(errors="replace").splitlines()
            if line.startswith("{") and f'"{event}"' in line]


def quiet_since(server: Any, quiet: float = 0.6, timeout: float = 20.0) -> float:
    """The monotonic time the server last sent a body byte, once it has sent none for ``quiet`` seconds."""
    last_bytes, last_change = server.bytes_served, time.monotonic()
    deadline = last_change + timeout
    while time.monotonic() < deadline:
        time.sleep(0.02)
        now_bytes = server.bytes_served
        if now_bytes != last_bytes:
            last_bytes, last_change = now_bytes, time.monotonic()
        elif time.monotonic() - last_change >= quiet:
            return last_change
    raise AssertionError(f"the server kept sending for {timeout}s")


def test_removing_a_content_tree_mid_download_stops_its_bytes_and_discards_its_partial(
        tmp_path: Path, datastore_dir: Path, http_server: Any) -> None:
    """The tree (and its volume) leave the config while its blob downloads at 2 MiB/s: within 2 s no more
    bytes leave the server, the partial is gone, and the blob and the tree are reported only as deleted.
    A blank volume in the same config is untouched throughout."""
    sha = sha256_file(make_raw_image(datastore_dir / "big.raw", 48, seed=7))
    http_server.rate_limit_bytes_per_sec = 2 * MiB
    b = ConfigBuilder()
    ds = b.datastore(http_server.url)
    ct = b.content_tree(ds, "big.raw", sha, "raw", name="big")
    b.download_volume(ct, 0, name="disk")
    b.blank_volume(4 * MiB, name="scratch")
    cfg, data, log = tmp_path / "config.pb", tmp_path / "dev", tmp_path / "agent.log"
    b.save(cfg)
    agent = start_agent(data, cfg, log)
    try:
        wait_for(lambda: partial_size(data, sha) >= 3 * MiB, 30.0, "the download to pass 3 MiB", interval=0.05)
        b.cfg.ClearField("contentInfo")
        del b.cfg.volumes[0]  # the volume made from it; the blank one stays
        b.cfg.id.version = "2"
        removed_at = time.monotonic()
        b.save(cfg)
        stopped_at = quiet_since(http_server)
        assert stopped_at - removed_at <= 2.0, f"bytes kept flowing {stopped_at - removed_at:.2f}s after removal"
        wait_for(lambda: not partial(data, sha).exists(), max(0.0,
                 removed_at + 2.0 - time.monotonic()), "the partial to go", interval=0.05)
        assert http_server.bytes_served < 48 * MiB
        wait_for(lambda: not rows(data, "blobs") and not rows(data, "content_trees"),
                 10, "the blob and the tree rows to go", interval=0.05)
    finally:
        agent.terminate()
        agent.wait(20)
    cancelled = log_events(log, "download cancelled")
    assert [e["task"] for e in cancelled] == [f"blob:{sha}"], cancelled
    assert not [e for e in log_events(log, "blob loaded") if e.get("sha256") == sha]
    assert not [e for e in log_events(log, "download attempt failed") if e.get("sha256") == sha]
    queued = outbox(data)
    # What is left to send of the blob and the tree is their deletion: an info message with only the identity.
    assert queued[f"blob/{sha}"].binfo.blob[0] == m.ZInfoBlob(sha256=sha)
    assert queued[f"content_tree/{ct}"].cinfo == m.ZInfoContentTree(uuid=ct)
    assert by_name(device_status(data)["volumes"], "scratch")["state"] == "CREATED_VOLUME"


def test_a_stopped_download_keeps_its_partial_for_the_gc_delay_and_resumes_from_it(
        tmp_path: Path, datastore_dir: Path, http_server: Any) -> None:
    """With ``edgevol.gc.delay.seconds`` set, content the config drops is kept for the delay: the
    stopped download's partial stays, and the tree coming back within the delay resumes from it."""
    sha = sha256_file(make_raw_image(datastore_dir / "big.raw", 24, seed=8))
    http_server.rate_limit_bytes_per_sec = 4 * MiB
    b = ConfigBuilder().item("edgevol.gc.delay.seconds", "600")
    ds = b.datastore(http_server.url)
    b.content_tree(ds, "big.raw", sha, "raw", name="big")
    cfg, data, log = tmp_path / "config.pb", tmp_path / "dev", tmp_path / "agent.log"
    b.save(cfg)
    tree = b.cfg.contentInfo[0].__deepcopy__()
    agent = start_agent(data, cfg, log)
    try:
        wait_for(lambda: partial_size(data, sha) >= 4 * MiB, 30.0, "the download to pass 4 MiB", interval=0.05)
        b.cfg.ClearField("contentInfo")
        b.cfg.id.version = "2"
        b.save(cfg)
        wait_for(lambda: log_events(log, "download cancelled"), 30.0, "the download to stop", interval=0.05)
        quiet_since(http_server)
        kept = partial_size(data, sha)
        assert kept >= 4 * MiB, "the partial was not kept for the GC delay"
        [blob] = rows(data, "blobs")
        assert blob["state"] == m.ZSwState.DOWNLOAD_STARTED  # frozen where it stopped, kept for the delay
        http_server.rate_limit_bytes_per_sec = None
        b.cfg.contentInfo.add().CopyFrom(tree)
        b.cfg.id.version = "3"
        b.save(cfg)
        wait_for(lambda: any(r["state"] == m.ZSwState.LOADED for r in rows(data, "blobs")),
                 30.0, "the blob to load", interval=0.05)
    finally:
        agent.terminate()
        agent.wait(20)
    starts = [e["resume_from"] for e in log_events(log, "download started")]
    assert starts[0] == 0 and starts[-1] >= kept, starts
    assert by_name(device_status(data)["content_trees"], "big")["state"] == "LOADED"
    assert sha256_file(data / "cas" / "blobs" / "sha256" / sha) == sha


def test_downloads_per_datastore_are_capped_apart_from_the_device_wide_limit(
        tmp_path: Path, datastore_dir: Path, http_server: Any) -> None:
    """``edgevol.download.datastore.<uuid>.parallel`` = 1 holds one datastore to one download at a time
    while another datastore (default: only the device-wide ``edgevol.download.parallel`` = 4) runs
    several at once, and then everything loads."""
    http_server.rate_limit_bytes_per_sec = 3 * MiB
    b = ConfigBuilder().item("edgevol.download.parallel", "4")
    slow, other = b.datastore(http_server.url, dpath="a"), b.datastore(http_server.url, dpath="b")
    b.item(f"edgevol.download.datastore.{slow}.parallel", "1")
    owner: dict[str, str] = {}
    for sub, ds in (("a", slow), ("b", other)):
        (datastore_dir / sub).mkdir()
        for n in range(3):
            sha = sha256_file(make_raw_image(datastore_dir / sub / f"{n}.raw", 3, seed=100 + n + (10 if sub == "b" else 0)))
            owner[sha] = sub
            b.content_tree(ds, f"{n}.raw", sha, "raw", name=f"{sub}{n}")
    cfg, data, log = tmp_path / "config.pb", tmp_path / "dev", tmp_path / "agent.log"
    b.save(cfg)
    agent = start_agent(data, cfg, log)
    most = {"a": 0, "b": 0}
    try:
        def all_loaded() -> bool:
            found = rows(data, "blobs")
            running = {"a": 0, "b": 0}
            for r in found:
                if r["state"] == m.ZSwState.DOWNLOAD_STARTED:
                    running[owner[r["sha256"]]] += 1
            for sub in most:
                most[sub] = max(most[sub], running[sub])
            return len(found) == 6 and all(r["state"] == m.ZSwState.LOADED for r in found)

        wait_for(all_loaded, 120, "every blob to load", interval=0.02)
    finally:
        agent.terminate()
        agent.wait(20)
    assert most["a"] == 1, most
    assert most["b"] >= 2, most


def test_a_download_waiting_to_retry_says_how_many_attempts_failed_and_when_the_next_starts(
        tmp_path: Path, datastore_dir: Path, http_server: Any) -> None:
    """The server answers 503: the blob's ErrorInfo carries the last error (description), the attempts
    made and the time of the next one (retryCondition, the API's only place for them), and ``device
    status`` shows the same, as fields (-o json) and in its table."""
    sha = sha256_file(make_raw_image(datastore_dir / "img.raw", 1, seed=9))
    http_server.fail_with = [503] * 3
    b = ConfigBuilder().item("edgevol.download.max.attempts", "5") \
        .item("edgevol.download.retry.base.seconds", "30").item("edgevol.download.retry.cap.seconds", "60")
    ds = b.datastore(http_server.url)
    b.content_tree(ds, "img.raw", sha, "raw", name="img")
    cfg, data, log = tmp_path / "config.pb", tmp_path / "dev", tmp_path / "agent.log"
    b.save(cfg)
    agent = start_agent(data, cfg, log)
    try:
        blob = wait_for(lambda: next((r for r in rows(data, "blobs") if r["error"] is not None), None),
                        30.0, "the first attempt to fail", interval=0.05)
        doc = device_status(data)
        table = run_cli("device", "status", "--data-dir", str(data), check=True).stdout
    finally:
        agent.terminate()
        agent.wait(20)
    err = blob["error"]
    assert "HTTP 503" in err["description"] and err["severity"] == "warning"
    match = re.fullmatch(r"attempt 1 of 5 failed; attempt 2 at (\S+), (\d+\.\d)s after this failure",
                         err["retry_condition"])
    assert match, err["retry_condition"]
    at = datetime.strptime(match.group(1), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc).timestamp()
    assert abs(at - blob["next_retry"]) <= 1.0  # the time written is the one the agent waits for
    assert 15 <= blob["next_retry"] - err["time"] <= 31  # backoff: half to all of the 30 s base
    [shown] = doc["blobs"]
    assert shown["attempts"] == 1 and shown["next_attempt"] == match.group(1)
    assert shown["error"]["retry_condition"] == err["retry_condition"]
    tree = by_name(doc["content_trees"], "img")
    assert tree["error"]["retry_condition"] == err["retry_condition"]  # the tree carries its blob's error
    assert "(retry: attempt 1 of 5 failed; attempt 2 at" in " ".join(table.split())  # the BLOBS table


def test_removing_a_tree_while_its_tag_resolves_stops_the_walk_without_holding_up_collection(
        tmp_path: Path, registry: Any) -> None:  # noqa: F811
    """The registry goes silent on the tag's manifest (a fault proxy holds it 8 s); the container tree
    leaves the config meanwhile. The tree is collected (and its deletion queued) within 2 s, without
    waiting for the silent request; when that request ends the walk stops writing: nothing is latched,
    no manifest is stored."""
    from edgevol.tools.faultproxy import FaultProxy, Rule
    from edgevol.tools.oci_image import Layer, build_image, push

    image = build_image([Layer.from_files({"etc/": ("dir",), "etc/motd": b"never pulled\n"})], {"Cmd": ["/bin/true"]})
    push(registry.url, "x/web", "v1", image)
    proxy = FaultProxy(registry.host, seed=5).start()
    try:
        stall = proxy.add(Rule("stall", path="/manifests/", phase="response", seconds=8))
        b = ConfigBuilder()
        ct = b.content_tree(b.registry(f"127.0.0.1:{proxy.port}", dpath="x"), "web:v1", "", "container", name="web")
        cfg, data, log = tmp_path / "config.pb", tmp_path / "dev", tmp_path / "agent.log"
        b.save(cfg)
        agent = start_agent(data, cfg, log)
        try:
            wait_for(lambda: stall.injected, 30.0, "the tag's request to be held", interval=0.05)
            b.cfg.ClearField("contentInfo")
            b.cfg.id.version = "2"
            removed_at = time.monotonic()
            b.save(cfg)
            wait_for(lambda: not rows(data, "content_trees"), 10, "the tree to be collected", interval=0.05)
            assert time.monotonic() - removed_at <= 2.0
            assert outbox(data)[f"content_tree/{ct}"].cinfo == m.ZInfoContentTree(uuid=ct)
            wait_for(lambda: log_events(log, "tree walk stopped"), 20, "the walk to stop", interval=0.05)
            time.sleep(0.5)
        finally:
            agent.terminate()
            agent.wait(20)
    finally:
        proxy.stop()
    assert not rows(data, "content_trees") and not rows(data, "blobs")
    assert not log_events(log, "tag resolved")
    assert not list((data / "cas" / "blobs" / "sha256").iterdir())
