"""Legacy ``Drive``s of an app instance become implicit volumes.

Why: during the transition to explicit volumes a controller may still describe
an app's disks the old way, as ``AppInstanceConfig.drives`` (an ``Image`` plus
drive attributes) with no ``volumeRefList``. The device turns each drive into
an ordinary :class:`Volume` (and its image into a :class:`ContentTree`) so the
rest of the device only ever deals with volumes.

Rules:

* Only an app with ``drives`` and *no* ``volumeRefList`` gets implicit volumes.
  When both are sent (transition phases 1 and 2) ``volumeRefList`` wins: the
  drives make no volumes, but each one names the controller's volume that
  takes over its implicit volume (see *Adoption* below).
* An implicit volume is identified by (app instance UUID, image UUID) and gets
  a deterministic UUID a controller can compute too::

      uuid5(IMPLICIT_VOLUME_NAMESPACE, f"{app_uuid}/{image_uuid}")

  with ``IMPLICIT_VOLUME_NAMESPACE = ff3672c4-c04f-4ed5-8993-4b5fc4f309b7`` and
  both UUIDs in canonical lowercase 8-4-4-4-12 form. For example app
  ``11111111-2222-3333-4444-555555555555`` with image
  ``66666666-7777-8888-9999-aaaaaaaaaaaa`` gives volume
  ``470abbe1-7286-5b8a-b116-e3d0d8deb6f6``. An HDD_EMPTY drive without an image
  uses ``f"{app_uuid}/blank-{index}"`` (index: the drive's 0-based position).
* Its generation is the app's purge counter, so a purge of a drive-based app
  regenerates its drives the way a purge regenerates explicit volumes (the old
  generation serves until the new one is ready). A drive with ``preserve``
  always has generation 0: a purge keeps it and its data.
* *Adoption* (phase 2: the controller sends the drives and, for the same app,
  volumes with UUIDs it allocated). Each drive is matched to one of the app's
  referenced volumes: a drive with an image to a DOWNLOAD volume from the
  content tree with the image's UUID; an HDD_EMPTY drive to a BLANK volume,
  the one at the drive's position in ``volumeRefList`` if it is BLANK, else
  the first BLANK one left. The matched volume's ``adopts`` names the drive's
  implicit volume; the device renames that volume, data and all, to the
  controller's UUID instead of creating an empty one. A volume is matched to
  one drive at most.
* HDD_EMPTY makes a BLANK volume of ``maxsizebytes``; every other drive type
  makes a DOWNLOAD volume from the image, whose content tree is built from the
  image (uuid, dsId, name as URL and display name, sha256, iformat, sizeBytes as
  maxSizeBytes) and validated exactly like a ``contentInfo`` entry. When the
  config also lists a content tree with the image's UUID, that one is used, and
  an image that disagrees with it on sha256 or URL is an error.
* Two apps using the same image share one content tree; drives describing the
  same image UUID differently refuse every app involved (neither copy can be
  trusted, as with duplicate ids elsewhere).
* A bad drive refuses its app as a whole, with an app error naming the drive.
"""

from __future__ import annotations

import dataclasses
import uuid as uuidlib
from dataclasses import dataclass
from typing import Any, Iterable

from edgevol.api import messages as m
from edgevol.model.desired import (
    ContentTree,
    DesiredState,
    ObjectError,
    ObjectKind,
    Volume,
    VolumeOrigin,
    VolumeRef,
)
from edgevol.model.parse import Invalid, _parse_content_tree, canonical_sha256, canonical_uuid, check_size

IMPLICIT_VOLUME_NAMESPACE = uuidlib.UUID("ff3672c4-c04f-4ed5-8993-4b5fc4f309b7")

# Wire DriveType numbers (org.lfedge.eve.config).
_DRIVE_TYPES = {0: "Unclassified", 1: "CDROM", 2: "HDD", 3: "NET", 4: "HDD_EMPTY"}
_HDD_EMPTY = 4


def implicit_volume_uuid(app_uuid: str, image_key: str) -> str:
    """The volume UUID for an app's drive; ``image_key`` is the image UUID (or ``blank-<index>``)."""
    return str(uuidlib.uuid5(IMPLICIT_VOLUME_NAMESPACE, f"{app_uuid}/{image_key}"))


