"""Benchmark 9: the download bandwidth cap (``edgevol.download.max.bytes.per.second``).

For each cap, a blob of about ``seconds`` worth of it is downloaded by
``device run --once`` three ways: with the cap set, without a cap from a
server that sends at the cap's rate (a slow link), and without either. The
rate is measured from the device's side: the growth of the blob's partial
file in the CAS, sampled from outside the agent, minus the download's first
second (start-up and the first burst). CPU time is the agent's own
(``wait4``): a capped download should cost what the same download over a
link that slow costs.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from bench.cases import Env, cas_blob, display_cmd, edgevol_cmd
from bench.datagen import random_blob
from bench.harness import settle
from bench.report import Table, fmt_bytes
from edgevol.tools.httpserve import serve
from tests.configs import ConfigBuilder, sha256_file

__all__ = ["CAPS_MB", "bandwidth_cap"]

MB = 1_000_000
CAPS_MB = (5, 20, 50)  # MB/s: far below what loopback does here (benchmark 1), so the cap is what limits
SAMPLE_SECONDS = 0.05
SKIP_SECONDS = 1.0  # the start of each download is left out of the rate: start-up, the first burst


@dataclass(frozen=True)
class CapRun:
    """One download: its bytes a second over the sampled window, the agent's CPU seconds, its wall time."""

    rate: float | None
    cpu_seconds: float
    seconds: float


def _partial(data: Path, digest: str) -> Path:
    return data / "cas" / "ingest" / f"{digest}.partial"


def _steady_rate(samples: list[tuple[float, int]], size: int) -> float | None:
    """Bytes a second between the first sample ``SKIP_SECONDS`` after the download began and the last one
    before it was complete; None when the window is too short to say."""
    moving = [(t, n) for t, n in samples if 0 < n < size]
    if not moving:
        return None
    start = moving[0][0] + SKIP_SECONDS
    window = [(t, n) for t, n in moving if t >= start]
    if len(window) < 2 or window[-1][0] - window[0][0] < 1.0:
        return None
    (t0, n0), (t1, n1) = window[0], window[-1]
    return (n1 - n0) / (t1 - t0)


def _run(data: Path, config: Path, digest: str, size: int, log: Path) -> CapRun:
    """``device run --once`` with the partial's size sampled while it runs; CPU from ``wait4``."""
    settle()
    partial = _partial(data, digest)
    samples: list[tuple[float, int]] = []
    with open(log, "ab") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(edgevol_cmd(data, config), stdin=subprocess.DEVNULL, stdout=out, stderr=out)
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            try:
                samples.append((time.perf_counter(), partial.stat().st_size))
            except FileNotFoundError:
                pass
            time.sleep(SAMPLE_SECONDS)
        elapsed = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"edgevol exited {proc.returncode}; log {log}")
    if sha256_file(cas_blob(data, digest)) != digest:
        raise RuntimeError("edgevol's blob does not match the source")
    return CapRun(_steady_rate(samples, size), usage.ru_utime + usage.ru_stime, elapsed)


MODES = ("capped", "slow link", "uncapped")


def _config(env: Env, url: str, blob: Path, digest: str, cap: int | None, name: str) -> Path:
    b = ConfigBuilder()
    if cap is not None:
        b.item("edgevol.download.max.bytes.per.second", str(cap))
    b.content_tree(b.datastore(url), blob.name, digest, "raw", name="blob")
    return b.save(env.out / f"{name}.pb")


