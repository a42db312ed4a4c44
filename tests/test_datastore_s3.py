"""S3 datastores against a real S3 server (SeaweedFS's gateway), as EVE's downloader maps the fields
(lf-edge/eve pkg/pillar/cmd/downloader/syncop.go): fqdn = endpoint, dpath = bucket[/prefix],
apiKey = access key, password = secret key, URL = object key. The fault proxy sits in front for the
network faults; a SIGKILL mid-download must resume from the partial.
"""

from __future__ import annotations

import hashlib
import json

from edgevol.api import messages as m
from edgevol.device.datastores.s3 import S3Datastore
from edgevol.tools.faultproxy import FaultProxy, Rule
from tests.configs import ConfigBuilder, new_id, sha256_file
from tests.conftest import by_name, device_status, make_raw_image, open_guest, start_agent
from tests.datastore_cases import (
    assert_a_replaced_object_fails_the_read,
    assert_resumed,
    assert_started_over,
    assert_volume_is,
    kill_at_partial,
    replaced_between_attempts,
    rerun_through,
    run_once,
)
from tests.s3_fixture import ACCESS_KEY, REGION, SECRET_KEY, RunningS3, s3_server  # noqa: F401  (fixture)

MiB = 1 << 20


def s3_datastore(b: ConfigBuilder, endpoint: str, dpath: str = "images/vm", secret: str = SECRET_KEY) -> str:
    ds = b.cfg.datastores.add(id=new_id(), dType=m.DsType.DsS3, fqdn=endpoint, dpath=dpath, apiKey=ACCESS_KEY,
                              password=secret, region=REGION)
    return str(ds.id)


def test_volumes_from_s3_content_and_clear_errors(tmp_path, s3_server: RunningS3) -> None:  # noqa: F811
    image = make_raw_image(tmp_path / "os.raw", 4, seed=91)
    s3_server.put("images", "vm/os.raw", image)
    b = ConfigBuilder()
    good = s3_datastore(b, s3_server.endpoint)
    wrong = s3_datastore(b, s3_server.endpoint, secret="not-the-secret")
    ct = b.content_tree(good, "os.raw", sha256_file(image), "raw", name="os")
    b.download_volume(ct, 8 * MiB, name="root")
    missing = b.content_tree(good, "nothing-here.raw", hashlib.sha256(b"x").hexdigest(), "raw", name="missing")
    b.download_volume(missing, 8 * MiB, name="vol-missing")
    denied = b.content_tree(wrong, "os2.raw", hashlib.sha256(b"y").hexdigest(), "raw", name="denied")
    b.download_volume(denied, 8 * MiB, name="vol-denied")
    s3_server.put("images", "vm/too-big.raw", image)
    too_big = b.content_tree(good, "too-big.raw", hashlib.sha256(b"z").hexdigest(), "raw", name="too-big",
                             max_size=MiB)
    b.download_volume(too_big, 8 * MiB, name="vol-too-big")
    data, cfg = tmp_path / "dev", tmp_path / "config.pb"
    proc = run_once(data, b, cfg)
    assert proc.returncode == 1, proc.stderr[-3000:]
    st = device_status(data)
    root = by_name(st["volumes"], "root")
    assert root["state"] == "CREATED_VOLUME"
    with open_guest(root["path"]) as f:
        assert f.read(4 * MiB) == image.read_bytes()
    nf = by_name(st["content_trees"], "missing")["error"]["description"]
    assert "s3://images" in nf and "vm/nothing-here.raw" in nf and "not found" in nf, nf
    refused = by_name(st["content_trees"], "denied")["error"]["description"]
    assert "refused the credentials" in refused and "secret key" in refused, refused
    big = by_name(st["content_trees"], "too-big")["error"]["description"]
    assert f"is {4 * MiB} bytes, more than maxSizeBytes {MiB}" in big, big  # refused before any byte is read
    assert SECRET_KEY not in json.dumps(st) and "not-the-secret" not in json.dumps(st)


def test_s3_download_survives_drops_corruption_and_a_kill(tmp_path, s3_server: RunningS3) -> None:  # noqa: F811
    image = make_raw_image(tmp_path / "big.raw", 24, seed=92)
    s3_server.put("images", "vm/big.raw", image)
    proxy = FaultProxy(f"127.0.0.1:{s3_server.port}", seed=7)
    proxy.start()
    try:
        # first attempt stalls at 8 MiB (the agent is killed there), then a drop and a corruption
        stall = proxy.add(Rule("stall", path="big.raw", phase="body", at=8 * MiB, seconds=60, times=1))
        drop = proxy.add(Rule("drop", path="big.raw", at=12 * MiB, times=1))
        corrupt = proxy.add(Rule("corrupt", path="big.raw", at=20 * MiB, times=1))
        b = ConfigBuilder().fast_retries(5)
        ds = s3_datastore(b, f"http://127.0.0.1:{proxy.port}")
        ct = b.content_tree(ds, "big.raw", sha256_file(image), "raw", name="big")
        b.download_volume(ct, 32 * MiB, name="big")
        data, cfg = tmp_path / "dev", tmp_path / "config.pb"
        b.save(cfg)
        log = tmp_path / "agent.log"
        # the stalled attempt has written its first 8 MiB to the partial
        kill_at_partial(start_agent(data, cfg, log), data, sha256_file(image), 8 * MiB,
                        ready=lambda: stall.injected, log=log)
        proc, after_restart = rerun_through(proxy, "big.raw", data, b, cfg)
    finally:
        proxy.stop()
    # the restarted agent asked S3 for the rest only: a ranged GET from where the partial ended
    assert_resumed(proc.stderr, 8 * MiB, first_get=after_restart[0].headers)
    assert drop.injected == 1 and corrupt.injected == 1
    assert_volume_is(data, "big", image)


