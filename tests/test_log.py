"""edgevol.log writes JSON lines itself (structlog is too large an import for start-up): the lines must be
exactly what structlog printed with the processors edgevol configured before, and everything else (the console
form, logging before configure) must still go through structlog."""

from __future__ import annotations

import io
import json
import logging
import re
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest
import structlog

from edgevol import log as edgelog

ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{6})?Z$")


class _Custom:
    def __structlog__(self) -> str:
        return "custom form"


EVENTS: list[tuple[str, str, dict[str, Any]]] = [
    ("info", "config applied", {"path": "/tmp/x.pb", "sha256": "cd1730faac88"}),
    ("warning", "retrying", {"attempt": 2, "delay": 0.5, "ok": None, "ids": ["a", "b"], "nested": {"k": [1]}}),
    ("error", "download failed", {"path": Path("/var/x"), "raw": b"\x00\xff", "err": OSError(28, "No space")}),
    ("critical", "quotes \" and \u00e9", {"custom": _Custom(), "event_count": 3}),
    ("info", "no fields", {}),
]


@pytest.fixture
def clean_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(edgelog, "_json_lines", None)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers, root.level = handlers, level
    structlog.reset_defaults()


def _structlog_lines(min_level: int) -> list[str]:
    """What the former configuration (structlog's own JSON chain) printed for EVENTS."""
    out = io.StringIO()
    structlog.configure(
        processors=[structlog.processors.add_log_level, structlog.processors.TimeStamper(fmt="iso", utc=True),
                    structlog.processors.JSONRenderer()],
        wrapper_class=structlog.make_filtering_bound_logger(min_level),
        logger_factory=structlog.PrintLoggerFactory(file=out), cache_logger_on_first_use=False)
    logger = structlog.get_logger("edgevol.test")
    for level, event, fields in EVENTS:
        getattr(logger, level)(event, **fields)
    structlog.reset_defaults()
    return out.getvalue().splitlines()


def _edgevol_lines(monkeypatch: pytest.MonkeyPatch, level: str) -> list[str]:
    out = io.StringIO()
    monkeypatch.setattr(sys, "stderr", out)
    edgelog.configure("json", level)
    logger = edgelog.get_logger("edgevol.test")
    for lvl, event, fields in EVENTS:
        getattr(logger, lvl)(event, **fields)
    return out.getvalue().splitlines()


def _without_timestamp(line: str) -> tuple[str, str]:
    doc = json.loads(line)
    stamp = doc.pop("timestamp")
    assert ISO_UTC.match(stamp), stamp
    return json.dumps(doc), line[:line.rindex('"timestamp"')]


@pytest.mark.parametrize("level", ["info", "error"])
def test_json_lines_are_the_ones_structlog_printed(monkeypatch: pytest.MonkeyPatch, clean_logging: None,
                                                   level: str) -> None:
    ours = _edgevol_lines(monkeypatch, level)
    theirs = _structlog_lines(edgelog._LEVELS[level])
    assert len(ours) == len(theirs) == (5 if level == "info" else 2)
    assert [_without_timestamp(x) for x in ours] == [_without_timestamp(x) for x in theirs]


def test_library_records_come_out_as_json_lines(monkeypatch: pytest.MonkeyPatch, clean_logging: None) -> None:
    out = io.StringIO()
    monkeypatch.setattr(sys, "stderr", out)
    edgelog.configure("json", "info")
    logging.getLogger("urllib3.connectionpool").warning("retrying %s", "/x")
    logging.getLogger("urllib3.connectionpool").info("not wanted")
    [line] = out.getvalue().splitlines()
    doc = json.loads(line)
    assert (doc["event"], doc["logger"], doc["level"]) == ("retrying /x", "urllib3.connectionpool", "warning")


def test_the_console_form_is_structlogs(monkeypatch: pytest.MonkeyPatch, clean_logging: None) -> None:
    out = io.StringIO()
    monkeypatch.setattr(sys, "stderr", out)
    edgelog.configure("console", "info")
    edgelog.get_logger("edgevol.test").info("config applied", path="/tmp/x.pb")
    edgelog.get_logger("edgevol.test").debug("filtered")
    [line] = out.getvalue().splitlines()
    assert re.match(r"^\S+Z \[info\s*\] config applied\s+path=/tmp/x.pb$", line), line


def test_before_configure_events_reach_structlog(clean_logging: None) -> None:
    with structlog.testing.capture_logs() as logs:
        edgelog.get_logger("edgevol.test").warning("disk full", free=0)
    assert logs == [{"event": "disk full", "free": 0, "log_level": "warning"}]
