"""`LabdSpawner`: a JupyterHub spawner that asks labd for labs.

Install with ``pip install 'labd[jupyterhub]'`` and configure the hub with::

    c.JupyterHub.spawner_class = "labd.spawner.LabdSpawner"
    c.LabdSpawner.labd_url = "http://labd.labd.svc:8080"
    # the hub token: c.LabdSpawner.labd_token, or $LABD_HUB_TOKEN

The spawner keeps no state of its own: labd is the source of truth for
every lab (keyed by the JupyterHub username), so `get_state` stores nothing
beyond JupyterHub's own and a restarted hub simply asks labd again.

Why it looks the way it does:

- ``start`` returns only when the lab is up or has failed, by following
  labd's event stream of the spawn rather than polling the status: the
  stream ends with ``complete`` or ``failed``, and ``failed`` comes right
  after an ``error`` event that says why, which becomes the message the hub
  shows the user.
- ``progress`` opens a stream of its own on every call: labd replays an
  operation's events to each subscriber, so every page that watches a
  spawn sees the same steps. JupyterHub may ask for progress before
  ``start`` has created the lab; the stream waits for the create, or it
  would replay the previous operation.
- Both follow the stream with `LabdSpawner._follow`: a stream that breaks
  (connection reset, read timeout, a cut chunked body, labd restarting or
  answering 503) or ends before the operation's last event is reopened
  with ``Last-Event-ID`` set to the last event seen, so labd sends only the
  later events: none is lost or shown twice. Reopening backs off from
  0.5 s to at most 5 s; an event resets the back-off. Following gives up
  only when labd refuses the stream (401, 403, 404...) or has been
  unreachable for longer than `unreachable_timeout`, and then says so:
  ``start`` fails with that reason, ``progress`` ends with a last message
  giving it. ``progress`` never ends quietly and never raises. The bound
  is its own, shorter than the hub's ``start_timeout``: that one counts
  from the spawn's start, so it would always end the spawn first, with
  the hub's "Timeout" instead of the reason.
- One `httpx.AsyncClient` per event loop and labd URL serves every spawner
  of the hub. Each open event stream holds a connection for as long as a
  spawn is watched, so the client has no cap on connections (a cap would
  let many watchers starve status requests of the pool); streams have a
  read timeout well above labd's 15 s keep-alives instead of none.
- The shared clients are closed when the hub shuts down. JupyterHub has no
  shutdown hook for spawners, but its shutdown (SIGTERM, SIGINT,
  ``JupyterHub.stop``) first runs its cleanup, which may stop servers
  through their spawners, then cancels every other task of its event loop
  and waits for them before it stops the loop
  (``JupyterHub.shutdown_cancel_tasks``); ``asyncio.run`` and
  ``asyncio.Runner`` cancel leftover tasks the same way. So a loop's
  clients belong to a task that only waits: its cancellation closes them,
  after the hub's last request and before the loop stops.
- The hub token goes only into the ``Authorization`` header and is never
  logged (`labd_token` is not shown by ``repr``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import quote

import httpx
from jupyterhub.spawner import Spawner
from traitlets import Callable as CallableTrait
from traitlets import Dict, Float, Integer, Unicode, Union, default

__all__ = ["LabEvent", "LabSpawnError", "LabdSpawner", "read_events"]

_TERMINAL: Final = frozenset({"complete", "failed"})
_STOPPED: Final = frozenset({"terminating", "terminated"})
_RETRY_FIRST: Final = 0.5
"""Seconds before reopening an event stream that broke after an event."""
_RETRY_MAX: Final = 5.0
"""The longest wait between attempts to reopen an event stream."""


class _Clients:
    """The shared labd clients of one event loop, by labd URL; see the module's notes.

    They stay open until the task that keeps them is cancelled (the hub's
    shutdown, or `close`), which closes them and forgets them.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, log: logging.Logger) -> None:
        self.by_url: dict[str, httpx.AsyncClient] = {}
        self._loop = loop
        self._log = log
        self._closing_on_request = False
        self._keeper = loop.create_task(self._keep(), name="labd-spawner-clients")
        """Strongly held here: the loop holds its tasks only weakly."""

    async def _keep(self) -> None:
        try:
            await self._loop.create_future()
        except asyncio.CancelledError:
            if _CLIENTS.get(self._loop) is self:
                del _CLIENTS[self._loop]
            if not self._closing_on_request:
                # The loop's owner is shutting down: a client opened after
                # this would belong to no task and never be closed.
                _SHUT_DOWN.add(self._loop)
            clients, self.by_url = list(self.by_url.items()), {}
            for url, client in clients:
                await client.aclose()
                self._log.debug("Closed the HTTP client for labd at %s", url)
            raise

    async def close(self) -> None:
        """Close the clients now; a later request opens new ones."""
        self._closing_on_request = True
        self._keeper.cancel()
        await asyncio.wait([self._keeper])


