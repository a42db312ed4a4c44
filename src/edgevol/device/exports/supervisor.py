"""The export engine: starts, stops and supervises one daemon per exported volume.

Called from the agent's reconcile loop (``apply`` then ``supervise`` each
pass); everything here is synchronous and cheap when nothing changed. A daemon
that exits is restarted with backoff (1 s doubling to 60 s, reset once it has
run for a minute) and keeps being retried at the cap; "failed" is only for a
spec that cannot work (its file or directory is gone, an unknown format), and
is rechecked every pass.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from edgevol.log import get_logger

from . import qsd, virtiofs
from .counters import CounterStore, Key, current_boot_id
from .proc import Daemon
from .spec import DIR_FORMAT, FILE_FORMATS, Counters, ExportSpec, ExportStatus

log = get_logger(__name__)

SUN_PATH_MAX = 107


@dataclass
class _Export:
    spec: ExportSpec
    sockets: dict[str, str]  # role -> name relative to the exports dir
    base: Counters = Counters()  # the total before the current daemon started
    daemon: Daemon | None = None
    counter: qsd.TraceCounter | None = None
    state: str = "restarting"
    restarts: int = 0
    error: str | None = None
    next_attempt: float | None = None
    backoff: float = 0.0
    started_at: float = 0.0

    def total(self) -> Counters:
        live = self.counter.snapshot() if self.counter is not None else Counters()
        return self.base + live


class Exports:
    """See the package docstring. Not thread-safe: one caller (the reconcile loop)."""

    BACKOFF_FIRST = 1.0
    BACKOFF_CAP = 60.0
    STABLE_AFTER = 60.0  # a daemon that ran this long before dying restarts after BACKOFF_FIRST again
    START_TIMEOUT = 5.0

    def __init__(self, root: Path, boot_id: str | None = None) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)
        self._store = CounterStore(self.root / "counters.json", boot_id or current_boot_id())
        self._exports: dict[Key, _Export] = {}
        for stale in self.root.glob("*.sock"):  # a previous agent's daemons died with it
            stale.unlink(missing_ok=True)

    # -- the reconcile entry points -------------------------------------------------------------

    def apply(self, wanted: Mapping[tuple[str, int], ExportSpec]) -> None:
        for key in [k for k in self._exports if k not in wanted]:
            self._stop(self._exports.pop(key))
        for key, spec in wanted.items():
            e = self._exports.get(key)
            if e is not None and e.spec == spec:
                continue
            if e is not None:
                log.info("export spec changed: restarting", uuid=spec.uuid, generation=spec.generation)
                self._stop(e)
            self._exports[key] = e = self._new(key, spec)
            self._start(e)
        self._store.flush()

    def supervise(self) -> None:
        now = time.time()
        for key, e in self._exports.items():
            if e.state == "running" and e.daemon is not None and e.daemon.exit_code() is not None:
                self._died(e, now)
            if e.state == "failed" or (e.state == "restarting" and (e.next_attempt or 0) <= now):
                if e.state == "restarting" and e.daemon is not None:
                    e.restarts += 1
                self._start(e)
            if e.spec.kind == "file":
                self._store.record(key, e.total())
        self._store.flush()

    def status(self) -> list[ExportStatus]:
        return [self._status(e) for _, e in sorted(self._exports.items())]

    def counters(self, uuid: str, generation: int) -> Counters | None:
        """Since boot. None for directory exports (virtiofsd counts nothing) and unknown volumes;
        a file export stopped earlier in this boot still answers with its stored total."""
        e = self._exports.get((uuid, generation))
        if e is not None:
            return e.total() if e.spec.kind == "file" else None
        return self._store.stored((uuid, generation))

    def close(self) -> None:
        for e in self._exports.values():
            self._stop(e)
        self._exports.clear()
        self._store.flush()

    # -- internals -------------------------------------------------------------------------------

    def _new(self, key: Key, spec: ExportSpec) -> _Export:
        stem = f"{spec.uuid}.{spec.generation}"
        names = virtiofs.socket_names(stem) if spec.kind == "directory" else qsd.socket_names(stem)
        for name in names.values():
            if len(str(self.root / name)) > SUN_PATH_MAX:
                log.warning("export socket path too long for a client's connect(): connect relative to the dir",
                            path=str(self.root / name))
        return _Export(spec=spec, sockets=names, base=self._store.base(key))

    def _unusable(self, spec: ExportSpec) -> str | None:
        if spec.fmt not in FILE_FORMATS and spec.fmt != DIR_FORMAT:
            return f"unknown volume format {spec.fmt!r} (qcow2, raw or dir)"
        if spec.fmt == DIR_FORMAT and not spec.path.is_dir():
            return f"directory {spec.path} does not exist"
        if spec.fmt != DIR_FORMAT and not spec.path.is_file():
            return f"volume file {spec.path} does not exist"
        return None

    def _remove_sockets(self, e: _Export) -> None:
        for name in e.sockets.values():
            (self.root / name).unlink(missing_ok=True)

    def _start(self, e: _Export) -> None:
        spec = e.spec
        problem = self._unusable(spec)
        if problem is not None:
            if e.state != "failed" or e.error != problem:
                log.error("export cannot start", uuid=spec.uuid, generation=spec.generation, error=problem)
            e.state, e.error, e.next_attempt, e.daemon, e.counter = "failed", problem, None, None, None
            return
        self._remove_sockets(e)
        stem = f"{spec.uuid}.{spec.generation}"
        if spec.kind == "file":
            e.counter = qsd.TraceCounter()
            argv, name = qsd.argv(spec, e.sockets), qsd.QSD
        else:
            e.counter = None
            argv, name = virtiofs.argv(spec, e.sockets), "virtiofsd"
        try:
            e.daemon = Daemon(name, argv, self.root, self.root / f"{stem}.log", e.counter)
        except OSError as exc:
            e.daemon = None
            return self._schedule(e, f"{name} could not be started: {exc}", time.time())
        problem = self._wait_ready(e)
        if problem is not None:
            e.daemon.stop()
            self._fold(e)
            return self._schedule(e, problem, time.time())
        for name in e.sockets.values():
            os.chmod(self.root / name, 0o600)
        e.state, e.next_attempt, e.started_at = "running", None, time.time()
        log.info("export running", uuid=spec.uuid, generation=spec.generation, pid=e.daemon.pid,
                 readonly=spec.readonly, fmt=spec.fmt)

    def _wait_ready(self, e: _Export) -> str | None:
        """Bounded wait for the sockets (and, for qemu-storage-daemon, both exports over QMP)."""
        assert e.daemon is not None
        deadline = time.monotonic() + self.START_TIMEOUT
        while True:
            if e.daemon.exit_code() is not None:
                e.daemon.drain()
                return "could not start: " + e.daemon.describe_exit()
            if all((self.root / n).exists() for n in e.sockets.values()):
                if e.spec.kind != "file":
                    return None
                try:
                    if qsd.exports_ready(self.root / e.sockets["qmp"]):
                        return None
                except Exception as exc:  # the monitor not accepting yet, or refusing: retry until the deadline
                    last = f"{type(exc).__name__}: {exc}"
                else:
                    last = "exports not registered"
            else:
                last = "sockets not created"
            if time.monotonic() > deadline:
                return f"{e.daemon.name} not ready after {self.START_TIMEOUT:.0f} s ({last})"
            time.sleep(0.02)

    def _fold(self, e: _Export) -> None:
        """Add an exited daemon's counts to the base: they survive its restart."""
        e.base = e.total()
        e.counter = None
        if e.spec.kind == "file":
            self._store.record((e.spec.uuid, e.spec.generation), e.base)

    def _died(self, e: _Export, now: float) -> None:
        assert e.daemon is not None
        e.daemon.drain()
        self._fold(e)
        self._remove_sockets(e)
        rc = e.daemon.exit_code()
        if e.spec.kind == "directory" and rc == 0:
            # virtiofsd ends with its client's session: serve the next one at once, not a crash
            log.info("virtiofsd session ended: restarting", uuid=e.spec.uuid, generation=e.spec.generation)
            e.daemon = None
            e.state, e.next_attempt = "restarting", now
            return
        if now - e.started_at >= self.STABLE_AFTER:
            e.backoff = 0.0
        self._schedule(e, e.daemon.describe_exit(), now)

    def _schedule(self, e: _Export, error: str, now: float) -> None:
        e.backoff = self.BACKOFF_FIRST if e.backoff <= 0 else min(e.backoff * 2, self.BACKOFF_CAP)
        e.state, e.error, e.next_attempt = "restarting", error, now + e.backoff
        log.error("export daemon failed", uuid=e.spec.uuid, generation=e.spec.generation, error=error,
                  retry_in=e.backoff)

    def _stop(self, e: _Export) -> None:
        if e.daemon is not None:
            e.daemon.stop()
            self._fold(e)
            e.daemon = None
        self._remove_sockets(e)
        log.info("export stopped", uuid=e.spec.uuid, generation=e.spec.generation)

    def _status(self, e: _Export) -> ExportStatus:
        s = e.spec
        running = e.state == "running" and e.daemon is not None
        return ExportStatus(
            uuid=s.uuid, generation=s.generation, kind=s.kind, fmt=s.fmt, readonly=s.readonly,
            sockets={role: str(self.root / name) for role, name in e.sockets.items()},
            pid=e.daemon.pid if running and e.daemon else None, state=e.state, restarts=e.restarts,
            error=e.error, next_attempt=e.next_attempt if e.state == "restarting" else None,
            counters=e.total() if s.kind == "file" else None)
