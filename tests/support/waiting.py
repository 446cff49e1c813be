"""Waiting for a condition in a test, without fixed sleeps."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable

__all__ = ["eventually"]


async def eventually(
    check: Callable[[], bool | Awaitable[bool]],
    *,
    within: float = 10.0,
    what: str | None = None,
    interval: float = 0.02,
) -> None:
    """Poll ``check`` (plain or async) until it is true; fail the test after ``within`` seconds.

    The failure names ``what``, or the check's own name.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if loop.time() > deadline:
            name = what or getattr(check, "__qualname__", "condition")
            raise AssertionError(f"{name} not reached within {within:g} s")
        await asyncio.sleep(interval)
