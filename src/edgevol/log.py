"""Structured logging: key=value on a terminal, JSON lines otherwise.

edgevol modules log through :func:`get_logger` with structlog's call style
(``log.info("event", key=value)``). JSON lines are written here directly:
importing structlog at all costs a device ``--once`` run a third of its
start-up (it loads rich and asyncio), and the JSON form is three fields and a
``json.dumps``. The console form, and any logging before :func:`configure`
(tests capture events with ``structlog.testing.capture_logs``), goes through
structlog, imported on first use.

Libraries log through the standard ``logging`` module (the cloud SDKs, urllib3,
paramiko); their warnings and errors are passed on the same way, so they come
out in the same format and stream as edgevol's own lines, never as raw text in
the middle of a JSON log.
"""

from __future__ import annotations

import datetime
import json
import logging
import sys
import threading
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from structlog.typing import FilteringBoundLogger

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR,
           "critical": logging.CRITICAL}


class Logger:
    """A named logger; costs no import until it first logs."""

    __slots__ = ("name", "_structlog")

    def __init__(self, name: str) -> None:
        self.name = name
        self._structlog: FilteringBoundLogger | None = None

    def debug(self, event: str, **fields: Any) -> None:
        self._log("debug", event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._log("info", event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._log("warning", event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._log("error", event, fields)

    def critical(self, event: str, **fields: Any) -> None:
        self._log("critical", event, fields)

    def _log(self, level: str, event: str, fields: dict[str, Any]) -> None:
        if _json_lines is not None:
            _json_lines.write(level, event, fields)
            return
        if self._structlog is None:
            import structlog

            self._structlog = structlog.get_logger(self.name)
        getattr(self._structlog, level)(event, **fields)


def get_logger(name: str) -> Logger:
    return Logger(name)


class _JsonLines:
    """What structlog's add_log_level, TimeStamper(fmt="iso", utc=True) and JSONRenderer print, line for line."""

    def __init__(self, min_level: int, stream: IO[str]) -> None:
        self.min_level = min_level
        self.stream = stream
        self._lock = threading.Lock()

    def write(self, level: str, event: str, fields: dict[str, Any]) -> None:
        if _LEVELS[level] < self.min_level:
            return
        now = datetime.datetime.now(tz=datetime.timezone.utc).isoformat().replace("+00:00", "Z")
        line = json.dumps({**fields, "event": event, "level": level, "timestamp": now}, default=_json_fallback)
        with self._lock:
            print(line, file=self.stream, flush=True)


def _json_fallback(obj: Any) -> Any:
    try:
        return obj.__structlog__()
    except AttributeError:
        return repr(obj)


_json_lines: _JsonLines | None = None  # set by configure() for JSON; None: structlog renders


def configure(fmt: str = "auto", level: str = "info") -> None:
    global _json_lines
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    min_level = _LEVELS[level]
    if use_json:
        _json_lines = _JsonLines(min_level, sys.stderr)
    else:
        _json_lines = None
        _configure_console(min_level)
    root = logging.getLogger()
    root.handlers = [_ToEdgevolLog()]
    root.setLevel(logging.WARNING)  # libraries' info and debug lines carry URLs and headers: not wanted


def _configure_console(min_level: int) -> None:
    import structlog

    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.dev.ConsoleRenderer(colors=False),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(min_level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )


class _ToEdgevolLog(logging.Handler):
    """A standard logging handler that re-emits each record as an event named after its logger."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            logger = get_logger(record.name)
            method = getattr(logger, record.levelname.lower(), logger.warning)
            method(record.getMessage(), logger=record.name)
        except Exception:  # a log line must never take the agent down
            self.handleError(record)
