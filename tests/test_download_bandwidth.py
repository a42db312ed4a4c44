"""Download bandwidth caps (issue "Download control"): a device-wide cap, per-datastore caps, live changes.

The limiter is tested alone, then the real agent (``device run`` in daemon mode on a config file) against
our loopback HTTP server. Rates are measured from the device's side, as the growth of the blobs' partial
files in its CAS over a window that starts once the downloads run. Caps are a few MiB/s, far below what
loopback does, so the cap is what limits and a slow or loaded machine still meets it; no assertion is
made on any speed other than a cap's (the check that the server can go faster only asks for twice the cap).
"""

from __future__ import annotations

import dataclasses
import os
import signal
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

from edgevol.device.datastores.bandwidth import Bandwidth, RateLimiter, ThrottledSink
from edgevol.device.datastores.base import BytesSink, Cancelled
from edgevol.model.desired import ObjectKind, Settings
from edgevol.model.parse import parse_config
from tests.configs import ConfigBuilder, new_id, sha256_file
from tests.conftest import start_agent
from tests.controller_fixture import (  # noqa: F401
    DeviceAgent,
    agent_factory,
    controller_factory,
    controller_view,
    onboard,
    wait_for,
)

MiB = 1 << 20
DEVICE_CAP = "edgevol.download.max.bytes.per.second"
DEFAULT_CAP = "edgevol.download.datastore.max.bytes.per.second"


def own_cap(ds: str) -> str:
    return f"edgevol.download.datastore.{ds}.max.bytes.per.second"


# ---------------------------------------------------------------- the limiter alone


def _drain(limiter: RateLimiter, chunk: int, until: float, got: list[int], i: int) -> None:
    while time.monotonic() < until:
        limiter.take(chunk)
        got[i] += chunk


