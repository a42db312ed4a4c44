"""Create one volume (blank, from a disk image, or from a container image) and record the result."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from edgevol.log import get_logger
from edgevol import fsutil
from edgevol.api import messages as m
from edgevol.device.cas import ContentStore
from edgevol.device.crashpoints import crash_point
from edgevol.device.errors import error, slow_retry
from edgevol.device.space import disk_full
from edgevol.device.state import StateStore
from edgevol.device.volumes import FileVolumes, VolumeError, VolumeUsage
from edgevol.device.volumes.directories import DirectoryVolumes
from edgevol.device.volumes.files import CLONABLE
from edgevol.device.volumes.qemu import QemuImgError
from edgevol.model.desired import ContentTree, ImageFormat, ObjectKind, Settings, Volume, VolumeClone

log = get_logger("edgevol.volumes")
S = m.ZSwState
MAX_IMAGE_CONFIG = 16 << 20  # an image config is JSON metadata; anything bigger is hostile


def _out_of_space(exc: BaseException) -> bool:
    """A full disk anywhere in the chain: our own writes, an unpacked entry, or qemu-img's report of it."""
    cur: BaseException | None = exc
    while cur is not None:
        if disk_full(cur) or (isinstance(cur, QemuImgError) and "No space left on device" in cur.stderr):
            return True
        cur = cur.__cause__
    return False


def volume_spec(v: Volume) -> dict[str, Any]:
    """The settings that fix a volume's content; changing one needs a new generation."""
    return {"origin": v.origin.value, "content_tree": v.content_tree_id, "max_size": v.max_size_bytes,
            "readonly": v.readonly}


