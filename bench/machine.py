"""Facts about the machine, so a reader can tell whether figures are comparable to theirs."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

__all__ = ["facts", "load_average"]


def _first_line(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, check=False).stdout
    except OSError:
        return "(not found)"
    return out.strip().splitlines()[0] if out.strip() else "(no output)"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "(unknown)"


def _ram_gib() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / (1 << 20):.1f} GiB"
    except OSError:
        pass
    return "(unknown)"


def _filesystem(path: Path) -> str:
    out = subprocess.run(["df", "-PT", str(path)], capture_output=True, text=True, check=False).stdout
    rows = out.strip().splitlines()
    if len(rows) < 2:
        return "(unknown)"
    source, fstype, *_ = rows[1].split()
    mount = rows[1].split()[-1]
    return f"{fstype} ({source} mounted on {mount})"


def _edgevol_version() -> str:
    try:
        return metadata.version("edgevol")
    except metadata.PackageNotFoundError:
        return "(not installed)"


def _git_commit(repo: Path) -> str:
    proc = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True, check=False)
    return proc.stdout.strip() if proc.returncode == 0 else "(no commit yet: working tree)"


def load_average() -> str:
    """1/5/15-minute load: other work on the machine during a run shows up here, not in the figures."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "(unknown)"


def facts(work_dir: Path, repo: Path, load_at_start: str = "") -> list[tuple[str, str]]:
    """(label, value) pairs for the report header."""
    load = f"{load_at_start} at start, {load_average()} at end" if load_at_start else load_average()
    return [
        ("Date (UTC)", datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M")),
        ("CPU", f"{_cpu_model()}, nproc = {os.cpu_count()}"),
        ("RAM", _ram_gib()),
        ("Kernel", f"{platform.system()} {platform.release()}"),
        ("Python", sys.version.split()[0]),
        ("qemu-img", _first_line(["qemu-img", "--version"])),
        ("curl", _first_line(["curl", "--version"])),
        ("Container tools", "; ".join(_first_line(c) for c in (["skopeo", "--version"], ["umoci", "--version"],
                                                               ["tar", "--version"], ["/usr/bin/docker-registry",
                                                                                     "--version"]))),
        ("Work dir filesystem", _filesystem(work_dir)),
        ("edgevol", f"{_edgevol_version()}, {_git_commit(repo)}"),
        ("Load average (1/5/15 min)", load),
    ]
