"""Transition phase 2: a volume the controller allocated takes over a drive's implicit volume, data and all.

The seed's phase 2 ("new EVE, new controller") has the controller send an
app's drives and, for the same app, volumes with UUIDs it allocated. The
config parser names, in ``Volume.adopts``, the implicit volume each such
volume replaces (edgevol.model.legacy). Here the device gives that implicit
volume the controller's identity instead of building an empty one:

1. the implicit volume is reported gone (queued before its row changes, as
   every deletion is);
2. one SQLite transaction renames its row to (controller UUID, generation)
   and points every app that used it there;
3. the file or directory is renamed to the new identity's name.

A ``kill -9`` between 2 and 3 leaves a row whose path still has the old
name; :func:`settle_name` finishes the rename on the next pass. Nothing is
copied, so adoption is instant and needs no free space.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from edgevol import fsutil
from edgevol.api import messages as m
from edgevol.device.crashpoints import crash_point
from edgevol.device.errors import error, standing
from edgevol.device.report.outbox import Reporter
from edgevol.device.state import StateStore
from edgevol.device.volumes import qemu
from edgevol.log import get_logger
from edgevol.model.desired import ObjectKind, Volume

log = get_logger("edgevol.adoption")


def adopt_implicit(store: StateStore, reporter: Reporter, v: Volume, spec: dict[str, Any],
                   row: dict[str, Any]) -> bool:
    """Take over ``v.adopts`` for ``v``; True when ``v`` must not be built this pass (adopted, or refused).

    False when the device has no such implicit volume: ``v`` is then built as usual.
    """
    old = _implicit_row(store, v.adopts)
    if old is None:
        return False
    ident = (v.uuid, v.generation)
    problem = _mismatch(old, v)
    if problem:
        store.update("volumes", ident, display_name=v.display_name, state=m.ZSwState.ERROR, error=standing(row["error"], error(
            f"cannot take over the drive's volume {v.adopts}#{old['generation']}: {problem}; the app keeps "
            "using it", ObjectKind.VOLUME, v.uuid, v.display_name, retry="configure the volume like the drive")))
        return True
    path = Path(old["path"])
    reporter.deleted("volume", old["uuid"], old["generation"])  # before the row changes, as every deletion
    store.move_volume((old["uuid"], old["generation"]), ident, display_name=v.display_name, spec=spec,
                      max_size=max(v.max_size_bytes, old["max_size"]), readonly=v.readonly, error=None,
                      unreferenced_since=None)
    crash_point("volume.adopted")
    settle_name(store, ident, path)
    log.info("implicit volume adopted under the controller's identity", implicit=old["uuid"], volume=v.uuid,
             generation=v.generation)
    return True


def settle_name(store: StateStore, ident: tuple[str, int], path: Path) -> Path:
    """Rename an adopted volume's file or directory to its identity's name (idempotent) and record it."""
    prefix = f"{ident[0]}#{ident[1]}."
    if path.name.startswith(prefix):
        return path
    suffix = path.name.split(".", 1)[1] if "." in path.name else ""
    target = path.with_name(prefix + suffix)
    if path.exists():
        os.rename(path, target)
        fsutil.fsync_dir(path.parent)
    row = store.get("volumes", *ident)
    if row is not None:
        grow = row["max_size"]
        if target.is_file() and suffix in ("qcow2", "raw") and grow > qemu.image_info(target, suffix).virtual_size:
            qemu.resize(target, suffix, grow)  # the controller's volume is bigger than the drive was
        store.update("volumes", ident, path=str(target))
    return target


def _implicit_row(store: StateStore, uuid: str) -> dict[str, Any] | None:
    """The generation of implicit volume ``uuid`` that exists on disk (the newest, if several)."""
    rows = [r for r in store.all("volumes") if r["uuid"] == uuid and r["path"] and Path(r["path"]).exists()]
    return max(rows, key=lambda r: r["generation"]) if rows else None


def _mismatch(old: dict[str, Any], v: Volume) -> str:
    """Why the implicit volume cannot become ``v`` as it is; "" when it can."""
    if bool(old["readonly"]) != v.readonly:
        return f"it is {'read-only' if old['readonly'] else 'writable'} and the volume is not"
    if v.max_size_bytes and v.max_size_bytes < old["max_size"]:
        return f"it holds {old['max_size']} bytes, more than the volume's maxsizebytes {v.max_size_bytes}"
    return ""
