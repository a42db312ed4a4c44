"""Online mode: onboard as EVE does, poll config, deliver the info outbox and metrics.

Onboarding follows EVE's order: certs, register, uuid, attest (nonce, quote),
then config with the integrity token (403: attest again; 404: no config yet,
keep polling quietly).

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

from edgevol.api.codec import ConfigDecodeError, decode_edge_dev_config
from edgevol.device.retry import Backoff
from edgevol.device.state import StateStore
from edgevol.device.uplink.client import ControllerClient, ControllerError
from edgevol.device.uplink.metrics import volume_metrics
from edgevol.fsutil import atomic_write_bytes
from edgevol.log import get_logger
from edgevol.model.desired import DesiredState
from edgevol.model.parse import parse_config
from edgevol.trust.pki import Credential

log = get_logger("edgevol.uplink")


@dataclass(frozen=True)
class UplinkOptions:
    serial: str
    soft_serial: str = ""
    poll_interval: float = 10.0
    metrics_interval: float = 60.0
    info_retry_cap: float = 60.0


class Uplink:
    def __init__(self, client: ControllerClient, store: StateStore, onboarding: Credential, checkpoint: Path,
                 options: UplinkOptions, ecdh: Credential | None = None) -> None:
        """``ecdh``: the device's ECDH credential, announced at each attestation (credentials are encrypted for it)."""
        self.client = client
        self.store = store
        self.onboarding = onboarding
        self.ecdh = ecdh
        self.checkpoint = checkpoint
        self.options = options
        self.error: str | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._pending: DesiredState | None = None
        self._threads: list[threading.Thread] = []
        self._no_config_logged = False
        # EVE's cfgControllerCertHash: the last controllercert_confighash followed, in memory,
        # "" at start (pkg/pillar/cmd/zedagent/handlecertconfig.go:40).
        self._controller_cert_hash = ""
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
        """One step of EVE's sequence: certs, register, uuid, attest, then the config itself."""
        self.client.signer()
        if self.store.meta_get("registered") != "1":
            status = self.client.register(self.onboarding, self.options.serial, self.options.soft_serial)
            if status == 409:
                # The serial is taken (Adam: pkg/server/commonHandler.go:166-167). As EVE, count
                # ourselves registered only if /uuid then knows this device certificate; until
                # it does, register again on the next poll (pkg/pillar/cmd/client/client.go:305-321).
                log.info("the controller has this serial registered already; asking who we are")
                self._learn_uuid()
            log.info("registered with the controller", status=status)
            self.store.meta_set("registered", "1")
        if not self.device_uuid:
            self._learn_uuid()
        attested = False
        if self.store.meta_get("integrity_token") is None and self.device_uuid:
            attested = self._attest()
        try:
            resp = self._request_config()
        except ControllerError as exc:
            if exc.status == 403 and not attested and self.device_uuid:
                # EVE attests again when config is forbidden (pkg/pillar/cmd/zedagent/handleconfig.go:809-812,
                # requestConfigByURL: SenderStatusForbidden -> restartAttestation), once per poll.
                log.info("config refused (403): attesting again")
                self._attest()
                resp = self._request_config()
            elif exc.status == 404:
                if not self._no_config_logged:
                    log.info("the controller has no config for this device yet; polling")
                    self._no_config_logged = True
                return
            else:
                if exc.status == 495:
                    self.client.forget_certs()
                raise
        self._no_config_logged = False
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
        self._follow_controller_certs(cfg.controllercert_confighash)

    def _follow_controller_certs(self, cert_hash: str) -> None:
        """Fetch /certs again when a config names a controller cert set other than the last one followed.

        As EVE does (pkg/pillar/cmd/zedagent/handlecertconfig.go:637-646, called from
        parseconfig.go:150). Adam fills the field with a hash of its signing and encrypt
        certificate files (lf-edge/adam pkg/server/apiHandlerv2.go:172-182, commonHandler.go:85-91):
        a rotated ECDH_EXCHANGE certificate signs nothing the device verifies, so only this
        brings it into the checkpointed cert set. A controller that leaves the field empty
        (edgevol's) is never asked again. The config itself was verified and applied already.
        """
        if cert_hash == self._controller_cert_hash:
            return
        self.client.forget_certs()
        self.client.signer()
        self._controller_cert_hash = cert_hash
        log.info("controller certificates fetched again", controllercert_confighash=cert_hash)

    def _request_config(self) -> object | None:
        token = bytes.fromhex(self.store.meta_get("integrity_token") or "")
        return self.client.config(self.device_uuid, self.store.meta_get("config_hash") or "", token)

    def _learn_uuid(self) -> None:
        """POST /uuid, as EVE's client does after register; a controller without it names us in the config."""
        try:
            uuid = self.client.uuid()
        except ControllerError as exc:
            if exc.status != 404:
                raise
            log.info("the controller has no /uuid; the config will name this device")
            return
        self.store.meta_set("device_uuid", uuid)
        log.info("device UUID assigned", uuid=uuid)
        self.outbox_wake.set()

    def _attest(self) -> bool:
        """NONCE then QUOTE; the integrity token is kept in the state database across restarts."""
        uuid = self.device_uuid
        assert uuid is not None
        try:
            token = self.client.attest(uuid, self.ecdh.cert_pem if self.ecdh is not None else None)
        except ControllerError as exc:
            if exc.status != 404:
                raise
            log.info("the controller does not attest; asking for config without an integrity token")
            token = b""
        self.store.meta_set("integrity_token", token.hex())
        log.info("attested", token_bytes=len(token))
        return True

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
