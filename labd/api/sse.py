"""Server-sent event streams of lab operations.

Each stored `~labd.lab.records.EventRecord` goes out as::

    id: 1842
    event: info
    data: {"message": "Created Kubernetes objects for user lab", "progress": 30}

``progress`` is left out when the event has none, and always for
``complete`` and ``failed`` (docs/api.md).  A stream ends when the service's
iterator ends, i.e. after the operation's last event.

Two things can keep a stream open forever, and both are handled:

* a client that vanished is noticed only when a write fails, so a
  keep-alive comment goes out every ``keepalive`` seconds;
* an open stream blocks a graceful server shutdown.  sse-starlette notices
  when uvicorn begins to exit (``should_exit``, or its own
  ``AppStatus.should_exit``) and then cancels the response, which cuts the
  stream off mid-chunk.  Each stream therefore hands sse-starlette its own
  closing event as ``shutdown_event``: the library sets it first, the
  stream's generator ends at once, and the response finishes cleanly within
  the grace period.  `EventStreams.close` sets the same events, for a server
  that handles the signals itself; the application's lifespan calls it too.

A stream whose database goes out of reach mid-way (a PostgreSQL restart)
ends there, cleanly, with a warning logged: its answer has begun, so no
error status can be sent, and a client resumes with ``Last-Event-ID``
without losing an event.

Each open stream holds a connection, a task and a database follower for as
long as the operation lasts, and any user's token may open them: so there
are at most ``max_per_user`` streams per user (the user of the path, whose
lab it is) and ``max_total`` in all, and the next one is refused with 429
``too_many_streams`` before the service is asked for anything.  A slot is
taken when the stream is admitted and given back when its response ends,
however it ends (operation over, client gone, shutdown).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any, Final

import anyio
import structlog
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.types import Receive, Scope, Send

from labd.api.models import MAX_ID
from labd.config import HttpConfig
from labd.db.database import database_unreachable
from labd.lab.errors import TooManyStreamsError
from labd.lab.records import EventRecord, EventType
from labd.tasks import describe_error

__all__ = ["DEFAULT_KEEPALIVE", "EventStreams", "parse_last_event_id"]

_logger = structlog.get_logger()

DEFAULT_KEEPALIVE: Final = 15.0
"""Seconds between keep-alive comments (docs/api.md)."""

_DEFAULTS: Final = HttpConfig()

_SEP: Final = "\n"
_SHUTDOWN_GRACE: Final = 2.0
"""Seconds a stream has to end on its own at shutdown before it is cut off."""
_NO_PROGRESS: Final = frozenset({EventType.COMPLETE, EventType.FAILED})


def parse_last_event_id(value: str | None) -> int | None:
    """Return the event id a client resumes after, or `None` to replay all.

    A malformed ``Last-Event-ID`` is ignored rather than refused: browsers
    send back exactly the ids labd gave them, so a bad value comes from a
    broken intermediary, and replaying the whole operation is always safe.
    """
    if value is None:
        return None
    value = value.strip()
    if not (value.isascii() and value.isdigit()) or int(value) > MAX_ID:
        return None
    return int(value)


def _frame(event: EventRecord) -> ServerSentEvent:
    data: dict[str, Any] = {"message": event.message}
    if event.progress is not None and event.type not in _NO_PROGRESS:
        data["progress"] = event.progress
    return ServerSentEvent(
        data=json.dumps(data, ensure_ascii=False),
        event=event.type.value,
        id=str(event.id),
        sep=_SEP,
    )


def _keepalive() -> ServerSentEvent:
    return ServerSentEvent(comment="keep-alive", sep=_SEP)


class _Stream(EventSourceResponse):
    """An event-stream response that gives its slot back when it ends."""

    def __init__(self, *args: Any, release: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()


class EventStreams:
    """Makes event-stream responses, within the caps, and can end all open ones.

    Parameters
    ----------
    keepalive
        Seconds between keep-alive comments.
    max_per_user
        Streams open at once for one user.
    max_total
        Streams open at once in all.
    """

    def __init__(
        self,
        *,
        keepalive: float = DEFAULT_KEEPALIVE,
        max_per_user: int = _DEFAULTS.max_streams_per_user,
        max_total: int = _DEFAULTS.max_streams,
    ) -> None:
        self._keepalive = keepalive
        self._max_per_user = max_per_user
        self._max_total = max_total
        self._admitted: Counter[str] = Counter()
        self._closing: set[anyio.Event] = set()
        self._closed = False

    @property
    def open_streams(self) -> int:
        """How many streams are open."""
        return len(self._closing)

    def admitted(self, username: str | None = None) -> int:
        """How many streams hold a slot, of ``username`` or in all."""
        if username is None:
            return self._admitted.total()
        return self._admitted[username]

    async def open(
        self,
        username: str,
        events: Callable[[], Awaitable[AsyncIterator[EventRecord]]],
    ) -> EventSourceResponse:
        """Admit a stream of ``username``'s events and return its response.

        Parameters
        ----------
        username
            The user whose lab the events are of.
        events
            Opens the events; called only once the stream is admitted.

        Raises
        ------
        TooManyStreamsError
            If the user, or labd, has as many streams open as allowed.
        """
        release = self._admit(username)
        try:
            source = await events()
        except BaseException:
            release()
            raise
        closing = anyio.Event()
        return _Stream(
            self._frames(source, closing),
            release=release,
            ping=self._keepalive,
            ping_message_factory=_keepalive,
            sep=_SEP,
            shutdown_event=closing,
            shutdown_grace_period=_SHUTDOWN_GRACE,
        )

    def close(self) -> None:
        """End every open stream, and every stream opened from now on."""
        self._closed = True
        for closing in self._closing:
            closing.set()

    def _admit(self, username: str) -> Callable[[], None]:
        """Take a slot for ``username``; return what gives it back (once)."""
        # Checked and taken with no await in between: concurrent requests
        # cannot both take the last slot.
        if self._admitted[username] >= self._max_per_user:
            raise TooManyStreamsError(
                f"Too many open event streams for {username} (at most {self._max_per_user})"
            )
        if self._admitted.total() >= self._max_total:
            raise TooManyStreamsError(
                f"Too many open event streams (at most {self._max_total}); retry later"
            )
        self._admitted[username] += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self._admitted[username] -= 1
                if not self._admitted[username]:
                    del self._admitted[username]

        return release

    async def _frames(
        self, events: AsyncIterator[EventRecord], closing: anyio.Event
    ) -> AsyncIterator[ServerSentEvent]:
        if self._closed:
            closing.set()
        self._closing.add(closing)
        after: int | None = None
        try:
            async for event in _until(events, closing):
                yield _frame(event)
                after = event.id
        except Exception as exc:
            if not database_unreachable(exc):
                raise
            _logger.warning(
                "event stream ended: the database is out of reach",
                last_event_id=after,
                error=describe_error(exc, first_line=True),
            )
        finally:
            self._closing.discard(closing)


async def _until(
    source: AsyncIterator[EventRecord], stop: anyio.Event
) -> AsyncIterator[EventRecord]:
    """Yield from ``source`` until it ends or ``stop`` is set.

    Each step of ``source`` runs as a task raced against ``stop``, so a
    stream waiting for an event that may never come still ends at once.
    """
    stopped = asyncio.ensure_future(stop.wait())
    step: asyncio.Future[EventRecord] | None = None
    try:
        while not stop.is_set():
            step = asyncio.ensure_future(anext(source))
            await asyncio.wait({step, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if not step.done():
                return
            try:
                event = step.result()
            except StopAsyncIteration:
                return
            step = None
            yield event
    finally:
        for future in (step, stopped):
            if future is not None and not future.done():
                future.cancel()
                with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                    await future
        if isinstance(source, AsyncGenerator):
            await source.aclose()