def test_the_limiter_holds_its_rate_and_shares_it_between_writers_of_any_size() -> None:
    rate = 8 * MiB
    limiter = RateLimiter(rate)
    got = [0, 0]
    start = time.monotonic()
    threads = [threading.Thread(target=_drain, args=(limiter, size, start + 2, got, i))
               for i, size in enumerate((64 << 10, MiB))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - start
    assert sum(got) / elapsed == pytest.approx(rate, rel=0.05)
    assert min(got) / sum(got) > 0.35, got  # turns a piece at a time: the 1 MiB writer does not take it all


def _waiter(limiter: RateLimiter, n: int, cancel: threading.Event | None) -> tuple[threading.Thread, list]:
    """A thread taking ``n`` bytes; its list gets (monotonic time, outcome) when the take ends."""
    done: list = []

    def run() -> None:
        try:
            limiter.take(n, cancel)
            done.append((time.monotonic(), "passed"))
        except Cancelled:
            done.append((time.monotonic(), "cancelled"))

    t = threading.Thread(target=run)
    t.start()
    return t, done


def test_a_waiting_write_ends_at_once_when_cancelled() -> None:
    cancel = threading.Event()
    t, done = _waiter(RateLimiter(1024), 10 * MiB, cancel)
    time.sleep(0.3)
    assert not done
    cancel.set()
    at = time.monotonic()
    t.join(5)
    assert done and done[0][1] == "cancelled" and done[0][0] - at < 0.2


@pytest.mark.parametrize("new_rate", [None, 64 * MiB])
def test_a_new_rate_applies_to_waiting_writes_at_once(new_rate) -> None:
    limiter = RateLimiter(1024)
    t, done = _waiter(limiter, 4 * MiB, threading.Event())  # 68 minutes at the old rate
    time.sleep(0.3)
    assert not done
    limiter.set_rate(new_rate)
    at = time.monotonic()
    t.join(5)
    assert done and done[0][1] == "passed" and done[0][0] - at < 0.3


def test_bandwidth_charges_the_datastore_and_the_device_and_follows_new_caps() -> None:
    bw = Bandwidth()
    bw.configure(4 * MiB, 2 * MiB, {"a": 1 * MiB})
    sink = bw.throttle(BytesSink(), "a", None)
    assert isinstance(sink, ThrottledSink)
    sink.write(b"x" * 10)
    assert (sink.offset, sink.getvalue()) == (10, b"x" * 10)  # other attributes are the wrapped sink's
    sink.reset()
    assert sink.offset == 0
    own, device = sink._limiters
    assert (own.rate, device.rate) == (1 * MiB, 4 * MiB)
    assert bw.throttle(BytesSink(), "b", None)._limiters[0].rate == 2 * MiB  # the default
    bw.configure(0, 3 * MiB, {"a": 0})  # 0: no cap, even over the default
    assert (own.rate, device.rate) == (None, None)
    assert bw.throttle(BytesSink(), "b", None)._limiters[0].rate == 3 * MiB  # the bucket in use, changed


# ---------------------------------------------------------------- config items


def test_cap_items_set_the_settings() -> None:
    ds = new_id()
    b = (ConfigBuilder().item(DEVICE_CAP, "4194304").item(DEFAULT_CAP, "1048576")
         .item(own_cap(ds.upper()), "0").item(own_cap("00000000-0000-0000-0000-000000000001"), "2000"))
    state = parse_config(b.cfg)
    assert state.errors == []
    assert state.settings == Settings(download_bytes_per_second=4 * MiB, datastore_bytes_per_second=MiB,
                                      datastore_caps=tuple(sorted([(ds, 0),
                                                                   ("00000000-0000-0000-0000-000000000001", 2000)])))
    assert hash(state.settings) == hash(dataclasses.replace(state.settings))


@pytest.mark.parametrize("key,value", [
    (DEVICE_CAP, "4MiB"), (DEVICE_CAP, "-1"), (DEVICE_CAP, "1.5"), (DEVICE_CAP, ""), (DEVICE_CAP, str(1 << 41)),
    (DEVICE_CAP, "9" * 5000), (DEFAULT_CAP, "fast"), (own_cap("00000000-0000-0000-0000-000000000001"), "1e6"),
])
def test_a_malformed_cap_is_a_config_error_and_no_cap_applies(key, value) -> None:
    b = ConfigBuilder().item(key, value).item("edgevol.download.parallel", "3")
    state = parse_config(b.cfg)
    [err] = state.errors
    assert (err.kind, err.object_id) == (ObjectKind.CONFIG_ITEM, key)
    assert err.message == f"{key}={value!r}: want a whole number of bytes per second, 0..{1 << 40} (0: no cap)"
    assert state.settings == Settings(parallel_downloads=3)  # the rest of the items still apply


def test_a_cap_for_something_that_is_not_a_datastore_id_is_a_config_error() -> None:
    key = own_cap("my-datastore")
    [err] = parse_config(ConfigBuilder().item(key, "1000").cfg).errors
    assert (err.object_id, err.message) == (key, f"{key}: datastore id 'my-datastore' is not a UUID "
                                                 "(want 8-4-4-4-12 hex)")


# ---------------------------------------------------------------- the agent against a loopback server


def random_file(path: Path, mib: int) -> str:
    with open(path, "wb") as f:
        for _ in range(mib):
            f.write(os.urandom(MiB))
    return sha256_file(path)


class Meter:
    """Bytes of each blob the device holds so far: its partial in the CAS's ingest, or the committed blob."""

    def __init__(self, data: Path, digests: list[str]) -> None:
        self.cas = data / "cas"
        self.digests = digests

    def held(self, digest: str) -> int:
        for path in (self.cas / "ingest" / f"{digest}.partial", self.cas / "blobs" / "sha256" / digest):
            try:
                return path.stat().st_size
            except FileNotFoundError:
                pass
        return 0

    def sample(self) -> tuple[float, list[int]]:
        return time.monotonic(), [self.held(d) for d in self.digests]

    def rates(self, seconds: float) -> list[float]:
        """Each blob's bytes a second over the next ``seconds``."""
        (t0, n0), _ = self.sample(), time.sleep(seconds)
        t1, n1 = self.sample()
        return [(b - a) / (t1 - t0) for a, b in zip(n0, n1)]

    def wait_running(self, log: Path | None = None, timeout: float = 30) -> None:
        """Until every blob has bytes, plus a second: the window starts once the downloads run."""
        wait_for(lambda: all(self.sample()[1]), timeout, f"downloads to start; log: {_tail(log) if log else ''}",
                 interval=0.05)
        time.sleep(1)


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-2000:] if log.exists() else ""


@pytest.fixture
def agent_run(tmp_path: Path) -> Iterator[Callable[[ConfigBuilder], tuple[Path, Path, Path]]]:
    """Start ``device run`` (daemon mode) on a builder's config; returns (data dir, config file, log)."""
    started = []

    def start(b: ConfigBuilder) -> tuple[Path, Path, Path]:
        data, cfg, log = tmp_path / "dev", tmp_path / "config.pb", tmp_path / "agent.log"
        b.save(cfg)
        started.append(start_agent(data, cfg, log))
        return data, cfg, log

    yield start
    for proc in started:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except Exception:
            proc.kill()


