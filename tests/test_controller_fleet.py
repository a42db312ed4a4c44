"""The controller's device API at fleet scale, in-process on SQLite and PostgreSQL (issue 16).

A config poll answered 304 costs at most two SQL statements and never
rebuilds the config; the cache it uses is keyed by the device row's version
columns, so no change to a device's config, and no re-onboarding, can be
answered from it. Info and metrics are stored in group commits and answered
only once committed; a report that cannot be stored fails alone.
"""

from __future__ import annotations

import base64
import itertools
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import event, text

from edgevol.api import messages as m
from edgevol.controller.configbuild import CredentialEncryption, build_config, config_hash
from edgevol.controller.context import ControllerContext, load_context
from edgevol.controller.db.infomsg import metrics_report
from edgevol.controller.db.session import WRITE_OPTION, make_engine
from edgevol.controller.device_api import DeviceAPI
from edgevol.controller.ingest import ReportWriter
from edgevol.trust.envelope import AuthError, open_message, seal_message
from edgevol.trust.pki import Credential, create_self_signed, pem_hash
from tests.controller_fixture import Controller, controller_factory, wait_for  # noqa: F401
from tests.test_controller_wire import registered
from tests.pg_fixture import PgCluster, db_url, pg_cluster, pg_url  # noqa: F401

PEER = "192.0.2.10"  # not loopback: credentials go out encrypted, as to a device in the field
SHA = "ab" * 32


@dataclass
class Dev:
    uuid: str
    key: Credential
    token: bytes


class Statements:
    """Counts SQL statements sent to the database."""

    def __init__(self, ctx: ControllerContext) -> None:
        self.n = 0
        event.listen(ctx.store.engine, "before_cursor_execute", self._count)

    def _count(self, *_args: Any) -> None:
        self.n += 1


@pytest.fixture
def ctx(db_url: str, tmp_path: Path) -> Iterator[ControllerContext]:  # noqa: F811
    context = load_context(tmp_path / "controller", db_url)
    yield context
    context.store.close()


@pytest.fixture
def api(ctx: ControllerContext) -> Iterator[DeviceAPI]:
    device_api = DeviceAPI(ctx)
    device_api.start()
    yield device_api
    device_api.stop()


def onboard(ctx: ControllerContext, api: DeviceAPI, name: str, *, uuid: str | None = None,
            onboarding: Credential | None = None, key: Credential | None = None) -> Dev:
    """Expect, register and attest a device as EVE does (register, then attest NONCE and QUOTE)."""
    onboarding = onboarding or create_self_signed(f"{name} onboarding")
    dev = ctx.store.create_device(name, f"SN-{name}", onboarding.cert_pem, uuid=uuid)
    key = key or create_self_signed(f"{name} device")
    reg = m.ZRegisterMsg(pemCert=base64.b64encode(key.cert_pem), serial=f"SN-{name}")
    assert api.register(seal_message(reg, onboarding, include_cert=True)).status_code == 201
    assert api.attest(seal_message(m.ZAttestReq(reqType=m.ZAttestReqType.ATTEST_REQ_NONCE), key),
                      dev.uuid).status_code == 201
    quote = m.ZAttestReq(reqType=m.ZAttestReqType.ATTEST_REQ_QUOTE, quote=m.ZAttestQuote())
    resp = api.attest(seal_message(quote, key), dev.uuid)
    answer = m.ZAttestResponse.FromString(m.AuthContainer.FromString(bytes(resp.body)).protectedPayload.payload)
    return Dev(dev.uuid, key, bytes(answer.quoteResp.integrity_token))


def poll(ctx: ControllerContext, api: DeviceAPI, dev: Dev, known_hash: str = "") -> tuple[int, Any]:
    """One signed config request; (status, ConfigResponse or None), the answer's signature checked."""
    body = seal_message(m.ConfigRequest(configHash=known_hash, integrity_token=dev.token), dev.key)
    resp = api.config(body, dev.uuid, PEER)
    if resp.status_code != 200:
        return resp.status_code, None
    signer = ctx.signing.cert_pem
    lookup = {pem_hash(signer, m.HashAlgorithm.HASH_ALGORITHM_SHA256_32BYTES): signer}.get
    answer, _ = open_message(bytes(resp.body), m.ConfigResponse, lookup)
    return 200, answer


def fresh_hash(ctx: ControllerContext, dev: Dev) -> str:
    """The hash of the config built right now from the database, bypassing every cache."""
    return config_hash(build_config(ctx.store, dev.uuid, CredentialEncryption(ctx.ecdh, "auto")))


