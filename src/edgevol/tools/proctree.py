"""CPU time and memory of a process and all its descendants, read from /proc.

Why a tree: a controller may be a uvicorn supervisor with worker children, and
PostgreSQL is a postmaster with one backend per connection; the cost of a
request is spread over all of them. Children that exit and are reaped inside
the tree stay counted (their time moves into the parent's cutime/cstime).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

PROC = Path("/proc")
_TICK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class _Stat:
    ppid: int
    cpu_s: float  # utime + stime + cutime + cstime


def _stat(pid: int) -> _Stat | None:
    try:
        raw = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # comm (field 2) may hold spaces and parentheses: the fields that follow start after the last ')'
    rest = raw[raw.rindex(")") + 2:].split()
    ticks = sum(int(x) for x in rest[11:15])
    return _Stat(ppid=int(rest[1]), cpu_s=ticks / _TICK)


def _status_kib(pid: int, keys: tuple[str, ...]) -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        text = (PROC / str(pid) / "status").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name in keys:
            out[name] = int(value.split()[0])
    return out


def _children() -> dict[int, list[int]]:
    """Every live process's children, from one pass over /proc."""
    children: dict[int, list[int]] = {}
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            st = _stat(int(entry.name))
            if st is not None:
                children.setdefault(st.ppid, []).append(int(entry.name))
    return children


def tree(root: int, children: dict[int, list[int]] | None = None) -> list[int]:
    """``root`` and every live descendant (empty when ``root`` is gone)."""
    if not (PROC / str(root)).exists():
        return []
    children = _children() if children is None else children
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, ()))
    return found


def tree_cpu_seconds(root: int, children: dict[int, list[int]] | None = None) -> float:
    return sum(st.cpu_s for pid in tree(root, children) if (st := _stat(pid)) is not None)


@dataclass
class TreeUsage:
    """What one watched tree used between ``start`` and ``stop``."""

    label: str
    root: int
    cpu_start: float = 0.0
    cpu_s: float = 0.0
    peak_rss_kib: int = 0  # largest sum of VmRSS over the tree seen by a sample
    max_hwm_kib: int = 0  # largest VmHWM (high-water mark) of any one process of the tree
    processes: int = 0

    def sample(self, children: dict[int, list[int]] | None = None) -> None:
        pids = tree(self.root, children)
        rss = 0
        for pid in pids:
            kib = _status_kib(pid, ("VmRSS", "VmHWM"))
            rss += kib.get("VmRSS", 0)
            self.max_hwm_kib = max(self.max_hwm_kib, kib.get("VmHWM", 0))
        self.peak_rss_kib = max(self.peak_rss_kib, rss)
        self.processes = max(self.processes, len(pids))


@dataclass
class Watch:
    """Samples several trees every ``interval`` seconds in a thread; CPU is taken at start and stop."""

    trees: list[TreeUsage]
    interval: float = 1.0  # the sampling thread's CPU is the simulator's: keep it rare
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        if not self.trees:
            return
        children = _children()
        for t in self.trees:
            t.cpu_start = tree_cpu_seconds(t.root, children)
            t.sample(children)
        self._thread = threading.Thread(target=self._run, name="proctree-watch", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            children = _children()
            for t in self.trees:
                t.sample(children)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is None:
            return
        self._thread.join()
        children = _children()
        for t in self.trees:
            t.sample(children)
            t.cpu_s = max(0.0, tree_cpu_seconds(t.root, children) - t.cpu_start)


def alive(pid: int) -> bool:
    return (PROC / str(pid)).exists()


def load_average() -> str:
    try:
        return " ".join((PROC / "loadavg").read_text().split()[:3])
    except OSError:
        return ""
