"""A real HTTP proxy for tests: Debian's tinyproxy on loopback, and a TLS relay in front of it.

tinyproxy runs in the foreground with a config of its own (no ConnectPort lines, so CONNECT to any port is
allowed) and logs each connection and request line, so a test can see what really went through it.
:class:`TlsRelay` terminates TLS and passes the bytes on to tinyproxy: together they are an ``https://`` proxy.
"""

from __future__ import annotations

import select
import shutil
import socket
import ssl
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

from tests.datastore_cases import stop_process, wait_until_ready


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def dead_port() -> int:
    """A loopback port nothing listens on (bound and released: nobody else took it within the test)."""
    return free_port()


@dataclass
class RunningTinyproxy:
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def mark(self) -> int:
        """Where the log ends now: :meth:`since` reads what was logged after it."""
        return self.log.stat().st_size if self.log.exists() else 0

    def since(self, mark: int) -> str:
        with open(self.log, "rb") as f:
            f.seek(mark)
            return f.read().decode(errors="replace")

    def saw(self, mark: int, target: str, timeout: float = 5) -> bool:
        """Whether a request line naming ``target`` (``host:port``) was logged after ``mark``: a CONNECT to it
        or a forwarded request for ``http://target/...``. Waits a little: tinyproxy logs as it goes."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.since(mark)
            if f"CONNECT {target} " in text or f" http://{target}/" in text:
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)

    def stop(self) -> None:
        stop_process(self.process, grace=5)


def start_tinyproxy(workdir: Path, basic_auth: tuple[str, str] | None = None) -> RunningTinyproxy:
    binary = shutil.which("tinyproxy") or shutil.which("tinyproxy", path="/usr/bin:/usr/sbin")
    if binary is None:
        pytest.fail("tinyproxy is missing: scripts/bootstrap.sh installs it (Debian package tinyproxy)")
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = workdir / "tinyproxy.log"
    conf = workdir / "tinyproxy.conf"
    conf.write_text(f"Port {port}\nListen 127.0.0.1\nAllow 127.0.0.1\nTimeout 60\nMaxClients 100\n"
                    f'LogFile "{log}"\nLogLevel Connect\nPidFile "{workdir / "tinyproxy.pid"}"\n'
                    + (f"BasicAuth {basic_auth[0]} {basic_auth[1]}\n" if basic_auth else ""))
    out = open(workdir / "tinyproxy.out", "wb")
    proc = subprocess.Popen([binary, "-d", "-c", str(conf)], stdout=out, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)
    out.close()

    def up() -> bool:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True

    wait_until_ready(proc, up, what="tinyproxy", log=workdir / "tinyproxy.out", timeout=20, not_yet=(OSError,))
    return RunningTinyproxy(proc, port, log)


@pytest.fixture(scope="module")
def tinyproxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningTinyproxy]:
    proxy = start_tinyproxy(tmp_path_factory.mktemp("tinyproxy"))
    yield proxy
    proxy.stop()


class TlsRelay:
    """Accepts TLS on a loopback port and relays the plain bytes to ``upstream`` (host, port), both ways."""

    def __init__(self, upstream: tuple[str, int], cert: Path, key: Path) -> None:
        self.upstream = upstream
        self._ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._ctx.load_cert_chain(str(cert), str(key))
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.handshakes_failed = 0
        self._stopping = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._stopping:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            tls = self._ctx.wrap_socket(conn, server_side=True)
        except (ssl.SSLError, OSError):
            self.handshakes_failed += 1
            conn.close()
            return
        try:
            upstream = socket.create_connection(self.upstream, timeout=10)
        except OSError:
            tls.close()
            return
        _relay(tls, upstream)

    def stop(self) -> None:
        self._stopping = True
        self._listener.close()


def _relay(tls: ssl.SSLSocket, plain: socket.socket) -> None:
    """Copy bytes both ways on one thread (an SSL socket must not be read and written from two at once) until
    either side ends or a minute passes in silence; then close both."""
    try:
        while True:
            ready = [tls] if tls.pending() else select.select([tls, plain], [], [], 60)[0]
            if not ready:
                return
            for src in ready:
                dst = plain if src is tls else tls
                try:
                    data = src.recv(1 << 16)
                except ssl.SSLWantReadError:
                    continue
                if not data:
                    return
                dst.sendall(data)
    except OSError:
        return
    finally:
        for s in (tls, plain):
            try:
                s.close()
            except OSError:
                pass