def test_a_304_costs_at_most_two_statements_and_no_rebuild(ctx: ControllerContext, api: DeviceAPI) -> None:
    dev = onboard(ctx, api, "edge")
    ctx.store.create_datastore("ds", "DsHttp", "http://192.0.2.1", api_key="user", password="secret")
    ctx.store.create_content_tree(dev.uuid, "img", "ds", "img.qcow2", "QCOW2", sha256=SHA)
    ctx.store.create_volume(dev.uuid, "vol", content_tree="img")
    status, first = poll(ctx, api, dev)
    assert status == 200 and first.configHash == fresh_hash(ctx, dev)
    assert first.config.datastores[0].cipherData.cipherContextId  # encrypted for a device in the field
    assert poll(ctx, api, dev, first.configHash)[0] == 304  # acknowledges the version once (a write)
    builds = api.configs.builds
    sql = Statements(ctx)
    for _ in range(20):
        assert poll(ctx, api, dev, first.configHash)[0] == 304
    assert sql.n <= 2 * 20, f"{sql.n / 20} statements per 304"
    assert api.configs.builds == builds  # answered from the hash kept for this version
    # an outdated hash gets the whole config again, from the signed answer kept for this version
    sql.n = 0
    status, again = poll(ctx, api, dev, "0" * 64)
    assert status == 200 and again.configHash == first.configHash and sql.n <= 2
    # the hash is kept in the device's row: another process, or this one restarted, builds nothing either
    api.writer._flush_seen()  # what the writer thread does every second
    restarted = DeviceAPI(ctx)
    restarted.start()
    try:
        sql.n = 0
        assert poll(ctx, restarted, dev, first.configHash)[0] == 304
        assert restarted.configs.builds == 0 and sql.n <= 2
    finally:
        restarted.stop()


CHANGES: list[tuple[str, Callable[[ControllerContext, str], Any]]] = [
    ("datastore credentials", lambda c, d: c.store.update_datastore("ds", password="rotated")),
    ("datastore fqdn", lambda c, d: c.store.update_datastore("ds", fqdn="http://192.0.2.2")),
    ("content tree url", lambda c, d: c.store.update_content_tree("img", device=d, url="other.qcow2")),
    ("new content tree", lambda c, d: c.store.create_content_tree(d, "img2", "ds", "b.raw", "RAW", sha256=SHA)),
    ("volume purge", lambda c, d: c.store.purge_volume("vol", device=d)),
    ("volume size", lambda c, d: c.store.update_volume("vol", device=d, max_size_bytes=1 << 30)),
    ("new blank volume", lambda c, d: c.store.create_volume(d, "blank", max_size_bytes=1 << 20)),
    ("new app", lambda c, d: c.store.create_app(d, "app", volumes=["vol"])),
    ("app deactivated", lambda c, d: c.store.update_app("app", device=d, activate=False)),
    ("app volume refs", lambda c, d: c.store.set_app_volume_refs("app", ["vol", "blank"], device=d)),
    ("app purge", lambda c, d: c.store.purge_app("app", device=d)),
    ("app deleted", lambda c, d: c.store.delete_app("app", device=d)),
    ("volume deleted", lambda c, d: c.store.delete_volume("blank", device=d)),
    ("content tree deleted", lambda c, d: c.store.delete_content_tree("img2", device=d)),
]


def test_no_change_is_ever_answered_from_the_cache(ctx: ControllerContext, api: DeviceAPI) -> None:
    """Every kind of change, seen by this process and by a second one with its own warm cache."""
    other = DeviceAPI(ctx)  # another controller process: its own caches, the same database
    dev = onboard(ctx, api, "edge")
    ctx.store.create_datastore("ds", "DsHttp", "http://192.0.2.1", api_key="user", password="secret")
    ctx.store.create_content_tree(dev.uuid, "img", "ds", "img.qcow2", "QCOW2", sha256=SHA)
    ctx.store.create_volume(dev.uuid, "vol", content_tree="img")
    seen = set()
    for what, change in CHANGES:
        for process in (api, other):
            status, cfg = poll(ctx, process, dev)
            assert status == 200
            assert poll(ctx, process, dev, cfg.configHash)[0] == 304  # warm: the hash is cached
        change(ctx, dev.uuid)
        expected = fresh_hash(ctx, dev)
        for process in (api, other):
            status, cfg = poll(ctx, process, dev, "" if process is other else cfg.configHash)
            assert status == 200, f"{what}: the old config was still answered as current"
            assert cfg.configHash == expected, f"{what}: a stale config was served"
        assert expected not in seen, f"{what}: the change did not change the config"
        seen.add(expected)


