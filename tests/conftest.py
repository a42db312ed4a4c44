"""Shared fixtures: real servers on loopback, real images, the real CLI."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from edgevol.tools.httpserve import RangeHTTPServer, serve

EDGEVOL = [sys.executable, "-m", "edgevol.cli"]

# The device agent honours the proxy variables of its environment: a developer's or CI's would send every
# test's loopback downloads to their proxy. The tests that are about them set them for one agent.
for _name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
    os.environ.pop(_name, None)
    os.environ.pop(_name.lower(), None)


@pytest.fixture(scope="session", autouse=True)
def _require_qemu_img() -> None:
    if shutil.which("qemu-img") is None:
        pytest.fail("qemu-img is missing: run 'make test', which installs qemu-utils")


@pytest.fixture
def datastore_dir(tmp_path: Path) -> Path:
    d = tmp_path / "datastore"
    d.mkdir()
    return d


@pytest.fixture
def http_server(datastore_dir: Path) -> Iterator[RangeHTTPServer]:
    server = serve(datastore_dir)
    yield server
    server.shutdown()


def make_raw_image(path: Path, mib: int, seed: int = 1) -> Path:
    """A raw disk with pseudo-random data and a zero hole in the middle (so sparseness matters)."""
    import random

    rng = random.Random(seed)
    with open(path, "wb") as f:
        for i in range(mib):
            f.write(bytes(1 << 20) if i == mib // 2 else rng.randbytes(1 << 20))
    return path


def make_qcow2_image(path: Path, mib: int, seed: int = 1) -> Path:
    raw = path.with_suffix(".src.raw")
    make_raw_image(raw, mib, seed)
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(path)], check=True)
    raw.unlink()
    return path


def guest_bytes_sha256(path: Path, fmt: str, tmp: Path) -> str:
    """sha256 of what a guest sees: the image converted to raw."""
    from tests.configs import sha256_file

    out = tmp / f"guest-{path.name}.raw"
    subprocess.run(["qemu-img", "convert", "-U", "-f", fmt, "-O", "raw", str(path), str(out)], check=True)
    digest = sha256_file(out)
    out.unlink()
    return digest


def guest_bytes(path: Path) -> bytes:
    """What a guest reads from a volume file, opened in the format its name gives: a clone (a qcow2
    overlay, edgevol.volume.clone=backing, the default) reads through to its CAS blob."""
    import tempfile

    from edgevol.device.volumes.files import DRIVERS

    fmt = DRIVERS[Path(path).suffix.lstrip(".")]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "guest.raw"
        subprocess.run(["qemu-img", "convert", "-U", "-f", fmt, "-O", "raw", str(path), str(out)], check=True)
        return out.read_bytes()


def open_guest(path: Path | str) -> io.BytesIO:
    """:func:`guest_bytes` as a file to read from, in place of ``open(volume, "rb")``."""
    return io.BytesIO(guest_bytes(Path(path)))


def guest_write(path: Path, offset: int, data: bytes) -> None:
    """Write ``data`` where a guest would, whatever the volume's format (qemu-io, as a VM's disk driver)."""
    import tempfile

    from edgevol.device.volumes.files import DRIVERS

    fmt = DRIVERS[Path(path).suffix.lstrip(".")]
    with tempfile.NamedTemporaryFile() as src:
        src.write(data)
        src.flush()
        subprocess.run(["qemu-io", "-f", fmt, "-c", f"write -q -s {src.name} {offset} {len(data)}", "-c", "flush",
                        str(path)], check=True)


def export_io(export: dict, *commands: str, readonly: bool = False) -> subprocess.CompletedProcess[str]:
    """``qemu-io`` attached to a volume's export (``device exports``) over its NBD socket, as a task's block driver
    would be: the export name is the volume uuid. Run beside the socket and named relatively, since a socket
    path may pass the kernel's 108 bytes."""
    sock = Path(export["sockets"]["nbd"])
    args = ["qemu-io", "-f", "raw", *(["-r"] if readonly else [])]
    for c in commands:
        args += ["-c", c]
    return subprocess.run([*args, f"nbd+unix:///{export['uuid']}?socket=./{sock.name}"], cwd=sock.parent,
                          capture_output=True, text=True, timeout=60)


def volume_sha256(path: Path) -> str:
    """sha256 of :func:`guest_bytes`."""
    import hashlib

    return hashlib.sha256(guest_bytes(path)).hexdigest()


def run_cli(*args: str, timeout: float = 120, check: bool = False) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.run([*EDGEVOL, *args], capture_output=True, text=True, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"edgevol {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def start_agent(data: Path, cfg: Path, log: Path) -> subprocess.Popen[bytes]:
    """``edgevol device run`` in daemon mode on a config file, JSON log lines to ``log``."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with open(log, "wb") as out:
        return subprocess.Popen([*EDGEVOL, "device", "run", "--data-dir", str(data), "--config", str(cfg),
                                 "--interval", "0.1", "--no-progress", "--log-format", "json"],
                                stdout=out, stderr=subprocess.STDOUT, env=env)


def device_status(data_dir: Path) -> dict:
    proc = run_cli("device", "status", "--data-dir", str(data_dir), "-o", "json", check=True)
    return json.loads(proc.stdout)


def by_name(items: list[dict], name: str) -> dict:
    found = [i for i in items if i.get("display_name") == name]
    assert len(found) == 1, f"expected one object named {name!r} in {items}"
    return found[0]
