"""Create one volume (blank, or from a loaded content tree) and record the result."""

from __future__ import annotations

import errno
import time
from pathlib import Path
from typing import Any, Callable

import structlog

from edgevol.api import messages as m
from edgevol.device.cas import ContentStore
from edgevol.device.errors import error
from edgevol.device.state import StateStore
from edgevol.device.volumes import FileVolumes, VolumeError
from edgevol.model.desired import ContentTree, ObjectKind, Settings, Volume

log = structlog.get_logger("edgevol.volumes")
S = m.ZSwState


class VolumeBuilder:
    def __init__(self, store: StateStore, cas: ContentStore, files: FileVolumes,
                 on_failure: Callable[[str], None]) -> None:
        self.store = store
        self.cas = cas
        self.files = files
        self.on_failure = on_failure

    def create(self, key: str, v: Volume, tree: ContentTree | None, settings: Settings) -> None:
        ident = (v.uuid, v.generation)
        self.store.update("volumes", ident, state=S.CREATING_VOLUME, progress=0, error=None)
        try:
            if tree is None:
                path = self.files.create_blank(v.uuid, v.generation, v.max_size_bytes,
                                               fmt=settings.blank_format.value, readonly=v.readonly)
            else:
                assert tree.sha256 is not None
                last = [-1]

                def progress(pct: float) -> None:
                    if int(pct) != last[0]:
                        last[0] = int(pct)
                        self.store.update("volumes", ident, progress=min(99, int(pct)))

                path = self.files.create_from_image(v.uuid, v.generation, self.cas.blob_path(tree.sha256),
                                                    tree.format.value, v.max_size_bytes, readonly=v.readonly,
                                                    progress=progress)
        except (VolumeError, OSError) as exc:
            nospace = isinstance(exc, OSError) and exc.errno == errno.ENOSPC
            desc = "no space left on the device" if nospace else str(exc)
            slow = settings.slow_retry_seconds
            log.error("volume creation failed", volume=key, error=desc)
            self.on_failure(key)
            self.store.update("volumes", ident, state=S.ERROR, progress=0, next_retry=time.time() + slow,
                              error=error(f"creating volume: {desc}", ObjectKind.VOLUME, v.uuid, v.display_name,
                                          retry=("free disk space; " if nospace else "") + f"retried in {slow:.0f}s"))
            return
        spec = {"origin": v.origin.value, "content_tree": v.content_tree_id, "max_size": v.max_size_bytes,
                "readonly": v.readonly}
        self.record_created(ident, path, spec)
        log.info("volume created", volume=key, path=str(path))

    def record_created(self, ident: tuple[str, int], path: Path, spec: dict[str, Any]) -> None:
        usage = self.files.usage(path)
        self.store.update("volumes", ident, state=S.CREATED_VOLUME, progress=100, path=str(path),
                          max_size=usage.virtual_size, cur_size=usage.allocated, next_retry=0, error=None, spec=spec)