def bandwidth_cap(env: Env, seconds: float) -> Table:
    # The slow link: a second server on the same files, in this process, sending each body at the cap's rate.
    slow = serve(env.datastore)
    try:
        blobs: dict[int, tuple[str, int]] = {}
        configs: dict[tuple[int, str], Path] = {}
        for cap in CAPS_MB:
            size = int(cap * MB * seconds)
            blob = env.datastore / f"cap-{cap}.raw"
            blobs[cap] = (random_blob(blob, size), size)
            configs[cap, "capped"] = _config(env, env.url, blob, blobs[cap][0], cap * MB, f"cap-{cap}-on")
            configs[cap, "slow link"] = _config(env, slow.url, blob, blobs[cap][0], None, f"cap-{cap}-slow")
            configs[cap, "uncapped"] = _config(env, env.url, blob, blobs[cap][0], None, f"cap-{cap}-off")
        runs: dict[tuple[int, str], list[CapRun]] = {key: [] for key in configs}
        for i in range(env.reps):
            for cap in CAPS_MB:
                digest, size = blobs[cap]
                for mode in MODES:  # interleaved, so drift of the machine hits all three alike
                    slow.rate_limit_bytes_per_sec = cap * MB if mode == "slow link" else None
                    data = env.scratch("cap")
                    log = env.log(f"cap-{cap}-{mode.replace(' ', '-')}-{i}")
                    runs[cap, mode].append(_run(data, configs[cap, mode], digest, size, log))
                    shutil.rmtree(data)
    finally:
        slow.shutdown()
    for cap in CAPS_MB:
        (env.datastore / f"cap-{cap}.raw").unlink()
    return _table(env, runs, {cap: size for cap, (_, size) in blobs.items()}, seconds)


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _table(env: Env, runs: dict[tuple[int, str], list[CapRun]], sizes: dict[int, int], seconds: float) -> Table:
    t = Table(f"9. Download bandwidth cap: {', '.join(map(str, CAPS_MB))} MB/s",
              f"For each cap, a random blob of {seconds:g} s worth of it is downloaded by `device run --once` three "
              "ways: *capped* (`edgevol.download.max.bytes.per.second` set, from the loopback "
              "`edgevol.tools.httpserve`), *slow link* (no cap, from a second `httpserve` that sends each body at "
              "the cap's rate, its `rate_limit_bytes_per_sec`), and *uncapped* (no cap, full speed). *Measured* "
              "is the growth of the blob's partial file in the CAS, sampled every "
              f"{SAMPLE_SECONDS * 1000:.0f} ms from outside the agent, over the download minus its first "
              f"{SKIP_SECONDS:g} s. CPU is the agent process's user + system time (`wait4`), for the same bytes "
              "in each column.",
              columns=["Cap MB/s", "Blob", "Capped: measured MB/s", "Error", "All runs MB/s", "Slow link MB/s",
                       "CPU s capped", "CPU s slow link", "CPU s uncapped", "Capped ÷ slow link"])
    worst, ratios = 0.0, []
    for cap in CAPS_MB:
        rates = [r.rate for r in runs[cap, "capped"] if r.rate is not None]
        rate = _median(rates)
        error = (rate / (cap * MB) - 1) * 100 if rate else None
        worst = max(worst, abs(error or 0))
        slow_rate = _median([r.rate for r in runs[cap, "slow link"] if r.rate is not None])
        cpu = {mode: statistics.median(r.cpu_seconds for r in runs[cap, mode]) for mode in MODES}
        ratios.append(cpu["capped"] / cpu["slow link"])
        t.rows.append([f"{cap}", fmt_bytes(sizes[cap]), "—" if rate is None else f"{rate / MB:.2f}",
                       "—" if error is None else f"{error:+.1f} %", ", ".join(f"{r / MB:.2f}" for r in rates),
                       "—" if slow_rate is None else f"{slow_rate / MB:.2f}",
                       *(f"{cpu[mode]:.2f}" for mode in MODES), f"{ratios[-1]:.2f}×"])
    t.notes.append(f"Commands: `{display_cmd('D', 'cap-N-on.pb')}`, and the same with `cap-N-slow.pb` and "
                   "`cap-N-off.pb`; in every repetition the three runs of a blob follow one another.")
    t.notes.append("The cap is a token bucket charged before each write to the CAS, so the agent stops reading "
                   "its socket while it waits and TCP slows the sender; the bucket holds 0.1 s of the rate.")
    t.notes.append("Against the uncapped run of the same bytes, the capped run takes "
                   f"{_ratios(runs, 'capped', 'uncapped')} the CPU and the slow-link run "
                   f"{_ratios(runs, 'slow link', 'uncapped')}: a download stretched over {seconds:g} s pays what the "
                   "agent spends per second (its reconcile passes, the socket's wake-ups) whatever slows it down.")
    env.summary.append(f"Download bandwidth cap ({', '.join(map(str, CAPS_MB))} MB/s, downloads of {seconds:g} s): "
                       f"the measured rate is within {worst:.1f} % of the cap; the capped agent's CPU is "
                       f"{min(ratios):.2f}–{max(ratios):.2f}× that of an uncapped agent on a link as slow.")
    return t


def _ratios(runs: dict[tuple[int, str], list[CapRun]], mode: str, base: str) -> str:
    """Median CPU of ``mode`` ÷ that of ``base``, for each cap in order."""
    def cpu(cap: int, m: str) -> float:
        return statistics.median(r.cpu_seconds for r in runs[cap, m])
    return ", ".join(f"{cpu(cap, mode) / cpu(cap, base):.2f}×" for cap in CAPS_MB)
