"""Run the edgevol benchmarks and write BENCHMARKS.md.

    .venv/bin/python bench/run.py [--size-gib 1] [--reps 3] [--blank-gib 100] [--out BENCHMARKS.md] [--keep]

Everything (the loopback datastore server, edgevol, the baselines) runs as
children of this one process on this machine, one command at a time. Data
goes under bench/out/ and is deleted at the end unless --keep is given.
Not a test: nothing here asserts on time.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # for the bench package and tests.configs (the shared ConfigBuilder)

from bench import cases, machine  # noqa: E402
from bench.report import render  # noqa: E402

GiB = 1 << 30
OUT_DIR = REPO / "bench" / "out"


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/run.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--size-gib", type=float, default=1.0, help="blob / image size for benchmarks 1 and 3")
    p.add_argument("--reps", type=int, default=3, help="repetitions per measurement (median reported)")
    p.add_argument("--blank-gib", type=int, default=100, help="size of the blank volume in benchmark 2")
    p.add_argument("--out", type=Path, default=REPO / "BENCHMARKS.md", help="markdown report to write")
    p.add_argument("--keep", action="store_true", help="leave bench/out/ (data, logs) in place")
    args = p.parse_args(argv)
    if args.reps < 1 or args.size_gib <= 0 or args.blank_gib <= 0:
        p.error("--reps, --size-gib and --blank-gib must be positive")
    return args


def _command(args: argparse.Namespace) -> str:
    out = args.out.resolve()
    shown = out.relative_to(REPO) if out.is_relative_to(REPO) else out
    size = f"{args.size_gib:g}"
    return (f"cd {REPO} && .venv/bin/python bench/run.py --size-gib {size} --reps {args.reps} "
            f"--blank-gib {args.blank_gib} --out {shown}")


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
    "`python -m edgevol.tools.httpserve` on 127.0.0.1 in its own process, shared by edgevol and curl.",
    "`sync` is called (untimed) before every timed command so dirty pages of the previous one are not billed "
    "to it. Page caches are warm: inputs were just written, as on a device that just received them.",
    "Wall time is measured around the child process with `time.perf_counter`; CPU time is the `wait4()` "
    "rusage of that child (its whole process tree); peak RSS is GNU `/usr/bin/time`'s `%M` (largest single "
    "process of the tree), since a child forked from Python would inherit Python's RSS high-water mark.",
    "*Agent log* rows are spans between the agent's own structured log timestamps: no process start-up, "
    "no noise from it.",
    "MB = 10^6 bytes; disk use = `st_blocks × 512`; ratio = edgevol time ÷ baseline time.",
    "Each edgevol run starts from a fresh `--data-dir` unless stated otherwise.",
]


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    shutil.rmtree(OUT_DIR, ignore_errors=True)
    datastore = OUT_DIR / "datastore"
    datastore.mkdir(parents=True)
    server = None
    began = time.monotonic()
    try:
        server, url = _start_server(datastore, OUT_DIR / "httpserve.log")
        env = cases.Env(out=OUT_DIR, datastore=datastore, url=url, reps=args.reps, size=int(args.size_gib * GiB))
        print(f"datastore at {url}; {args.reps} reps", flush=True)
        tables = []
        for name, run in (("download", lambda: cases.download(env)),
                          ("blank volumes", lambda: cases.blank_volumes(env, args.blank_gib * GiB)),
                          ("volume from qcow2", lambda: cases.volume_from_qcow2(env))):
            t0 = time.monotonic()
            result = run()
            tables.extend(result if isinstance(result, list) else [result])
            print(f"{name}: done in {time.monotonic() - t0:.0f} s", flush=True)
        tables.insert(0, cases.startup_table(env))
        env.summary.append(f"Agent start-up (`device run --once`, empty config, fresh data dir): "
                           f"{env.startup.median:.3f} s median, of which importing its modules takes "
                           f"{env.imports.median:.3f} s (bare interpreter {env.interpreter.median:.3f} s). It is "
                           "paid once per process: it matters for `--once` jobs, not for the daemon.")
        text = render(machine.facts(OUT_DIR, REPO), _command(args), METHOD, tables, env.summary)
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
