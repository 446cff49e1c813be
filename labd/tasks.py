"""The one way labd starts a background task.

A task created with bare ``asyncio.create_task`` that fails keeps its
exception until someone awaits it, which for an eternal loop is never: the
failure surfaces, if at all, as "Task exception was never retrieved" at
interpreter exit. Every background task of labd is created here instead,
so a failure is logged the moment it happens and the task is kept referenced
until it ends (the event loop holds only weak references to tasks).
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

import structlog

__all__ = ["cancel_and_wait", "describe_error", "spawn"]

_logger = structlog.get_logger()
_running: set[asyncio.Task[Any]] = set()


def spawn(coro: Coroutine[Any, Any, Any], *, name: str) -> asyncio.Task[Any]:
    """Start ``coro`` as a guarded background task.

    Parameters
    ----------
    coro
        The coroutine to run.
    name
        A name for logs and ``asyncio`` debugging, e.g. ``"scheduler"``.

    Returns
    -------
    asyncio.Task
        The task; cancel it to stop the work.
    """
    task = asyncio.get_running_loop().create_task(coro, name=name)
    _running.add(task)
    task.add_done_callback(_finished)
    return task


def describe_error(exc: BaseException, *, first_line: bool = False) -> str:
    """An error in a few words, for a warning logged without its traceback.

    Parameters
    ----------
    exc
        The error.
    first_line
        Keep the first line only: SQLAlchemy's errors go on with the
        statement and a "Background on this error" link.

    Returns
    -------
    str
        ``"<type>: <message>"``, or the type alone for an error without a
        message (a bare `TimeoutError`).
    """
    message = str(exc)
    if first_line:
        message = message.partition("\n")[0]
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def _finished(task: asyncio.Task[Any]) -> None:
    _running.discard(task)
    if task.cancelled():
        return
    error = task.exception()
    if error is not None:
        _logger.error("background task failed", task=task.get_name(), exc_info=error)


async def cancel_and_wait(tasks: list[asyncio.Task[Any]]) -> None:
    """Cancel ``tasks`` and wait until every one of them has ended.

    Parameters
    ----------
    tasks
        Tasks started with `spawn`; failures were already logged there.
    """
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
