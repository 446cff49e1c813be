"""Logging: structlog for labd, and every library routed through it.

One pipeline for everything: labd's own structlog calls and the standard
``logging`` records of uvicorn, SQLAlchemy, aiohttp and kubernetes-asyncio
end up rendered the same way:

* JSON lines on stdout when stdout is not a terminal (journald, files), so
  each line is one event with its fields (``username``, ``lab_id``, ...);
* coloured console lines on a terminal (``labd dev``).

Secrets never reach the renderer: a processor replaces the value of any
field whose name says it holds a secret (token, password, authorization).
"""

from __future__ import annotations

import logging
import os
import re
import sys
from typing import Literal

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

__all__ = ["configure_logging", "set_library_levels"]

_SECRET_KEY = re.compile(r"token|password|passwd|secret|authorization|credential", re.I)
_JOURNAL_PRIORITY = {"critical": 2, "error": 3, "warning": 4, "info": 6, "debug": 7}


def _redact(_logger: WrappedLogger, _method: str, event: EventDict) -> EventDict:
    for key in event:
        if _SECRET_KEY.search(key):
            event[key] = "[redacted]"
    return event


def _journal_priority(_logger: WrappedLogger, method: str, event: EventDict) -> EventDict:
    """Prefix ``<N>`` so journald files the line under the right priority."""
    event["_priority"] = _JOURNAL_PRIORITY.get(method, 6)
    return event


def _render_for_journal(renderer: Processor) -> Processor:
    def render(logger: WrappedLogger, method: str, event: EventDict) -> str:
        priority = event.pop("_priority", 6)
        line = renderer(logger, method, event)
        text = line.decode() if isinstance(line, bytes) else str(line)
        return f"<{priority}>{text}"

    return render


def configure_logging(
    *, level: str = "info", fmt: Literal["auto", "json", "console"] = "auto"
) -> None:
    """Set up structlog and route the standard library's logging through it.

    Parameters
    ----------
    level
        Lowest level logged (``debug``, ``info``, ``warning``, ``error``).
    fmt
        ``json``, ``console``, or ``auto``: console on a terminal, JSON
        otherwise.
    """
    use_json = fmt == "json" or (fmt == "auto" and not sys.stdout.isatty())
    under_journald = use_json and "JOURNAL_STREAM" in os.environ
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _redact,
    ]
    renderer: Processor
    if use_json:
        renderer = structlog.processors.JSONRenderer()
        final: list[Processor] = [structlog.processors.format_exc_info]
        if under_journald:
            final.append(_journal_priority)
            renderer = _render_for_journal(renderer)
    else:
        renderer = structlog.dev.ConsoleRenderer()
        final = []

    structlog.configure(
        processors=[
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            *final,
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    set_library_levels(level)
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True


def set_library_levels(level: str) -> None:
    """Set the levels of the libraries' loggers for labd's ``level``.

    Libraries that are chatty at INFO stay at WARNING unless labd debugs.
    Those that log SQL parameters (a hub token on its way to a lab's Secret)
    or request and response bodies (a lab's Secret) at DEBUG stay at
    WARNING always.
    """
    quiet = logging.DEBUG if level == "debug" else logging.WARNING
    for name in (
        "sqlalchemy",
        "asyncio",
        "alembic",
        "transitions",
        "httpx",
        "httpcore",
        "uvicorn.access",
    ):
        logging.getLogger(name).setLevel(quiet)
    for name in ("aiosqlite", "sqlalchemy.engine", "kubernetes_asyncio"):
        logging.getLogger(name).setLevel(logging.WARNING)
