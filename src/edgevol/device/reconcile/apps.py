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

from typing import Any, Collection

from edgevol.api import messages as m
from edgevol.device.crashpoints import crash_point
from edgevol.device.errors import error, standing
from edgevol.device.reconcile.sharing import flag_shared_volumes
from edgevol.device.report.apps import app_info, app_state, report_apps
from edgevol.device.report.info import volume_error
from edgevol.device.state import ErrorRecord, StateStore
from edgevol.log import get_logger
from edgevol.model.desired import DesiredState, ObjectKind
from edgevol.model.parse import Invalid, canonical_uuid

log = get_logger("edgevol.apps")
S = m.ZSwState
_SEVERITY_RANK = {"notice": 1, "warning": 2, "error": 3}
_Decision = tuple[Any, dict[str, Any], list[list[Any]], dict[str, Any]]  # app, its row, wanted refs, new fields


def sync_apps(store: StateStore, d: DesiredState, now: float,
              purge_first: Collection[tuple[str, int]] = ()) -> None:
    """Move apps to their configured volume refs where allowed, and report every app.

    ``purge_first`` names new generations that fit only once the old
    generation is gone (the agent has checked their content is verified):
    a purging app waiting only for those lets go of its old volumes first,
    break-before-make, as EVE's zedmanager does on every purge
    (pkg/pillar/cmd/zedmanager/updatestatus.go:207-252: DownloadAndVerify,
    then BringDown and purgeCmdDone drop the old refs, then RecreateVolumes).
    """
    refused = {e.object_id for e in d.errors if e.kind is ObjectKind.APP}
    decided: list[_Decision] = []
    for app in d.apps.values():
        want = [[r.uuid, r.generation] for r in app.volume_refs]
        row = store.get("apps", app.uuid)
        if row is None:
            own = _unmatched(d, want, None, app.uuid, app.display_name)
            store.insert("apps", uuid=app.uuid, display_name=app.display_name, purge_counter=app.purge_counter,
                         refs=want, create_time=now,
                         error=_with_volume_errors(store, own, want, want, None, app.uuid, app.display_name))
            continue
        fields: dict[str, Any] = {"display_name": app.display_name, "error": None}
        if row["refs"] != want:
            if app.purge_counter > row["purge_counter"]:
                pending = [(u, g) for u, g in want if not _ready(store, u, g)]
                waiting = [f"{u}#{g}" for u, g in pending]
                if pending and all((u, g) in purge_first for u, g in pending):
                    log.info("purge: old generations released before the new ones are created, as both do not "
                             "fit", app=app.uuid, new=waiting)
                    fields.update(refs=want, purge_counter=app.purge_counter)
                elif waiting:
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
        decided.append((app, row, want, fields))
    # the volumes' warnings first, from the refs the apps hold after this pass, so appErr carries them now
    flag_shared_volumes(store, d, _refs_held(store, d, refused, decided))
    for app, row, want, fields in decided:
        fields["error"] = _with_volume_errors(store, fields["error"], fields.get("refs", row["refs"]), want,
                                              row["error"], app.uuid, app.display_name)
        store.update("apps", (app.uuid,), **fields)
        if "refs" in fields:
            crash_point("app.refs.moved")
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


def _refs_held(store: StateStore, d: DesiredState, refused: set[str],
               decided: list[_Decision]) -> dict[str, list[list[Any]]]:
    """app uuid -> the refs it holds once this pass is done (an app gone from the config holds none)."""
    moving = {app.uuid: fields["refs"] for app, _row, _want, fields in decided if "refs" in fields}
    return {row["uuid"]: moving.get(row["uuid"], row["refs"]) for row in store.all("apps")
            if row["uuid"] in d.apps or row["uuid"] in refused}


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


def _with_volume_errors(store: StateStore, own: ErrorRecord | None, refs: list[list[Any]], want: list[list[Any]],
                        old: dict[str, Any] | None, uuid: str, name: str) -> ErrorRecord | None:
    """The app's own error followed by those of the volumes it uses or is moving to (or their warnings).

    EVE's zedmanager gathers its volume refs' errors into the app's error, so
    ``appErr`` says "Remaining disk space ..." when a volume waits for space
    (pkg/pillar/cmd/zedmanager/updatestatus.go:503-515 and appendError at
    :1354, a blank line between errors); Eden waits for exactly that
    (lf-edge/eden tests/volume/testdata/volumes_test.txt:52).
    """
    found: list[ErrorRecord] = [own] if own is not None else []
    for u, g in [*refs, *(r for r in want if r not in refs)]:
        row = store.get("volumes", u, g)
        rec = ErrorRecord.from_dict(volume_error(row)) if row is not None else None
        if rec is not None and rec not in found:
            found.append(rec)
    if not found or found == [own]:
        return own
    severity = max((r.severity for r in found), key=lambda s: _SEVERITY_RANK.get(s, 0))  # EVE: the highest
    retry = next((r.retry_condition for r in reversed(found) if r.retry_condition), "")
    merged = ErrorRecord(description="\n\n".join(r.description for r in found), time=max(r.time for r in found),
                         severity=severity, retry_condition=retry, entity=ObjectKind.APP, entity_id=uuid,
                         entity_name=name)
    return standing(old, merged)


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
