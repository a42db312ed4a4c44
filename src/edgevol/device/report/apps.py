"""App instances as the controller hears of them: ``ZInfoMsg{ztype=ZiApp, ainfo=ZInfoApp}``.

As EVE's zedagent sends them (pkg/pillar/cmd/zedagent/handlemetrics.go,
``PublishAppInfoToZedCloud``): the app's uuid (AppID), name, state, volume
refs and its error in ``appErr``; an app without an error has no ``appErr``,
and a deleted app is reported once with only its AppID. edgevol does not run
apps, so only what the volume side knows is filled in.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

from edgevol.api import messages as m
from edgevol.device.report.info import error_info, timestamp
from edgevol.device.state import ErrorRecord, StateStore

S = m.ZSwState
_REPORTED = "reported_apps"  # meta key: the app uuids that have a report queued or sent


def app_state(store: StateStore, refs: list[list[Any]]) -> int:
    """The lowest state among the app's volumes, INITIAL without any.

    EVE's zedmanager sets an app that has not booted to the minimum state of
    its volume refs, and a ref without a volume waits in INITIAL
    (pkg/pillar/cmd/zedmanager/updatestatus.go, "Determine minimum state";
    pkg/pillar/cmd/volumemgr/handlevolumeref.go, handleVolumeRefCreate).
    """
    states = []
    for uuid, generation in refs:
        row = store.get("volumes", uuid, generation)
        if row is None:
            states.append(S.INITIAL)
        elif row["state"] == S.ERROR:  # on the wire an object keeps the state where it stopped
            states.append(row.get("stopped_state") or S.INITIAL)
        else:
            states.append(row["state"])
    return min(states, default=S.INITIAL)


def app_info(uuid: str, name: str, state: int, refs: list[list[Any]],
             err: ErrorRecord | dict[str, Any] | None) -> Any:
    info = m.ZInfoApp(AppID=uuid, AppName=name, state=state, volumeRefs=[u for u, _ in refs])
    record = error_info(err)
    if record is not None:
        info.appErr.append(record)
    return info


def wrap(device_id: str, content: Any, at: float) -> Any:
    msg = m.ZInfoMsg(devId=device_id, ztype=m.ZInfoTypes.ZiApp)
    msg.ainfo.CopyFrom(content)
    msg.atTimeStamp.CopyFrom(timestamp(at))
    return msg


def _fingerprint(content: Any) -> str:
    """Without error times: an error restated on every pass is not a new report."""
    bare = m.ZInfoApp()
    bare.CopyFrom(content)
    for err in bare.appErr:
        err.ClearField("timestamp")
    return hashlib.sha256(bare.SerializeToString(deterministic=True)).hexdigest()


def report_apps(store: StateStore, device_id: str, apps: dict[str, Any]) -> int:
    """Queue a ZiApp message for every app (uuid -> ZInfoApp) whose report changed, and one for each app gone.

    Returns how many were queued.
    """
    queued = 0
    now = time.time()
    for uuid, content in apps.items():
        key, fp = f"app/{uuid}", _fingerprint(content)
        if store.fingerprint(key) == fp:
            continue
        store.outbox_put(key, wrap(device_id, content, now).SerializeToString())
        store.set_fingerprint(key, fp)
        queued += 1
    before = json.loads(store.meta_get(_REPORTED) or "[]")
    for uuid in before:
        if uuid not in apps:
            store.outbox_put(f"app/{uuid}", wrap(device_id, m.ZInfoApp(AppID=uuid), now).SerializeToString())
            store.set_fingerprint(f"app/{uuid}", None)
            queued += 1
    if sorted(apps) != before:
        store.meta_set(_REPORTED, json.dumps(sorted(apps)))
    return queued
