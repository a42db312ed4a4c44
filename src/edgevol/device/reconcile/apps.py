"""Which volume generations each app instance uses, as the device sees it.

The config says which generation an app *should* use; the device moves an
app to a new generation only when the config also bumps the app's purge
counter and the new generation is ready (CREATED_VOLUME), so the old
generation keeps serving until then. A change of volume refs without a purge
counter bump is an error on the app and the app keeps what it had: never a
silent swap under a running application.

A ref is matched to a volume by uuid and generation together, as EVE does
(``VolumeRefConfig.VolumeKey()`` is ``uuid#generation``,
pkg/pillar/types/volumetypes.go): a ref whose generation the config does not
have names no volume, and the app says so in its error. Every app's state and
error go to the controller as ``ZInfoApp`` (:mod:`edgevol.device.report.apps`).
"""

from __future__ import annotations

from typing import Any

from edgevol.api import messages as m
from edgevol.device.errors import error, standing
from edgevol.device.report.apps import app_info, app_state, report_apps
from edgevol.device.state import ErrorRecord, StateStore
from edgevol.model.desired import DesiredState, ObjectKind
from edgevol.model.parse import Invalid, canonical_uuid

S = m.ZSwState


def sync_apps(store: StateStore, d: DesiredState, now: float) -> None:
    refused = {e.object_id for e in d.errors if e.kind is ObjectKind.APP}
    for app in d.apps.values():
        want = [[r.uuid, r.generation] for r in app.volume_refs]
        row = store.get("apps", app.uuid)
        if row is None:
            store.insert("apps", uuid=app.uuid, display_name=app.display_name, purge_counter=app.purge_counter,
                         refs=want, create_time=now, error=_unmatched(d, want, None, app.uuid, app.display_name))
            continue
        fields: dict[str, Any] = {"display_name": app.display_name, "error": None}
        if row["refs"] != want:
            if app.purge_counter > row["purge_counter"]:
                waiting = [f"{u}#{g}" for u, g in want if not _ready(store, u, g)]
                if waiting:
                    fields["error"] = standing(row["error"], error(
                        f"purge: waiting for {', '.join(waiting)} to be created; the app keeps its current volumes",
                        ObjectKind.APP, app.uuid, app.display_name, severity="notice"))
                else:
                    fields.update(refs=want, purge_counter=app.purge_counter)
            else:
                fields["error"] = standing(row["error"], error(
                    "volume refs changed without a purge counter bump; the app keeps using "
                    + ", ".join(f"{u}#{g}" for u, g in row["refs"]), ObjectKind.APP, app.uuid, app.display_name,
                    retry="bump the app's purge counter to move it to the new volumes"))
        elif app.purge_counter != row["purge_counter"]:
            fields["purge_counter"] = app.purge_counter
        if fields["error"] is None:
            fields["error"] = _unmatched(d, fields.get("refs", row["refs"]), row["error"], app.uuid, app.display_name)
        store.update("apps", (app.uuid,), **fields)
    invalid: dict[str, Any] = {}
    for e in d.errors:
        if e.kind is ObjectKind.APP and e.object_id not in d.apps:
            invalid.setdefault(e.object_id, (e.name, error(f"invalid config: {e.message}", ObjectKind.APP,
                                                           e.object_id, e.name, retry="fix the app in the config")))
    reports: dict[str, Any] = {}
    for row in store.all("apps"):
        # an app gone from the config releases its volumes; an invalid one keeps holding them
        if row["uuid"] not in d.apps and row["uuid"] not in refused:
            store.delete("apps", row["uuid"])
            continue
        if row["uuid"] in invalid:
            store.update("apps", (row["uuid"],), error=standing(row["error"], invalid.pop(row["uuid"])[1]))
            row = store.get("apps", row["uuid"]) or row
        reports[row["uuid"]] = app_info(row["uuid"], row["display_name"], app_state(store, row["refs"]),
                                        row["refs"], row["error"])
    for uuid, (name, record) in invalid.items():  # refused before the device ever had it: nothing held
        if _is_uuid(uuid):
            reports[uuid] = app_info(uuid, name, S.INITIAL, [], record)
    report_apps(store, d.device_id or store.meta_get("device_id") or "", reports)


def _is_uuid(value: str) -> bool:
    try:
        return canonical_uuid(value) == value
    except Invalid:
        return False


def _unmatched(d: DesiredState, refs: list[list[Any]], old: dict[str, Any] | None, uuid: str,
               name: str) -> ErrorRecord | None:
    """An error naming the refs no volume of the config answers by uuid and generation, or None."""
    missing = []
    for u, g in refs:
        vol = d.volumes.get(u)
        if vol is None:
            missing.append(f"{u}#{g} (not in the config)")
        elif vol.generation != g:
            missing.append(f"{u}#{g} (the config has generation {vol.generation})")
    if not missing:
        return None
    return standing(old, error("volume refs name no volume of the config: " + ", ".join(missing),
                               ObjectKind.APP, uuid, name, retry="point the app's volume refs at the volumes' "
                               "current generationCount"))


def _ready(store: StateStore, uuid: str, generation: int) -> bool:
    row = store.get("volumes", uuid, generation)
    return row is not None and row["state"] == S.CREATED_VOLUME


def app_references(store: StateStore) -> dict[tuple[str, int], int]:
    """(volume uuid, generation) -> how many apps use it now."""
    refs: dict[tuple[str, int], int] = {}
    for row in store.all("apps"):
        for uuid, gen in row["refs"]:
            refs[(uuid, gen)] = refs.get((uuid, gen), 0) + 1
    return refs
