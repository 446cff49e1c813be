"""Logging: structlog for labd, and every library routed through it.

One pipeline for everything: labd's own structlog calls and the standard
``logging`` records of uvicorn, SQLAlchemy, aiohttp and kubernetes-asyncio
end up rendered the same way:

* JSON lines on stdout when stdout is not a terminal (journald, files), so
  each line is one event with its fields (``username``, ``lab_id``, ...);
* coloured console lines on a terminal (``labd dev``).

Secrets never reach the renderer.  The rule of what is secret is
`labd.lab.secrecy`'s, the one the service uses to keep environment variables
out of the database and the alerts use to scrub error texts:

* a field whose name is secret is replaced by ``[redacted]``, at any depth
  (``env={"JUPYTERHUB_API_TOKEN": ...}`` keeps its other variables);
* every other text is passed through `labd.lab.secrecy.redact_text`: the
  message (a library's ``Authorization: Bearer ...``, a ``%s`` argument
  merged into it), the values, and the rendered traceback;
* redaction runs twice: before a record leaves structlog (so any other
  handler of the root logger sees redacted fields) and again after the
  traceback was formatted, just before rendering, so the traceback text is
  redacted too;
* tracebacks are plain text in both formats and never show local
  variables: the console renderer's default (rich, with ``show_locals``)
  would print every local of every frame, a hub token among them.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, Final, Literal

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from labd.lab.secrecy import REDACTED, is_secret_name, redact_text

__all__ = ["configure_logging", "set_library_levels"]

_JOURNAL_PRIORITY = {"critical": 2, "error": 3, "warning": 4, "info": 6, "debug": 7}

_UNTOUCHED: Final = frozenset({"exc_info", "_record", "_from_structlog"})
"""Fields left as they are: an exception not yet formatted, structlog's own bookkeeping."""

_MAX_DEPTH: Final = 10
"""Nesting below which a value is redacted as the text of its ``repr``."""


def _redacted(value: Any, depth: int = 0) -> Any:
    """A value with secret-named keys replaced and credentials cut out of texts.

    Containers are copied, never changed in place: the caller's objects are
    logged, not redacted.  Other objects become their ``repr`` (what both
    renderers would print), redacted.
    """
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return redact_text(value)
    if depth < _MAX_DEPTH:
        if isinstance(value, dict):
            return {
                key: REDACTED
                if isinstance(key, str) and is_secret_name(key)
                else _redacted(item, depth + 1)
                for key, item in value.items()
            }
        if isinstance(value, list | tuple | set | frozenset):
            items = [_redacted(item, depth + 1) for item in value]
            return tuple(items) if isinstance(value, tuple) else items
    return redact_text(repr(value))


def _redact(_logger: WrappedLogger, _method: str, event: EventDict) -> EventDict:
    """Redact an event: secret-named fields at any depth, credentials in every text."""
    redacted = _redacted({key: value for key, value in event.items() if key not in _UNTOUCHED})
    return {key: redacted.get(key, value) for key, value in event.items()}


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
    # The traceback is formatted as plain text (no locals) before the last
    # redaction, in both formats, so that its text is redacted as well.
    final: list[Processor] = [structlog.processors.format_exc_info, _redact]
    renderer: Processor
    if use_json:
        renderer = structlog.processors.JSONRenderer()
        if under_journald:
            final.append(_journal_priority)
            renderer = _render_for_journal(renderer)
    else:
        renderer = structlog.dev.ConsoleRenderer(exception_formatter=structlog.dev.plain_traceback)

    structlog.configure(
        processors=[
            # A call below the level ends here, before the processors run
            # (the redaction walks every field): the standard library would
            # only drop it after them.
            structlog.stdlib.filter_by_level,
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
