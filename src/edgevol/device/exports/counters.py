"""Counters "since boot": a persisted base per export plus what the live daemon has counted.

A daemon's own counts start at zero each time it starts, so the engine keeps,
per (uuid, generation), the total reached so far in ``counters.json`` (atomic
write) tagged with the kernel's boot id. A new boot id means the device
rebooted: every base starts again from zero. The same boot id (agent restart,
export stopped and started again) continues from the stored totals.

What is lost: I/O done after the last persist when the agent itself dies
(the daemons die with it), at most one reconcile pass's worth.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from edgevol.fsutil import atomic_write_bytes
from edgevol.log import get_logger

from .spec import Counters

log = get_logger(__name__)

Key = tuple[str, int]
BOOT_ID_FILE = Path("/proc/sys/kernel/random/boot_id")


def current_boot_id() -> str:
    return BOOT_ID_FILE.read_text().strip()


def _name(key: Key) -> str:
    return f"{key[0]}/{key[1]}"


class CounterStore:
    """Per-export totals of the current boot, persisted only when they changed."""

    def __init__(self, path: Path, boot_id: str) -> None:
        self.path = path
        self.boot_id = boot_id
        self._saved: dict[str, Counters] = {}
        self._load()
        self._pending = dict(self._saved)

    def _load(self) -> None:
        try:
            doc = json.loads(self.path.read_bytes())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.warning("export counters unreadable, starting from zero", path=str(self.path), error=str(exc))
            return
        if doc.get("boot_id") != self.boot_id:
            log.info("device rebooted: export counters reset", old_boot=doc.get("boot_id"), boot=self.boot_id)
            return
        for name, c in (doc.get("exports") or {}).items():
            try:
                self._saved[name] = Counters(**{k: int(v) for k, v in c.items()})
            except (TypeError, ValueError):
                log.warning("export counters entry ignored", export=name)

    def base(self, key: Key) -> Counters:
        """The total this export had reached before its current daemon started."""
        return self._pending.get(_name(key), Counters())

    def record(self, key: Key, total: Counters) -> None:
        self._pending[_name(key)] = total

    def flush(self) -> None:
        if self._pending == self._saved:
            return
        doc = {"boot_id": self.boot_id, "exports": {n: asdict(c) for n, c in sorted(self._pending.items())}}
        atomic_write_bytes(self.path, json.dumps(doc, indent=1).encode(), mode=0o600)
        self._saved = dict(self._pending)

    def stored(self, key: Key) -> Counters | None:
        return self._pending.get(_name(key))
