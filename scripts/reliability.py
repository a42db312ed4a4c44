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
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
NOT_FAULTS = frozenset({"attempts", "requests", "tag_gets"})  # fault-scenario counts that are not faults


def aggregate(entries: list[dict[str, Any]]) -> dict[str, tuple[int, dict[str, int], list[str]]]:
    """scenario -> (runs, counts summed over the runs, distinct results in order)."""
    rows: dict[str, tuple[int, dict[str, int], list[str]]] = {}
    for e in sorted(entries, key=lambda e: e["scenario"]):
        runs, counts, results = rows.get(e["scenario"], (0, {}, []))
        for k, v in e["counts"].items():
            counts[k] = counts.get(k, 0) + v
        if e["result"] not in results:
            results.append(e["result"])
        rows[e["scenario"]] = (runs + 1, counts, results)
    return rows


def totals(entries: list[dict[str, Any]]) -> dict[str, int]:
    """The headline numbers: kills survived, faults injected, disk fills, hostile inputs tried."""
    out = {"kills survived": 0, "faults injected": 0, "disk fills": 0, "hostile inputs tried": 0}
    for e in entries:
        c, group = e["counts"], e["scenario"].split("/", 1)[0]
        if group.startswith("crash"):
            out["kills survived"] += c.get("kills", 0)
        elif group == "faults":
            out["faults injected"] += sum(v for k, v in c.items()
                                          if k not in NOT_FAULTS and not k.startswith("requests_"))
        elif group == "disk_full":
            out["disk fills"] += c.get("fills", 0)
        elif group == "hostile":
            out["hostile inputs tried"] += sum(c.get(k, 0) for k in ("inputs", "configs", "hostile_images"))
        out["crashes"] = out.get("crashes", 0) + c.get("crashes", 0)
    return out


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
    rows = aggregate(entries)
    lines = [
        "# Reliability figures",
        "",
        f"Produced by `{'make reliability' if args.profile == 'long' else 'scripts/reliability.py --profile quick'}`"
        f" (profile `{args.profile}`) on {time.strftime('%Y-%m-%d', time.gmtime())}: "
        f"{len(rows)} scenarios, {len(entries)} runs, in {elapsed / 60:.1f} min; pytest exit status "
        f"{proc.returncode} ({'all passed' if proc.returncode == 0 else 'FAILURES, see the pytest output'}).",
        f"Machine: {os.cpu_count()} cores, {platform.machine()}, Python {platform.python_version()}.",
        "",
        "Rerun: `make reliability` (long profile), or `.venv/bin/python scripts/reliability.py --profile quick`.",
        "The quick profile of the same scenarios runs inside `make test`. Scenarios live in `tests/reliability/`:",
        "`test_crash.py` (`crash-*`), `test_faults.py` (`faults/*`), `test_disk_full.py` (`disk_full/*`),",
        "`test_hostile_input.py` (`hostile/*`). A scenario run several times (several seeds) shows the sum of its",
        "counts over its runs.",
        "",
        "Totals: " + ", ".join(f"{k} {v}" for k, v in totals(entries).items()) + ".",
        "",
        "| scenario | runs | figures | result |",
        "|---|---|---|---|",
    ]
    for scenario, (runs, counts, results) in rows.items():
        figures_text = ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))
        lines.append(f"| {scenario} | {runs} | {figures_text} | {'; '.join(results)} |")
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out} ({len(entries)} scenario runs)")
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
