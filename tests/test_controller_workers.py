"""Several controller processes at once: separate `controller run`s on one database, and `--workers N`.

Real processes on a real PostgreSQL (and SQLite where cheap). What must hold
across processes is what a fleet behind a load balancer relies on: a change
made through any process is in the very next config answer of every other;
a deleted or re-keyed device is refused everywhere at once; workers share one
listening socket, keys made once by their parent, and all stop on SIGTERM.

Which worker answers a request is the kernel's choice. To show that each one
serves, every worker but one is stopped (SIGSTOP) for a moment: a request
answered then can only have been answered by the one left running.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from edgevol.api import messages as m
from edgevol.controller.store import ControllerStore
from edgevol.device.uplink.client import ControllerClient
from edgevol.trust.envelope import open_controller_certs, seal_message
from edgevol.trust.pki import Credential, create_self_signed
from tests.controller_fixture import Controller, free_port, wait_for
from tests.pg_fixture import PgCluster, pg_cluster  # noqa: F401
from tests.test_controller_wire import Dev, registered

MiB = 1 << 20
T = TypeVar("T")
_dbs = itertools.count()


# ---------------------------------------------------------------- processes


def _ppid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # the command name in parentheses may hold spaces
    return None if fields[0] == "Z" else int(fields[1])


def children(pid: int) -> list[int]:
    return sorted(int(p) for p in os.listdir("/proc") if p.isdigit() and _ppid(int(p)) == pid)


def workers_of(ctrl: Controller) -> list[int]:
    """The worker processes uvicorn spawned (not its multiprocessing resource tracker)."""
    assert ctrl.proc is not None
    out = []
    for pid in children(ctrl.proc.pid):
        try:
            if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes():
                out.append(pid)
        except OSError:
            pass
    return out


def alive(pid: int) -> bool:
    return _ppid(pid) is not None


def log_events(ctrl: Controller, event: str) -> list[dict[str, Any]]:
    """JSON log lines of this controller (its stderr is not a terminal) with this event."""
    text = (ctrl.data_dir.parent / f"controller-{ctrl.port}.log").read_text(errors="replace")
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    return [e for e in lines if e.get("event") == event]


def log_text(ctrl: Controller) -> str:
    return (ctrl.data_dir.parent / f"controller-{ctrl.port}.log").read_text(errors="replace")


class Fleet:
    """Controllers started by a test, stopped at its end with any worker left behind."""

    def __init__(self) -> None:
        self.started: list[Controller] = []
        self.pids: set[int] = set()

    def start(self, data_dir: Path, db_url: str, *args: str, tls: bool = False) -> Controller:
        ctrl = Controller(data_dir, free_port(), db_url, tls=tls, args=args)
        self.started.append(ctrl)
        ctrl.start()  # one worker answering ping is enough for this: wait for the others too
        wait_for(lambda: len(log_events(ctrl, "controller worker serving")) == len(workers_of(ctrl)), 30,
                 "every worker to serve")
        assert ctrl.proc is not None
        self.pids.update(children(ctrl.proc.pid))
        return ctrl

    def stop(self) -> None:
        for ctrl in self.started:
            if ctrl.proc is not None:
                self.pids.update(children(ctrl.proc.pid))
            ctrl.stop()
        for pid in self.pids:  # only if a parent was killed before it could stop its workers
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def _new_database(cluster: PgCluster) -> str:
    name = f"w{os.getpid()}_{next(_dbs)}"
    cluster.admin(f"CREATE DATABASE {name}")
    return name


@pytest.fixture
def fresh_db(pg_cluster: PgCluster) -> Iterator[str]:  # noqa: F811
    """An empty PostgreSQL database, dropped after the test (request it before ``fleet``)."""
    name = _new_database(pg_cluster)
    yield pg_cluster.url(name)
    pg_cluster.admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def fleet() -> Iterator[Fleet]:
    f = Fleet()
    yield f
    f.stop()


@pytest.fixture(scope="module")
def pair(pg_cluster: PgCluster,  # noqa: F811
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Controller, Controller, str]]:
    """Two `controller run`s, one data dir, one PostgreSQL database: A with the default number of workers
    (one per core on PostgreSQL), B with one process. Shared by the tests that need two processes."""
    name = _new_database(pg_cluster)
    url = pg_cluster.url(name)
    f = Fleet()
    data = tmp_path_factory.mktemp("pair") / "controller"
    data.mkdir()
    try:
        a = f.start(data, url)
        b = f.start(data, url, "--workers", "1")
        yield a, b, url
    finally:
        f.stop()
        pg_cluster.admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def cores() -> int:
    return len(os.sched_getaffinity(0))


@contextmanager
def only(workers: list[int], pid: int) -> Iterator[None]:
    """Every worker but ``pid`` stopped: what the controller answers now, ``pid`` answered."""
    others = [w for w in workers if w != pid]
    for w in others:
        os.kill(w, signal.SIGSTOP)
    try:
        yield
    finally:
        for w in others:
            os.kill(w, signal.SIGCONT)


def everywhere(ctrls: tuple[Controller, ...], ask: Callable[[Controller], T]) -> list[T]:
    """``ask`` answered by every serving process of ``ctrls`` in turn: each worker alone, or the process."""
    answers = []
    for ctrl in ctrls:
        workers = workers_of(ctrl)
        for pid in workers or [0]:
            with only(workers, pid):
                answers.append(ask(ctrl))
    return answers


# ---------------------------------------------------------------- device helpers


def client(ctrl: Controller, device: Credential) -> ControllerClient:
    return ControllerClient(ctrl.url, ctrl.root_ca.read_bytes(), device)


def config(ctrl: Controller, dev: Dev, known: str) -> Any | None:
    """The device's config poll through ``ctrl``: the verified ConfigResponse, or None for 304."""
    c = client(ctrl, dev.device)
    try:
        return c.config(dev.uuid, known, dev.token)
    finally:
        c.close()


