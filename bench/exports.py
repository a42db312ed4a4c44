"""Benchmark 10: a volume served through its export, against the file itself and against ``qemu-nbd``.

A task reads and writes a volume through the export the agent runs for it (``qemu-storage-daemon``, its NBD
socket). ``qemu-img bench`` drives the same qcow2 three ways, one after the other: opened directly (no
export: the ceiling), through ``qemu-nbd`` on a unix socket (what a user would otherwise run to serve a disk
image), and through edgevol's export, whose daemon also counts every request for ZMetricVolume. No guest
boots: ``qemu-img bench`` is the block driver a VM would use, without the VM.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import time
from pathlib import Path

from bench.cases import Env
from bench.report import Table

__all__ = ["export_throughput"]

MiB = 1 << 20
IMAGE = 1 << 30
# (label, qemu-img bench arguments): large sequential requests, and small ones where per-request costs show
LOADS = (("read 64 KiB", ["-c", "16384", "-s", "64k", "-d", "16"]),
         ("write 64 KiB", ["-w", "-c", "16384", "-s", "64k", "-d", "16"]),
         ("read 4 KiB", ["-c", "100000", "-s", "4k", "-d", "16"]))
WAYS = ("file", "qemu-nbd", "edgevol export")
UUID = "10101010-1010-1010-1010-101010101010"


def _bench(args: list[str], target: str, cwd: Path | None = None) -> float:
    """Seconds ``qemu-img bench`` reports for its run (its own clock: no process start in it)."""
    done = subprocess.run(["qemu-img", "bench", *args, target], capture_output=True, text=True, cwd=cwd, check=True)
    line = next(x for x in done.stdout.splitlines() if x.startswith("Run completed in"))
    return float(line.split()[3])


def _wait_socket(path: Path, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{path} did not appear")
        time.sleep(0.02)


def _through_qemu_nbd(image: Path, args: list[str], work: Path) -> float:
    sock = work / "nbd.sock"  # qemu-nbd wants an absolute path (this one is well under the kernel's 108 bytes)
    proc = subprocess.Popen(["qemu-nbd", "--persistent", "--shared=4", "-f", "qcow2", f"--socket={sock}", "-x", UUID,
                             str(image)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_socket(sock)
        return _bench(["-f", "raw", *args], f"nbd+unix:///{UUID}?socket={sock}")
    finally:
        proc.terminate()
        proc.wait(10)


def _through_export(image: Path, args: list[str], work: Path) -> tuple[float, int]:
    """Seconds, and the requests the export counted (they must equal what qemu-img bench made)."""
    from edgevol.device.exports import Exports, ExportSpec

    exports = Exports(work / "exports", boot_id=f"bench-{time.monotonic_ns()}")
    spec = ExportSpec(UUID, 0, image, "qcow2", False)
    try:
        exports.apply({(UUID, 0): spec})
        deadline = time.monotonic() + 10
        while not [s for s in exports.status() if s.state == "running"]:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the export did not start: {exports.status()}")
            exports.supervise()
            time.sleep(0.05)
        sock = Path(exports.status()[0].sockets["nbd"])
        seconds = _bench(["-f", "raw", *args], f"nbd+unix:///{UUID}?socket=./{sock.name}", cwd=sock.parent)
        exports.apply({})  # the daemon's last counts are read to the end of its log
        counted = exports.counters(UUID, 0)
        return seconds, 0 if counted is None else counted.read_ops + counted.write_ops
    finally:
        exports.close()


def export_throughput(env: Env) -> Table:
    work = env.scratch("exports")
    image = work / "vol.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), str(IMAGE)], check=True)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -P 7 0 {IMAGE}", str(image)], check=True,
                   stdout=subprocess.DEVNULL)  # allocated, so reads read data
    seconds: dict[tuple[str, str], list[float]] = {}
    counted: dict[str, list[int]] = {}
    for _ in range(env.reps):
        for label, args in LOADS:  # the three ways of one load follow one another: drift hits them alike
            seconds.setdefault((label, "file"), []).append(_bench(["-f", "qcow2", *args], str(image)))
            seconds.setdefault((label, "qemu-nbd"), []).append(_through_qemu_nbd(image, args, work))
            took, requests = _through_export(image, args, work)
            seconds.setdefault((label, "edgevol export"), []).append(took)
            counted.setdefault(label, []).append(requests)
    shutil.rmtree(work)
    return _table(env, seconds, counted)


def _table(env: Env, seconds: dict[tuple[str, str], list[float]], counted: dict[str, list[int]]) -> Table:
    t = Table("10. Volume export: a task's I/O through the export",
              "`qemu-img bench` (queue depth 16) on one 1 GiB qcow2 volume: *file* opens the image itself, "
              "*qemu-nbd* serves it on a unix socket (its defaults: writeback cache, like the export), *edgevol export* is "
              "the export the agent runs for an activated app's volume (`edgevol.device.exports`: "
              "`qemu-storage-daemon`, NBD on a unix socket, every request counted for ZMetricVolume). Seconds are "
              "qemu-img bench's own; MB/s = requests × size ÷ seconds.",
              columns=["Load", "Requests", "File MB/s", "qemu-nbd MB/s", "Export MB/s", "All export runs s",
                       "Export ÷ qemu-nbd", "Export ÷ file", "Requests counted"])
    worst = []
    for label, args in LOADS:
        count, size = int(args[args.index("-c") + 1]), int(args[args.index("-s") + 1].rstrip("k")) * 1024
        med = {way: statistics.median(seconds[label, way]) for way in WAYS}
        rate = {way: count * size / med[way] / 1e6 for way in WAYS}
        worst.append(rate["edgevol export"] / rate["qemu-nbd"])
        t.rows.append([label, str(count), f"{rate['file']:.0f}", f"{rate['qemu-nbd']:.0f}",
                       f"{rate['edgevol export']:.0f}", ", ".join(f"{s:.3f}" for s in seconds[label, "edgevol export"]),
                       f"{worst[-1]:.2f}×", f"{rate['edgevol export'] / rate['file']:.2f}×",
                       ", ".join(str(c) for c in counted[label])])
    t.notes.append("Ratios are of throughput (higher is faster). *Requests counted* is what the export's counters "
                   "added up for the run: each must equal *Requests*, or the counters are wrong.")
    t.notes.append("No guest boots: qemu-img bench is QEMU's block layer, the driver a VM would attach with.")
    env.summary.append(f"Volume export (NBD on a unix socket, I/O counted): {min(worst):.2f}–{max(worst):.2f}× the "
                       "throughput of `qemu-nbd` serving the same qcow2 (`qemu-img bench`, 64 KiB and 4 KiB requests).")
    return t
