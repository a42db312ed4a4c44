"""Structured logging: key=value on a terminal, JSON lines otherwise.

Libraries log through the standard ``logging`` module (the cloud SDKs, urllib3,
paramiko); their warnings and errors are passed on to structlog, so they come
out in the same format and stream as edgevol's own lines, never as raw text in
the middle of a JSON log.
"""

from __future__ import annotations

import logging
import sys

import structlog


def configure(fmt: str = "auto", level: str = "info") -> None:
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    root = logging.getLogger()
    root.handlers = [_ToStructlog()]
    root.setLevel(logging.WARNING)  # libraries' info and debug lines carry URLs and headers: not wanted


class _ToStructlog(logging.Handler):
    """A standard logging handler that re-emits each record as a structlog event named after its logger."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            logger = structlog.get_logger(record.name)
            method = getattr(logger, record.levelname.lower(), logger.warning)
            method(record.getMessage(), logger=record.name)
        except Exception:  # a log line must never take the agent down
            self.handleError(record)
