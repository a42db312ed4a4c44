"""Thin typed wrapper over the ``qemu-img`` binary.

Disk images are only ever touched through qemu-img so that edgevol never has
to understand qcow2 internals itself. Every call names the format explicitly
(``-f``) because letting qemu probe an untrusted file is how a raw guest disk
gets mistaken for a qcow2 with a backing file pointing at host files.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

# qemu-img's drivers for the disk formats edgevol accepts (VHD is qemu's "vpc"; ISO is opened as raw).
FORMATS = ("qcow2", "raw", "qcow", "vpc", "vmdk", "vhdx")
# The drivers ``qemu-img resize`` can grow: the others answer "Image format driver does not support
# resize" (qemu-img 7.2; tests/test_formats.py checks it against the qemu-img in use).
GROWABLE = ("qcow2", "raw")

# qemu-img info parses image metadata of untrusted files; cap what a crafted
# header can make it consume (same idea as other cloud stacks use).
_INFO_LIMITS = ("--as=1073741824", "--cpu=30")
_INFO_TIMEOUT = 120.0

_PROGRESS_RE = re.compile(rb"\((\d+(?:\.\d+)?)/100%\)")


class QemuImgError(Exception):
    """qemu-img failed; carries the command and its stderr so logs explain why."""

    def __init__(self, cmd: list[str], returncode: int, stderr: str) -> None:
        self.cmd = list(cmd)
        self.returncode = returncode
        self.stderr = stderr.strip()
        super().__init__(
            f"{' '.join(self.cmd)} failed with exit code {returncode}: {self.stderr or '(no stderr)'}"
        )


@dataclass(frozen=True)
class ImageInfo:
    """What qemu-img reports about an image; enough to judge whether it is safe."""

    format: str
    virtual_size: int
    actual_size: int
    backing_file: str | None
    data_file: str | None
    dirty: bool
    corrupt: bool = False
    # VMDK only: its create type and the files its extents live in (a descriptor can name host files).
    create_type: str | None = None
    extents: tuple[str, ...] = ()


@dataclass(frozen=True)
class CheckResult:
    """Outcome of ``qemu-img check``; ``ok`` means no corruption and no check errors."""

    corruptions: int
    leaks: int
    check_errors: int

    @property
    def ok(self) -> bool:
        return self.corruptions == 0 and self.check_errors == 0


def _check_fmt(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"unsupported image format {fmt!r}; expected one of {FORMATS}")


def _run(cmd: list[str], timeout: float | None = None) -> subprocess.CompletedProcess[str]:
    """Run without a shell; turn any failure into QemuImgError with stderr."""
    try:
        proc = subprocess.run(
            cmd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise QemuImgError(cmd, -1, f"timed out after {timeout}s") from exc
    except OSError as exc:
        raise QemuImgError(cmd, -1, str(exc)) from exc
    if proc.returncode != 0:
        raise QemuImgError(cmd, proc.returncode, proc.stderr)
    return proc


def image_info(path: Path, fmt: str | None = None, qemu_img: str = "qemu-img") -> ImageInfo:
    """Inspect an image without taking its lock (``-U``): it may be in use by a VM."""
    cmd = [qemu_img, "info", "--output=json", "-U"]
    if fmt is not None:
        _check_fmt(fmt)
        cmd += ["-f", fmt]
    cmd += ["--", str(path)]
    prlimit = shutil.which("prlimit")
    if prlimit:
        cmd = [prlimit, *_INFO_LIMITS, "--", *cmd]
    proc = _run(cmd, timeout=_INFO_TIMEOUT)
    try:
        data = json.loads(proc.stdout)
        specific = (data.get("format-specific") or {}).get("data") or {}
        return ImageInfo(
            format=str(data["format"]),
            virtual_size=int(data["virtual-size"]),
            actual_size=int(data.get("actual-size", 0)),
            backing_file=data.get("backing-filename") or data.get("full-backing-filename"),
            data_file=specific.get("data-file"),
            dirty=bool(data.get("dirty-flag", False)),
            corrupt=bool(specific.get("corrupt", False)),
            create_type=specific.get("create-type"),
            extents=tuple(str(e["filename"]) for e in specific.get("extents") or ()),
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise QemuImgError(cmd, 0, f"unparsable qemu-img info output: {exc}") from exc


def create(path: Path, fmt: str, size: int, qemu_img: str = "qemu-img") -> None:
    """Create a sparse image of ``size`` bytes (qemu rounds qcow2 up to 512)."""
    _check_fmt(fmt)
    _run([qemu_img, "create", "-q", "-f", fmt, "--", str(path), str(int(size))])


def create_overlay(path: Path, backing: Path, backing_fmt: str, size: int, qemu_img: str = "qemu-img") -> None:
    """A qcow2 overlay of ``size`` bytes whose reads fall through to ``backing`` until written.

    The backing path must be absolute and its format is pinned (``-F``): neither
    is ever taken from the image's own header, so the overlay cannot be steered
    to another host file or probed as another format.
    """
    if backing_fmt not in ("raw", "qcow2"):
        raise ValueError(f"an overlay's backing must be raw or qcow2, got {backing_fmt!r}")
    if not Path(backing).is_absolute():
        raise ValueError(f"an overlay's backing path must be absolute, got {backing}")
    _run([qemu_img, "create", "-q", "-f", "qcow2", "-F", backing_fmt, "-b", str(backing),
          "--", str(path), str(int(size))])


def resize(path: Path, fmt: str, size: int, qemu_img: str = "qemu-img") -> None:
    """Grow an image to ``size`` bytes; shrinking is deliberately not offered."""
    _check_fmt(fmt)
    _run([qemu_img, "resize", "-q", "-f", fmt, "--", str(path), str(int(size))])


def check(path: Path, fmt: str, qemu_img: str = "qemu-img") -> CheckResult:
    """Consistency-check a qcow2 image (raw has no metadata to check)."""
    if fmt != "qcow2":
        raise ValueError("qemu-img check is only meaningful for qcow2")
    cmd = [qemu_img, "check", "--output=json", "-U", "-f", fmt, "--", str(path)]
    try:
        proc = subprocess.run(
            cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False
        )
    except OSError as exc:
        raise QemuImgError(cmd, -1, str(exc)) from exc
    # 0 clean, 2 corrupt, 3 leaks only: all produce a report. 1/63: no result.
    if proc.returncode not in (0, 2, 3):
        raise QemuImgError(cmd, proc.returncode, proc.stderr)
    try:
        data = json.loads(proc.stdout)
    except ValueError as exc:
        raise QemuImgError(cmd, proc.returncode, proc.stderr or str(exc)) from exc
    return CheckResult(
        corruptions=int(data.get("corruptions", 0)),
        leaks=int(data.get("leaks", 0)),
        check_errors=int(data.get("check-errors", 0)),
    )


def _drain(stream: IO[bytes], sink: list[bytes]) -> None:
    for chunk in iter(lambda: stream.read(4096), b""):
        sink.append(chunk)


def convert(
    src: Path,
    src_fmt: str,
    dst: Path,
    dst_fmt: str,
    progress: Callable[[float], None] | None = None,
    qemu_img: str = "qemu-img",
) -> None:
    """Copy guest-visible content into a new sparse image, reporting 0..100.

    ``progress`` is called with non-decreasing percentages and finally 100.
    If it raises (e.g. the caller is cancelling), qemu-img is killed and the
    exception propagates.
    """
    _check_fmt(src_fmt)
    _check_fmt(dst_fmt)
    cmd = [qemu_img, "convert", "-p", "-f", src_fmt, "-O", dst_fmt, "--", str(src), str(dst)]
    try:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
    except OSError as exc:
        raise QemuImgError(cmd, -1, str(exc)) from exc

    # Drain stderr on the side so a chatty qemu-img can never block on a full pipe.
    assert proc.stderr is not None and proc.stdout is not None
    err_chunks: list[bytes] = []
    err_thread = threading.Thread(target=_drain, args=(proc.stderr, err_chunks), daemon=True)
    err_thread.start()
    last = -1.0
    try:
        buf = b""
        fd = proc.stdout.fileno()
        while True:
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            buf += chunk
            # Progress lines are separated by \r (and a final \n); keep the tail.
            *lines, buf = re.split(rb"[\r\n]", buf)
            for line in lines:
                m = _PROGRESS_RE.search(line)
                if m and progress is not None:
                    value = min(100.0, float(m.group(1)))
                    if value > last:
                        last = value
                        progress(value)
        rc = proc.wait()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        err_thread.join(timeout=5)
        proc.stdout.close()
        proc.stderr.close()
    if rc != 0:
        raise QemuImgError(cmd, rc, b"".join(err_chunks).decode(errors="replace"))
    if progress is not None and last < 100.0:
        progress(100.0)