_CLIENTS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Clients] = (
    weakref.WeakKeyDictionary()
)
"""The shared clients, per event loop: a client cannot outlive its loop."""

_SHUT_DOWN: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()
"""Loops whose clients were closed by their owner's shutdown."""


class LabSpawnError(Exception):
    """A lab could not be spawned; the message is what JupyterHub shows the user."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.jupyterhub_message = message
        """Read by JupyterHub for the "Spawn failed: ..." message."""


class _StreamLostError(LabSpawnError):
    """labd's event stream of an operation cannot be followed any more; says why."""


class _NoOperationError(Exception):
    """labd has no lab and no recorded operation for the user (404)."""


class _Retry:
    """When to reopen a broken event stream, and when to give up.

    The wait doubles from `_RETRY_FIRST` to `_RETRY_MAX` with each attempt
    that brings no event. labd counts as unreachable from the first failure
    after it last answered a stream; past ``give_up_after`` seconds of that,
    `wait` raises `_StreamLostError`.
    """

    def __init__(self, give_up_after: float) -> None:
        self._give_up_after = give_up_after
        self._delay = _RETRY_FIRST
        self._failing_since: float | None = None
        self.failures = 0
        """Failed attempts since the last event."""

    def answered(self) -> None:
        """labd opened a stream: it is reachable."""
        self._failing_since = None

    def progressed(self) -> None:
        """An event came: the next break is reopened soon again."""
        self._delay = _RETRY_FIRST
        self.failures = 0

    def wait(self, why: str) -> float:
        """Seconds to wait before the next attempt, after a failure saying ``why``."""
        now = time.monotonic()
        if self._failing_since is None:
            self._failing_since = now
        elif now - self._failing_since >= self._give_up_after:
            raise _StreamLostError(
                f"labd unreachable for {now - self._failing_since:.0f} s (last: {why})"
            )
        self.failures += 1
        delay, self._delay = self._delay, min(self._delay * 2, _RETRY_MAX)
        return delay


@dataclass(frozen=True, slots=True)
class LabEvent:
    """One server-sent event of a labd operation."""

    id: str | None
    """The event's id, for resuming with ``Last-Event-ID``."""

    type: str
    """``info``, ``error``, ``failed`` or ``complete``."""

    message: str
    """What happened."""

    progress: int | None
    """Percentage 1..100, when the event carries one."""


async def read_events(lines: AsyncIterator[str]) -> AsyncGenerator[LabEvent, None]:
    """Parse a ``text/event-stream`` into `LabEvent` objects.

    Comment lines (labd's keep-alives) are skipped; an event whose data is
    not a JSON object is passed on with its raw data as the message. An
    event the stream ends in the middle of (no blank line after it) is not
    passed on, as the SSE specification says: it may be cut short, and a
    client resuming after the last whole event gets it again, whole.
    """
    fields: dict[str, str] = {}
    data: list[str] = []
    async for line in lines:
        if line.startswith(":"):
            continue
        if line:
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "data":
                data.append(value)
            else:
                fields[name] = value
            continue
        if data:
            yield _event(fields, "\n".join(data))
        fields, data = {}, []


@dataclass(frozen=True, slots=True)
class _StreamEnd:
    """How a stream read ahead ended: cleanly (no error) or with an error."""

    error: Exception | None = None


async def _read_ahead(
    response: httpx.Response, read: asyncio.Queue[LabEvent | _StreamEnd]
) -> None:
    """Put the events of ``response`` into ``read``, then how the stream ended.

    Nothing here waits but httpx's reads: the queue has no bound (a spawn's
    events are few), so a cancellation always lands in a read.
    """
    try:
        async for event in read_events(response.aiter_lines()):
            read.put_nowait(event)
    except Exception as error:
        read.put_nowait(_StreamEnd(error))
    else:
        read.put_nowait(_StreamEnd())


async def _events_read(
    read: asyncio.Queue[LabEvent | _StreamEnd],
) -> AsyncGenerator[LabEvent, None]:
    """The events `_read_ahead` puts into ``read``; raises the error the stream ended with."""
    while not isinstance(item := await read.get(), _StreamEnd):
        yield item
    if item.error is not None:
        raise item.error