class VolumeBuilder:
    def __init__(self, store: StateStore, cas: ContentStore, files: FileVolumes, dirs: DirectoryVolumes,
                 on_failure: Callable[[str], None]) -> None:
        self.store = store
        self.cas = cas
        self.files = files
        self.dirs = dirs
        self.on_failure = on_failure

    def find(self, uuid: str, generation: int) -> Path | None:
        return self.files.find(uuid, generation) or self.dirs.find(uuid, generation)

    def on_disk(self) -> dict[tuple[str, int], Path]:
        """Every complete volume in the volumes directory, file or directory, by (uuid, generation)."""
        found = {(uuid, gen): path for uuid, gen, _fmt, path in self.files.list()}
        found.update(self.dirs.list())
        return found

    def delete(self, uuid: str, generation: int, path: str | None) -> None:
        """Remove a volume, at the ``path`` its row records when that is its own name, else whatever it left
        under any of its names. The directory is not synced here: :meth:`sync_deletions` does, once for many."""
        recorded = Path(path) if path else None
        if recorded is not None and recorded.parent == self.files.root \
                and recorded.name.startswith(f"{uuid}#{generation}."):
            if recorded.is_dir():
                fsutil.remove_tree(recorded)
            else:
                recorded.unlink(missing_ok=True)
            return
        self.files.delete(uuid, generation)
        self.dirs.delete(uuid, generation)

    def sync_deletions(self) -> None:
        fsutil.fsync_dir(self.files.root)

    def usage(self, path: Path, max_size: int) -> VolumeUsage:
        return self.dirs.usage(path, max_size) if path.is_dir() else self.files.usage(path)

    def allocated(self, path: Path) -> int:
        """Host bytes a volume uses (its curSize), without asking qemu-img for the guest's size."""
        return self.dirs.usage(path, 0).allocated if path.is_dir() else path.stat().st_blocks * 512

    def create(self, key: str, v: Volume, tree: ContentTree | None, settings: Settings, directory: bool,
               once: bool) -> None:
        """Build the volume; ``directory`` picks an empty directory for a blank volume of a container app."""
        ident = (v.uuid, v.generation)
        clone = (tree is not None and settings.volume_clone is VolumeClone.BACKING
                 and tree.format.value in CLONABLE)
        # progress stays where the download left it (the store never lowers it): see state._keep_progress.
        # A clone pins its blob before the overlay exists, so no crash leaves a clone whose backing GC may take.
        pin = {"backing_blob": tree.sha256} if clone and tree is not None else {}
        self.store.update("volumes", ident, state=S.CREATING_VOLUME, error=None, **pin)
        last = [-1]

        def progress(pct: float) -> None:
            if int(pct) != last[0]:
                last[0] = int(pct)
                self.store.update_progress("volumes", ident, progress=min(99, int(pct)))

        try:
            if tree is None and directory:
                path = self.dirs.create_blank(v.uuid, v.generation, readonly=v.readonly)
            elif tree is None:
                path = self.files.create_blank(v.uuid, v.generation, v.max_size_bytes,
                                               fmt=settings.blank_format.value, readonly=v.readonly)
            elif tree.format is ImageFormat.CONTAINER:
                path = self._unpack(v, tree, lambda done, total: progress(done * 100 / max(total, 1)))
            elif tree.format is ImageFormat.BLOB_TREE:
                path = self._blob_tree(v, tree)
            else:
                assert tree.sha256 is not None
                path = self.files.create_from_image(v.uuid, v.generation, self.cas.blob_path(tree.sha256),
                                                    tree.format.value, v.max_size_bytes, readonly=v.readonly,
                                                    progress=progress, backing=clone)
        except (VolumeError, OSError) as exc:
            nospace = _out_of_space(exc)
            desc = "no space left on the device" if nospace else str(exc)
            slow = settings.slow_retry_seconds
            log.error("volume creation failed", volume=key, error=str(exc))
            if self.find(*ident) is None:  # no overlay was made: the blob is pinned by nothing but its tree
                self.store.update("volumes", ident, backing_blob=None)
            self.on_failure(key)
            self.store.update("volumes", ident, state=S.ERROR, next_retry=time.time() + slow,
                              error=error(f"creating volume: {desc}", ObjectKind.VOLUME, v.uuid, v.display_name,
                                          retry=slow_retry(None, slow, once, "free disk space" if nospace else "")))
            return
        crash_point("volume.committed")
        self.record_created(ident, path, volume_spec(v))
        log.info("volume created", volume=key, path=str(path))

    def _unpack(self, v: Volume, tree: ContentTree, progress: Callable[[int, int], None]) -> Path:
        row = self.store.get("content_trees", tree.uuid)
        if row is None or not row["layout"]:
            raise VolumeError(f"content tree {tree.uuid} has no resolved image")
        layout = row["layout"]
        config = layout["config"]
        if config["size"] > MAX_IMAGE_CONFIG:
            raise VolumeError(f"image config {config['digest'][:12]} is {config['size']} bytes; refusing it")
        layers = [(self.cas.blob_path(layer["digest"]), layer["media_type"], f"sha256:{layer['digest']}")
                  for layer in layout["layers"]]
        return self.dirs.create_from_layers(v.uuid, v.generation, layers,
                                            self.cas.blob_path(config["digest"]).read_bytes(),
                                            v.max_size_bytes or None, progress, readonly=v.readonly)

    def _blob_tree(self, v: Volume, tree: ContentTree) -> Path:
        """A directory of the artifact's files, each copied from its verified CAS blob under its title."""
        row = self.store.get("content_trees", tree.uuid)
        if row is None or not row["layout"]:
            raise VolumeError(f"content tree {tree.uuid} has no resolved artifact")
        files = [(blob["title"], self.cas.blob_path(blob["digest"])) for blob in row["layout"]["layers"]]
        return self.dirs.create_from_files(v.uuid, v.generation, files, readonly=v.readonly)

    def record_created(self, ident: tuple[str, int], path: Path, spec: dict[str, Any]) -> None:
        """The volume exists: its createTime is now, as EVE stamps it on CREATED_VOLUME
        (pkg/pillar/cmd/volumemgr/handlevolume.go). maxSizeBytes stays the configured value; only a
        volume configured with 0 (a DOWNLOAD volume sized by its image) reports what it actually is,
        as EVE fills MaxVolSize from the created volume when the config left it 0 (same file)."""
        usage = self.usage(path, spec["max_size"])
        self.store.update("volumes", ident, state=S.CREATED_VOLUME, progress=100, path=str(path),
                          max_size=spec["max_size"] or usage.virtual_size, cur_size=usage.allocated,
                          create_time=time.time(), next_retry=0, error=None, spec=spec,
                          backing_blob=self.backing_blob(path))

    def backing_blob(self, path: Path) -> str | None:
        """sha256 of the CAS blob a clone volume reads through to, read from the volume file itself (so a
        volume adopted after a crash pins the right blob); None for a volume that stands alone."""
        if path.is_dir():
            return None
        backing = self.files.backing_of(path)
        if backing is None:
            return None
        if backing.parent != self.cas.blobs_dir:
            # edgevol only ever makes overlays on CAS blobs; anything else is not ours to pin
            log.warning("volume has a backing file outside the content store", path=str(path),
                        backing=str(backing))
            return None
        return backing.name
