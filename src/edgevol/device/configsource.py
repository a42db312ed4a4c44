"""Where the device's config comes from, and the checkpoint that outlives a bad one.

A config file that cannot be decoded never replaces the last good one: the
device keeps running from the checkpoint (written atomically whenever a
config decodes cleanly) and says why in its status.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from edgevol.api.codec import ConfigDecodeError, decode_edge_dev_config, load_edge_dev_config
from edgevol.fsutil import atomic_write_bytes
from edgevol.log import get_logger
from edgevol.model.desired import DesiredState
from edgevol.model.parse import parse_config

log = get_logger("edgevol.config")


class ConfigSource:
    def __init__(self, path: Path | None, checkpoint: Path) -> None:
        self.path = path
        self.checkpoint = checkpoint
        self.error: str | None = None
        self._seen: tuple[int, int] | None = None
        self._digest: str | None = None
        self._unsaved: bytes | None = None  # a config applied but not yet checkpointed

    def _from_checkpoint(self) -> DesiredState | None:
        if not self.checkpoint.exists():
            return None
        try:
            cfg = decode_edge_dev_config(self.checkpoint.read_bytes(), "binary", source=str(self.checkpoint))
        except ConfigDecodeError as exc:
            log.error("checkpointed config is unreadable", error=str(exc))
            return None
        log.info("using checkpointed config", path=str(self.checkpoint))
        return parse_config(cfg)

    def poll(self) -> DesiredState | None:
        """A new desired state when the source changed (or on the first call), else ``None``."""
        first = self._digest is None and self._seen is None
        self._save_checkpoint(None)
        if self.path is None:
            if first:
                self._seen = (0, 0)
                return self._from_checkpoint()
            return None
        try:
            st = self.path.stat()
            seen = (st.st_mtime_ns, st.st_size)
        except OSError as exc:
            seen = None
            self.error = f"{self.path}: {exc.strerror or exc}"
        if seen is not None and seen == self._seen:
            return None
        self._seen = seen
        try:
            cfg = load_edge_dev_config(self.path, ignore_unknown_json_fields=True)
        except ConfigDecodeError as exc:
            self.error = str(exc)
            log.error("config rejected; keeping the last good one", error=self.error)
            return self._from_checkpoint() if first else None
        data = cfg.SerializeToString(deterministic=True)
        digest = hashlib.sha256(data).hexdigest()
        self.error = None
        if digest == self._digest:
            return None
        self._digest = digest
        self._save_checkpoint(data)
        log.info("config applied", path=str(self.path), sha256=digest[:12])
        return parse_config(cfg)

    def _save_checkpoint(self, data: bytes | None) -> None:
        """Checkpoint ``data`` (or retry an earlier one that failed, e.g. on a full disk).

        A failed checkpoint must not lose the config: it is applied anyway and written on a later poll.
        """
        data = data if data is not None else self._unsaved
        if data is None:
            return
        try:
            atomic_write_bytes(self.checkpoint, data, mode=0o600)
        except OSError as exc:
            if self._unsaved is None:
                log.warning("cannot checkpoint the config; applying it anyway", error=exc.strerror or str(exc))
            self._unsaved = data
            return
        self._unsaved = None
