"""Many simulated EVE devices against one controller: provision them, then load it, and measure.

Why simulated devices and not agents: thousands of real agents do not fit on
one machine, and what a controller pays per device is the signed requests
EVE sends (config polls, info, metrics), which are cheap to make. Every
request here is a real EVE API v2 message signed afresh by the device's own
key; answers are checked as a device checks them (config answers verified
against the controller's certificate chain), so the controller does all the
work it does for a real fleet. The numbers it reports are what an operator
sizing a controller needs: latency per kind, errors, and CPU per request on
both sides.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import importlib.util
import itertools
import json
import math
import multiprocessing
import resource
import secrets
import ssl
import sys
import time
import uuid as uuidlib
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, Literal, Sequence, TypeVar

import httpx

from edgevol.api import messages as m
from edgevol.fsutil import atomic_write_bytes
from edgevol.tools import proctree
from edgevol.trust.envelope import AuthError, cert_lookup, open_controller_certs, open_message, seal_message, sign_raw
from edgevol.trust.pki import Credential, PrivateKey, TrustError, create_self_signed, der_hash, fingerprint

API = "/api/v2/edgedevice"
ADMIN = "/api/v1"
PROTO = "application/x-proto-binary"
SHA256_32 = m.HashAlgorithm.HASH_ALGORITHM_SHA256_32BYTES
KINDS = ("config", "info", "metrics")
EXPECTED = {"config": (200, 304), "info": (201,), "metrics": (201,)}
EVE_INTERVALS = {"config": 60.0, "info": 300.0, "metrics": 60.0}
# Where in its period each kind fires, as a fraction of the gap between two devices: a device's three
# requests do not leave together, and the offered load stays smooth.
PHASE = {"config": 0.0, "info": 0.33, "metrics": 0.67}
STATE_VERSION = 1
ATTEMPTS = 4  # per provisioning step, when the controller answers 5xx/429 or not in time
RETRY_DELAY = 0.25  # seconds, doubled each attempt
MiB = 1 << 20
VOLUME_NS = uuidlib.UUID("6f1e2c1a-4d0b-4b8e-9a57-0c3f2f1d9e11")

T = TypeVar("T")


class FleetError(Exception):
    """The simulation cannot run (controller unreachable, provisioning refused, bad state file)."""


# ---------------------------------------------------------------- options


@dataclass
class Options:
    controller: str
    admin_token: str
    root_ca_pem: bytes
    devices: int
    duration: float
    mode: Literal["eve", "closed"] = "eve"
    max_requests: int | None = None
    concurrency: int = 32
    intervals: dict[str, float] = field(default_factory=lambda: dict(EVE_INTERVALS))
    mix: dict[str, float] | None = None  # closed loop; None: proportional to EVE's rates
    procs: int = 1
    connections: int = 64  # EVE mode: keep-alive connections per process
    provision_concurrency: int = 32
    name_prefix: str | None = None  # None: the state file's, else a fresh random one
    state_path: Path | None = None
    controller_pids: list[tuple[str, int]] = field(default_factory=list)
    timeout: float = 30.0
    progress: bool = False

    def weights(self) -> dict[str, float]:
        """The closed loop's mix: as given, else each kind as often as EVE sends it."""
        if self.mix is not None:
            return dict(self.mix)
        return {k: self.rate(k) for k in KINDS}

    def rate(self, kind: str) -> float:
        """Requests of ``kind`` a device sends a second at the configured EVE intervals (0: none)."""
        return 1.0 / self.intervals[kind] if self.intervals[kind] > 0 else 0.0

    def offered_per_second(self) -> float:
        """EVE mode: requests per second the fleet sends."""
        return sum(self.devices * self.rate(k) for k in KINDS)


# ---------------------------------------------------------------- the fleet and its state file


@dataclass
class FleetDevice:
    """One simulated device as the controller knows it: identity, keys and integrity token."""

    index: int
    name: str
    serial: str
    uuid: str
    cert_pem: str
    key_pem: str
    token: str  # hex of the integrity token attestation returned
    config_hash: str = ""  # the configHash of the last config the device took


@dataclass
class Fleet:
    name_prefix: str
    onboarding: Credential
    signer_fingerprint: str  # the controller's signing certificate when the fleet was provisioned
    devices: list[FleetDevice] = field(default_factory=list)

    def to_json(self) -> bytes:
        doc = {"version": STATE_VERSION, "name_prefix": self.name_prefix,
               "signer_fingerprint": self.signer_fingerprint,
               "onboarding": {"cert_pem": self.onboarding.cert_pem.decode(),
                              "key_pem": self.onboarding.key_pem.decode()},
               "devices": [asdict(d) for d in self.devices]}
        return json.dumps(doc, separators=(",", ":")).encode()

    @staticmethod
    def from_json(data: bytes) -> Fleet:
        doc = json.loads(data)
        if doc.get("version") != STATE_VERSION:
            raise FleetError(f"state file version {doc.get('version')!r}, this simulator reads {STATE_VERSION}")
        onboarding = Credential(doc["onboarding"]["cert_pem"].encode(), doc["onboarding"]["key_pem"].encode())
        return Fleet(doc["name_prefix"], onboarding, doc["signer_fingerprint"],
                     [FleetDevice(**d) for d in doc["devices"]])


