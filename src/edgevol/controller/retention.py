"""Retention runs beside the controller, never on a device's request.

Why a thread of its own: deleting old metrics and history can take seconds
on a large fleet, and a device's post must not wait for it. The store's reads
apply the same limits, so how late this runs changes disk use, not answers.
"""

from __future__ import annotations

import threading

from edgevol.controller.store import ControllerStore
from edgevol.log import get_logger

log = get_logger("edgevol.controller.retention")

PRUNE_INTERVAL_S = 300.0


class Pruner:
    def __init__(self, store: ControllerStore, interval_s: float = PRUNE_INTERVAL_S) -> None:
        self.store = store
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None and self.interval_s > 0:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="retention", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        thread, self._thread = self._thread, None
        if thread is not None:
            self._stop.set()
            thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                removed = self.store.prune()
            except Exception as exc:  # noqa: BLE001 - retried at the next interval
                log.warning("retention pass failed", error=str(exc))
                continue
            if any(removed.values()):
                log.info("retention pass", **removed)
