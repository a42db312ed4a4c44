"""``ZMetricMsg`` with one ``ZMetricVolume`` per volume, from the device's state."""

from __future__ import annotations

import time
from typing import Any

from edgevol.api import messages as m
from edgevol.device.report.info import timestamp
from edgevol.device.state import StateStore


def volume_metrics(store: StateStore, device_id: str) -> Any:
    """total = virtual size (file) or quota (directory); used = bytes allocated on the host."""
    msg = m.ZMetricMsg(devID=device_id)
    msg.atTimeStamp.CopyFrom(timestamp(time.time()))
    for row in store.all("volumes"):
        if not row["path"]:
            continue
        total, used = row["max_size"], row["cur_size"]
        msg.vm.add(uuid=row["uuid"], displayName=row["display_name"], totalBytes=total, usedBytes=used,
                   freeBytes=max(total - used, 0))
    return msg
