"""Which volumes the device serves to tasks, and what serving them says back.

A volume is exported while an activated app (``AppInstanceConfig.activate``) uses it: the generation
the app holds in its refs, so a purge moves the export only when the app moves (reconcile/apps.py
decides that). The daemons themselves are ``edgevol.device.exports``; this module turns the config and
the state into the exports wanted, and their status into what ``device exports``, the volume's
``ErrorInfo`` and ``ZMetricVolume`` show. The status is kept in the state database (meta ``exports``)
because the CLI and the uplink read it from other threads and processes.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgevol.api import messages as m
from edgevol.device.errors import error, standing, utc_time
from edgevol.device.state import ErrorRecord, StateStore
from edgevol.device.volumes.files import volume_format
from edgevol.model.desired import DesiredState, ObjectKind

if TYPE_CHECKING:  # the daemons' package is loaded only when an activated app needs a volume served
    from edgevol.device.exports import Exports, ExportSpec, ExportStatus

S = m.ZSwState
META_KEY = "exports"

Key = tuple[str, int]


def wanted_exports(store: StateStore, d: DesiredState) -> tuple[dict[Key, ExportSpec], dict[Key, str]]:
    """The exports the activated apps need, and the volumes refused one (why) for their access protocol."""
    from edgevol.device.exports import ExportSpec

    specs: dict[Key, ExportSpec] = {}
    refused: dict[Key, str] = {}
    for app in d.apps.values():
        row = store.get("apps", app.uuid) if app.activate else None
        for uuid, generation in (row["refs"] if row else []):
            vol = store.get("volumes", uuid, generation)
            if vol is None or vol["state"] != S.CREATED_VOLUME or not vol["path"]:
                continue  # served once it is made
            path = Path(vol["path"])
            directory = path.is_dir()
            config = d.volumes.get(uuid)
            if config is not None and "9p" in config.protocols and not directory:
                refused[(uuid, generation)] = (
                    f"access protocol VAP_9P cannot be offered for volume {vol['display_name'] or uuid}: it is "
                    f"served as virtiofs, which shares a directory, and this volume is a "
                    f"{volume_format(path) or 'disk image'} file")
                continue
            specs[(uuid, generation)] = ExportSpec(uuid, generation, path, "dir" if directory else
                                                   (volume_format(path) or "raw"), bool(vol["readonly"]))
    return specs, refused


def record(store: StateStore, served: Exports, refused: dict[Key, str]) -> None:
    """Each volume's export error (set or cleared), the exports' status (``device exports``) and each volume's
    I/O since boot (metrics: kept after its export stops, until the volume goes)."""
    statuses = served.status()
    by_key = {(s.uuid, s.generation): s for s in statuses}
    io: dict[str, Any] = {}
    for row in store.rows("volumes", "uuid", "generation", "display_name", "export_error"):
        key = (row["uuid"], row["generation"])
        found = standing(row["export_error"], _export_error(row, by_key.get(key), refused.get(key)))
        if found != ErrorRecord.from_dict(row["export_error"]):
            store.update("volumes", key, export_error=found)
        counted = served.counters(*key)
        if counted is not None:
            io[f"{key[0]}#{key[1]}"] = dataclasses.asdict(counted)
    doc = json.dumps({"exports": [dataclasses.asdict(s) for s in statuses], "io": io}, sort_keys=True)
    if store.meta_get(META_KEY) != doc:
        store.meta_set(META_KEY, doc)


def load(store: StateStore) -> list[dict[str, Any]]:
    """The exports as last recorded (``device exports``)."""
    return json.loads(store.meta_get(META_KEY) or "{}").get("exports", [])


def io_counters(store: StateStore) -> dict[Key, dict[str, int]]:
    """(volume uuid, generation) -> what its exports served since boot, as last recorded (metrics)."""
    io = json.loads(store.meta_get(META_KEY) or "{}").get("io", {})
    return {(k.rpartition("#")[0], int(k.rpartition("#")[2])): v for k, v in io.items()}


def _export_error(row: dict[str, Any], status: ExportStatus | None, refusal: str | None) -> Any:
    name = row["display_name"]
    if refusal is not None:
        return error(refusal, ObjectKind.VOLUME, row["uuid"], name,
                     retry="give the volume no access protocol, or use VAP_9P for a directory volume only")
    if status is None or status.error is None or status.state == "running":
        return None
    if status.state == "restarting" and status.next_attempt:
        retry = (f"export restarted {status.restarts} time{'s' if status.restarts != 1 else ''}; next restart at "
                 f"{utc_time(status.next_attempt)}")
        return error(f"export of the volume to its apps' tasks: {status.error}", ObjectKind.VOLUME, row["uuid"],
                     name, severity="warning", retry=retry)
    return error(f"export of the volume to its apps' tasks: {status.error}", ObjectKind.VOLUME, row["uuid"], name,
                 retry="fix the volume, or stop the apps using it")