def implicit_generation(app_purge_counter: int, preserve: bool) -> int:
    """An implicit volume follows its app's purge counter, unless its drive is to be preserved."""
    return 0 if preserve else app_purge_counter


def _drive_key(drive: Any, index: int) -> str:
    """The image UUID a drive's implicit volume is named by, or ``blank-<index>`` for an empty drive without one.

    Raises :class:`Invalid` for an image UUID that is not one.
    """
    has_image = drive.HasField("image") and bool(drive.image.uuidandversion.uuid)
    if has_image:
        return canonical_uuid(drive.image.uuidandversion.uuid, "image uuid")
    return f"blank-{index}"


def _plan_adoptions(app_id: str, app: Any, state: DesiredState, adopted: set[str]) -> None:
    """Phase 2: point each of the app's drives at the controller's volume that replaces it (``Volume.adopts``)."""
    refs = [r.uuid for r in state.apps[app_id].volume_refs]
    free = [u for u in dict.fromkeys(refs) if u in state.volumes and not state.volumes[u].implicit
            and u not in adopted]
    for index, drive in enumerate(app.drives):
        try:
            key = _drive_key(drive, index)
        except Invalid:
            continue  # nothing to adopt from a drive that never made a volume
        if drive.drvtype == _HDD_EMPTY:
            blank = [u for u in free if state.volumes[u].origin is VolumeOrigin.BLANK]
            at_index = refs[index] if index < len(refs) else None
            pick = at_index if at_index in blank else next(iter(blank), None)
        else:
            pick = next((u for u in free if state.volumes[u].origin is VolumeOrigin.DOWNLOAD
                         and state.volumes[u].content_tree_id == key), None)
        if pick is None:
            continue
        free.remove(pick)
        adopted.add(pick)
        implicit = implicit_volume_uuid(app_id, key)
        if implicit != pick:  # a controller that reused the implicit UUID needs no adoption
            state.volumes[pick] = dataclasses.replace(state.volumes[pick], adopts=implicit)


@dataclass(frozen=True)
class _Planned:
    """One drive turned into a volume, and the content tree it adds (None: blank, or an explicit tree)."""

    volume: Volume
    tree: ContentTree | None


def add_implicit_volumes(apps: Iterable[Any], state: DesiredState, bad_ds: dict[str, str],
                         bad_trees: dict[str, str]) -> None:
    """Give every valid drives-only app its implicit volumes, or refuse it with an app error.

    Runs after the explicit objects and apps are parsed: it only adds to
    ``state`` (content trees, volumes, the apps' volume refs, errors).
    """
    plans: dict[str, list[_Planned]] = {}
    adopted: set[str] = set()
    for app in apps:
        if not app.drives:
            continue
        try:
            app_id = canonical_uuid(app.uuidandversion.uuid)
        except Invalid:
            continue  # the app parser already refused it
        if app_id not in state.apps:
            continue  # refused (a duplicate id, say): it gets no volumes
        if app.volumeRefList:
            _plan_adoptions(app_id, app, state, adopted)
            continue
        try:
            plans[app_id] = _plan_app(app_id, app, state, bad_ds, bad_trees)
        except Invalid as exc:
            _refuse(state, app_id, str(exc))
    conflicting = _conflicting_trees(plans)
    for app_id, planned in plans.items():
        clash = next(((i, p.tree.uuid) for i, p in enumerate(planned) if p.tree and p.tree.uuid in conflicting),
                     None)
        if clash is not None:
            _refuse(state, app_id, f"drive {clash[0]}: image {clash[1]} is described differently by another "
                                   "drive (datastore, name, sha256, format or size)")
            continue
        for p in planned:
            if p.tree is not None:
                state.content_trees.setdefault(p.tree.uuid, p.tree)
            state.volumes[p.volume.uuid] = p.volume
        refs = tuple(VolumeRef(p.volume.uuid, p.volume.generation) for p in planned)
        state.apps[app_id] = dataclasses.replace(state.apps[app_id], volume_refs=refs)


def _refuse(state: DesiredState, app_id: str, message: str) -> None:
    app = state.apps.pop(app_id)
    state.errors.append(ObjectError(ObjectKind.APP, app_id, message, name=app.display_name))