def _event(fields: dict[str, str], data: str) -> LabEvent:
    try:
        payload = json.loads(data)
    except ValueError:
        payload = {"message": data}
    if not isinstance(payload, dict):
        payload = {"message": data}
    progress = payload.get("progress")
    return LabEvent(
        id=fields.get("id"),
        type=fields.get("event", "message"),
        message=str(payload.get("message", "")),
        progress=progress if isinstance(progress, int) else None,
    )


def _error_message(response: httpx.Response) -> str:
    """labd's error text from an error body (docs/api.md's ``detail`` list)."""
    try:
        detail = response.json()["detail"]
        return "; ".join(
            ".".join(str(part) for part in item.get("loc", [])[1:]) + ": " + str(item["msg"])
            if item.get("loc")
            else str(item["msg"])
            for item in detail
        )
    except (ValueError, KeyError, TypeError):
        return f"HTTP {response.status_code}"


def _transient(error: httpx.HTTPError) -> bool:
    """Whether labd may answer if asked again.

    No connection, a broken one (reset, timeout, a cut body), 503
    ``not_ready`` (labd starting) or 429 ``too_many_streams`` (others end).
    """
    if isinstance(error, httpx.HTTPStatusError):
        return error.response.status_code in (429, 503)
    return isinstance(error, httpx.TransportError)


def _describe(error: httpx.HTTPError) -> str:
    """An error in a few words, for logs and the hub's messages (never a token)."""
    if isinstance(error, httpx.HTTPStatusError):
        return f"HTTP {error.response.status_code}: {_error_message(error.response)}"
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


def _error_type(response: httpx.Response) -> str | None:
    try:
        return str(response.json()["detail"][0]["type"])
    except (ValueError, KeyError, TypeError, IndexError):
        return None


