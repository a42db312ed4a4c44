"""Volume metrics (issue 12): one ZMetricVolume per volume uuid, every field of it kept at the controller.

EVE's facts, from lf-edge/eve:

- pkg/pillar/cmd/zedagent/handlemetrics.go:1731-1751 (createVolumeInstanceMetrics): one ZMetricVolume
  per VolumeStatus, that is per generation (types/volumetypes.go:162-165, Key is uuid#generation),
  named by uuid and displayName only. A controller cannot tell two generations' entries apart, so
  edgevol's device sends one per uuid: the generation the apps use, the one whose figures matter.
- same file, getVolumeResourcesMetrics at :1753-1764: usedBytes, totalBytes (provisioned) and freeBytes
  are filled in; readBytes, writeBytes, readCount and writeCount are not. edgevol's device counts what its
  exports serve (tests/test_volume_exports.py); here no task does any I/O, so they are 0, kept and shown as sent.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from tests.controller_fixture import agent_factory, controller_factory, onboard, wait_for  # noqa: F401
from tests.test_cli_admin import ok

MiB = 1 << 20
PiB = 1 << 50


def _samples_after(ctrl: Any, vol_uuid: str, since: float) -> dict[str, list[dict[str, Any]]]:
    """The samples of messages the device stamped after ``since``, grouped by message (its timestamp)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for s in ctrl.admin("GET", f"/devices/dev1/volumes/{vol_uuid}/metrics", params={"limit": 1000}):
        if datetime.fromisoformat(s["at"]).timestamp() > since:
            out.setdefault(s["at"], []).append(s)
    return out


def test_one_metric_per_volume_for_the_generation_its_app_uses(controller_factory, agent_factory):  # noqa: F811
    ctrl = controller_factory(None)
    agent = agent_factory(ctrl, "dev1")
    onboard(ctrl, agent, "dev1")
    x = ctrl.admin("POST", "/devices/dev1/volumes", json={"name": "x", "origin": "blank", "max_size_bytes": 16 * MiB})
    ctrl.admin("POST", "/devices/dev1/volumes", json={"name": "y", "origin": "blank", "max_size_bytes": 16 * MiB})
    ctrl.admin("POST", "/devices/dev1/apps", json={"name": "web", "volumes": ["x", "y"]})
    agent.start()
    wait_for(lambda: {(v["display_name"], v["state_name"]) for v in ctrl.admin(
        "GET", "/devices/dev1/reported", params={"kind": "volume"})} == {("x", "CREATED_VOLUME"),
                                                                         ("y", "CREATED_VOLUME")}, 60, "x, y created")

    # y gets a new generation that can never fit, then x one at 32 MiB: the app keeps x#0 and y#0 while x#1 is
    # created beside x#0 (an app moves only once all its new volumes are there, as EVE's zedmanager does)
    ok(ctrl, "volume", "update", "y", "--device", "dev1", "--size", str(PiB))
    ok(ctrl, "volume", "update", "x", "--device", "dev1", "--size", "32MiB")

    def both_generations() -> bool:
        st = agent.status()
        gens = {v["generation_count"]: v["state"] for v in st["volumes"] if v["display_name"] == "x"}
        return gens == {0: "CREATED_VOLUME", 1: "CREATED_VOLUME"} and all(
            [x["uuid"], 0] in [[r["uuid"], r["generation_count"]] for r in a["volume_refs"]] for a in st["apps"])

    wait_for(both_generations, 60, "x#0 (used by the app) and x#1 both created")
    since = time.time() + 0.5
    batches = wait_for(lambda: (lambda b: b if len(b) >= 3 else None)(_samples_after(ctrl, x["uuid"], since)), 30,
                       "three metrics messages while both generations exist")
    for at, samples in batches.items():
        assert len(samples) == 1, f"message at {at} has {len(samples)} entries for volume x: {samples}"
        [s] = samples
        assert (s["display_name"], s["total_bytes"]) == ("x", 16 * MiB)  # the app's generation, not x#1's
        assert s["free_bytes"] == s["total_bytes"] - s["used_bytes"]
        assert (s["read_bytes"], s["write_bytes"], s["read_count"], s["write_count"]) == (0, 0, 0, 0)  # no task did I/O
    assert both_generations()  # still so after the messages checked

    # the CLI shows every field of the message
    table = ok(ctrl, "metrics", "--device", "dev1", "--volume", "x", "--limit", "1")
    for column in ("NAME", "TOTAL", "USED", "FREE", "READ", "WRITTEN", "READ OPS", "WRITE OPS"):
        assert column in table
    assert "16.0 MiB" in table
    [last] = ok(ctrl, "metrics", "--device", "dev1", "--volume", "x", "--limit", "1", "-o", "json")
    assert {"volume_uuid", "display_name", "read_bytes", "write_bytes", "read_count", "write_count", "total_bytes",
            "used_bytes", "free_bytes", "at"} <= set(last)

    # y back to a size that fits: the app moves to x#1 and y#2, x#0 goes, and the metric follows the app
    ok(ctrl, "volume", "update", "y", "--device", "dev1", "--size", "16MiB")
    wait_for(lambda: [v["generation_count"] for v in agent.status()["volumes"] if v["display_name"] == "x"] == [1],
             60, "x#0 gone once the app moved to x#1")
    since = time.time() + 0.5
    batches = wait_for(lambda: (lambda b: b if len(b) >= 2 else None)(_samples_after(ctrl, x["uuid"], since)), 30,
                       "metrics after the move")
    assert all(len(s) == 1 and s[0]["total_bytes"] == 32 * MiB for s in batches.values()), batches
