"""Building :class:`ErrorRecord` values: one place that decides what an error says."""

from __future__ import annotations

import dataclasses
import time

from typing import Any

from edgevol.device.state import ErrorRecord


def error(description: str, kind: str, entity_id: str, name: str = "", *,
          severity: str = "error", retry: str = "") -> ErrorRecord:
    return ErrorRecord(description=description, time=time.time(), severity=severity,
                       retry_condition=retry, entity=kind, entity_id=entity_id, entity_name=name)


def human_bytes(n: int) -> str:
    step = 1024.0
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < step or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= step
    return f"{n} B"


def mirror_error(err: dict[str, Any] | None, kind: str, ident: str, name: str, prefix: str) -> ErrorRecord | None:
    """Restate a dependency's error as this object's own, keeping what and why."""
    if not err:
        return None
    src = ErrorRecord.from_dict(err)
    assert src is not None
    return ErrorRecord(description=f"{prefix}: {src.description}", time=src.time, severity=src.severity,
                       retry_condition=src.retry_condition, entity=kind, entity_id=ident, entity_name=name)


def standing(old: dict[str, Any] | None, new: ErrorRecord | None) -> ErrorRecord | None:
    """The stored error if ``new`` only restates it: a fresh timestamp every pass would requeue a report."""
    prev = ErrorRecord.from_dict(old)
    if prev is not None and new is not None and dataclasses.replace(prev, time=new.time) == new:
        return prev
    return new