@pytest.mark.parametrize("new_key", [False, True], ids=["same-key", "re-keyed"])
def test_a_re_onboarded_device_gets_its_new_config_not_the_cached_one(ctx: ControllerContext, api: DeviceAPI,
                                                                      new_key: bool) -> None:
    """Deleted and created again with the same uuid, its config version restarts at 1: a new key all the same.

    With the same device key (the operator re-created it; the device was not reinstalled) only the row's
    creation time tells the two apart; with a new key the old one is refused at once.
    """
    onboarding = create_self_signed("fleet onboarding")
    dev = onboard(ctx, api, "edge", onboarding=onboarding)
    ctx.store.create_volume(dev.uuid, "before", max_size_bytes=1 << 20)
    status, old = poll(ctx, api, dev)
    assert status == 200 and [v.displayName for v in old.config.volumes] == ["before"]
    version = ctx.store.get_device(dev.uuid).config_version
    ctx.store.delete_device(dev.uuid)
    with pytest.raises(AuthError) as refused:  # deleted: refused at once (the router answers its status)
        poll(ctx, api, dev, old.configHash)
    assert refused.value.status == 401
    again = onboard(ctx, api, "edge", uuid=dev.uuid, onboarding=onboarding, key=None if new_key else dev.key)
    while ctx.store.get_device(again.uuid).config_version < version:  # the version number the old one had
        ctx.store.create_volume(again.uuid, f"v{ctx.store.get_device(again.uuid).config_version}",
                                max_size_bytes=1 << 20)
    assert ctx.store.get_device(again.uuid).config_version == version
    status, new = poll(ctx, api, again, old.configHash)
    assert status == 200, "the re-created device was told its old config is current"
    assert "before" not in [v.displayName for v in new.config.volumes]
    assert new.configHash == fresh_hash(ctx, again)
    if new_key:
        with pytest.raises(AuthError) as refused:
            poll(ctx, api, dev, new.configHash)
        assert refused.value.status == 401


def metrics_body(dev: Dev, volume: str) -> bytes:
    msg = m.ZMetricMsg(devID=dev.uuid)
    msg.vm.add(uuid=volume, displayName="v", totalBytes=100, usedBytes=10, freeBytes=90)
    msg.atTimeStamp.GetCurrentTime()
    return seal_message(msg, dev.key)