@dataclasses.dataclass
class Stores:
    """One content tree on each of ``len(digests)`` datastores (all on one server), ids fixed, so the config
    can be saved again with other items and the agent sees the same objects."""

    url: str
    digests: list[str]
    device_id: str = dataclasses.field(default_factory=new_id)
    ds_ids: list[str] = dataclasses.field(default_factory=list)
    ct_ids: list[str] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        self.ds_ids = [new_id() for _ in self.digests]
        self.ct_ids = [new_id() for _ in self.digests]

    def config(self, items: dict[str, str]) -> ConfigBuilder:
        b = ConfigBuilder(self.device_id)
        for n, (ds, ct, digest) in enumerate(zip(self.ds_ids, self.ct_ids, self.digests)):
            b.datastore(self.url, ds_id=ds)
            b.content_tree(ds, f"blob{n}.raw", digest, "raw", name=f"blob{n}", ct_id=ct)
        for key, value in items.items():
            b.item(key, value)
        return b


def test_the_device_cap_holds_within_10_percent_over_20_seconds(tmp_path, datastore_dir, http_server, agent_run):
    cap = 4 * MiB
    digests = [random_file(datastore_dir / f"blob{n}.raw", 56) for n in range(2)]  # 28 s at the cap
    stores = Stores(http_server.url, digests)
    data, cfg, log = agent_run(stores.config({DEVICE_CAP: str(cap)}))
    meter = Meter(data, digests)
    meter.wait_running(log)
    rates = meter.rates(20)
    print(f"device cap {cap / MiB:.2f} MiB/s over 20 s: {[round(r / MiB, 3) for r in rates]} MiB/s")
    assert sum(rates) == pytest.approx(cap, rel=0.10), (rates, _tail(log))
    assert min(rates) > 0.3 * cap, rates  # both downloads got a fair part of it

    # not trivially: without the cap the rest arrives at more than twice the rate (loopback does 100s of MB/s)
    _, held = meter.sample()
    left = 2 * 56 * MiB - sum(held)
    stores.config({}).save(cfg)
    lifted = time.monotonic()
    wait_for(lambda: all(n == 56 * MiB for n in meter.sample()[1]), 60, "the rest of both blobs")
    print(f"uncapped: the last {left / MiB:.1f} MiB at {left / (time.monotonic() - lifted) / MiB:.1f} MiB/s")
    assert left / (time.monotonic() - lifted) > 2 * cap


def test_a_datastore_cap_below_the_device_cap_gets_its_own_rate(datastore_dir, http_server, agent_run):
    device_cap, slow_cap = 4 * MiB, 1 * MiB
    digests = [random_file(datastore_dir / "blob0.raw", 16), random_file(datastore_dir / "blob1.raw", 48)]
    stores = Stores(http_server.url, digests)
    data, _, log = agent_run(stores.config({DEVICE_CAP: str(device_cap), own_cap(stores.ds_ids[0]): str(slow_cap),
                                            DEFAULT_CAP: "0"}))
    meter = Meter(data, digests)
    meter.wait_running(log)
    slow, other = meter.rates(6)
    print(f"datastore capped at 1 MiB/s: {slow / MiB:.3f}, the other: {other / MiB:.3f} MiB/s")
    assert slow == pytest.approx(slow_cap, rel=0.15), (slow, other, _tail(log))
    assert slow + other == pytest.approx(device_cap, rel=0.15), (slow, other)  # the other one gets the rest


def test_a_changed_cap_applies_to_the_download_in_flight(datastore_dir, http_server, agent_run):
    digests = [random_file(datastore_dir / "blob0.raw", 32)]
    stores = Stores(http_server.url, digests)
    data, cfg, log = agent_run(stores.config({DEFAULT_CAP: str(MiB)}))
    meter = Meter(data, digests)
    meter.wait_running(log)
    [before] = meter.rates(3)
    print(f"at 1 MiB/s: {before / MiB:.3f} MiB/s")
    assert before == pytest.approx(MiB, rel=0.15), _tail(log)

    stores.config({DEFAULT_CAP: str(MiB), own_cap(stores.ds_ids[0]): str(3 * MiB)}).save(cfg)
    changed = time.monotonic()
    wait_for(lambda: meter.rates(0.5)[0] > 2 * MiB, 10, "the new cap", interval=0)
    followed = time.monotonic() - changed
    assert followed < 2.5
    [after] = meter.rates(3)
    print(f"changed to 3 MiB/s: followed within {followed:.2f} s, then {after / MiB:.3f} MiB/s")
    assert after == pytest.approx(3 * MiB, rel=0.15), _tail(log)
    assert log.read_text().count('"download started"') == 1  # the same download all along, not a new one


