"""Online mode: register once, poll config, deliver the info outbox and metrics.

Runs in background threads beside the reconciler. The device never depends
on the controller being up: it starts from the checkpointed config, keeps its
volumes, and the outbox (in SQLite) holds info until the controller accepts
it, across restarts; newer info for an object replaces older unsent info.
"""

from __future__ import annotations

import hashlib
import random
import threading
from dataclasses import dataclass
from pathlib import Path

import structlog

from edgevol.api.codec import ConfigDecodeError, decode_edge_dev_config
from edgevol.device.retry import Backoff
from edgevol.device.state import StateStore
from edgevol.device.uplink.client import ControllerClient, ControllerError
from edgevol.device.uplink.metrics import volume_metrics
from edgevol.fsutil import atomic_write_bytes
from edgevol.model.desired import DesiredState
from edgevol.model.parse import parse_config
from edgevol.trust.pki import Credential

log = structlog.get_logger("edgevol.uplink")


@dataclass(frozen=True)
class UplinkOptions:
    serial: str
    poll_interval: float = 10.0
    metrics_interval: float = 60.0
    info_retry_cap: float = 60.0


class Uplink:
    def __init__(self, client: ControllerClient, store: StateStore, onboarding: Credential, checkpoint: Path,
                 options: UplinkOptions) -> None:
        self.client = client
        self.store = store
        self.onboarding = onboarding
        self.checkpoint = checkpoint
        self.options = options
        self.error: str | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._pending: DesiredState | None = None
        self._threads: list[threading.Thread] = []
        self.outbox_wake = threading.Event()

    @property
    def device_uuid(self) -> str | None:
        return self.store.meta_get("device_uuid")

    # -- lifecycle ------------------------------------------------------------
    def start(self) -> None:
        self._load_checkpoint()
        for name, fn in (("config", self._config_loop), ("info", self._info_loop), ("metrics", self._metrics_loop)):
            t = threading.Thread(target=fn, name=f"edgevol-uplink-{name}", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        self.outbox_wake.set()
        for t in self._threads:
            t.join(timeout=20)
        self.client.close()

    def poll(self) -> DesiredState | None:
        """The newest config not yet handed to the agent, if any."""
        with self._lock:
            pending, self._pending = self._pending, None
        return pending

    def _offer(self, desired: DesiredState) -> None:
        with self._lock:
            self._pending = desired

    def _load_checkpoint(self) -> None:
        if not self.checkpoint.exists():
            return
        try:
            cfg = decode_edge_dev_config(self.checkpoint.read_bytes(), "binary", source=str(self.checkpoint))
        except ConfigDecodeError as exc:
            log.error("checkpointed config is unreadable", error=str(exc))
            return
        log.info("starting from the checkpointed config", path=str(self.checkpoint))
        self._offer(parse_config(cfg))

    # -- config -----------------------------------------------------------------
    def _config_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._sync_config()
                if self.error is not None:
                    # The controller is back: deliver queued info now, not when the info backoff
                    # (up to info_retry_cap) happens to expire.
                    self.outbox_wake.set()
                self.error = None
            except ControllerError as exc:
                if self.error != str(exc):
                    log.warning("controller unreachable or refusing; working from the last config", error=str(exc))
                self.error = str(exc)
            jitter = random.uniform(0.8, 1.2)
            self._stop.wait(self.options.poll_interval * jitter)

    def _sync_config(self) -> None:
        if self.store.meta_get("registered") != "1":
            status = self.client.register(self.onboarding, self.options.serial)
            log.info("registered with the controller", status=status)
            self.store.meta_set("registered", "1")
        resp = self.client.config(self.device_uuid, self.store.meta_get("config_hash") or "")
        if resp is None:
            return
        cfg = resp.config
        data = cfg.SerializeToString(deterministic=True)
        if cfg.id.uuid and cfg.id.uuid != self.device_uuid:
            self.store.meta_set("device_uuid", cfg.id.uuid)
            self.outbox_wake.set()
        atomic_write_bytes(self.checkpoint, data, mode=0o600)
        self.store.meta_set("config_hash", resp.configHash or hashlib.sha256(data).hexdigest())
        log.info("config received", version=cfg.id.version, volumes=len(cfg.volumes),
                 content_trees=len(cfg.contentInfo))
        self._offer(parse_config(cfg))

    # -- info -------------------------------------------------------------------
    def _info_loop(self) -> None:
        backoff = Backoff(base=1.0, cap=self.options.info_retry_cap, max_attempts=1 << 30)
        failures = 0
        while not self._stop.is_set():
            delay = 1.0
            uuid = self.device_uuid
            if uuid:
                try:
                    for key, seq, payload in self.store.outbox_items():
                        if self._stop.is_set():
                            break
                        self.client.post(uuid, "info", payload)
                        self.store.outbox_ack(key, seq)
                    failures = 0
                except ControllerError as exc:
                    failures += 1
                    delay = backoff.delay(failures)
                    log.info("info delivery failed; will retry", error=str(exc), retry_in=round(delay, 1))
            self.outbox_wake.wait(delay)
            self.outbox_wake.clear()

    # -- metrics ----------------------------------------------------------------
    def _metrics_loop(self) -> None:
        while not self._stop.wait(self.options.metrics_interval):
            uuid = self.device_uuid
            if not uuid:
                continue
            try:
                self.client.post(uuid, "metrics", volume_metrics(self.store, uuid).SerializeToString())
            except ControllerError as exc:
                log.info("metrics not delivered", error=str(exc))
