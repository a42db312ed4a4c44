"""``ZMetricMsg`` with one ``ZMetricVolume`` per volume, from the device's state.

A ``ZMetricVolume`` names its volume by uuid only (it has no generation), so
a controller keeps one series per uuid. While a purge is in flight a volume
has two generations on disk; sending both would put two samples with the
same uuid and different figures into that series. So each volume uuid is
sent once, for its live generation: the one its apps use (the newest of
them if apps disagree), else the newest one created. EVE's zedagent sends
one per VolumeStatus, that is per generation, and cannot be told apart
either (pkg/pillar/cmd/zedagent/handlemetrics.go:1731-1751).

The figures are those EVE fills in (same file, getVolumeResourcesMetrics at
:1753-1764): used, total and free bytes; and, which EVE leaves unset,
readBytes, writeBytes, readCount and writeCount: what the volume's export
served to its apps' tasks since the device booted (reconcile/exports.py; 0 for
a volume never exported, and for a directory volume, whose virtiofs daemon
counts nothing).
"""

from __future__ import annotations

import time
from typing import Any

from edgevol.api import messages as m
from edgevol.device.reconcile import exports
from edgevol.device.reconcile.apps import app_references
from edgevol.device.report.info import timestamp
from edgevol.device.state import StateStore


def live_generations(store: StateStore) -> list[dict[str, Any]]:
    """Per volume uuid, the row of the created generation its apps use (else its newest one)."""
    used = app_references(store)
    live: dict[str, dict[str, Any]] = {}
    for row in store.all("volumes"):
        if not row["path"]:
            continue
        best = live.get(row["uuid"])
        rank = ((row["uuid"], row["generation"]) in used, row["generation"])
        if best is None or rank > ((best["uuid"], best["generation"]) in used, best["generation"]):
            live[row["uuid"]] = row
    return list(live.values())


def volume_metrics(store: StateStore, device_id: str) -> Any:
    """total = virtual size (file) or quota (directory); used = bytes allocated on the host."""
    msg = m.ZMetricMsg(devID=device_id)
    msg.atTimeStamp.CopyFrom(timestamp(time.time()))
    served = exports.io_counters(store)
    for row in live_generations(store):
        total, used = row["max_size"], row["cur_size"]
        io = served.get((row["uuid"], row["generation"]), {})
        msg.vm.add(uuid=row["uuid"], displayName=row["display_name"], totalBytes=total, usedBytes=used,
                   freeBytes=max(total - used, 0), readBytes=io.get("read_bytes", 0),
                   writeBytes=io.get("write_bytes", 0), readCount=io.get("read_ops", 0),
                   writeCount=io.get("write_ops", 0))
    return msg