def _plan_app(app_id: str, app: Any, state: DesiredState, bad_ds: dict[str, str],
              bad_trees: dict[str, str]) -> list[_Planned]:
    taken = {e.object_id for e in state.errors if e.kind is ObjectKind.VOLUME} | set(state.volumes)
    seen: dict[str, int] = {}
    planned: list[_Planned] = []
    for index, drive in enumerate(app.drives):
        try:
            p = _plan_drive(app_id, app.displayname, app.purge.counter, index, drive, state, bad_ds, bad_trees)
        except Invalid as exc:
            raise Invalid(f"drive {index}: {exc}") from None
        vol = p.volume
        if vol.uuid in seen:
            raise Invalid(f"drive {index}: image {vol.image_uuid} is also drive {seen[vol.uuid]}; an implicit "
                          "volume is identified by app and image, so an app may use an image once")
        if vol.uuid in taken:
            raise Invalid(f"drive {index}: implicit volume {vol.uuid} is also a volume in the config; "
                          "name it in volumeRefList instead of sending the drive")
        seen[vol.uuid] = index
        planned.append(p)
    return planned


def _plan_drive(app_id: str, app_name: str, app_purge: int, index: int, drive: Any, state: DesiredState,
                bad_ds: dict[str, str], bad_trees: dict[str, str]) -> _Planned:
    if drive.drvtype not in _DRIVE_TYPES:
        raise Invalid(f"drvtype {drive.drvtype} is unknown")
    size = check_size(drive.maxsizebytes, "maxsizebytes")
    image = drive.image
    has_image = drive.HasField("image") and bool(image.uuidandversion.uuid)
    image_id = canonical_uuid(image.uuidandversion.uuid, "image uuid") if has_image else ""
    tree: ContentTree | None = None
    new = False
    if drive.drvtype == _HDD_EMPTY:
        if size == 0:
            raise Invalid("an HDD_EMPTY drive needs maxsizebytes > 0")
        origin, key = VolumeOrigin.BLANK, _drive_key(drive, index)
    else:
        if not has_image:
            raise Invalid(f"a {_DRIVE_TYPES[drive.drvtype]} drive needs an image (only HDD_EMPTY may omit it)")
        try:
            tree, new = _image_tree(image, image_id, state, bad_ds, bad_trees)
        except Invalid as exc:
            raise Invalid(f"image {image_id}: {exc}") from None
        origin, key = VolumeOrigin.DOWNLOAD, image_id
    shown = image.name if has_image and image.name else "blank"
    vol = Volume(uuid=implicit_volume_uuid(app_id, key), generation=implicit_generation(app_purge, drive.preserve),
                 origin=origin,
                 content_tree_id=tree.uuid if tree else None, max_size_bytes=size, readonly=drive.readonly,
                 display_name=f"{app_name}/{shown}", preserve=drive.preserve, app_uuid=app_id,
                 image_uuid=image_id)
    return _Planned(vol, tree if new else None)


def _image_tree(image: Any, image_id: str, state: DesiredState, bad_ds: dict[str, str],
                bad_trees: dict[str, str]) -> tuple[ContentTree, bool]:
    """The content tree for a drive's image, and whether it is new (not an explicit contentInfo)."""
    if image_id in bad_trees:
        raise Invalid(f"content tree {image_id} is invalid: {bad_trees[image_id]}")
    explicit = state.content_trees.get(image_id)
    if explicit is not None:
        sha = canonical_sha256(image.sha256)
        if sha != explicit.sha256 or image.name != explicit.url:
            raise Invalid(f"disagrees with content tree {image_id} of the config (sha256 {sha} vs "
                          f"{explicit.sha256}, URL {image.name!r} vs {explicit.url!r})")
        return explicit, False
    as_tree = m.ContentTree(
        uuid=image_id, dsId=image.dsId, URL=image.name, iformat=image.iformat, sha256=image.sha256,
        maxSizeBytes=check_size(image.sizeBytes, "sizeBytes"), displayName=image.name, siginfo=image.siginfo)
    return _parse_content_tree(as_tree, state.datastores, bad_ds, state.settings.require_signatures), True


def _conflicting_trees(plans: dict[str, list[_Planned]]) -> set[str]:
    """Image UUIDs that drives describe in more than one way."""
    first: dict[str, ContentTree] = {}
    bad: set[str] = set()
    for planned in plans.values():
        for p in planned:
            if p.tree is None:
                continue
            if first.setdefault(p.tree.uuid, p.tree) != p.tree:
                bad.add(p.tree.uuid)
    return bad
