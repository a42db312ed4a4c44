"""`make reliability`: run the reliability suite's long profile and write RELIABILITY.md.

Each scenario in tests/reliability records its figures (kills survived, faults
injected, inputs tried, result) as JSON lines; this script runs the suite with
EDGEVOL_PROFILE=long, collects them and writes the table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--profile", choices=["quick", "long"], default="long")
    parser.add_argument("--out", type=Path, default=ROOT / "RELIABILITY.md")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (e.g. -k crash)")
    args = parser.parse_args()
    figures = Path(tempfile.mkstemp(prefix="edgevol-reliability-", suffix=".jsonl")[1])
    env = dict(os.environ, EDGEVOL_PROFILE=args.profile, EDGEVOL_RELIABILITY_OUT=str(figures))
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/reliability",
                           "--timeout", "3600", *args.pytest_args], cwd=ROOT, env=env)
    elapsed = time.monotonic() - started
    entries = [json.loads(line) for line in figures.read_text().splitlines() if line.strip()]
    figures.unlink()
    lines = [
        "# Reliability figures",
        "",
        f"Produced by `make reliability` (profile `{args.profile}`) on {time.strftime('%Y-%m-%d', time.gmtime())}: "
        f"{len(entries)} scenario runs in {elapsed / 60:.1f} min, pytest exit status {proc.returncode}.",
        f"Machine: {os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}.",
        "",
        "Rerun: `make reliability` (long profile), or `.venv/bin/python scripts/reliability.py --profile quick`.",
        "The quick profile of the same scenarios runs inside `make test`.",
        "",
        "| scenario | figures | result |",
        "|---|---|---|",
    ]
    for e in sorted(entries, key=lambda e: e["scenario"]):
        counts = ", ".join(f"{k}: {v}" for k, v in sorted(e["counts"].items()))
        lines.append(f"| {e['scenario']} | {counts} | {e['result']} |")
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out} ({len(entries)} scenario runs)")
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