def poll_status(ctrl: Controller, uuid: str, device: Credential, token: bytes, known: str = "") -> int:
    body = seal_message(m.ConfigRequest(configHash=known, integrity_token=token), device)
    return ctrl.post(f"/id/{uuid}/config", body).status_code


def volumes(cfg: Any) -> list[tuple[str, str]]:
    return sorted((v.uuid, v.displayName) for v in cfg.config.volumes)


# ---------------------------------------------------------------- a. change through A, seen through B


def test_a_change_through_one_process_is_in_the_next_config_poll_of_another(pair):
    a, b, _url = pair
    assert len(workers_of(a)) == (cores() if cores() > 1 else 0)  # the default on PostgreSQL: one per core
    assert workers_of(b) == []
    ab = (a, b)
    n = len(everywhere(ab, lambda c: 0))
    dev = registered(a, "seen")
    first = config(b, dev, "")
    assert first is not None and volumes(first) == []
    known = first.configHash
    assert config(b, dev, known) is None and config(a, dev, known) is None

    # Volumes created alternately through A and B: the other process's very next poll carries each
    # (every worker's: each answers the poll in turn, the others stopped).
    expected: list[tuple[str, str]] = []
    for i, (writer, reader) in enumerate([(a, b), (b, a)] * 3):
        vol = writer.admin("POST", f"/devices/{dev.uuid}/volumes",
                           json={"name": f"v{i}", "origin": "blank", "max_size_bytes": MiB})
        expected.append((vol["uuid"], f"v{i}"))
        answers = everywhere((reader,), lambda c: config(c, dev, known))
        assert None not in answers, f"round {i}: a 304 from {reader.port} after a change through {writer.port}"
        assert {got.configHash for got in answers} != {known} and len({got.configHash for got in answers}) == 1
        assert all(volumes(got) == sorted(expected) for got in answers)
        known = answers[0].configHash
        assert everywhere(ab, lambda c: config(c, dev, known)) == [None] * n  # every process agrees on the hash

    # An app, and a change to it, the same way.
    app = a.admin("POST", f"/devices/{dev.uuid}/apps", json={"name": "app", "volumes": [expected[0][0]]})
    got = config(b, dev, known)
    assert got is not None and [(x.uuidandversion.uuid, [r.uuid for r in x.volumeRefList])
                                for x in got.config.apps] == [(app["uuid"], [expected[0][0]])]
    known = got.configHash
    b.admin("PUT", f"/devices/{dev.uuid}/apps/{app['uuid']}/volume-refs", json={"volumes": [expected[1][0]]})
    got = config(a, dev, known)
    assert got is not None and [[r.uuid for r in x.volumeRefList] for x in got.config.apps] == [[expected[1][0]]]


# ---------------------------------------------------------------- c. deleted and re-keyed devices


