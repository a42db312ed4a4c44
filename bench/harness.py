"""Run one command and measure it: wall time, CPU time and peak RSS of its process tree.

``os.wait4`` gives the CPU time of exactly that child and everything it
waited for, so repetitions do not blur together as RUSAGE_CHILDREN would.
Peak RSS cannot come from the same place: Linux carries a process's RSS
high-water mark across exec, and a child forked from this (Python) process
would report at least this process's size. ``/usr/bin/time`` forks the
measured command from a tiny C process instead, so its ``%M`` is the
command's own.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Runs", "Sample", "run_timed", "settle"]


@dataclass(frozen=True)
class Sample:
    """One measured run."""

    seconds: float
    cpu_seconds: float  # user + system of the process and its waited-for descendants
    max_rss_bytes: int  # largest RSS of any single process in the tree


@dataclass
class Runs:
    """Repetitions of one measurement; the median is what tables report."""

    samples: list[Sample] = field(default_factory=list)

    def add(self, sample: Sample) -> None:
        self.samples.append(sample)

    @property
    def seconds(self) -> list[float]:
        return [s.seconds for s in self.samples]

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def cpu_median(self) -> float:
        return statistics.median(s.cpu_seconds for s in self.samples)

    @property
    def peak_rss(self) -> int:
        return max(s.max_rss_bytes for s in self.samples)


def settle() -> None:
    """Flush dirty pages left by the previous run so it does not bill the next one."""
    os.sync()


TIME = "/usr/bin/time"


def run_timed(cmd: Sequence[str], log: Path, *, shell: bool = False) -> Sample:
    """Run ``cmd`` (stdout+stderr to ``log``); raise if it fails, since a failed run measures nothing."""
    if not os.access(TIME, os.X_OK):
        raise RuntimeError(f"{TIME} is needed for peak RSS (Debian package 'time')")
    settle()
    argv = ["bash", "-o", "pipefail", "-c", cmd[0]] if shell else list(cmd)
    rss_file = log.with_suffix(".rss")
    with open(log, "ab") as out:
        out.write(f"$ {' '.join(argv)}\n".encode())
        out.flush()
        start = time.perf_counter()
        proc = subprocess.Popen([TIME, "-f", "%M", "-o", str(rss_file), *argv], stdin=subprocess.DEVNULL,
                                stdout=out, stderr=out)
        _, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"{argv} exited {proc.returncode}; log {log}:\n{tail}")
    max_rss_kib = int(rss_file.read_text().split()[-1])
    return Sample(
        seconds=elapsed,
        cpu_seconds=usage.ru_utime + usage.ru_stime,
        max_rss_bytes=max_rss_kib * 1024,  # GNU time reports KiB
    )