def load_state(path: Path) -> Fleet | None:
    try:
        return Fleet.from_json(path.read_bytes())
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as exc:
        raise FleetError(f"state file {path} is not one this simulator wrote: {exc}") from None


def save_state(path: Path, fleet: Fleet) -> None:
    atomic_write_bytes(path, fleet.to_json(), mode=0o600)  # it holds private keys


def same_cert(a: str | None, b: str) -> bool:
    """The same certificate, whatever the PEM whitespace (False for a missing or unreadable one)."""
    try:
        return bool(a) and fingerprint(str(a).encode()) == fingerprint(b.encode())
    except TrustError:
        return False


def device_name(prefix: str, index: int) -> str:
    return f"{prefix}-{index:05d}"


# ---------------------------------------------------------------- signing and messages


class Signer:
    """``envelope.seal`` for one device with its key and senderCertHash parsed once, not per request."""

    __slots__ = ("key", "sender_hash")

    def __init__(self, cert_pem: bytes, key_pem: bytes) -> None:
        self.key: PrivateKey = Credential(cert_pem, key_pem).private_key()
        self.sender_hash = der_hash(cert_pem, SHA256_32)

    def seal(self, msg: Any) -> bytes:
        payload = msg.SerializeToString()
        container = m.AuthContainer(algo=SHA256_32, senderCertHash=self.sender_hash,
                                    signatureHash=sign_raw(payload, self.key))
        container.protectedPayload.payload = payload
        return container.SerializeToString()


class SimDevice:
    """A device while the load runs: its signer, its URLs and what it reports."""

    __slots__ = ("dev", "signer", "token", "volume", "urls", "seq")

    def __init__(self, dev: FleetDevice, base_url: str) -> None:
        self.dev = dev
        self.signer = Signer(dev.cert_pem.encode(), dev.key_pem.encode())
        self.token = bytes.fromhex(dev.token)
        self.volume = str(uuidlib.uuid5(VOLUME_NS, dev.uuid))
        # parsed once: httpx would parse a string URL and merge it with its base on every request
        self.urls = {k: httpx.URL(f"{base_url.rstrip('/')}{API}/id/{dev.uuid}/{k}") for k in KINDS}
        self.seq = 0

    def body(self, kind: str) -> bytes:
        self.seq += 1
        if kind == "config":
            return self.signer.seal(m.ConfigRequest(configHash=self.dev.config_hash, integrity_token=self.token))
        if kind == "info":
            return self.signer.seal(self._info())
        return self.signer.seal(self._metrics())

    def _info(self) -> Any:
        """A volume's state as EVE's volumemgr reports it; its size changes so each report is news."""
        info = m.ZInfoMsg(ztype=m.ZInfoTypes.ZiVolume, devId=self.dev.uuid)
        v = info.vinfo
        v.uuid, v.displayName, v.state, v.progressPercentage = self.volume, "data", m.ZSwState.CREATED_VOLUME, 100
        v.resources.maxSizeBytes, v.resources.curSizeBytes = 64 * MiB, 4096 * (1 + self.seq % 1000)
        info.atTimeStamp.GetCurrentTime()
        return info

    def _metrics(self) -> Any:
        msg = m.ZMetricMsg(devID=self.dev.uuid)
        used = 4096 * (1 + self.seq % 1000)
        msg.vm.add(uuid=self.volume, displayName="data", totalBytes=64 * MiB, usedBytes=used,
                   freeBytes=64 * MiB - used)
        msg.atTimeStamp.GetCurrentTime()
        return msg


# ---------------------------------------------------------------- statistics


