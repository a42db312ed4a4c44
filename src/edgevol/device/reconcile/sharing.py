"""A warning on a writable file volume that more than one app uses.

EVE's volumemgr flags it (pkg/pillar/cmd/volumemgr/handlevolumeref.go:250-263,
``checkReferences``): "Multiple app instances (N) are trying to use the same
file-based volume NAME", when the volume's refCount (the config's own
reference plus one per app) is above 2 and the volume is neither a container
(directory) volume nor read-only. Two guests writing one disk image race and
corrupt it; a read-only volume or a directory can be shared.

Where EVE puts it: on each app's volume ref, so it reaches the apps' appErr,
with the default severity ERROR (pkg/pillar/types/errortime.go:104), and only
for apps not running yet. edgevol runs no apps: it reports the sharing as a
WARNING on the volume itself (``ZInfoVolume.volumeErr``) and, through the
volume's errors, in each user's ``appErr``. The volume is fine and exactly as
configured, so it is not in ERROR and ``device run --once`` does not fail for
it. The warning goes as soon as only one app uses the volume.

It is kept in the volume row's ``warning`` column, apart from ``error``, which
the reconcile pass rewrites on every pass: so the warning keeps its time and
the volume's report does not change while nothing does. On the wire the
volume's own error, when it has one, goes first (report/info.py, ``volume_error``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgevol.device.errors import error, standing
from edgevol.device.state import StateStore
from edgevol.model.desired import DesiredState, ObjectKind


def flag_shared_volumes(store: StateStore, d: DesiredState, refs_by_app: dict[str, list[list[Any]]]) -> None:
    """Set or clear the warning of every volume generation from the apps' refs (app uuid -> [[uuid, gen]])."""
    users: dict[tuple[str, int], list[str]] = {}
    for app_uuid, refs in refs_by_app.items():
        for uuid, generation in refs:
            users.setdefault((uuid, generation), []).append(app_uuid)
    for row in store.all("volumes"):
        ident = (row["uuid"], row["generation"])
        apps = users.get(ident, [])
        warning = None
        if len(apps) > 1 and not row["readonly"] and _file_based(row, d):
            names = ", ".join(sorted((d.apps[a].display_name if a in d.apps else "") or a for a in apps))
            warning = standing(row["warning"], error(
                f"Multiple app instances ({len(apps)}) are trying to use the same file-based volume "
                f"{row['display_name']}: apps {names} would write to one disk image with nothing to keep them "
                "apart; share a read-only or a directory volume instead, or give each app its own volume",
                ObjectKind.VOLUME, row["uuid"], row["display_name"], severity="warning",
                retry="goes away once only one app uses the volume"))
        if warning is not None or row["warning"] is not None:
            store.update("volumes", ident, warning=warning)


def _file_based(row: dict[str, Any], d: DesiredState) -> bool:
    """A disk image file (qcow2/raw), not a directory; a blank volume is only known once created."""
    if row["path"]:
        return not Path(row["path"]).is_dir()
    v = d.volumes.get(row["uuid"])
    if v is None or v.generation != row["generation"] or v.content_tree_id is None:
        return False  # a blank volume becomes a file or a directory by the apps using it, when created
    tree = d.content_trees.get(v.content_tree_id)
    return tree is not None and not tree.format.manifested
