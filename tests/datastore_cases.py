"""Steps the cloud datastore tests (S3, Azure Blob, GCS, SFTP) share, and the start/stop of their servers.

Each of those tests drives the real CLI the same way: one ``device run --once`` pass, or an agent killed
mid-download and restarted to show it resumes from its partial. Only the server and its faults differ, so
the steps live here once and every datastore is held to the same checks.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable, Mapping

import pytest

from edgevol.api import messages as m
from edgevol.device.crashpoints import CRASH_AT_ENV
from edgevol.device.datastores.ranged import ObjectChanged, RangedStore
from edgevol.device.state import StateStore
from edgevol.tools.faultproxy import FaultProxy, Seen
from tests.configs import ConfigBuilder, sha256_file
from tests.conftest import EDGEVOL, by_name, device_status, open_guest, start_agent

LOG_TAIL = 3000  # characters of a log quoted in a failure: the end, where the reason is


def run_once(data: Path, b: ConfigBuilder, cfg: Path, timeout: float = 180,
             crash_at: str | None = None, env_extra: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Save ``b`` to ``cfg`` and run one reconcile pass (``device run --once``): the way a test sees what a
    config turns into, with the agent's log in the result's stderr. ``crash_at`` names a crash point
    (``device/crashpoints.py``) where the agent kills itself with SIGKILL; ``env_extra`` adds to the agent's
    environment (say, HTTPS_PROXY)."""
    b.save(cfg)
    env = {k: v for k, v in os.environ.items() if k != CRASH_AT_ENV}
    if crash_at:
        env[CRASH_AT_ENV] = crash_at
    env.update(env_extra or {})
    return subprocess.run([*EDGEVOL, "device", "run", "--data-dir", str(data), "--config", str(cfg), "--once"],
                          capture_output=True, text=True, timeout=timeout, env=env)


def rerun_through(proxy: FaultProxy, path: str, data: Path, b: ConfigBuilder,
                  cfg: Path) -> tuple[subprocess.CompletedProcess[str], list[Seen]]:
    """``run_once`` after a kill, which must succeed, and the GETs of ``path`` the proxy saw from that run only
    (not the killed agent's): where the restarted download asked to start."""
    before = len(proxy.requests_for(path, "GET"))
    proc = run_once(data, b, cfg)
    assert proc.returncode == 0, proc.stderr[-LOG_TAIL:]
    return proc, proxy.requests_for(path, "GET")[before:]


def log_tail(log: Path) -> str:
    """The end of a log file, for a failure message."""
    return log.read_text(errors="replace")[-LOG_TAIL:]


def kill_at_partial(agent: subprocess.Popen[bytes], data: Path, sha256: str, at_least: int, *,
                    ready: Callable[[], object] = lambda: True, log: Path, timeout: float = 60) -> None:
    """SIGKILL ``agent`` once a partial file of blob ``sha256`` under ``data``/cas holds ``at_least`` bytes and
    ``ready()`` is true (say, the stall that holds the download there has fired): a crash mid-download, with a
    known amount on disk for the restarted agent to resume from. The agent is killed on failure too."""
    cas = data / "cas"
    deadline = time.monotonic() + timeout
    try:
        while True:
            assert time.monotonic() < deadline, log_tail(log)
            partial = list(cas.rglob(f"*{sha256}*")) if cas.exists() else []
            if ready() and any(p.is_file() and p.stat().st_size >= at_least for p in partial):
                return
            time.sleep(0.1)
    finally:
        agent.send_signal(signal.SIGKILL)
        agent.wait(10)


def resumed_from(stderr: str) -> list[int]:
    """``resume_from`` of each ``download started`` line of a JSON log: where each download began, so 0 means
    it started over instead of continuing a partial."""
    return [json.loads(line)["resume_from"] for line in stderr.splitlines()
            if line.startswith("{") and '"download started"' in line]


def assert_resumed(stderr: str, at_least: int, first_get: Mapping[str, str] | None = None) -> None:
    """The restarted agent continued its partial instead of starting over: its first download began at
    ``at_least`` or later and, for a datastore read over HTTP, its first GET (``first_get``: that request's
    headers) asked for the rest only, a range (``Range``, or Azure's ``x-ms-range``) from there."""
    if first_get is not None:
        lower = {k.lower(): v for k, v in first_get.items()}
        ranged = lower.get("x-ms-range") or lower.get("range", "")
        assert ranged.startswith("bytes=") and int(ranged[6:].split("-")[0]) >= at_least, lower
    started = resumed_from(stderr)
    assert started and started[0] >= at_least, started  # from the partial, not from 0