class KindStats:
    """Answers of one kind: every latency (s), statuses, and what counts as an error."""

    __slots__ = ("latencies", "statuses", "errors")

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.statuses: Counter[int] = Counter()
        self.errors: Counter[str] = Counter()

    def answered(self, kind: str, status: int, seconds: float) -> None:
        self.latencies.append(seconds)
        self.statuses[status] += 1
        if status not in EXPECTED[kind]:
            self.errors[str(status)] += 1

    def failed(self, reason: str) -> None:
        self.errors[reason] += 1

    def merge(self, other: KindStats) -> None:
        self.latencies.extend(other.latencies)
        self.statuses.update(other.statuses)
        self.errors.update(other.errors)

    def __getstate__(self) -> tuple[Any, ...]:
        return self.latencies, dict(self.statuses), dict(self.errors)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        self.latencies, statuses, errors = state
        self.statuses, self.errors = Counter(statuses), Counter(errors)


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest rank: the smallest value with at least p% of the values at or below it."""
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, max(0, math.ceil(p / 100 * len(sorted_values)) - 1))]


NOT_SENT = "not sent, behind schedule"


def kind_summary(stats: KindStats, seconds: float) -> dict[str, Any]:
    """``count`` every request due, ``sent`` those that reached the wire, ``per_second`` those answered."""
    lat = sorted(stats.latencies)
    transport = sum(n for reason, n in stats.errors.items() if not reason.isdigit())
    answered = sum(stats.statuses.values())
    count = answered + transport
    errors = sum(stats.errors.values())
    return {"count": count, "sent": count - stats.errors.get(NOT_SENT, 0), "ok": count - errors,
            "per_second": round(answered / seconds, 1) if seconds else 0.0,
            "p50_ms": round(percentile(lat, 50) * 1000, 2), "p99_ms": round(percentile(lat, 99) * 1000, 2),
            "max_ms": round(lat[-1] * 1000, 2) if lat else 0.0,
            "statuses": {str(k): v for k, v in sorted(stats.statuses.items())},
            "errors": dict(sorted(stats.errors.items()))}


# ---------------------------------------------------------------- talking to the controller


def _verify(opts: Options) -> ssl.SSLContext | bool:
    return _tls_context(opts.root_ca_pem) if opts.controller.startswith("https://") else False


@functools.lru_cache(maxsize=4)
def _tls_context(root_ca_pem: bytes) -> ssl.SSLContext:
    """One context for every client: loading the CA takes milliseconds, a closed loop makes a client per worker."""
    ctx = ssl.create_default_context()
    ctx.load_verify_locations(cadata=root_ca_pem.decode())
    return ctx


def _skip_sniffio() -> None:
    """httpcore imports ``sniffio`` on every async request to learn the event loop; when it is not installed,
    each failed import scans sys.path again (two per request, about half the simulator's CPU). A None entry
    in sys.modules makes that import fail at once, and httpcore then assumes asyncio, which it is."""
    if "sniffio" not in sys.modules and importlib.util.find_spec("sniffio") is None:
        sys.modules["sniffio"] = None  # type: ignore[assignment]


def http_client(opts: Options, connections: int) -> httpx.AsyncClient:
    """HTTP/1.1 keep-alive, at most ``connections`` at once; waiting for one counts in the latency."""
    _skip_sniffio()
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    return httpx.AsyncClient(base_url=opts.controller.rstrip("/"), timeout=opts.timeout, verify=_verify(opts),
                             trust_env=False, limits=limits, headers={"Content-Type": PROTO, "Accept": PROTO})


async def controller_signer(client: httpx.AsyncClient, root_ca_pem: bytes) -> bytes:
    """The controller's signing certificate from /certs, trusted only if it chains to the root CA."""
    try:
        resp = await client.get(f"{API}/certs")
    except httpx.HTTPError as exc:
        raise FleetError(f"cannot reach the controller at {client.base_url}: {type(exc).__name__}: {exc}") from None
    if resp.status_code != 200:
        raise FleetError(f"GET /certs: the controller answered {resp.status_code}")
    try:
        return open_controller_certs(resp.content, root_ca_pem)[1]
    except (AuthError, TrustError) as exc:
        raise FleetError(f"the controller's certificates do not chain to the root CA given: {exc}") from None


class Admin:
    """The few admin API calls provisioning needs."""

    def __init__(self, client: httpx.AsyncClient, token: str) -> None:
        self.client = client
        self.headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    async def call(self, method: str, path: str, body: Any = None) -> Any:
        resp = await self.client.request(method, ADMIN + path, headers=self.headers,
                                         content=None if body is None else json.dumps(body).encode())
        if resp.status_code == 401:
            raise FleetError("the controller refused the admin token (--admin-token / --controller-dir)")
        if resp.status_code >= 400:
            raise FleetError(f"admin {method} {path}: {resp.status_code} {resp.text.strip()[:300]}")
        return resp.json() if resp.content else None


# ---------------------------------------------------------------- provisioning


@dataclass
class ProvisionJob:
    """What a provisioning process needs: which indices, with which onboarding certificate."""

    opts: Options
    prefix: str
    onboarding: Credential
    signer_pem: bytes
    indices: list[int]


class Provisioner:
    """One device at a time, as EVE onboards: created by the operator, then register, uuid, attest, config."""

    def __init__(self, job: ProvisionJob, client: httpx.AsyncClient) -> None:
        self.job = job
        self.client = client
        self.admin = Admin(client, job.opts.admin_token)
        self.lookup = cert_lookup([job.signer_pem], "pem")
        self.retries = 0

    async def _post(self, path: str, body: bytes, what: str, expect: tuple[int, ...]) -> httpx.Response:
        """POST, retried as EVE retries (these steps are idempotent) when the controller is busy or slow."""
        for attempt in range(ATTEMPTS):
            if attempt:
                self.retries += 1
                await asyncio.sleep(RETRY_DELAY * 2 ** attempt)
            try:
                resp = await self.client.post(API + path, content=body)
            except httpx.HTTPError as exc:
                problem = f"{type(exc).__name__}: {exc}"
                continue
            if resp.status_code in expect:
                return resp
            problem = f"the controller answered {resp.status_code} {resp.text.strip()[:200]}"
            if resp.status_code < 500 and resp.status_code != 429:
                break
        raise FleetError(f"{what}: {problem}")

    async def _create(self, name: str, serial: str) -> dict[str, Any]:
        """The operator's step, retried like the others; a retry after a lost answer finds the device made."""
        body = {"name": name, "serial": serial, "onboard_cert_pem": self.job.onboarding.cert_pem.decode()}
        problem = ""
        for attempt in range(ATTEMPTS):
            if attempt:
                self.retries += 1
                await asyncio.sleep(RETRY_DELAY * 2 ** attempt)
            try:
                resp = await self.client.post(ADMIN + "/devices", headers=self.admin.headers,
                                              content=json.dumps(body).encode())
            except httpx.HTTPError as exc:
                problem = f"{type(exc).__name__}: {exc}"
                continue
            if resp.status_code == 201:
                return dict(resp.json())
            if resp.status_code == 409:
                rec = await self._made_before(name, body)
                if rec is not None:
                    return rec
                problem = "it existed, registered with a device key this fleet lost; deleted to be made again"
                continue
            if resp.status_code == 401:
                raise FleetError("the controller refused the admin token (--admin-token / --controller-dir)")
            problem = f"the controller answered {resp.status_code} {resp.text.strip()[:300]}"
            if resp.status_code < 500 and resp.status_code != 429:
                break
        raise FleetError(f"{name}: admin create: {problem}")

    async def _made_before(self, name: str, body: dict[str, str]) -> dict[str, Any] | None:
        """A device of that name exists. If this fleet made it (its serial and onboarding certificate, whose key
        only this fleet holds): reuse it when it has not registered yet, else delete it (its device key was
        lost with an earlier, failed run) and answer None so it is created again."""
        rec = dict(await self.admin.call("GET", f"/devices/{name}"))
        if rec.get("serial") != body["serial"] or not same_cert(rec.get("onboard_cert_pem"), body["onboard_cert_pem"]):
            raise FleetError(f"{name}: a device of that name, not of this fleet, exists: choose another --name-prefix")
        if not rec.get("registered_at"):
            return rec
        await self.admin.call("DELETE", f"/devices/{rec['uuid']}")
        return None

    def _open(self, resp: httpx.Response, msg_type: type[T], what: str) -> T:
        try:
            return open_message(resp.content, msg_type, self.lookup)[0]  # type: ignore[type-var, return-value]
        except AuthError as exc:
            raise FleetError(f"{what}: the answer is not signed by the controller: {exc}") from None

    async def device(self, index: int) -> FleetDevice:
        prefix, onboarding = self.job.prefix, self.job.onboarding
        name = device_name(prefix, index)
        serial = f"SN-{name}"
        rec = await self._create(name, serial)
        cred = create_self_signed(f"{name} device")
        signer = Signer(cred.cert_pem, cred.key_pem)
        reg = m.ZRegisterMsg(pemCert=base64.b64encode(cred.cert_pem), serial=serial)
        await self._post("/register", seal_message(reg, onboarding, include_cert=True), f"{name} register", (201,))
        resp = await self._post("/uuid", signer.seal(m.UuidRequest()), f"{name} uuid", (200,))
        got = self._open(resp, m.UuidResponse, f"{name} uuid").uuid
        if got != rec["uuid"]:
            raise FleetError(f"{name}: /uuid answered {got}, the admin API created {rec['uuid']}")
        token = await self._attest(signer, got, name)
        dev = FleetDevice(index, name, serial, got, cred.cert_pem.decode(), cred.key_pem.decode(), token.hex())
        await self._first_config(signer, dev)
        return dev

    async def _attest(self, signer: Signer, dev_uuid: str, name: str) -> bytes:
        """No-TPM attestation as EVE does it: a nonce, then a quote answered with the integrity token."""
        path = f"/id/{dev_uuid}/attest"
        rt = m.ZAttestReqType
        resp = await self._post(path, signer.seal(m.ZAttestReq(reqType=rt.ATTEST_REQ_NONCE)), f"{name} nonce", (201,))
        if not self._open(resp, m.ZAttestResponse, f"{name} nonce").nonce.nonce:
            raise FleetError(f"{name}: the controller sent no attestation nonce")
        quote = m.ZAttestReq(reqType=rt.ATTEST_REQ_QUOTE, quote=m.ZAttestQuote())
        resp = await self._post(path, signer.seal(quote), f"{name} quote", (201,))
        answer = self._open(resp, m.ZAttestResponse, f"{name} quote").quoteResp
        if answer.response != m.ZAttestResponseCode.Z_ATTEST_RESPONSE_CODE_SUCCESS or not answer.integrity_token:
            raise FleetError(f"{name}: the controller refused the quote ({answer.response})")
        return bytes(answer.integrity_token)

    async def _first_config(self, signer: Signer, dev: FleetDevice) -> None:
        """EVE fetches its config right after attesting: a signed 200 whose configHash later polls send."""
        body = signer.seal(m.ConfigRequest(integrity_token=bytes.fromhex(dev.token)))
        resp = await self._post(f"/id/{dev.uuid}/config", body, f"{dev.name} config", (200,))
        cfg = self._open(resp, m.ConfigResponse, f"{dev.name} config")
        if cfg.config.id.uuid != dev.uuid or not cfg.configHash:
            raise FleetError(f"{dev.name}: the config answer is for {cfg.config.id.uuid!r} or has no configHash")
        dev.config_hash = cfg.configHash


@dataclass
class SliceResult:
    devices: list[FleetDevice]
    error: str  # the first step that failed for good ("" if none)
    retries: int


async def provision_slice(job: ProvisionJob, report: Callable[[int], None] | None = None) -> SliceResult:
    """Provision ``job.indices``, ``provision_concurrency`` devices at a time; stops at the first failure."""
    result = SliceResult([], "", 0)
    todo = iter(job.indices)

    async def worker() -> None:
        async with http_client(job.opts, 1) as client:  # one connection each, as the load (see _connections)
            prov = Provisioner(job, client)
            try:
                for index in todo:
                    if result.error:
                        return
                    result.devices.append(await prov.device(index))
                    if report is not None:
                        report(1)
            except FleetError as exc:
                result.error = result.error or str(exc)
            finally:
                result.retries += prov.retries

    await asyncio.gather(*(worker() for _ in range(min(job.opts.provision_concurrency, len(job.indices)))))
    return result


class Progress:
    """``provisioning 1234/10000`` on a terminal's stderr, rewritten in place twice a second."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.enabled, self.done = total, enabled, 0
        self.start = self.last = time.monotonic()

    def add(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if self.enabled and (now - self.last >= 0.5 or self.done == self.total):
            self.last = now
            rate = self.done / max(now - self.start, 1e-9)
            sys.stderr.write(f"\rprovisioning devices: {self.done}/{self.total} ({rate:.0f}/s)   ")
            sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")
            sys.stderr.flush()


# ---------------------------------------------------------------- the load


@dataclass
class DriveJob:
    opts: Options
    signer_pem: bytes
    sims: list[SimDevice]  # built before forking: key parsing is not part of the measured run
    positions: list[int]  # each device's place in the whole fleet (spreads the phases)
    t0: float  # time.monotonic() of the common start, the same clock in every process
    concurrency: int
    budget: int  # requests this process may send


@dataclass
class DriveResult:
    stats: dict[str, KindStats]
    lags: list[float]  # EVE mode: seconds each request left after its scheduled time
    seconds: float
    config_hashes: dict[str, str]  # device uuid -> configHash learnt during the run
    verified: int  # config 200s whose signature was checked


class Driver:
    """Sends one request of a kind for a device and records the answer."""

    def __init__(self, job: DriveJob) -> None:
        self.lookup = cert_lookup([job.signer_pem], "pem")
        self.stats = {k: KindStats() for k in KINDS}
        self.hashes: dict[str, str] = {}
        self.verified = 0

    async def send(self, client: httpx.AsyncClient, kind: str, sim: SimDevice, due: float | None = None) -> None:
        """``due``: when the device meant to send it (time.monotonic); the latency counts from then, as the
        device would see it, and includes the wait for a free connection in the simulator."""
        body = sim.body(kind)
        start = time.monotonic() if due is None else due
        try:
            resp = await client.post(sim.urls[kind], content=body)
        except httpx.HTTPError as exc:
            self.stats[kind].failed(type(exc).__name__)
            return
        self.stats[kind].answered(kind, resp.status_code, time.monotonic() - start)
        if kind == "config" and resp.status_code == 200:
            self._take_config(sim, resp.content)

    def _take_config(self, sim: SimDevice, data: bytes) -> None:
        """A new config: verify it as the device would and remember its hash, so the next poll is a 304."""
        try:
            cfg, _ = open_message(data, m.ConfigResponse, self.lookup)
        except AuthError:
            self.stats["config"].failed("bad signature")
            return
        self.verified += 1
        sim.dev.config_hash = cfg.configHash
        self.hashes[sim.dev.uuid] = cfg.configHash


def mix_cycle(weights: dict[str, float], length: int = 120) -> list[str]:
    """Kinds in proportion to ``weights``, interleaved evenly (stride scheduling)."""
    total = sum(weights.values())
    credit = dict.fromkeys(weights, 0.0)
    out = []
    for _ in range(length):
        for k, w in weights.items():
            credit[k] += w / total
        pick = max(credit, key=lambda k: credit[k])
        credit[pick] -= 1.0
        out.append(pick)
    return out


async def _connections(job: DriveJob, n: int, work: Callable[[httpx.AsyncClient], Awaitable[None]]) -> None:
    """``n`` keep-alive connections, each its own client running ``work``.

    Not one shared pool: httpx's pool scans its queue on every request, so once requests wait in it each
    costs more CPU than the last, and the simulator, not the controller, becomes the limit. Here requests
    wait in the simulator's own queue (EVE mode), where the wait is measured as schedule lag.
    """
    async def one() -> None:
        async with http_client(job.opts, 1) as client:
            await work(client)

    await asyncio.gather(*(one() for _ in range(n)))


async def _closed_loop(job: DriveJob, driver: Driver, t_end: float) -> None:
    """``job.concurrency`` requests always in flight, kinds in the mix's proportions, devices in turn."""
    cycle = mix_cycle(job.opts.weights())
    issued = itertools.count()
    per_kind = {k: itertools.count() for k in KINDS}
    sims = job.sims

    async def work(client: httpx.AsyncClient) -> None:
        while time.monotonic() < t_end:
            i = next(issued)
            if i >= job.budget:
                return
            kind = cycle[i % len(cycle)]
            await driver.send(client, kind, sims[next(per_kind[kind]) % len(sims)])

    await _connections(job, job.concurrency, work)


Due = tuple[str, SimDevice, float]  # kind, device, when it is due (time.monotonic)


async def _eve_kind(job: DriveJob, kind: str, queue: asyncio.Queue[Due | None], t_end: float,
                    budget: list[int]) -> None:
    """Every device sends ``kind`` once per interval at its own phase: an open loop, whatever the answers."""
    interval = job.opts.intervals[kind]
    if interval <= 0:
        return
    total = max(job.opts.devices, 1)
    phases = [(pos + PHASE[kind]) / total * interval for pos in job.positions]
    sims = job.sims
    for k in itertools.count():
        j, rnd = k % len(sims), k // len(sims)
        at = job.t0 + phases[j] + rnd * interval
        if at >= t_end or budget[0] <= 0:
            return
        budget[0] -= 1
        delay = at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        queue.put_nowait((kind, sims[j], at))


async def _eve(job: DriveJob, driver: Driver, t_end: float, lags: list[float]) -> None:
    queue: asyncio.Queue[Due | None] = asyncio.Queue()
    n = job.opts.connections
    budget = [job.budget]

    async def schedule() -> None:
        await asyncio.gather(*(_eve_kind(job, k, queue, t_end, budget) for k in KINDS))
        for _ in range(n):
            queue.put_nowait(None)

    async def work(client: httpx.AsyncClient) -> None:
        while (due := await queue.get()) is not None:
            kind, sim, at = due
            lag = max(0.0, time.monotonic() - at)
            lags.append(lag)
            if lag > job.opts.timeout:  # the device would have given up by now: a failure, not a late send
                driver.stats[kind].failed(NOT_SENT)
                continue
            await driver.send(client, kind, sim, at)

    await asyncio.gather(schedule(), _connections(job, n, work))


async def drive(job: DriveJob) -> DriveResult:
    t_end = job.t0 + job.opts.duration
    lags: list[float] = []
    driver = Driver(job)
    await asyncio.sleep(max(0.0, job.t0 - time.monotonic()))
    if job.sims and job.opts.mode == "closed":
        await _closed_loop(job, driver, t_end)
    elif job.sims:
        await _eve(job, driver, t_end, lags)
    seconds = time.monotonic() - job.t0
    return DriveResult(driver.stats, lags, seconds, driver.hashes, driver.verified)


# ---------------------------------------------------------------- processes


def _child(conn: Any, fn: Callable[[Any], Awaitable[Any]], arg: Any) -> None:
    try:
        conn.send(("ok", asyncio.run(fn(arg))))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which decides
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()


def in_processes(fn: Callable[[Any], Awaitable[T]], args: list[Any],
                 started: Callable[[], None] | None = None) -> list[T]:
    """``asyncio.run(fn(arg))`` for each arg: in this process for one, else one forked process each.

    ``started`` runs once they are all under way (after the forks: it may start a thread).
    """
    if len(args) == 1:
        if started is not None:
            started()
        return [asyncio.run(fn(args[0]))]
    ctx = multiprocessing.get_context("fork")
    procs = []
    for arg in args:
        parent, child = ctx.Pipe(duplex=False)
        p = ctx.Process(target=_child, args=(child, fn, arg), daemon=True)
        p.start()
        child.close()
        procs.append((p, parent))
    if started is not None:
        started()
    results: list[T] = []
    failures: list[str] = []
    for p, conn in procs:
        try:
            status, value = conn.recv()
        except EOFError:
            status, value = "error", f"worker process exited {p.exitcode}"
        p.join()
        (results if status == "ok" else failures).append(value)
    if failures:
        raise FleetError(f"a simulator process failed: {failures[0]}")
    return results


def _split(items: Sequence[T], parts: int) -> list[list[T]]:
    """Round-robin: each part gets every parts-th item, so each spans the whole fleet's phases."""
    return [list(items[p::parts]) for p in range(parts) if items[p::parts]]


# ---------------------------------------------------------------- provisioning the fleet


async def _still_registered(opts: Options, fleet: Fleet, signer_pem: bytes) -> tuple[list[FleetDevice] | None, str]:
    """The saved devices this controller still has registered with their saved certificate (None: the state is
    another controller's), and a note on those it has not."""
    if fleet.signer_fingerprint != fingerprint(signer_pem):
        return None, "the state file was made against another controller (its signing certificate differs)"
    async with http_client(opts, 1) as client:
        listed = await Admin(client, opts.admin_token).call("GET", "/devices")
    known = {d["uuid"]: d for d in listed}
    keep = [dev for dev in fleet.devices if (rec := known.get(dev.uuid)) is not None and rec.get("name") == dev.name
            and rec.get("registered_at") and same_cert(rec.get("device_cert_pem"), dev.cert_pem)]
    lost = len(fleet.devices) - len(keep)
    return keep, (f"{lost} saved device(s) are no longer registered as saved on this controller" if lost else "")


def _provision(opts: Options, fleet: Fleet, signer_pem: bytes, indices: list[int]) -> SliceResult:
    """Every missing device, in --procs processes (a progress line only when there is one)."""
    progress = Progress(len(indices), opts.progress)
    jobs = [ProvisionJob(opts, fleet.name_prefix, fleet.onboarding, signer_pem, part)
            for part in _split(indices, max(1, min(opts.procs, len(indices))))]
    try:
        if len(jobs) == 1:
            results = [asyncio.run(provision_slice(jobs[0], progress.add))]
        else:
            results = in_processes(provision_slice, jobs)
            progress.add(sum(len(r.devices) for r in results))
    finally:
        progress.close()
    return SliceResult([d for r in results for d in r.devices], next((r.error for r in results if r.error), ""),
                       sum(r.retries for r in results))


def prepare_fleet(opts: Options, signer_pem: bytes) -> tuple[Fleet, dict[str, Any]]:
    """The fleet to drive: reused from --state when it matches this controller, completed or made anew."""
    started = time.monotonic()
    fleet = load_state(opts.state_path) if opts.state_path else None
    note = ""
    if fleet is not None and opts.name_prefix not in (None, fleet.name_prefix):
        fleet, note = None, f"the state file's devices are named {fleet.name_prefix}-*, not {opts.name_prefix}-*"
    if fleet is not None:
        devices, note = asyncio.run(_still_registered(opts, fleet, signer_pem))
        if devices is None:
            fleet = None
        else:
            fleet.devices = devices
    if fleet is None:
        prefix = opts.name_prefix or f"fleetsim-{secrets.token_hex(3)}"
        fleet = Fleet(prefix, create_self_signed(f"{prefix} onboarding"), fingerprint(signer_pem))
    reused = sum(1 for d in fleet.devices if d.index < opts.devices)
    have = {d.index for d in fleet.devices}
    missing = [i for i in range(opts.devices) if i not in have]
    made = _provision(opts, fleet, signer_pem, missing) if missing else SliceResult([], "", 0)
    done = made.devices
    fleet.devices = sorted(fleet.devices + done, key=lambda d: d.index)
    if opts.state_path is not None:
        save_state(opts.state_path, fleet)
    if made.error:
        raise FleetError(f"provisioning stopped after {len(done)} new devices: {made.error}")
    seconds = time.monotonic() - started
    info = {"name_prefix": fleet.name_prefix, "created": len(done), "reused": reused, "retries": made.retries,
            "seconds": round(seconds, 2), "per_second": round(len(done) / seconds, 1) if done and seconds else 0.0}
    if note:
        info["not_reused"] = note
    return fleet, info


# ---------------------------------------------------------------- one run


def _rusage_cpu() -> tuple[float, int]:
    """CPU seconds of this process and its reaped children, and the largest maxrss (KiB) of either."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime, max(own.ru_maxrss, kids.ru_maxrss)


def _drive_jobs(opts: Options, fleet: Fleet, signer_pem: bytes) -> list[DriveJob]:
    """One job per process, each with every procs-th device, its share of concurrency and of --max-requests."""
    sims = [SimDevice(d, opts.controller) for d in fleet.devices[:opts.devices]]
    parts = max(1, min(opts.procs, len(sims)))
    budget = opts.max_requests if opts.max_requests is not None else sys.maxsize
    t0 = time.monotonic() + (0.5 if parts > 1 else 0.05)  # forked processes start together
    jobs = []
    for p, (part, pos) in enumerate(zip(_split(sims, parts), _split(range(len(sims)), parts))):
        jobs.append(DriveJob(opts, signer_pem, part, pos, t0, concurrency=_share(opts.concurrency, parts, p, 1),
                             budget=budget if budget == sys.maxsize else _share(budget, parts, p, 0)))
    return jobs


def _share(total: int, parts: int, p: int, least: int) -> int:
    return max(least, total // parts + (p < total % parts))


def _watch(opts: Options) -> proctree.Watch:
    for label, pid in opts.controller_pids:
        if not proctree.alive(pid):
            raise FleetError(f"--controller-pid {label}={pid}: no such process")
    return proctree.Watch([proctree.TreeUsage(label, pid) for label, pid in opts.controller_pids])


def _usage_report(watch: proctree.Watch, requests: int) -> dict[str, Any]:
    def one(cpu: float, rss_kib: int, hwm_kib: int, procs: int) -> dict[str, Any]:
        return {"cpu_s": round(cpu, 2), "cpu_ms_per_request": round(cpu / requests * 1000, 3) if requests else None,
                "peak_rss_mb": round(rss_kib / 1024, 1), "max_process_hwm_mb": round(hwm_kib / 1024, 1),
                "processes": procs}

    trees = {t.label: one(t.cpu_s, t.peak_rss_kib, t.max_hwm_kib, t.processes) for t in watch.trees}
    if not watch.trees:
        return {}
    total = one(sum(t.cpu_s for t in watch.trees), sum(t.peak_rss_kib for t in watch.trees),
                max(t.max_hwm_kib for t in watch.trees), sum(t.processes for t in watch.trees))
    return {**total, "trees": trees}


def _merge(results: list[DriveResult]) -> tuple[dict[str, KindStats], list[float], float]:
    stats = {k: KindStats() for k in KINDS}
    lags: list[float] = []
    for r in results:
        for k in KINDS:
            stats[k].merge(r.stats[k])
        lags.extend(r.lags)
    return stats, lags, max((r.seconds for r in results), default=0.0)


def _drive_report(opts: Options, results: list[DriveResult], cpu: float, rss_kib: int,
                  watch: proctree.Watch) -> dict[str, Any]:
    stats, lags, seconds = _merge(results)
    kinds = {k: kind_summary(stats[k], seconds) for k in KINDS}
    count, sent, ok = (sum(v[f] for v in kinds.values()) for f in ("count", "sent", "ok"))
    report: dict[str, Any] = {
        "seconds": round(seconds, 2), "kinds": kinds,
        "total": {"count": count, "sent": sent, "ok": ok, "errors": count - ok,
                  "per_second": round(sum(v["per_second"] for v in kinds.values()), 1)},
        "config_verified": sum(r.verified for r in results),
        "simulator": {"cpu_s": round(cpu, 2), "cpu_ms_per_request": round(cpu / sent * 1000, 3) if sent else None,
                      "peak_rss_mb": round(rss_kib / 1024, 1), "processes": len(results)},
        "controller": _usage_report(watch, sent),
        "load_average": proctree.load_average(),
    }
    if opts.mode == "eve":
        lags.sort()
        report["offered_per_second"] = round(opts.offered_per_second(), 1)
        report["schedule_lag_ms"] = {"p50": round(percentile(lags, 50) * 1000, 2),
                                     "p99": round(percentile(lags, 99) * 1000, 2),
                                     "max": round(lags[-1] * 1000, 2) if lags else 0.0}
    return report


def _settings(opts: Options) -> dict[str, Any]:
    out: dict[str, Any] = {"controller": opts.controller, "mode": opts.mode, "devices": opts.devices,
                           "duration_s": opts.duration, "max_requests": opts.max_requests, "procs": opts.procs}
    if opts.mode == "closed":
        w = opts.weights()
        out |= {"concurrency": opts.concurrency,
                "mix": {k: round(w[k] / sum(w.values()), 3) for k in KINDS}}
    else:
        out |= {"intervals_s": dict(opts.intervals), "connections_per_process": opts.connections}
    return out


def run(opts: Options) -> dict[str, Any]:
    """Provision (or reuse) the fleet, drive it, and return the report; FleetError if it cannot run."""
    async def signer() -> bytes:
        async with http_client(opts, 1) as client:
            return await controller_signer(client, opts.root_ca_pem)

    watch = _watch(opts)  # a wrong --controller-pid fails now, not after minutes of provisioning
    signer_pem = asyncio.run(signer())
    fleet, provisioning = prepare_fleet(opts, signer_pem)
    jobs = _drive_jobs(opts, fleet, signer_pem)
    cpu0, _ = _rusage_cpu()
    try:
        results = in_processes(drive, jobs, started=watch.start)
    finally:
        watch.stop()
    cpu1, rss_kib = _rusage_cpu()
    by_uuid = {d.uuid: d for d in fleet.devices}
    for r in results:
        for dev_uuid, digest in r.config_hashes.items():
            by_uuid[dev_uuid].config_hash = digest
    if opts.state_path is not None:
        save_state(opts.state_path, fleet)
    report = {"settings": _settings(opts), "provisioning": provisioning,
              **_drive_report(opts, results, cpu1 - cpu0, rss_kib, watch)}
    report["failed"] = report["total"]["errors"] > 0
    return report
