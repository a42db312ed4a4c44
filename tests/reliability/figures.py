"""Profiles and figures for the reliability suite.

``EDGEVOL_PROFILE`` picks the size of every scenario: ``quick`` (the default,
part of ``make test``) or ``long`` (``make reliability``). Each scenario
records what it did (kills survived, faults injected, inputs tried) and its
result with :func:`record`; when ``EDGEVOL_RELIABILITY_OUT`` names a file the
records are appended there as JSON lines, and ``scripts/reliability.py`` turns
them into ``RELIABILITY.md``.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

PROFILE = os.environ.get("EDGEVOL_PROFILE", "quick")
if PROFILE not in ("quick", "long"):
    raise RuntimeError(f"EDGEVOL_PROFILE must be quick or long, not {PROFILE!r}")


def scale(quick: int, long: int) -> int:
    """The number of iterations for this profile."""
    return long if PROFILE == "long" else quick


def record(scenario: str, *, counts: dict[str, int], result: str, details: dict[str, Any] | None = None) -> None:
    out = os.environ.get("EDGEVOL_RELIABILITY_OUT")
    if not out:
        return
    entry = {"scenario": scenario, "profile": PROFILE, "counts": counts, "result": result,
             "details": details or {}, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    with open(out, "a", encoding="utf-8") as f:
        f.write(json.dumps(entry, sort_keys=True) + "\n")