def replaced_between_attempts(
        tmp_path: Path, b: ConfigBuilder, sha256: str, at_least: int, *, ready: Callable[[], object],
        replace: Callable[[], None],
        rerun: Callable[[Path, Path], tuple[subprocess.CompletedProcess[str], list[Seen]]],
) -> tuple[Path, subprocess.CompletedProcess[str], list[Seen]]:
    """Start the agent on ``b``'s config, kill it once its partial of blob ``sha256`` holds ``at_least`` bytes of
    the object the server has first (``ready``: the fault holding it there fired), ``replace`` that object with
    the content the config names, and ``rerun(data, cfg)`` the agent (a ``run_once``, or ``rerun_through`` a
    proxy). Returns the data directory, the rerun and the GETs it made."""
    data, cfg, log = tmp_path / "dev", tmp_path / "config.pb", tmp_path / "agent.log"
    b.save(cfg)
    kill_at_partial(start_agent(data, cfg, log), data, sha256, at_least, ready=ready, log=log)
    assert (data / "cas" / "ingest" / f"{sha256}.validator").is_file(), "no validator kept beside the partial"
    replace()
    proc, gets = rerun(data, cfg)
    assert proc.returncode == 0, proc.stderr[-LOG_TAIL:]
    return data, proc, gets


def assert_started_over(stderr: str, at_least: int, first_get: Mapping[str, str] | None = None) -> None:
    """The restarted agent began with its partial (``at_least`` bytes or more), saw that the object had changed
    since those bytes came, threw them away and read the new object from byte 0 (``first_get``: the headers of
    its first GET, when the store is read over HTTP), with no digest mismatch on the way."""
    started = resumed_from(stderr)
    assert started and started[0] >= at_least, started
    assert "the object changed since the partial was written" in stderr, stderr[-LOG_TAIL:]
    assert "digest mismatch" not in stderr.lower(), stderr[-LOG_TAIL:]
    if first_get is not None:
        lower = {k.lower(): v for k, v in first_get.items()}
        assert (lower.get("x-ms-range") or lower.get("range", "")).startswith("bytes=0-"), lower


def assert_a_replaced_object_fails_the_read(store: RangedStore, suffix: str, replace: Callable[[], None]) -> None:
    """An object replaced after ``stat`` (during an attempt) fails a read of the version stat saw with
    ObjectChanged, rather than handing out the new version's bytes as the old one's; a read of the new
    version works."""
    seen = store.stat(suffix)
    assert seen.validator
    replace()
    with pytest.raises(ObjectChanged, match="changed during the download"):
        list(store.read(suffix, 0, seen.size, seen.validator))
    now = store.stat(suffix)
    assert now.validator != seen.validator
    assert sum(len(c) for c in store.read(suffix, 0, now.size, now.validator)) == now.size


def assert_volume_is(data: Path, name: str, image: Path, status: dict | None = None) -> dict:
    """Volume ``name`` is created and starts with exactly ``image``'s bytes, and the blob it came from is
    LOADED in the state store: the download finished and was verified, not merely stopped. Returns the
    volume's status; ``status`` is a ``device status`` already taken (each costs a CLI run)."""
    sha = sha256_file(image)
    size = image.stat().st_size
    vol = by_name((status or device_status(data))["volumes"], name)
    assert vol["state"] == "CREATED_VOLUME", vol
    guest = open_guest(vol["path"]).getvalue()
    assert hashlib.sha256(guest[:size]).hexdigest() == sha and len(guest) >= size
    store = StateStore(data / "state.db")
    try:
        assert store.get("blobs", sha)["state"] == m.ZSwState.LOADED
    finally:
        store.close()
    return vol


def stop_process(proc: subprocess.Popen[bytes], grace: float = 15) -> None:
    """Stop a test server: SIGTERM, then SIGKILL if it has not exited within ``grace`` seconds."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def wait_until_ready(proc: subprocess.Popen[bytes], probe: Callable[[], bool], *, what: str, log: Path,
                     timeout: float, interval: float = 0.1,
                     not_yet: tuple[type[Exception], ...] = (Exception,)) -> None:
    """Call ``probe`` until it returns true (an exception in ``not_yet`` counts as not up yet). A server that
    exits, or is not up within ``timeout`` seconds (it is stopped then), raises with the end of its log,
    so a fixture fails with the server's own reason."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited {proc.returncode}: {log_tail(log)}")
        try:
            if probe():
                return
        except not_yet:
            pass
        time.sleep(interval)
    stop_process(proc)
    raise RuntimeError(f"{what} did not come up: {log_tail(log)}")