def test_a_deleted_or_rekeyed_device_is_refused_at_once_by_every_process(pair):
    a, b, url = pair
    ab = (a, b)
    dev = registered(a, "rekeyed")
    a.admin("POST", f"/devices/{dev.uuid}/volumes", json={"name": "old", "origin": "blank", "max_size_bytes": MiB})
    old = config(b, dev, "")
    assert old is not None and [n for _, n in volumes(old)] == ["old"]
    old_version = a.admin("GET", f"/devices/{dev.uuid}")["config_version"]
    # Every worker of every process has answered this device (whatever it keeps about it is warm).
    n = len(everywhere(ab, lambda c: 0))
    assert everywhere(ab, lambda c: poll_status(c, dev.uuid, dev.device, dev.token, old.configHash)) == [304] * n

    a.admin("DELETE", f"/devices/{dev.uuid}")
    assert everywhere(ab, lambda c: poll_status(c, dev.uuid, dev.device, dev.token, old.configHash)) == [401] * n

    # Re-onboarded: the same uuid, name, serial and onboarding certificate (the admin API always assigns a
    # new uuid; the store takes one, as a restore would), then a new device key registered through B.
    with ControllerStore(url) as store:
        store.create_device(dev.name, dev.serial, dev.onboarding.cert_pem, uuid=dev.uuid)
    assert everywhere(ab, lambda c: poll_status(c, dev.uuid, dev.device, dev.token)) == [401] * n
    new_key = create_self_signed("rekeyed device, reinstalled")
    c = client(b, new_key)
    try:
        assert c.register(dev.onboarding, dev.serial) == 201
        assert c.uuid() == dev.uuid
        token = c.attest(dev.uuid)
    finally:
        c.close()
    assert everywhere(ab, lambda c: poll_status(c, dev.uuid, dev.device, dev.token)) == [401] * n
    assert everywhere(ab, lambda c: poll_status(c, dev.uuid, dev.device, token)) == [401] * n
    assert everywhere(ab, lambda c: poll_status(c, dev.uuid, new_key, token)) == [200] * n

    # Its config version starts again (here at the number the old device had reached) with other content:
    # a device sending the old device's hash gets the whole new config from every process, never a 304.
    vol = a.admin("POST", f"/devices/{dev.uuid}/volumes", json={"name": "new", "origin": "blank",
                                                                "max_size_bytes": MiB})
    version = a.admin("GET", f"/devices/{dev.uuid}")["config_version"]
    rekeyed = Dev(dev.name, dev.uuid, dev.serial, new_key, dev.onboarding, token)
    answers = everywhere(ab, lambda c: config(c, rekeyed, old.configHash))
    assert None not in answers, f"304 (config version {version}, the old device's {old_version})"
    assert [(volumes(got), got.configHash != old.configHash) for got in answers] == \
        [([(vol["uuid"], "new")], True)] * n


# ---------------------------------------------------------------- b + d. --workers 2


def test_workers_start_on_a_fresh_dir_share_one_tls_socket_and_stop_on_sigterm(fresh_db, fleet, tmp_path):
    data = tmp_path / "controller"
    data.mkdir()
    ctrl = fleet.start(data, fresh_db, "--workers", "2", tls=True)  # nothing in data or the database yet
    assert ctrl.proc is not None
    workers = workers_of(ctrl)
    assert len(workers) == 2
    serving = log_events(ctrl, "controller worker serving")
    assert sorted(e["pid"] for e in serving) == workers and {e["parent"] for e in serving} == {ctrl.proc.pid}
    for pid in workers:  # uvicorn[standard]: httptools parses HTTP and uvloop runs the event loop
        maps = Path(f"/proc/{pid}/maps").read_text()
        assert "httptools" in maps and "uvloop" in maps, pid

    # Keys made once, by the parent: one root CA, one signing and ECDH pair, one TLS certificate.
    pki = data / "pki"
    names = sorted(p.name for p in pki.iterdir())
    assert [n for n in names if not n.startswith("tls-")] == ["ecdh.key", "ecdh.pem", "root-ca.key", "root-ca.pem",
                                                              "signing.key", "signing.pem"]
    assert len([n for n in names if n.startswith("tls-")]) == 2
    written = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in pki.iterdir()}
    root = ctrl.root_ca.read_bytes()

    # Each worker alone (the other stopped) answers over TLS, signing with the one signing certificate.
    for pid in workers:
        with only(workers, pid):
            resp = httpx.get(f"{ctrl.url}/api/v2/edgedevice/certs", timeout=5, verify=ctrl.verify)
            assert resp.status_code == 200, f"worker {pid} alone: {resp.status_code}"
            _certs, signer = open_controller_certs(resp.content, root)
            assert signer == (pki / "signing.pem").read_bytes()
            assert ctrl.admin("GET", "/devices") == []

    # Many requests at once, and a device onboarding and polling through whichever worker answers.
    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(lambda _: httpx.get(f"{ctrl.url}/api/v2/edgedevice/ping", timeout=10,
                                                     verify=ctrl.verify).status_code, range(32)))
    assert statuses == [200] * 32
    dev = registered(ctrl, "w")
    ctrl.admin("POST", f"/devices/{dev.uuid}/volumes", json={"name": "v", "origin": "blank", "max_size_bytes": MiB})
    got = config(ctrl, dev, "")
    assert got is not None and [n for _, n in volumes(got)] == ["v"]
    assert all(config(ctrl, dev, got.configHash) is None for _ in range(6))

    assert {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in pki.iterdir()} == written  # none rewritten

    # SIGTERM to the parent stops every worker, then the parent, cleanly.
    everyone = children(ctrl.proc.pid)
    ctrl.proc.send_signal(signal.SIGTERM)
    assert ctrl.proc.wait(20) == 0
    assert [p for p in workers if alive(p)] == []  # the parent waited for them
    # multiprocessing's resource tracker (the other child) leaves once it sees its parent gone
    wait_for(lambda: not any(alive(p) for p in everyone), 10, "every child of the controller to exit")
    assert log_events(ctrl, "controller stopped")[0]["workers"] == workers


