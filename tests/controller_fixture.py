"""A real controller (uvicorn on loopback) and device agents talking to it, for tests."""

from __future__ import annotations

import json

import signal
import socket
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
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = cond()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value: {last!r}")


@dataclass
class Controller:
    data_dir: Path
    port: int
    db_url: str
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def root_ca(self) -> Path:
        return self.data_dir / "pki" / "root-ca.pem"

    @property
    def token(self) -> str:
        return (self.data_dir / "admin.token").read_text().strip()

    def start(self) -> Controller:
        log = open(self.data_dir.parent / f"controller-{self.port}.log", "ab")
        self.proc = subprocess.Popen([*EDGEVOL, "controller", "run", "--data-dir", str(self.data_dir), "--db",
                                      self.db_url, "--listen", f"127.0.0.1:{self.port}"],
                                     stdout=log, stderr=log)
        wait_for(self._up, 30, "controller to answer ping")
        return self

    def _up(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"controller exited {self.proc.returncode}")
        try:
            return httpx.get(f"{self.url}/api/v2/edgedevice/ping", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

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
                             timeout=30, **kw)
        if resp.status_code >= 400:
            raise AssertionError(f"{method} {path}: {resp.status_code} {resp.text}")
        return resp.json() if resp.content else None


@dataclass
class DeviceAgent:
    data_dir: Path
    controller: Controller
    serial: str
    proc: subprocess.Popen[bytes] | None = None

    def onboarding_pem(self) -> str:
        out = subprocess.run([*EDGEVOL, "device", "identity", "--data-dir", str(self.data_dir), "-o", "json"],
                             check=True, capture_output=True, text=True).stdout
        return json.loads(out)["onboarding_cert_pem"]

    def start(self, *extra: str) -> DeviceAgent:
        log = open(self.data_dir.parent / f"agent-{self.data_dir.name}.log", "ab")
        self.proc = subprocess.Popen([*EDGEVOL, "device", "run", "--data-dir", str(self.data_dir), "--controller",
                                      self.controller.url, "--root-ca", str(self.controller.root_ca),
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
        out = subprocess.run([*EDGEVOL, "device", "status", "--data-dir", str(self.data_dir), "-o", "json"],
                             check=True, capture_output=True, text=True).stdout
        return json.loads(out)


@pytest.fixture
def controller_factory(tmp_path: Path) -> Iterator[Callable[[str | None], Controller]]:
    started: list[Controller] = []

    def make(db_url: str | None = None) -> Controller:
        data = tmp_path / f"controller{len(started)}"
        data.mkdir()
        c = Controller(data, free_port(), db_url or f"sqlite:///{data / 'controller.db'}")
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


