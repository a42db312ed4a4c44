"""The mixed workload of the crash harness, and the probes it needs.

Kept apart from the test so the test reads as the scenario: build content,
walk the config phases while killing the agent, then check what a user sees.
Here live the pieces that make that possible:

* :class:`ThrottledProxy`: a loopback proxy in front of the real registry that
  slows blob bodies down (the registry itself cannot), so kills land in the
  middle of layer downloads too, and records each request's ``Range``.
* :class:`Workload`: the content (disk images on the HTTP datastore, two
  container images sharing a base layer in the registry) and the config of
  each phase (blank volumes, raw and qcow2 disks, a container volume, purges
  by generation bump with app purge counters, deletions).
* Probes of a stopped agent's data dir (state rows, lock holder) and of the
  final bytes (guest view of disks, file-tree manifest of a rootfs).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import random
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

from edgevol.api import messages as m
from edgevol.tools.oci_image import FileSpec, Image, Layer, build_image, push
from tests.configs import ConfigBuilder, new_id, sha256_file
from tests.conftest import make_qcow2_image, make_raw_image

MiB = 1 << 20
_HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer",
                         "upgrade", "host"})

Request = tuple[str, str, "str | None"]  # method, path, Range header


# -- a slow link in front of the registry ---------------------------------------------


class ThrottledProxy(ThreadingHTTPServer):
    """Forwards GET/HEAD to ``upstream`` (host:port); bodies paced at ``rate_limit_bytes_per_sec``."""

    daemon_threads = True

    def __init__(self, upstream: str) -> None:
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.upstream = upstream
        self.rate_limit_bytes_per_sec: int | None = None
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self._thread.start()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"

    def handle_error(self, request: object, client_address: object) -> None:
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return  # an agent killed mid-request: expected here, not worth a traceback
        super().handle_error(request, client_address)  # type: ignore[arg-type]

    def record(self, method: str, path: str, range_header: str | None) -> None:
        with self._lock:
            self.requests.append((method, path, range_header))

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


class _ProxyHandler(BaseHTTPRequestHandler):
    server: ThrottledProxy
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self._forward()

    do_HEAD = do_GET

    def _forward(self) -> None:
        srv = self.server
        srv.record(self.command, self.path, self.headers.get("Range"))
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
        conn = http.client.HTTPConnection(srv.upstream, timeout=30)
        try:
            conn.request(self.command, self.path, headers=headers)
            resp = conn.getresponse()
            self.send_response(resp.status)
            for key, value in resp.getheaders():
                if key.lower() not in _HOP_BY_HOP and key.lower() not in ("date", "server"):
                    self.send_header(key, value)
            if resp.getheader("Content-Length") is None:
                self.send_header("Connection", "close")
                self.close_connection = True
            self.end_headers()
            if self.command == "HEAD":
                return
            while True:
                rate = srv.rate_limit_bytes_per_sec  # read each step: the test lifts it at the end
                chunk = resp.read(max(4096, rate // 20) if rate else MiB)
                if not chunk:
                    break
                self.wfile.write(chunk)
                if rate:
                    time.sleep(len(chunk) / rate)
        except (ConnectionError, TimeoutError, http.client.HTTPException):
            self.close_connection = True  # the agent was killed mid-body: normal here
        finally:
            conn.close()


# -- content -------------------------------------------------------------------------


def _random_bytes(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


@dataclass
class Disk:
    """A disk image on the HTTP datastore, its content tree and the volume made from it."""

    name: str
    fmt: str  # raw | qcow2
    file: Path
    sha256: str
    max_size: int
    readonly: bool = False
    ct_id: str = field(default_factory=new_id)
    vol_id: str = field(default_factory=new_id)


@dataclass
class Container:
    """A container image in the registry, its content tree and its directory volume."""

    name: str
    reference: str  # REPO:TAG
    image: Image
    layer_files: list[dict[str, FileSpec]]
    ct_id: str = field(default_factory=new_id)
    vol_id: str = field(default_factory=new_id)

    @property
    def blob_digests(self) -> list[str]:
        """Manifest, config and layers (hex), every blob the device must end up holding."""
        manifest = json.loads(self.image.manifest)
        return [d.removeprefix("sha256:") for d in (self.image.digest, manifest["config"]["digest"],
                                                    *(layer["digest"] for layer in manifest["layers"]))]


def _base_layer_files() -> dict[str, FileSpec]:
    return {
        "etc": ("dir",),
        "etc/os-release": b"ID=crashos\nVERSION=1\n",
        "etc/remove-me": b"a lower layer's file, whited out above\n",
        "usr": ("dir",),
        "usr/lib": ("dir",),
        "usr/lib/libbase.so": ("file", _random_bytes(MiB, 301), 0o755),
        "lib": ("symlink", "usr/lib"),
        "bin": ("dir",),
        "bin/tool": ("file", _random_bytes(MiB // 2, 302), 0o755),
    }


def expected_tree(layers: list[dict[str, FileSpec]]) -> dict[str, tuple[Any, ...]]:
    """What a rootfs must hold after these layers: applied in order, whiteouts honoured."""
    tree: dict[str, tuple[Any, ...]] = {}
    for files in layers:
        for name, spec in files.items():
            if isinstance(spec, bytes):
                spec = ("file", spec)
            kind = spec[0]
            if kind == "whiteout":
                tree = {p: e for p, e in tree.items() if p != name and not p.startswith(name + "/")}
            elif kind == "dir":
                tree[name] = ("dir",)
            elif kind == "symlink":
                tree[name] = ("symlink", spec[1])
            elif kind == "file":
                mode = spec[2] if len(spec) > 2 else 0o644
                tree[name] = ("file", hashlib.sha256(spec[1]).hexdigest(), mode)
            else:
                raise ValueError(f"the workload does not use {kind!r} entries")
    return tree


def tree_manifest(root: Path) -> dict[str, tuple[Any, ...]]:
    """The same description, read back from disk (never following symlinks)."""
    out: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("symlink", os.readlink(path))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir",)
            elif stat.S_ISREG(st.st_mode):
                out[rel] = ("file", sha256_file(path), stat.S_IMODE(st.st_mode))
            else:
                out[rel] = ("other", stat.S_IFMT(st.st_mode))
    return out


def padded_sha256(chunks: Iterator[bytes], total: int) -> str:
    """sha256 of the bytes from ``chunks`` followed by zeros up to ``total`` (a disk grown to its size)."""
    h = hashlib.sha256()
    n = 0
    for chunk in chunks:
        h.update(chunk)
        n += len(chunk)
    zeros = bytes(MiB)
    while n < total:
        step = min(MiB, total - n)
        h.update(zeros[:step])
        n += step
    return h.hexdigest()


def file_chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while chunk := f.read(MiB):
            yield chunk


def guest_sha256(path: Path, fmt: str, scratch: Path) -> str:
    """sha256 of what a guest sees: ``qemu-img convert -O raw`` of the image."""
    out = scratch / f"guest-{path.name}.raw"
    subprocess.run(["qemu-img", "convert", "-U", "-f", fmt, "-O", "raw", str(path), str(out)], check=True)
    try:
        return sha256_file(out)
    finally:
        out.unlink()


# -- the phases ------------------------------------------------------------------------


@dataclass
class Phase:
    """One config of the sequence and what the device must hold once it converged."""

    index: int
    builder: ConfigBuilder
    volumes: dict[tuple[str, int], str]  # (uuid, generation) -> display name
    trees: set[str]
    apps: dict[str, tuple[int, list[tuple[str, int]]]]  # uuid -> (purge counter, refs)


class Workload:
    """Content on real servers and the config phases that use it.

    Phase 0 creates everything (two blank volumes, a raw and a qcow2 disk, a
    container volume, a doomed disk, two apps). Each later phase k purges one
    app's volume (k odd: the raw VM disk, k even: the container volume) by a
    generation bump plus the app's purge counter, adds a fresh disk image
    (qcow2 or raw) and removes the previous phase's one; phase 2 removes the
    doomed disk, phase 1 adds a second container image sharing the base
    layer and phase 3 removes it again (the shared layer must stay). Odd
    phases also ask for a big image (each time under a new content tree) that
    a phase's kills leave unfinished, so its removal in the next phase lands
    mid-download and its partial must go.
    """

    def __init__(self, datastore_dir: Path, http_url: str, registry_url: str, registry_host: str,
                 phases: int) -> None:
        self.phases = phases
        self.http_url = http_url
        self.registry_host = registry_host
        self.device_id = new_id()
        self.ds_http, self.ds_reg = new_id(), new_id()
        self.scratch, self.ctr_data = new_id(), new_id()
        self.app_vm, self.app_ctr = new_id(), new_id()
        self.vm = self._disk(datastore_dir, "vm-raw", "raw", 8, 12 * MiB, seed=101)
        self.data = self._disk(datastore_dir, "data-qcow2", "qcow2", 6, 8 * MiB, seed=102, readonly=True)
        self.doomed = self._disk(datastore_dir, "doomed", "raw", 4, 4 * MiB, seed=103)
        self.extras = {k: self._disk(datastore_dir, f"extra-{k}", "qcow2" if k % 2 else "raw", 3, 4 * MiB,
                                     seed=200 + k) for k in range(1, phases)}
        big = self._disk(datastore_dir, "big", "raw", 16, 16 * MiB, seed=104)
        self.bigs = {k: Disk(f"big-{k}", "raw", big.file, big.sha256, big.max_size) for k in range(1, phases, 2)}
        base = Layer.from_files(_base_layer_files())
        app_files: list[dict[str, FileSpec]] = [
            {"app": ("dir",), "app/data.bin": _random_bytes(MiB, 303),
             "etc/os-release": b"ID=crashos\nVERSION=2\n", "etc/remove-me": ("whiteout",)},
            {"app/config.json": b'{"crash": true}\n', "app/big.bin": _random_bytes(3 * MiB // 2, 304)},
        ]
        other_files: list[dict[str, FileSpec]] = [
            {"srv": ("dir",), "srv/readme": b"image two\n", "srv/blob.bin": _random_bytes(MiB, 305)},
        ]
        image1 = build_image([base, *(Layer.from_files(f) for f in app_files)], {"Cmd": ["/bin/tool"]})
        image2 = build_image([base, *(Layer.from_files(f) for f in other_files)], {"Cmd": ["/bin/tool", "2"]})
        push(registry_url, "crash/app", "v1", image1)
        push(registry_url, "crash/app", "v2", image2)
        self.ctr = Container("ctr", "crash/app:v1", image1, [_base_layer_files(), *app_files])
        self.ctr2 = Container("ctr2", "crash/app:v2", image2, [_base_layer_files(), *other_files])

    @staticmethod
    def _disk(root: Path, name: str, fmt: str, mib: int, max_size: int, seed: int, readonly: bool = False) -> Disk:
        path = root / f"{name}.{fmt}"
        (make_raw_image if fmt == "raw" else make_qcow2_image)(path, mib, seed)
        return Disk(name, fmt, path, sha256_file(path), max_size, readonly)

    @property
    def disks(self) -> list[Disk]:
        return [self.vm, self.data, self.doomed, *self.extras.values(), *self.bigs.values()]

    @property
    def containers(self) -> list[Container]:
        return [self.ctr, self.ctr2]

    def generations(self, k: int) -> tuple[int, int]:
        """(VM disk generation, container volume generation) in phase ``k``: purges alternate."""
        return (k + 1) // 2, k // 2

    def wanted_blobs(self, phase: Phase) -> set[str]:
        """Every blob (hex sha256) the device holds once it converged on ``phase``."""
        wanted = {d.sha256 for d in self.disks if d.ct_id in phase.trees}
        for c in self.containers:
            if c.ct_id in phase.trees:
                wanted |= set(c.blob_digests)
        return wanted

    def phase(self, k: int) -> Phase:
        b = ConfigBuilder(self.device_id).fast_retries(5).item("edgevol.download.parallel", "3")
        b.datastore(self.http_url, ds_id=self.ds_http)
        b.registry(self.registry_host, ds_id=self.ds_reg)
        g_vm, g_ctr = self.generations(k)
        volumes: dict[tuple[str, int], str] = {}
        trees: set[str] = set()

        def disk(d: Disk, generation: int = 0) -> None:
            b.content_tree(self.ds_http, d.file.name, d.sha256, d.fmt, name=d.name, ct_id=d.ct_id)
            b.download_volume(d.ct_id, d.max_size, name=d.name, vol_id=d.vol_id, generation=generation,
                              readonly=d.readonly)
            volumes[(d.vol_id, generation)] = d.name
            trees.add(d.ct_id)

        def container(c: Container, generation: int = 0) -> None:
            b.content_tree(self.ds_reg, c.reference, "", "container", name=c.name, ct_id=c.ct_id)
            b.download_volume(c.ct_id, 64 * MiB, name=c.name, vol_id=c.vol_id, generation=generation)
            volumes[(c.vol_id, generation)] = c.name
            trees.add(c.ct_id)

        b.blank_volume(16 * MiB, name="scratch", vol_id=self.scratch)
        b.blank_volume(32 * MiB, name="ctr-data", vol_id=self.ctr_data)
        volumes[(self.scratch, 0)] = "scratch"
        volumes[(self.ctr_data, 0)] = "ctr-data"
        disk(self.vm, g_vm)
        disk(self.data)
        container(self.ctr, g_ctr)
        if k < 2:
            disk(self.doomed)
        if k in self.extras:
            disk(self.extras[k])
        if k in self.bigs:
            disk(self.bigs[k])
        if 1 <= k < 3:
            container(self.ctr2)
        apps = {self.app_vm: (g_vm, [(self.vm.vol_id, g_vm), (self.scratch, 0)]),
                self.app_ctr: (g_ctr, [(self.ctr.vol_id, g_ctr), (self.ctr_data, 0)])}
        for app_id, (counter, refs) in apps.items():
            b.app([uuid for uuid, _ in refs], name="vm" if app_id == self.app_vm else "ctr-app", app_id=app_id)
            a = b.cfg.apps[-1]
            a.purge.counter = counter
            for ref, (_, generation) in zip(a.volumeRefList, refs):
                ref.generationCount = generation
        return Phase(k, b, volumes, trees, apps)


def write_config(phase: Phase, path: Path) -> None:
    """Replace the config file atomically, so the agent never reads half of it."""
    tmp = path.with_name(f".next-{path.name}")  # same suffix: it picks the format
    phase.builder.save(tmp)
    os.replace(tmp, path)


# -- probes of the data dir ------------------------------------------------------------


def holds_data_dir_lock(pid: int, data: Path) -> bool:
    """True once process ``pid`` holds the flock on ``data/agent.lock`` (it is past start-up)."""
    try:
        inode = (data / "agent.lock").stat().st_ino
        text = Path("/proc/locks").read_text()
    except FileNotFoundError:
        return False
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 6 and parts[1] == "FLOCK" and parts[4] == str(pid) and parts[5].endswith(f":{inode}"):
            return True
    return False


@dataclass
class Rows:
    """The state rows a stopped agent left: outbox keys of existing objects, and their states."""

    volumes: dict[tuple[str, int], int]
    trees: dict[str, int]
    blobs: dict[str, int]

    def keys(self) -> set[str]:
        return ({f"volume/{u}#{g}" for u, g in self.volumes} | {f"content_tree/{u}" for u in self.trees}
                | {f"blob/{s}" for s in self.blobs})


def read_rows(data: Path) -> Rows:
    """Read the state database directly (the agent is dead; this is what a restart will find)."""
    db = data / "state.db"
    if not db.exists():
        return Rows({}, {}, {})
    conn = sqlite3.connect(db, timeout=10)
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if not {"volumes", "content_trees", "blobs"} <= tables:
            return Rows({}, {}, {})
        return Rows({(u, g): s for u, g, s in conn.execute("SELECT uuid, generation, state FROM volumes")},
                    {u: s for u, s in conn.execute("SELECT uuid, state FROM content_trees")},
                    {h: s for h, s in conn.execute("SELECT sha256, state FROM blobs")})
    finally:
        conn.close()


def converged(rows: Rows, phase: Phase) -> bool:
    """Every volume of the phase created, every tree loaded, nothing else left over."""
    S = m.ZSwState
    return (set(rows.volumes) == set(phase.volumes) and all(s == S.CREATED_VOLUME for s in rows.volumes.values())
            and set(rows.trees) == phase.trees and all(s == S.LOADED for s in rows.trees.values()))