def test_a_big_s3_object_comes_in_parallel_ranges_and_a_failed_part_resumes_there(tmp_path,
                                                                                 s3_server: RunningS3) -> None:  # noqa: F811
    """edgevol.download.parallel ranged GETs of one object at once (datastores/ranged.py), written in order."""
    from edgevol.device.datastores.ranged import PART_SIZE

    image = make_raw_image(tmp_path / "wide.raw", 48, seed=93)
    s3_server.put("images", "vm/wide.raw", image)
    proxy = FaultProxy(f"127.0.0.1:{s3_server.port}", seed=8)
    proxy.start()
    try:
        # the third ranged GET the proxy sees is cut 1 MiB into its part
        drop = proxy.add(Rule("drop", path="wide.raw", methods=frozenset({"GET"}), at=MiB, every=3, times=1))
        b = ConfigBuilder().fast_retries(4).item("edgevol.download.parallel", "3")
        ds = s3_datastore(b, f"http://127.0.0.1:{proxy.port}")
        ct = b.content_tree(ds, "wide.raw", sha256_file(image), "raw", name="wide")
        b.download_volume(ct, 64 * MiB, name="wide")
        proc = run_once(tmp_path / "dev", b, tmp_path / "config.pb")
        assert proc.returncode == 0, proc.stderr[-3000:]
        gets = proxy.requests_for("wide.raw", "GET")
    finally:
        proxy.stop()
    assert drop.injected == 1
    vol = by_name(device_status(tmp_path / "dev")["volumes"], "wide")
    with open_guest(vol["path"]) as f:
        assert f.read(48 * MiB) == image.read_bytes()
    spans = []
    for seen in gets:
        first, last = {k.lower(): v for k, v in seen.headers.items()}["range"][6:].split("-")
        spans.append((int(first), int(last) + 1, seen.started, seen.ended or seen.started))
    # parts of PART_SIZE bytes, and at some moment more than one in flight
    assert all(end - start <= PART_SIZE for start, end, _, _ in spans), spans
    assert any(a[2] < b[3] and b[2] < a[3] for i, a in enumerate(spans) for b in spans[i + 1:]), "never overlapped"
    # The retry resumed where the in-order writes stopped: the cut part (whichever the threads sent third) was
    # asked for again, every part before it only once (a restart from byte 0 would ask for those twice), and
    # every part starts on a part boundary.
    [cut] = [int({k.lower(): v for k, v in seen.headers.items()}["range"][6:].split("-")[0])
             for seen in gets if "drop" in seen.faults]
    starts = [start for start, _, _, _ in spans]
    assert starts.count(cut) == 2 and all(start % PART_SIZE == 0 for start in starts), (cut, starts)
    assert all(starts.count(start) == 1 for start in starts if start < cut), (cut, starts)


def test_an_s3_object_replaced_between_attempts_ends_verified(tmp_path, s3_server: RunningS3) -> None:  # noqa: F811
    """Killed mid-download of the object's old version; the bucket then gets the version the config names: the
    ETag kept beside the partial no longer matches HEAD's, so the partial goes and the new object comes whole."""
    old = make_raw_image(tmp_path / "old.raw", 8, seed=96)
    new = make_raw_image(tmp_path / "new.raw", 8, seed=97)
    s3_server.put("images", "vm/swap.raw", old)
    with FaultProxy(f"127.0.0.1:{s3_server.port}", seed=9) as proxy:
        stall = proxy.add(Rule("stall", path="swap.raw", phase="body", at=4 * MiB, seconds=60, times=1))
        b = ConfigBuilder().fast_retries(3)
        ds = s3_datastore(b, f"http://127.0.0.1:{proxy.port}")
        b.download_volume(b.content_tree(ds, "swap.raw", sha256_file(new), "raw", name="swap"), 8 * MiB,
                          name="swap")
        data, proc, gets = replaced_between_attempts(
            tmp_path, b, sha256_file(new), 4 * MiB, ready=lambda: stall.injected,
            replace=lambda: s3_server.put("images", "vm/swap.raw", new),
            rerun=lambda data, cfg: rerun_through(proxy, "swap.raw", data, b, cfg))
    assert_started_over(proc.stderr, 4 * MiB, first_get=gets[0].headers)
    assert_volume_is(data, "swap", new)


def test_an_s3_object_replaced_during_a_read_fails_it(s3_server: RunningS3) -> None:  # noqa: F811
    """Ranged GETs carry If-Match with HEAD's ETag: SeaweedFS answers 412 for a replaced object."""
    s3_server.put("images", "vm/moving.bin", b"first version " * 1000)
    ds = S3Datastore(s3_server.endpoint, "images/vm", api_key=ACCESS_KEY, password=SECRET_KEY, region=REGION)
    try:
        assert_a_replaced_object_fails_the_read(
            ds, "moving.bin", lambda: s3_server.put("images", "vm/moving.bin", b"second version " * 1000))
    finally:
        ds.close()
