"""A real controller (uvicorn on loopback) and device agents talking to it, for tests."""

from __future__ import annotations

import json
import signal
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx
import pytest

EDGEVOL = [sys.executable, "-m", "edgevol.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(cond: Callable[[], Any], timeout: float = 60, what: str = "condition", interval: float = 0.2) -> Any:
    """``cond()`` once it is truthy, polled every ``interval``; looked at least once, even with no time left."""
    deadline = time.monotonic() + timeout
    while True:
        last = cond()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value: {last!r}")
        time.sleep(interval)


@dataclass
class Controller:
    data_dir: Path
    port: int
    db_url: str
    tls: bool = False
    listen_host: str = "127.0.0.1"
    args: tuple[str, ...] = ()
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    @property
    def verify(self) -> ssl.SSLContext | bool:
        """What httpx needs to trust this controller: its own root CA when serving TLS."""
        if not self.tls:
            return True
        ctx = ssl.create_default_context()
        ctx.load_verify_locations(cadata=self.root_ca.read_text())
        return ctx

    @property
    def root_ca(self) -> Path:
        return self.data_dir / "pki" / "root-ca.pem"

    @property
    def token(self) -> str:
        return (self.data_dir / "admin.token").read_text().strip()

    def start(self) -> Controller:
        for attempt in range(3):
            log_path = self.data_dir.parent / f"controller-{self.port}.log"
            with open(log_path, "ab") as log:
                self.proc = subprocess.Popen([*EDGEVOL, "controller", "run", "--data-dir", str(self.data_dir), "--db",
                                              self.db_url, "--listen", f"{self.listen_host}:{self.port}",
                                              "--tls" if self.tls else "--no-tls", *self.args],
                                             stdout=log, stderr=log)
            try:
                wait_for(self._up, 30, "controller to answer ping")
                return self
            except AssertionError:
                # Another test's server took the port between free_port() and our bind (test files run in
                # parallel): start again on another port; anything else is this controller's failure.
                if attempt == 2 or b"address already in use" not in log_path.read_bytes():
                    raise
                self.port = free_port()
        raise AssertionError("unreachable")

    def _up(self) -> bool:
        """This controller answers: its own signing certificate in /certs, not another server on the port."""
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"controller exited {self.proc.returncode}")
        signing = self.data_dir / "pki" / "signing.pem"
        if not signing.exists() or not (self.data_dir / "admin.token").exists():
            return False  # keys not written yet
        try:
            resp = httpx.get(f"{self.url}/api/v2/edgedevice/certs", timeout=1, verify=self.verify)
        except httpx.HTTPError:
            return False
        return resp.status_code == 200 and signing.read_bytes().strip() in resp.content

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def admin(self, method: str, path: str, **kw: Any) -> Any:
        resp = httpx.request(method, f"{self.url}/api/v1{path}", headers={"Authorization": f"Bearer {self.token}"},
                             timeout=30, verify=self.verify, **kw)
        if resp.status_code >= 400:
            raise AssertionError(f"{method} {path}: {resp.status_code} {resp.text}")
        return resp.json() if resp.content else None

    def post(self, path: str, body: bytes) -> httpx.Response:
        """One raw device-API call (``path`` under /api/v2/edgedevice), for hand-built envelopes."""
        return httpx.post(f"{self.url}/api/v2/edgedevice{path}", content=body, timeout=30, verify=self.verify,
                          headers={"Content-Type": "application/x-proto-binary"})

    def count(self, table: str) -> int:
        """Rows in one of the controller's tables, read straight from its database."""
        from edgevol.controller.store import ControllerStore

        store = ControllerStore(self.db_url)
        try:
            return store.count(table)
        finally:
            store.close()


