"""``edgevol fleet simulate`` against a real controller: what it reports is what the controller stored.

The simulator is only worth its figures if its counts are true, so each
check compares the report with the controller's own view (admin API, table
row counts) rather than with the simulator's idea of itself.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from tests.controller_fixture import EDGEVOL, Controller, controller_factory, wait_for  # noqa: F401

PREFIX = "sim"
DEVICES = 20


def simulate(ctrl: Controller, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*EDGEVOL, "fleet", "simulate", "--controller", ctrl.url, "--controller-dir",
                           str(ctrl.data_dir), *args], capture_output=True, text=True, timeout=120)


def report_of(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return dict(json.loads(proc.stdout))


def test_closed_loop_counts_match_what_the_controller_stored_and_state_reuse(controller_factory,  # noqa: F811
                                                                          tmp_path: Path) -> None:
    ctrl = controller_factory()
    state = tmp_path / "fleet.json"
    first = report_of(simulate(ctrl, "--devices", str(DEVICES), "--duration", "5", "--mode", "closed",
                               "--concurrency", "4", "--name-prefix", PREFIX, "--state", str(state),
                               "--controller-pid", f"controller={ctrl.proc.pid}", "-o", "json"))

    # Every device was created through the admin API and registered its own certificate.
    devices = {d["name"]: d for d in ctrl.admin("GET", "/devices")}
    assert sorted(devices) == [f"{PREFIX}-{i:05d}" for i in range(DEVICES)]
    assert all(d["registered_at"] and d["device_cert_pem"] for d in devices.values())
    assert {d["serial"] for d in devices.values()} == {f"SN-{name}" for name in devices}
    assert {k: first["provisioning"][k] for k in ("name_prefix", "created", "reused")} == {
        "name_prefix": PREFIX, "created": DEVICES, "reused": 0}

    kinds, total = first["kinds"], first["total"]
    assert not first["failed"] and total["errors"] == 0
    for name, k in kinds.items():
        assert k["count"] > 0 and k["ok"] == k["count"] and k["errors"] == {}, (name, k)
        assert 0 < k["p50_ms"] <= k["p99_ms"] <= k["max_ms"], (name, k)
    assert total["count"] == sum(k["count"] for k in kinds.values())
    # Each device took its first config while provisioning, so every poll of the run is a 304.
    assert kinds["config"]["statuses"] == {"304": kinds["config"]["count"]}
    assert kinds["info"]["statuses"] == {"201": kinds["info"]["count"]}
    # One metrics post stores one volume sample, one info post reports one volume (per device).
    wait_for(lambda: ctrl.count("volume_metrics") == kinds["metrics"]["ok"], 20,
             f"{kinds['metrics']['ok']} metrics rows")
    wait_for(lambda: ctrl.count("reported_objects") == min(DEVICES, kinds["info"]["ok"]), 20, "reported volumes")

    usage = first["controller"]
    assert usage["cpu_s"] > 0 and usage["peak_rss_mb"] > 0 and usage["cpu_ms_per_request"] > 0
    assert first["simulator"]["cpu_s"] > 0

    # The saved fleet matches this controller: nothing is provisioned again, the same devices send.
    second = report_of(simulate(ctrl, "--devices", str(DEVICES), "--duration", "1", "--mode", "closed",
                                "--concurrency", "2", "--state", str(state), "-o", "json"))
    assert second["provisioning"]["created"] == 0 and second["provisioning"]["reused"] == DEVICES
    assert second["provisioning"]["name_prefix"] == PREFIX
    assert len(ctrl.admin("GET", "/devices")) == DEVICES
    assert second["total"]["count"] > 0 and second["total"]["errors"] == 0
    wait_for(lambda: ctrl.count("volume_metrics") == kinds["metrics"]["ok"] + second["kinds"]["metrics"]["ok"],
             20, "metrics rows of both runs")


def test_only_a_loopback_controller_is_accepted(tmp_path: Path) -> None:
    (tmp_path / "admin.token").write_text("x")
    for url in ("http://192.0.2.10:8080", "https://example.com", "http://10.0.0.1"):
        proc = subprocess.run([*EDGEVOL, "fleet", "simulate", "--controller", url, "--controller-dir", str(tmp_path),
                               "--devices", "1", "--duration", "1"], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2, (url, proc.stdout, proc.stderr)
        assert "not a loopback address" in proc.stderr, proc.stderr