# ---------------------------------------------------------------- SQLite


def test_sqlite_is_one_process_by_default_and_more_workers_are_warned_about(fleet, tmp_path):
    def sqlite(name: str) -> tuple[Path, str]:
        data = tmp_path / name
        data.mkdir()
        return data, f"sqlite:///{data / 'controller.db'}"

    single = fleet.start(*sqlite("single"))
    assert workers_of(single) == []
    assert [e["workers"] for e in log_events(single, "controller listening")] == [1]
    assert "warning" not in log_text(single)

    two = fleet.start(*sqlite("two"), "--workers", "2")
    assert len(workers_of(two)) == 2
    assert "warning: 2 workers on SQLite" in log_text(two)
    dev = registered(two, "s")  # onboarding and polling work on SQLite with two workers too
    two.admin("POST", f"/devices/{dev.uuid}/volumes", json={"name": "v", "origin": "blank", "max_size_bytes": MiB})
    got = config(two, dev, "")
    assert got is not None and [n for _, n in volumes(got)] == ["v"]


def test_a_worker_only_loads_what_its_parent_made(tmp_path, monkeypatch):
    """The worker's app factory creates nothing: with the parent's key file gone it exits with uvicorn's
    startup-failure code (its supervisor then stops instead of restarting it forever), leaving no new key."""
    import logging

    from edgevol import log as logsetup
    from edgevol.controller import app as controller_app
    from edgevol.controller.context import load_context
    from edgevol.controller.server import worker_env

    # app_from_env configures logging as a worker's first act: give this process's settings back afterwards
    monkeypatch.setattr(logsetup, "_json_lines", logsetup._json_lines)
    monkeypatch.setattr(logging.getLogger(), "handlers", list(logging.getLogger().handlers))
    monkeypatch.setattr(logging.getLogger(), "level", logging.getLogger().level)
    ctx = load_context(tmp_path / "controller")
    for name, value in worker_env(ctx, "json").items():
        monkeypatch.setenv(name, value)
    assert controller_app.app_from_env().title == "edgevol controller"
    (ctx.data_dir / "pki" / "signing.pem").unlink()
    before = sorted(p.name for p in (ctx.data_dir / "pki").iterdir())
    with pytest.raises(SystemExit) as exit_:
        controller_app.app_from_env()
    assert exit_.value.code == 3
    assert sorted(p.name for p in (ctx.data_dir / "pki").iterdir()) == before
    ctx.store.close()


def test_workers_of_a_killed_parent_stop(fleet: Fleet, tmp_path: Path) -> None:
    """SIGKILL to the parent lets it stop nothing; the kernel tells each worker (PR_SET_PDEATHSIG), which then
    stops cleanly instead of serving the socket unsupervised."""
    data = tmp_path / "controller"
    data.mkdir()
    ctrl = fleet.start(data, f"sqlite:///{data / 'controller.db'}", "--workers", "2")
    workers = workers_of(ctrl)
    assert len(workers) == 2
    assert ctrl.proc is not None
    ctrl.proc.kill()
    ctrl.proc.wait()
    wait_for(lambda: not any(alive(w) for w in workers), 30, "the orphaned workers to stop")
    assert len(log_events(ctrl, "controller worker serving")) == 2
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{ctrl.url}/api/v2/edgedevice/ping", timeout=2)
    ctrl.proc = None
