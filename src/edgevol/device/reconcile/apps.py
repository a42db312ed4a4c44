"""Which volume generations each app instance uses, as the device sees it.

The config says which generation an app *should* use; the device moves an
app to a new generation only when the config also bumps the app's purge
counter and the new generation is ready (CREATED_VOLUME), so the old
generation keeps serving until then. A change of volume refs without a purge
counter bump is an error on the app and the app keeps what it had: never a
silent swap under a running application.
"""

from __future__ import annotations

from typing import Any

from edgevol.api import messages as m
from edgevol.device.errors import error, standing
from edgevol.device.state import StateStore
from edgevol.model.desired import DesiredState, ObjectKind

S = m.ZSwState


def sync_apps(store: StateStore, d: DesiredState, now: float) -> None:
    refused = {e.object_id for e in d.errors if e.kind is ObjectKind.APP}
    for app in d.apps.values():
        want = [[r.uuid, r.generation] for r in app.volume_refs]
        row = store.get("apps", app.uuid)
        if row is None:
            store.insert("apps", uuid=app.uuid, display_name=app.display_name, purge_counter=app.purge_counter,
                         refs=want, create_time=now)
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
        store.update("apps", (app.uuid,), **fields)
    for row in store.all("apps"):
        # an app gone from the config releases its volumes; an invalid one keeps holding them
        if row["uuid"] not in d.apps and row["uuid"] not in refused:
            store.delete("apps", row["uuid"])


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
