"""S3 datastores against a real S3 server (SeaweedFS's gateway), as EVE's downloader maps the fields
(lf-edge/eve pkg/pillar/cmd/downloader/syncop.go): fqdn = endpoint, dpath = bucket[/prefix],
apiKey = access key, password = secret key, URL = object key. The fault proxy sits in front for the
network faults; a SIGKILL mid-download must resume from the partial.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

from edgevol.api import messages as m
from edgevol.device.state import StateStore
from edgevol.tools.faultproxy import FaultProxy, Rule
from tests.configs import ConfigBuilder, new_id, sha256_file
from tests.conftest import EDGEVOL, by_name, device_status, make_raw_image
from tests.controller_fixture import controller_factory  # noqa: F401
from tests.s3_fixture import ACCESS_KEY, REGION, SECRET_KEY, RunningS3, s3_server  # noqa: F401  (fixture)

MiB = 1 << 20


def s3_datastore(b: ConfigBuilder, endpoint: str, dpath: str = "images/vm", secret: str = SECRET_KEY) -> str:
    ds = b.cfg.datastores.add(id=new_id(), dType=m.DsType.DsS3, fqdn=endpoint, dpath=dpath, apiKey=ACCESS_KEY,
                              password=secret, region=REGION)
    return str(ds.id)


def run_once(data: Path, b: ConfigBuilder, cfg: Path) -> subprocess.CompletedProcess[str]:
    b.save(cfg)
    return subprocess.run([*EDGEVOL, "device", "run", "--data-dir", str(data), "--config", str(cfg), "--once"],
                          capture_output=True, text=True, timeout=180)


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
    data, cfg = tmp_path / "dev", tmp_path / "config.pb"
    proc = run_once(data, b, cfg)
    assert proc.returncode == 1, proc.stderr[-3000:]
    st = device_status(data)
    root = by_name(st["volumes"], "root")
    assert root["state"] == "CREATED_VOLUME"
    with open(root["path"], "rb") as f:
        assert f.read(4 * MiB) == image.read_bytes()
    nf = by_name(st["content_trees"], "missing")["error"]["description"]
    assert "s3://images" in nf and "vm/nothing-here.raw" in nf and "not found" in nf, nf
    refused = by_name(st["content_trees"], "denied")["error"]["description"]
    assert "refused the credentials" in refused and "secret key" in refused, refused
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
        with open(log, "wb") as out:
            agent = subprocess.Popen([*EDGEVOL, "device", "run", "--data-dir", str(data), "--config", str(cfg),
                                      "--no-progress", "--log-format", "json"], stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        sha = sha256_file(image)
        while True:  # the stalled attempt has written its first 8 MiB to the partial
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            partial = list((data / "cas").rglob(f"*{sha}*")) if (data / "cas").exists() else []
            if stall.injected and any(p.is_file() and p.stat().st_size >= 8 * MiB for p in partial):
                break
            time.sleep(0.1)
        agent.send_signal(signal.SIGKILL)
        agent.wait(10)
        before = len(proxy.requests_for("big.raw", "GET"))
        proc = run_once(data, b, cfg)
        assert proc.returncode == 0, proc.stderr[-3000:]
        after_restart = proxy.requests_for("big.raw", "GET")[before:]
    finally:
        proxy.stop()
    # the restarted agent asked S3 for the rest only: a ranged GET from where the partial ended
    first = {k.lower(): v for k, v in after_restart[0].headers.items()}
    assert first.get("range", "").startswith("bytes=") and int(first["range"][6:].rstrip("-")) >= 8 * MiB, first
    resumed = [json.loads(line) for line in proc.stderr.splitlines() if line.startswith("{")
               and '"download started"' in line]
    assert resumed and resumed[0]["resume_from"] >= 8 * MiB, resumed  # from the partial, not from 0
    assert drop.injected == 1 and corrupt.injected == 1
    vol = by_name(device_status(data)["volumes"], "big")
    with open(vol["path"], "rb") as f:
        assert hashlib.sha256(f.read(24 * MiB)).hexdigest() == sha
    store = StateStore(data / "state.db")
    try:
        assert store.get("blobs", sha)["state"] == m.ZSwState.LOADED
    finally:
        store.close()
    assert os.path.getsize(vol["path"]) >= 24 * MiB


def test_the_admin_cli_creates_an_s3_datastore_and_the_device_config_carries_it(controller_factory) -> None:  # noqa: F811
    from edgevol.controller.configbuild import build_config
    from edgevol.controller.store import ControllerStore
    from tests.test_cli_admin import ok, refused

    ctrl = controller_factory(None)
    ok(ctrl, "device", "create", "dev1", "--serial", "SN1")
    ok(ctrl, "datastore", "create", "s3", "--type", "DsS3", "--fqdn", "https://s3.example.net", "--dpath",
       "images/vm", "--api-key", ACCESS_KEY, "--password", SECRET_KEY, "--region", "eu-west-1")
    ok(ctrl, "content-tree", "create", "os", "--device", "dev1", "--datastore", "s3", "--url", "os.raw",
       "--format", "RAW", "--sha256", "ab" * 32)
    assert "bucket" in refused(ctrl, "datastore", "create", "nobucket", "--type", "DsS3", "--fqdn",
                               "https://s3.example.net")
    with ControllerStore(ctrl.db_url) as store:
        [ds] = build_config(store, "dev1").datastores
    assert (ds.dType, ds.fqdn, ds.dpath, ds.region) == (m.DsType.DsS3, "https://s3.example.net", "images/vm",
                                                        "eu-west-1")
