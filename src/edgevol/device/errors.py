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


def utc_time(seconds: float) -> str:
    """A moment as an operator reads it anywhere: ISO 8601 in UTC, to the second."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def next_attempt(attempt: int, max_attempts: int, delay: float) -> str:
    """An ErrorInfo's retryCondition while a failed object waits for its next attempt: how many attempts
    failed and when the next one starts. The API has no field for either, and an absolute time stays true
    while the report waits in the outbox or sits on the controller, which "in 4s" does not."""
    return (f"attempt {attempt} of {max_attempts} failed; attempt {attempt + 1} at "
            f"{utc_time(time.time() + delay)}, {delay:.1f}s after this failure")


def slow_retry(attempts: int | None, slow: float, once: bool, hint: str = "") -> str:
    """The retryCondition of an object that gave up for now: what to fix, how many attempts failed (when
    counted), and when it is tried again."""
    tried = "" if attempts is None else f"{attempts} attempt{'s' if attempts != 1 else ''} failed; "
    when = "not retried in --once mode" if once else \
        f"retried at {utc_time(time.time() + slow)}, {slow:.0f}s after this failure"
    return f"{hint}; {tried}{when}" if hint else f"{tried}{when}"


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
