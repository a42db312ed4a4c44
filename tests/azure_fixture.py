"""A real Azure Blob service for tests: Azurite (Microsoft's storage emulator, npm ``azurite``) on loopback.

It runs with its own account (AZURITE_ACCOUNTS) rather than the well-known devstoreaccount1, so a
test's key is one nobody else uses and a wrong key is refused by the server itself.
"""

from __future__ import annotations

import base64
import os
import shutil
import socket
import subprocess
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.datastore_cases import stop_process, wait_until_ready

ACCOUNT = "edgevoltest"
ACCOUNT_KEY = base64.b64encode(b"edgevol-azurite-test-account-key-0123456789").decode()
AZURITE = Path(__file__).resolve().parent.parent / ".tools" / "npm" / "node_modules" / ".bin" / "azurite-blob"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RunningAzurite:
    process: subprocess.Popen[bytes]
    port: int
    root: Path
    log: Path

    @property
    def account_url(self) -> str:
        """Path-style, as the emulator serves accounts: http://127.0.0.1:PORT/ACCOUNT."""
        return f"http://127.0.0.1:{self.port}/{ACCOUNT}"

    def service(self, key: str = ACCOUNT_KEY) -> Any:
        from azure.storage.blob import BlobServiceClient

        return BlobServiceClient(self.account_url, credential={"account_name": ACCOUNT, "account_key": key},
                                 retry_total=0)  # its default backoff starts at 15 s

    def put(self, container: str, blob: str, data: bytes | Path) -> None:
        from azure.core.exceptions import ResourceExistsError

        with self.service() as svc:
            try:
                svc.create_container(container)
            except ResourceExistsError:
                pass
            client = svc.get_blob_client(container, blob)
            if isinstance(data, Path):
                with open(data, "rb") as f:
                    client.upload_blob(f, overwrite=True, max_concurrency=4)
            else:
                client.upload_blob(data, overwrite=True)

    def container_sas(self, container: str, minutes: int = 60) -> str:
        """A read/list SAS token for ``container`` (query string form, without the leading '?')."""
        from azure.storage.blob import ContainerSasPermissions, generate_container_sas

        return generate_container_sas(ACCOUNT, container, account_key=ACCOUNT_KEY,
                                      permission=ContainerSasPermissions(read=True, list=True),
                                      expiry=datetime.now(timezone.utc) + timedelta(minutes=minutes))

    def stop(self) -> None:
        stop_process(self.process)


def azurite_binary() -> str:
    found = str(AZURITE) if AZURITE.exists() else shutil.which("azurite-blob")
    if found is None or shutil.which("node") is None:
        pytest.fail("Azurite is missing: `make test` installs it (npm azurite) and node")
    return found


def start_azurite(workdir: Path) -> RunningAzurite:
    workdir.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    log = workdir / "azurite.log"
    env = {**os.environ, "AZURITE_ACCOUNTS": f"{ACCOUNT}:{ACCOUNT_KEY}"}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [azurite_binary(), "--silent", "--disableTelemetry", "--skipApiVersionCheck", "--loose",
             "--blobHost", "127.0.0.1", "--blobPort", str(port), "--location", str(workdir / "data")],
            stdout=out, stderr=subprocess.STDOUT, cwd=workdir, env=env)
    server = RunningAzurite(proc, port, workdir, log)

    def up() -> bool:
        server.put("probe", "ready", b"ok")
        return True

    wait_until_ready(proc, up, what="Azurite", log=log, timeout=60, interval=0.2)
    return server


@pytest.fixture(scope="module")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningAzurite]:
    server = start_azurite(tmp_path_factory.mktemp("azurite"))
    yield server
    server.stop()
