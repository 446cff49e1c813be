"""Changes made by other labd processes, heard through PostgreSQL.

Migration 0002 makes PostgreSQL send ``NOTIFY labd_lab_changes,
'<username>'`` whenever a lab row changes in a way a status read would
show.  `ChangeListener` holds one connection that ``LISTEN``\\ s on that
channel and forgets the user's cached status (`labd.db.status.StatusCache`)
for each notification, so every replica serves what any replica wrote.
On the same connection it hears migration 0004's ``labd_lab_follow``
channel, whose payload is a lab id, and wakes the readers that follow that
lab (`labd.lab.signals.LabSignals`): event streams and waiting deletes.
And it hears migration 0006's ``labd_lab_due`` channel, whose payload is the
time a lab falls due (a new lab, a delete, a wake-up, a retry sooner than
before), and wakes this process's scheduler then, if that comes before the
scheduler's own next look at SQL: a lab another replica made due is
claimed here without polling.

A commit of this process is signed with one of its own connections' server
process ids, and the store has already told this process's cache and
followers of it: those notifications are skipped, so each write wakes a
follower once, not twice.

The cache is only on while the listener listens: when the connection drops
or stops answering, the cache is turned off (reads go to SQL) until a new
connection listens again, and then it starts empty; likewise followers
poll while the listener is deaf.  A notification cannot
be missed unseen, only the cache's speed is lost for a while.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Collection
from typing import Any, Final

import asyncpg
import structlog
from sqlalchemy.engine import URL

from labd.db.status import StatusCache
from labd.lab.signals import LabSignals
from labd.tasks import describe_error

__all__ = [
    "APPLICATION",
    "CHANNEL",
    "DUE_CHANNEL",
    "FOLLOW_CHANNEL",
    "ChangeListener",
    "warm_status",
]

CHANNEL: Final = "labd_lab_changes"
"""The channel of migration 0002's trigger."""

FOLLOW_CHANNEL: Final = "labd_lab_follow"
"""The channel of migration 0004's triggers."""

DUE_CHANNEL: Final = "labd_lab_due"
"""The channel of migration 0006's trigger."""

APPLICATION: Final = "labd-change-listener"
"""``application_name`` of the listening connection (``pg_stat_activity``)."""

_PING_INTERVAL: Final = 5.0
"""Seconds between checks that the listening connection still answers."""

_PING_TIMEOUT: Final = 5.0
"""Seconds a check may take before the connection counts as lost."""

_RETRY: Final = (0.5, 10.0)
"""First and longest pause before connecting again."""

_logger = structlog.get_logger()


class ChangeListener:
    """Keeps a `StatusCache` coherent with other processes' writes.

    Parameters
    ----------
    url
        The PostgreSQL database (a SQLAlchemy ``postgresql+asyncpg`` URL).
    status
        The cache to keep coherent; it is on only while listening.
    signals
        Woken for each lab that changed; told whether changes are heard.
    own_backends
        Server process ids of this process's own connections, kept current
        (`labd.db.database.Database.backend_pids`).  The cache and the
        followers have already heard of this process's own commits, from the
        store itself: their notifications, signed with one of these ids, are
        skipped, so a waiting delete does not read its lab twice per write.
    """

    def __init__(
        self,
        url: URL,
        *,
        status: StatusCache,
        signals: LabSignals,
        own_backends: Collection[int] = (),
    ) -> None:
        self._dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
        self._status = status
        self._signals = signals
        self._own = own_backends
        self._listened = False
        self._connects = 0
        self._timer: asyncio.TimerHandle | None = None
        self.listening = asyncio.Event()
        """Set while notifications are being received."""

    async def run(self) -> None:
        """Listen until cancelled, connecting again after every loss."""
        failures = 0
        try:
            while True:
                self._listened = False
                try:
                    await self._listen()
                except Exception as exc:
                    _logger.warning(
                        "lab change listener lost its connection; status reads go to SQL",
                        error=describe_error(exc),
                    )
                failures = 1 if self._listened else failures + 1
                await asyncio.sleep(min(_RETRY[0] * 2 ** (failures - 1), _RETRY[1]))
        finally:
            self._stop_listening()

    async def _listen(self) -> None:
        connection: asyncpg.Connection[Any] = await asyncpg.connect(
            self._dsn, timeout=_PING_TIMEOUT, server_settings={"application_name": APPLICATION}
        )
        lost = asyncio.Event()
        try:
            connection.add_termination_listener(lambda _connection: lost.set())
            await connection.add_listener(CHANNEL, self._notified)
            await connection.add_listener(FOLLOW_CHANNEL, self._followed)
            await connection.add_listener(DUE_CHANNEL, self._due)
            # Only now is every later commit sure to be heard.
            self._status.reset(enabled=True)
            self._signals.hearing(True)
            self._listened = True
            self.listening.set()
            _logger.info("listening for lab changes of other processes")
            self._connects += 1
            if self._connects > 1:
                # The cache was emptied while deaf; labd warms it after its
                # start itself (`Labd.start`), without competing with it.
                await self._warm()
            while not lost.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(lost.wait(), _PING_INTERVAL)
                if not lost.is_set():
                    await connection.fetchval("SELECT 1", timeout=_PING_TIMEOUT)
            raise OSError("connection closed")
        finally:
            self._stop_listening()
            connection.terminate()

    async def _warm(self) -> None:
        await warm_status(self._status)

    def _stop_listening(self) -> None:
        self.listening.clear()
        self._status.reset(enabled=False)
        if self._signals.complete:
            self._signals.hearing(False)

    def _notified(self, _connection: Any, pid: int, _channel: str, payload: object) -> None:
        if pid not in self._own:
            self._status.invalidate(str(payload))

    def _followed(self, _connection: Any, pid: int, _channel: str, payload: object) -> None:
        if pid not in self._own:
            self._signals.changed_elsewhere(str(payload))

    def _due(self, _connection: Any, _pid: int, _channel: str, payload: object) -> None:
        try:
            delay = float(str(payload)) - time.time()
        except ValueError:
            delay = 0.0
        if delay <= 0:
            self._signals.wake_scheduler()
            return
        if delay >= self._signals.schedule_interval:
            # The scheduler reads the nearest due time from SQL before then.
            return
        # One timer, at the earliest time announced: when it fires the
        # scheduler reads the nearest due time itself.
        loop = asyncio.get_running_loop()
        at = loop.time() + delay
        if self._timer is not None and not self._timer.cancelled():
            if self._timer.when() <= at:
                return
            self._timer.cancel()
        self._timer = loop.call_at(at, self._due_now)

    def _due_now(self) -> None:
        self._timer = None
        self._signals.wake_scheduler()


async def warm_status(status: StatusCache) -> None:
    """Preload ``status``; a failure only costs speed, so it is logged."""
    try:
        added = await status.warm()
    except Exception as exc:
        _logger.warning("could not preload lab status", error=describe_error(exc, first_line=True))
    else:
        _logger.debug("preloaded lab status", labs=added)