class LabdSpawner(Spawner):  # type: ignore[misc]  # jupyterhub is untyped
    """Spawn each user's lab through labd's lab-controller REST API."""

    labd_url = Unicode(
        help="Base URL of labd, e.g. http://labd.labd.svc:8080 (plus labd's route prefix).",
    ).tag(config=True)

    labd_token = Unicode(
        help="The hub's bearer token for labd (role hub). Default: $LABD_HUB_TOKEN.",
    ).tag(config=True)

    uid = Union(
        [Integer(), CallableTrait()],
        default_value=None,
        allow_none=True,
        help="UID the lab runs as, or a callable taking the spawner; None: labd's default.",
    ).tag(config=True)

    gid = Union(
        [Integer(), CallableTrait()],
        default_value=None,
        allow_none=True,
        help="Primary GID of the lab, or a callable taking the spawner; None: labd's default.",
    ).tag(config=True)

    default_options = Dict(
        default_value={"image_class": "recommended", "size": "medium"},
        help=(
            "Options sent when the server is started without any (e.g. through the REST API); "
            "the default matches labd's default sizes and default_size."
        ),
    ).tag(config=True)

    request_timeout = Float(
        30.0, help="Seconds to wait for labd to answer a request (deletes excepted)."
    ).tag(config=True)

    delete_timeout = Float(
        300.0, help="Seconds to wait for labd to delete a lab (labd answers once it is gone)."
    ).tag(config=True)

    stream_read_timeout = Float(
        60.0,
        help="Seconds of silence after which an event stream is reopened (labd pings every 15).",
    ).tag(config=True)

    unreachable_timeout = Float(
        120.0,
        help=(
            "Seconds labd may stay unreachable while a spawn's events are followed: then "
            "progress ends saying so, and the spawn fails with that reason. Keep it below "
            "start_timeout, which counts from the spawn's start."
        ),
    ).tag(config=True)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._created = asyncio.Event()
        """Set once ``start`` has created the lab, cleared when it stops."""

    @default("labd_token")
    def _default_token(self) -> str:
        return os.environ.get("LABD_HUB_TOKEN", "")

    @default("options_form")
    def _default_options_form(self) -> Callable[[LabdSpawner], Any]:
        return _lab_form

    @default("env_keep")
    def _default_env_keep(self) -> list[str]:
        # The hub's PATH, PYTHONPATH... mean nothing inside a lab's container.
        return []

    # -- HTTP -------------------------------------------------------------

    def _client(self) -> httpx.AsyncClient:
        if not self.labd_url:
            raise RuntimeError("LabdSpawner needs labd_url")
        loop = asyncio.get_running_loop()
        if loop in _SHUT_DOWN:
            raise RuntimeError("the hub is shutting down: its labd clients are closed")
        clients = _CLIENTS.get(loop)
        if clients is None:
            clients = _CLIENTS[loop] = _Clients(loop, self.log)
        client = clients.by_url.get(self.labd_url)
        if client is None or client.is_closed:
            client = httpx.AsyncClient(
                base_url=self.labd_url.rstrip("/") + "/spawner/v1",
                limits=httpx.Limits(max_connections=None, max_keepalive_connections=20),
                timeout=httpx.Timeout(self.request_timeout),
            )
            clients.by_url[self.labd_url] = client
        return client

    @classmethod
    async def close_clients(cls) -> None:
        """Close the running loop's labd clients now.

        The hub's shutdown closes them by itself; this is for a program
        that runs spawners and ends otherwise. A later request opens new
        clients.
        """
        clients = _CLIENTS.get(asyncio.get_running_loop())
        if clients is not None:
            await clients.close()

    def _headers(self, **extra: str) -> dict[str, str]:
        if not self.labd_token:
            raise RuntimeError("LabdSpawner needs labd_token (or $LABD_HUB_TOKEN)")
        return {"Authorization": f"Bearer {self.labd_token}", **extra}

    @property
    def _lab_path(self) -> str:
        return f"/labs/{quote(self.user.name, safe='')}"

    async def _lab_state(self) -> dict[str, Any] | None:
        response = await self._client().get(self._lab_path, headers=self._headers())
        if response.status_code == 404:
            return None
        response.raise_for_status()
        state: dict[str, Any] = response.json()
        return state

    @asynccontextmanager
    async def _event_stream(self, last_id: str | None) -> AsyncIterator[AsyncIterator[LabEvent]]:
        """Open the current operation's event stream; its events.

        A task of its own reads the stream ahead and is cancelled on the way
        out. The cancellation lands in httpx's innermost read, so the
        generators httpx nests under a stream end there and then. Closed
        from above instead, at a ``yield``, they would be left to the
        garbage collector, which closes each in a task of its own, and a hub
        shutting down destroys those unfinished ("Task was destroyed but it
        is pending!").

        Raises `_NoOperationError` on 404, `httpx.HTTPStatusError` on any other
        answer but 200, and `httpx.TransportError` when the connection fails.
        """
        headers = self._headers(Accept="text/event-stream")
        if last_id is not None:
            headers["Last-Event-ID"] = last_id
        timeout = httpx.Timeout(self.request_timeout, read=self.stream_read_timeout)
        async with self._client().stream(
            "GET", f"{self._lab_path}/events", headers=headers, timeout=timeout
        ) as response:
            if response.status_code != 200:
                await response.aread()
                if response.status_code == 404:
                    raise _NoOperationError
                raise httpx.HTTPStatusError(
                    f"HTTP {response.status_code}", request=response.request, response=response
                )
            read: asyncio.Queue[LabEvent | _StreamEnd] = asyncio.Queue()
            reader = asyncio.create_task(_read_ahead(response, read), name="labd-events")
            try:
                async with aclosing(_events_read(read)) as events:
                    yield events
            finally:
                reader.cancel()
                await asyncio.wait([reader])

    async def _follow(self) -> AsyncGenerator[LabEvent, None]:
        """The current operation's events, each once, until its last one.

        A stream that breaks, or ends before the operation's last event, is
        reopened with ``Last-Event-ID`` (see the module's notes).

        Raises
        ------
        _StreamLostError
            labd has no lab for the user (404), refused the stream, or was
            unreachable for longer than `unreachable_timeout`.
        """
        last_id: str | None = None
        retry = _Retry(self.unreachable_timeout)
        while True:
            try:
                try:
                    async with self._event_stream(last_id) as events:
                        retry.answered()
                        async for event in events:
                            retry.progressed()
                            last_id = event.id or last_id
                            yield event
                            if event.type in _TERMINAL:
                                return
                except _NoOperationError:
                    raise _StreamLostError(f"labd has no lab for {self.user.name}") from None
                why = "labd ended the stream before the operation's last event"
            except httpx.HTTPError as error:
                if not _transient(error):
                    raise _StreamLostError(
                        f"labd refused the event stream: {_describe(error)}"
                    ) from None
                why = _describe(error)
            delay = retry.wait(why)
            # One warning per outage; the attempts that follow are debug.
            self.log.log(
                logging.WARNING if retry.failures == 1 else logging.DEBUG,
                "labd event stream for %s broke (%s); resuming after event %s in %.1f s",
                self.user.name,
                why,
                last_id,
                delay,
            )
            await asyncio.sleep(delay)

    # -- Spawner API ------------------------------------------------------

    def _identity(self) -> dict[str, Any]:
        identity: dict[str, Any] = {"name": self.user.name}
        for field in ("uid", "gid"):
            value = getattr(self, field)
            if callable(value):
                value = value(self)
            if value is not None:
                identity[field] = int(value)
        return identity

    async def start(self) -> str:
        """Create the lab, wait until labd says it runs, and return its URL."""
        if self.name:
            raise LabSpawnError("labd runs one lab per user: named servers are not supported")
        self._created.clear()
        body = {
            "options": dict(self.user_options or self.default_options),
            "env": self.get_env(),
            "user": self._identity(),
        }
        client = self._client()
        response = await client.post(
            f"{self._lab_path}/create", json=body, headers=self._headers()
        )
        if response.status_code == 409:
            # A lab the hub does not know about (e.g. the hub lost its
            # database, or a previous stop failed): labd's lab wins no
            # argument here, the hub asked for a new one.
            self.log.warning(
                "labd has a lab for %s the hub did not know about (%s); deleting it",
                self.user.name,
                _error_type(response),
            )
            await self._delete()
            response = await client.post(
                f"{self._lab_path}/create", json=body, headers=self._headers()
            )
        if response.status_code != 201:
            raise LabSpawnError(f"labd refused the lab: {_error_message(response)}")
        self._created.set()
        await self._wait_for_spawn()
        state = await self._lab_state()
        if state is None or not state.get("internal_url"):
            raise LabSpawnError("labd reported the lab started but gives no URL for it")
        url: str = state["internal_url"]
        return url

    async def _wait_for_spawn(self) -> None:
        """Follow the spawn's events until ``complete``; raise on ``failed``.

        A stream that breaks or ends without a verdict (labd restarted, a
        proxy cut it) is not a failed spawn: it is resumed after the last
        event seen, and labd sends the rest, the verdict with its reason
        included. (Asking for the lab's state instead would lose the reason,
        and labd cleans a failed lab up once it has been reported.) The
        hub's ``start_timeout`` bounds the whole wait.
        """
        reason = ""
        async with aclosing(self._follow()) as events:
            async for event in events:
                if event.type == "error":
                    reason = event.message
                elif event.type == "failed":
                    raise LabSpawnError(reason or event.message)
                elif event.type == "complete":
                    return
        raise AssertionError("unreachable: _follow ends only after complete or failed")

    async def progress(self) -> AsyncGenerator[dict[str, Any], None]:
        """Yield labd's progress events of the spawn, until its last one.

        Never raises (an exception would cut the hub's progress page): if
        labd's events cannot be followed to the end, the last message says
        why.
        """
        try:
            await self._created.wait()
            async with aclosing(self._follow()) as events:
                async for event in events:
                    update: dict[str, Any] = {"message": event.message}
                    if event.progress is not None:
                        update["progress"] = event.progress
                    yield update
        except Exception as error:
            why = str(error) if isinstance(error, LabSpawnError) else repr(error)
            self.log.warning("no more progress from labd for %s: %s", self.user.name, why)
            yield {"message": f"No more progress from labd: {why}"}

    async def poll(self) -> int | None:
        """None while the lab runs or spawns; an exit status once it is gone or failed."""
        try:
            state = await self._lab_state()
        except httpx.HTTPError as error:
            # labd unreachable is not "the lab stopped": the hub would tear down its route.
            self.log.warning("could not poll labd for %s: %s", self.user.name, error)
            return None
        if state is None:
            return 0
        status = state["status"]
        if status == "failed":
            return 1
        if status in _STOPPED:
            return 0
        return None

    async def stop(self, now: bool = False) -> None:
        """Delete the lab; returns once labd says its objects are gone."""
        self._created.clear()
        await self._delete()

    async def _delete(self) -> None:
        timeout = httpx.Timeout(self.request_timeout, read=self.delete_timeout)
        response = await self._client().delete(
            self._lab_path, headers=self._headers(), timeout=timeout
        )
        if response.status_code not in (204, 404):
            raise RuntimeError(f"labd could not delete the lab: {_error_message(response)}")


async def _lab_form(spawner: LabdSpawner) -> str:
    """JupyterHub's spawn page: labd's form for the user."""
    response = await spawner._client().get(
        f"/lab-form/{quote(spawner.user.name, safe='')}", headers=spawner._headers()
    )
    response.raise_for_status()
    return response.text