# ---------------------------------------------------------------- the controller link is never throttled


def test_a_capped_download_does_not_slow_the_controller_link(tmp_path, datastore_dir, http_server, controller_factory,
                                                             agent_factory):  # noqa: F811
    """The agent runs in this process (as ``device run --controller`` does, with a wire trace), with a cap
    of 256 KiB/s the controller's config cannot carry, so every download byte waits in the bucket; config
    polls, info reports and metrics must keep their pace all the same."""
    from edgevol.cli.main import _start_uplink
    from edgevol.device.reconcile.agent import Agent, AgentOptions
    from edgevol.device.uplink.online import UplinkOptions

    cap = 256 << 10
    digest = random_file(datastore_dir / "big.raw", 16)  # a minute at the cap
    ctrl = controller_factory()
    dev: DeviceAgent = agent_factory(ctrl, "dev1")
    onboard(ctrl, dev, "dev1")
    ctrl.admin("POST", "/datastores", json={"name": "local", "type": "DsHttp", "fqdn": http_server.url})
    ctrl.admin("POST", "/devices/dev1/content-trees", json={"name": "big", "datastore": "local", "url": "big.raw",
                                                            "format": "RAW", "sha256": digest})
    trace = tmp_path / "wire"
    agent = Agent(dev.data_dir, AgentOptions())
    device_bucket = agent.clients.bandwidth.device
    charged_by: set[str] = set()  # the threads whose writes waited in the device's bucket

    def take(n: int, cancel: threading.Event | None = None, _take=device_bucket.take) -> None:
        charged_by.add(threading.current_thread().name.rsplit("_", 1)[0])
        _take(n, cancel)

    device_bucket.take = take  # type: ignore[method-assign]
    uplink = _start_uplink(agent, ctrl.url, ctrl.root_ca, None, None, trace,
                           UplinkOptions(serial=dev.serial, poll_interval=0.5, metrics_interval=1))

    def poll() -> None:
        desired = uplink.poll()
        if desired is not None:
            desired.settings = dataclasses.replace(desired.settings, download_bytes_per_second=cap)
            agent.set_desired(desired)

    stop = threading.Event()
    runner = threading.Thread(target=agent.run, args=(poll, 0.2, stop))
    runner.start()
    try:
        meter = Meter(dev.data_dir, [digest])
        meter.wait_running()
        polls_before, sent_before = _exchanges(trace, "config"), _exchanges(trace, "info")
        progress = [_reported_progress(ctrl)]
        t0, [n0] = meter.sample()
        for _ in range(6):
            time.sleep(1)
            progress.append(_reported_progress(ctrl))
        t1, [n1] = meter.sample()
        polls = _exchanges(trace, "config")[len(polls_before):]
        print(f"download at {(n1 - n0) / (t1 - t0) / 1024:.0f} KiB/s (cap {cap >> 10}); in {t1 - t0:.1f} s "
              f"{len(polls)} config polls; progress heard by the controller: {progress}")
        assert (n1 - n0) / (t1 - t0) < 1.2 * cap  # the download is held at the cap all along
        assert len(polls) >= 6, polls  # every 0.5 s (±20 %) in 6 s: about 12
        assert len(_exchanges(trace, "metrics")) >= 4
        assert len(_exchanges(trace, "info")) > len(sent_before)
        assert progress[-1] > progress[0], progress  # the controller hears the download's progress as it goes
        assert charged_by == {"edgevol-work"}, charged_by  # downloads only: the uplink's threads never wait there
    finally:
        stop.set()
        agent.wake.set()
        runner.join(30)
        uplink.stop()
        agent.close()


def _exchanges(trace: Path, kind: str) -> list[str]:
    """Names of the recorded POSTs of one kind (``config``, ``info``, ``metrics``), in order."""
    return sorted(p.name for p in trace.glob(f"*-POST-{kind}.json")) if trace.exists() else []


def _reported_progress(ctrl) -> int:
    """The content tree's progress as the controller last heard it from the device (0 before any report)."""
    return max((p for (kind, _, _), (_, p) in controller_view(ctrl, "dev1").items() if kind == "content_tree"),
               default=0)