def test_reports_are_group_committed_and_answered_after_commit(ctx: ControllerContext, api: DeviceAPI) -> None:
    devs = [onboard(ctx, api, f"edge{i}") for i in range(4)]
    volumes = [f"00000000-0000-4000-8000-{i:012d}" for i in range(200)]
    statuses: list[int] = []
    lock = threading.Lock()

    def post(k: int) -> None:
        for j in range(k, len(volumes), 8):
            dev = devs[j % len(devs)]
            status = api.metrics(metrics_body(dev, volumes[j]), dev.uuid).status_code
            with lock:
                statuses.append(status)

    threads = [threading.Thread(target=post, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses == [201] * len(volumes)
    assert ctx.store.count("volume_metrics") == len(volumes)  # answered 201: already committed
    assert api.writer.batches < len(volumes), "every report took a transaction of its own"
    for j, vol in enumerate(volumes):
        [sample] = ctx.store.volume_metrics(devs[j % len(devs)].uuid, vol)
        assert sample.used_bytes == 10


def test_a_report_that_cannot_be_stored_fails_alone(ctx: ControllerContext, api: DeviceAPI) -> None:
    a, b = onboard(ctx, api, "a"), onboard(ctx, api, "b")
    gone = ctx.store.sender(bytes(ctx.store.get_device(b.uuid).device_cert_hash or b""))
    assert gone is not None
    reports = [m.ZMetricMsg(devID=a.uuid), m.ZMetricMsg(devID=b.uuid)]
    for msg, vol in zip(reports, ("11111111-1111-4111-8111-111111111111", "22222222-2222-4222-8222-222222222222")):
        msg.vm.add(uuid=vol, totalBytes=1)
    ctx.store.delete_device(b.uuid)  # between its authentication and the commit
    results = ctx.store.record_reports([metrics_report(a.uuid, reports[0]), metrics_report(b.uuid, reports[1])])
    assert results[0] == 1 and "not found" in str(results[1])
    assert ctx.store.count("volume_metrics") == 1


def test_a_full_queue_answers_503_with_retry_after_and_loses_nothing_accepted(
        ctx: ControllerContext, db_url: str) -> None:  # noqa: F811
    """The writer stuck behind a lock held elsewhere: the queue fills, then devices are told to come back.

    A 5xx is what EVE treats as temporary: the report stays in its deferred queue and is sent again
    (eve pkg/pillar/controllerconn/deferred.go:259-266, retriableHTTPStatus; deferred_policy_test.go:207).
    """
    api = DeviceAPI(ctx)
    api.writer = ReportWriter(ctx.store, max_batch=1, max_queued=2)  # one in the writer, two waiting
    api.start()
    dev = onboard(ctx, api, "edge")
    blocker = ctx.store.engine.connect()
    blocker.execution_options(**{WRITE_OPTION: True})
    blocker.begin()  # SQLite: BEGIN IMMEDIATE takes the one write lock
    if not db_url.startswith("sqlite"):
        blocker.execute(text("LOCK TABLE volume_metrics IN EXCLUSIVE MODE"))
    results: list[int] = []

    def post(i: int) -> None:
        results.append(api.metrics(metrics_body(dev, f"00000000-0000-4000-8000-{i:012d}"), dev.uuid).status_code)

    threads = [threading.Thread(target=post, args=(i,)) for i in range(6)]
    try:
        for t in threads:
            t.start()
        wait_for(lambda: len(results) == 3, 20, "three posts refused while three wait")
        assert results == [503, 503, 503]
        busy = api.metrics(metrics_body(dev, "00000000-0000-4000-8000-999999999999"), dev.uuid)
        assert busy.status_code == 503 and busy.headers["retry-after"] == "5"
    finally:
        blocker.rollback()
        blocker.close()
    for t in threads:
        t.join()
    api.stop()
    assert sorted(results) == [201, 201, 201, 503, 503, 503]
    assert ctx.store.count("volume_metrics") == 3  # exactly the accepted ones


def test_last_seen_and_acks_are_written_in_batches_and_never_go_back(ctx: ControllerContext,
                                                                     api: DeviceAPI) -> None:
    dev = onboard(ctx, api, "edge")
    status, cfg = poll(ctx, api, dev)
    assert status == 200 and poll(ctx, api, dev, cfg.configHash)[0] == 304  # runs it: an acknowledgement
    api.writer._flush_seen()  # what the writer thread does every second
    row = ctx.store.get_device(dev.uuid)
    assert row.last_seen_at is not None and row.config_acked_version == row.config_version
    # late flushes from another process, with older values, change nothing
    ctx.store.record_contacts({dev.uuid: row.last_seen_at.replace(year=row.last_seen_at.year - 1)},
                              {dev.uuid: row.config_version - 1})
    again = ctx.store.get_device(dev.uuid)
    assert (again.last_seen_at, again.config_acked_version) == (row.last_seen_at, row.config_version)


def kill_tree(pid: int) -> None:
    """SIGKILL a process and all its descendants at once, as a power cut would end them."""
    procs, todo = [], [pid]
    while todo:
        p = todo.pop()
        procs.append(p)
        try:
            todo += [int(c) for c in Path(f"/proc/{p}/task/{p}/children").read_text().split()]
        except OSError:
            pass
    for p in procs:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_kill_9_during_batched_ingestion_loses_no_accepted_report(
        db_url: str, controller_factory: Callable[..., Controller]) -> None:  # noqa: F811
    """A real controller process killed while devices stream metrics: every 201 is in the database."""
    ctrl = controller_factory(db_url)
    dev = registered(ctrl, "edge")
    accepted: list[str] = []
    failed: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def stream(worker: int) -> None:
        with httpx.Client(base_url=f"{ctrl.url}/api/v2/edgedevice", timeout=30) as http:
            for i in itertools.count():
                if stop.is_set():
                    return
                vol = f"00000000-0000-4000-8{worker:03d}-{i:012d}"
                msg = m.ZMetricMsg(devID=dev.uuid)
                msg.vm.add(uuid=vol, totalBytes=100, usedBytes=1)
                try:
                    status = http.post(f"/id/{dev.uuid}/metrics", content=seal_message(msg, dev.device)).status_code
                except httpx.HTTPError:
                    status = 0
                with lock:
                    (accepted if status == 201 else failed).append(vol)
                if status != 201:
                    return  # the controller is gone

    threads = [threading.Thread(target=stream, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    wait_for(lambda: len(accepted) >= 300, 60, "300 reports accepted")
    assert ctrl.proc is not None
    kill_tree(ctrl.proc.pid)  # SIGKILL to every process of it (PostgreSQL: 2 workers), requests in flight
    ctrl.proc.wait()
    stop.set()
    for t in threads:
        t.join()
    assert failed, "nothing was in flight at the kill"
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            stored = {row[0] for row in conn.execute(text("SELECT volume_uuid FROM volume_metrics"))}
    finally:
        engine.dispose()
    lost = set(accepted) - stored
    assert not lost, f"{len(lost)} of {len(accepted)} accepted reports lost"
    ctrl.proc = None
    ctrl.start()  # and it comes back on the same database
    msg = m.ZMetricMsg(devID=dev.uuid)
    msg.vm.add(uuid="11111111-1111-4111-8111-111111111111", totalBytes=1)
    assert ctrl.post(f"/id/{dev.uuid}/metrics", seal_message(msg, dev.device)).status_code == 201


def test_a_postgresql_restart_costs_no_device_request(tmp_path: Path, pg_cluster: PgCluster) -> None:  # noqa: F811
    """No ping on checkout (it would double a poll's round trips): a dropped connection is retried instead."""
    pg_cluster.admin("CREATE DATABASE restart_test")
    ctx = load_context(tmp_path / "controller", pg_cluster.url("restart_test"))
    api = DeviceAPI(ctx)
    try:
        dev = onboard(ctx, api, "edge")
        status, cfg = poll(ctx, api, dev)
        assert status == 200
        warm = [ctx.store.engine.connect() for _ in range(3)]  # several pooled connections, all to be dropped
        for conn in warm:
            conn.close()
        pg_cluster.run(str(pg_cluster.bin / "pg_ctl"), "-D", str(pg_cluster.data), "-l", str(pg_cluster.log), "-m", "fast",
                       "-w", "restart")  # the same options again (postmaster.opts), the log to its file
        for _ in range(5):
            assert poll(ctx, api, dev, cfg.configHash)[0] == 304
    finally:
        ctx.store.close()
        pg_cluster.admin("DROP DATABASE restart_test")


def test_retention_prunes_in_the_background_of_every_worker(
        controller_factory: Callable[..., Controller]) -> None:  # noqa: F811
    """`controller run --workers 2 --metrics-per-volume 3 --history-limit 2 --prune-interval 0.5`: the limits
    reach the worker processes, and rows past them go without any request asking."""
    ctrl = controller_factory(args=("--workers", "2", "--metrics-per-volume", "3", "--history-limit", "2",
                                    "--prune-interval", "0.5"))
    dev = registered(ctrl, "edge")
    vol = "11111111-1111-4111-8111-111111111111"
    states = [m.ZSwState.DOWNLOAD_STARTED, m.ZSwState.VERIFYING, m.ZSwState.CREATING_VOLUME,
              m.ZSwState.CREATED_VOLUME]
    base = int(time.time()) - 60  # within the 7 days metrics are kept
    for i, state in enumerate(states):
        msg = m.ZMetricMsg(devID=dev.uuid)
        msg.vm.add(uuid=vol, totalBytes=100, usedBytes=i)
        msg.atTimeStamp.FromSeconds(base + i)
        assert ctrl.post(f"/id/{dev.uuid}/metrics", seal_message(msg, dev.device)).status_code == 201
        info = m.ZInfoMsg(ztype=m.ZInfoTypes.ZiVolume, devId=dev.uuid)
        info.vinfo.uuid, info.vinfo.state = vol, state
        info.atTimeStamp.FromSeconds(base + i)
        assert ctrl.post(f"/id/{dev.uuid}/info", seal_message(info, dev.device)).status_code == 201
    wait_for(lambda: (ctrl.count("volume_metrics"), ctrl.count("state_changes")) == (3, 2), 30,
             "metrics and history pruned to their limits")
    engine = make_engine(ctrl.db_url)
    try:
        with engine.connect() as conn:  # the newest were kept
            kept = conn.execute(text("SELECT used_bytes FROM volume_metrics ORDER BY used_bytes")).scalars().all()
            states_kept = conn.execute(text("SELECT state FROM state_changes ORDER BY state")).scalars().all()
    finally:
        engine.dispose()
    assert kept == [1, 2, 3] and states_kept == sorted(states[-2:])
