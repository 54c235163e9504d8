"""Structured logging: JSON lines (JOBLOG_LOG_FORMAT=json) or readable console lines.

Everything goes through one renderer on stderr: structlog's loggers, the standard library's
(aiohttp, asyncio, nats), warnings, and an uncaught exception, so with json every line a
service writes is one JSON object, tracebacks included (in "exception"). Context bound with
structlog.contextvars (the worker binds run and job for the duration of a run) appears in
every line logged within it.
"""
from __future__ import annotations

import logging
import sys
from types import TracebackType
from typing import Any

import structlog
from structlog.typing import EventDict, Processor

from services.contracts.redaction import redact


def _redact(_: Any, __: str, event: EventDict) -> EventDict:
    """No URL leaves the process with its credentials: every text value (tracebacks included) is redacted."""
    for key, value in event.items():
        if isinstance(value, str) and "://" in value:
            event[key] = redact(value)
    return event


def configure(level: str = "INFO", fmt: str = "console") -> None:
    """Route structlog and the standard library through one renderer on stderr."""
    json_lines = fmt == "json"
    # default=str: UUIDs, datetimes and paths appear as their text, not their repr.
    renderer = structlog.processors.JSONRenderer(default=str) if json_lines else structlog.dev.ConsoleRenderer(
        colors=sys.stderr.isatty(), exception_formatter=structlog.dev.plain_traceback,  # no locals: they may hold secrets
    )
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_logger_name,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                        structlog.processors.format_exc_info, _redact, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.captureWarnings(True)
    sys.excepthook = _log_uncaught


def _log_uncaught(kind: type[BaseException], error: BaseException, traceback: TracebackType | None) -> None:
    """A crash is logged like everything else (one JSON line), then the process exits as before."""
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, error, traceback)
        return
    logging.getLogger("joblog").critical("uncaught exception", exc_info=(kind, error, traceback))
