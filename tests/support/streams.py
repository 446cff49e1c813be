"""Consuming the watchers' async iterators in tests."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import TypeVar

__all__ = ["collecting", "wait_for"]

T = TypeVar("T")


@contextlib.asynccontextmanager
async def collecting(source: AsyncGenerator[T, None]) -> AsyncIterator[asyncio.Queue[T]]:
    """Pump ``source`` into a queue from a task; cancel the task on exit."""
    queue: asyncio.Queue[T] = asyncio.Queue()

    async def pump() -> None:
        async with contextlib.aclosing(source) as items:
            async for item in items:
                queue.put_nowait(item)

    task = asyncio.create_task(pump())
    try:
        yield queue
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def wait_for(
    queue: asyncio.Queue[T], predicate: Callable[[T], bool], *, within: float = 5.0
) -> list[T]:
    """Take items until one matches ``predicate``; return all taken, the match last."""
    taken: list[T] = []
    async with asyncio.timeout(within):
        while True:
            item = await queue.get()
            taken.append(item)
            if predicate(item):
                return taken