@dataclass
class DeviceAgent:
    data_dir: Path
    controller: Controller
    serial: str
    proc: subprocess.Popen[bytes] | None = None

    def cli_json(self, *args: str) -> Any:
        """``edgevol device ARGS --data-dir D -o json``, run in-process (the same code, no interpreter start)."""
        from click.testing import CliRunner

        from edgevol.cli.main import main

        try:
            runner = CliRunner(mix_stderr=False)  # type: ignore[call-arg]  # click < 8.2
        except TypeError:
            runner = CliRunner()  # click >= 8.2 keeps stderr apart already
        result = runner.invoke(main, ["device", *args, "--data-dir", str(self.data_dir), "-o", "json"])
        if result.exit_code != 0:
            raise AssertionError(f"edgevol device {' '.join(args)} exited {result.exit_code}: {result.output}"
                                 f"{result.exception!r}")
        return json.loads(result.stdout)

    def onboarding_pem(self) -> str:
        return str(self.cli_json("identity")["onboarding_cert_pem"])

    def start(self, *extra: str, root_ca: Path | None = None) -> DeviceAgent:
        """Run the agent against ``self.controller``; ``root_ca`` overrides the root CA it is given."""
        log = open(self.data_dir.parent / f"agent-{self.data_dir.name}.log", "ab")
        self.proc = subprocess.Popen([*EDGEVOL, "device", "run", "--data-dir", str(self.data_dir), "--controller",
                                      self.controller.url, "--root-ca", str(root_ca or self.controller.root_ca),
                                      "--serial", self.serial, "--poll-interval", "0.5", "--metrics-interval",
                                      "1", "--interval", "0.2", *extra], stdout=log, stderr=log)
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def status(self) -> dict[str, Any]:
        """``edgevol device status -o json``."""
        return dict(self.cli_json("status"))

    def outbox(self) -> list[dict[str, Any]]:
        """The info messages queued for the controller, as ``edgevol device outbox -o json`` shows them."""
        return list(self.cli_json("outbox"))


@pytest.fixture
def controller_factory(tmp_path: Path) -> Iterator[Callable[..., Controller]]:
    """``make(db_url=None, *, tls=False, listen_host=..., args=())``: a started controller with its own
    data dir (so its own keys); ``args`` go to ``edgevol controller run``."""
    started: list[Controller] = []

    def make(db_url: str | None = None, *, tls: bool = False, listen_host: str = "127.0.0.1",
             args: tuple[str, ...] = ()) -> Controller:
        data = tmp_path / f"controller{len(started)}"
        data.mkdir()
        c = Controller(data, free_port(), db_url or f"sqlite:///{data / 'controller.db'}", tls=tls,
                       listen_host=listen_host, args=args)
        started.append(c)
        return c.start()

    yield make
    for c in started:
        c.stop()


@pytest.fixture
def agent_factory(tmp_path: Path) -> Iterator[Callable[[Controller, str], DeviceAgent]]:
    agents: list[DeviceAgent] = []

    def make(ctrl: Controller, name: str) -> DeviceAgent:
        data = tmp_path / f"device-{name}"
        data.mkdir()
        agent = DeviceAgent(data, ctrl, serial=f"SN-{name}")
        agents.append(agent)
        return agent

    yield make
    for a in agents:
        a.stop()


def onboard(ctrl: Controller, agent: DeviceAgent, name: str) -> dict[str, Any]:
    """Register the device at the controller (as an operator would) and return the device record."""
    return ctrl.admin("POST", "/devices", json={"name": name, "serial": agent.serial,
                                                "onboard_cert_pem": agent.onboarding_pem()})


def device_view(agent: DeviceAgent) -> dict[tuple[str, str, int], tuple[str, int]]:
    """Every object the device knows: (kind, id, generation) -> (state it reports, progress)."""
    st = agent.status()
    view = {("volume", v["uuid"], v["generation_count"]): (v["reported_state"], v["progress"])
            for v in st["volumes"]}
    view |= {("content_tree", t["uuid"], 0): (t["reported_state"], t["progress"]) for t in st["content_trees"]}
    view |= {("blob", b["sha256"], 0): (b["reported_state"], b["progress"]) for b in st["blobs"]}
    return view


def controller_view(ctrl: Controller, device: str) -> dict[tuple[str, str, int], tuple[str, int]]:
    """The same, as the controller last heard it from the device (deleted objects and apps are not listed)."""
    return {(r["kind"], r["object_key"], r["generation"]): (r["state_name"], r["progress"])
            for r in ctrl.admin("GET", f"/devices/{device}/reported") if r["kind"] != "app"}
