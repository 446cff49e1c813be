"""The server stack labd runs on: the fastest the machine has.

uvicorn serves on the event loop and the HTTP parser it is given.  The
fastest pair, uvloop and httptools (C code, both declared in
``pyproject.toml``), answered labd's status reads about twice as fast as
Python's own event loop with h11 in ``tests/bench``.  Where they cannot be
installed (another Python implementation, an unusual platform) labd falls
back to asyncio's loop and h11, which work everywhere, and says so once in
its log.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = ["ServerStack", "fastest_stack", "run"]

_Result = TypeVar("_Result")


@dataclass(frozen=True, slots=True)
class ServerStack:
    """An event loop and an HTTP protocol class for uvicorn."""

    loop: str
    """``uvloop`` or ``asyncio``."""

    http: str
    """``httptools`` or ``h11``."""

    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None
    """Makes the event loop (None: asyncio's default)."""

    protocol: type[asyncio.Protocol]
    """uvicorn's HTTP protocol class for the parser."""

    @property
    def fastest(self) -> bool:
        """Whether this is uvloop with httptools."""
        return (self.loop, self.http) == ("uvloop", "httptools")


def fastest_stack() -> ServerStack:
    """Return uvloop and httptools where they import, asyncio and h11 where not."""
    loop, loop_factory = "asyncio", None
    with contextlib.suppress(ImportError):
        import uvloop

        loop, loop_factory = "uvloop", uvloop.new_event_loop
    http, protocol = "h11", cast(type[asyncio.Protocol], H11Protocol)
    with contextlib.suppress(ImportError):
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

        http, protocol = "httptools", HttpToolsProtocol
    return ServerStack(loop=loop, http=http, loop_factory=loop_factory, protocol=protocol)


def run(main: Coroutine[Any, Any, _Result], stack: ServerStack | None = None) -> _Result:
    """Run ``main`` to its end on the stack's event loop (`asyncio.run` otherwise)."""
    stack = stack or fastest_stack()
    with asyncio.Runner(loop_factory=stack.loop_factory) as runner:
        return runner.run(main)
