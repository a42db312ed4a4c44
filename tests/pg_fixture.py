"""A throwaway PostgreSQL cluster for tests, and a fixture running a test on SQLite and PostgreSQL.

Fixtures (import them into a test module to use them):

- ``pg_url`` (session): initdb + pg_ctl start on 127.0.0.1 (free port, socket
  directory in the cluster's temp dir), database ``edgevol``; stopped and
  removed at the end. Durability is switched off: the data is thrown away.
- ``db_url``: parametrized over ``sqlite`` (a file in tmp_path) and
  ``postgresql`` (a fresh database per test, dropped afterwards).

PostgreSQL refuses to run as root, so as root the binaries run as the
``postgres`` user (``runuser``) in a directory that user owns.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

PG_BIN_GLOB = "/usr/lib/postgresql/*/bin"
DB_NAME = "edgevol"
_counter = itertools.count()


def _pg_bin() -> Path:
    found = sorted((p for p in glob.glob(PG_BIN_GLOB) if os.path.exists(os.path.join(p, "initdb"))),
                   key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0)
    if not found:
        pytest.fail(f"PostgreSQL server binaries are missing ({PG_BIN_GLOB}/initdb): run 'make test', "
                    "whose bootstrap installs the Debian 'postgresql' package")
    return Path(found[-1])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PgCluster:
    def __init__(self, root: Path) -> None:
        self.bin = _pg_bin()
        self.root = root
        self.data = root / "data"
        self.sock = root / "sock"
        self.log = root / "postgres.log"
        self.port = 0
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            self.as_user = ["runuser", "-u", "postgres", "--"]
            os.chown(root, pw.pw_uid, pw.pw_gid)
        self.sock.mkdir()
        if self.as_user:
            os.chown(self.sock, pw.pw_uid, pw.pw_gid)

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([*self.as_user, *args], capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            log = self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""
            raise RuntimeError(f"{' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}\n{log}")
        return proc

    def start(self) -> None:
        self.run(str(self.bin / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust",
                 "-E", "UTF8", "--locale=C", "--no-sync")
        last: Exception | None = None
        for _ in range(5):  # another process may grab the port between probe and bind
            self.port = _free_port()
            opts = (f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.sock} -c fsync=off "
                    "-c synchronous_commit=off -c full_page_writes=off")
            try:
                self.run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60",
                         "-o", opts, "start")
                break
            except RuntimeError as exc:
                last = exc
        else:
            raise RuntimeError(f"PostgreSQL did not start: {last}")
        self.admin(f"CREATE DATABASE {DB_NAME}")

    def admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=self.port, user="postgres", dbname="postgres",
                             autocommit=True) as conn:
            conn.execute(sql)  # type: ignore[arg-type]

    def url(self, dbname: str = DB_NAME) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{dbname}"

    def stop(self) -> None:
        if self.data.exists():
            subprocess.run([*self.as_user, str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "immediate",
                            "-w", "stop"], capture_output=True, timeout=60)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    root = Path(tempfile.mkdtemp(prefix="edgevol-pg-"))
    cluster = PgCluster(root)
    started = time.monotonic()
    try:
        cluster.start()
        cluster.start_seconds = time.monotonic() - started  # type: ignore[attr-defined]
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_url(pg_cluster: PgCluster) -> str:
    """``postgresql+psycopg://postgres@127.0.0.1:PORT/edgevol`` on a cluster that lives for the session."""
    return pg_cluster.url()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database: a SQLite file, or a fresh PostgreSQL database dropped after the test."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'controller.db'}"
        return
    cluster: PgCluster = request.getfixturevalue("pg_cluster")
    name = f"t{os.getpid()}_{next(_counter)}"
    cluster.admin(f"CREATE DATABASE {name}")
    try:
        yield cluster.url(name)
    finally:
        cluster.admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
