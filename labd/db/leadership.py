"""Leadership of labd's cluster-wide work, held through the database.

Any replica claims and steps labs, but only one, the *leader*, runs the pod,
namespace and Event watches and the reconciler (`labd.control.leading`).
Two leaders would adopt one lab twice or delete a namespace another has just
adopted, so leadership must never overlap.

On PostgreSQL it is a *session* advisory lock, ``pg_try_advisory_lock``, on a
connection of its own (``application_name`` ``labd-leader``), never a pooled
one: the lock lives exactly as long as that session.  Whoever takes the lock
bumps ``labd_leader.term`` (migration 0006); the term is the *fencing
token*.  A leader checks, right before a write or a delete that only a
leader may make, that the term is still its own (`LeaderLock.confirm`);
adoptions check it inside their write transaction, which the next leader's
bump has to wait for (`labd.db.store.LabStore.create_lab`).

Losing the lock must be noticed at once on both ends:

* the leader pings its connection every second with a two-second timeout,
  and a lost connection is reported by asyncpg the moment it closes; either
  way the leader steps down before anything else;
* the server drops a silent peer (a network partition, a frozen host) by its
  TCP keepalives and ``tcp_user_timeout``, set for this session to about
  five seconds, which releases the lock.  The leader has stepped down by
  then (three seconds at most), so the next leader starts after the last one
  stopped.

A leader killed outright (SIGKILL) closes its socket, so the server releases
the lock at once and the next replica takes it on its next try, within a
second.

On SQLite one labd process serves the database (`labd.db.ownership`), so it
always leads: the term is still bumped, and confirming it costs nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from typing import Any, Final, Protocol

import asyncpg
from sqlalchemy import select
from sqlalchemy.dialects.sqlite import insert
from sqlalchemy.engine import URL, Connection

from labd.db.database import Database
from labd.db.schema import labd_leader
from labd.lab.records import utcnow
from labd.tasks import describe_error

__all__ = [
    "APPLICATION",
    "LEADER_LOCK_KEY",
    "AdvisoryLeaderLock",
    "LeaderLock",
    "LeadershipLostError",
    "SoleLeaderLock",
    "leader_lock",
]

APPLICATION: Final = "labd-leader"
"""``application_name`` of the lock's connection (``pg_stat_activity``)."""

LEADER_LOCK_KEY: Final = 0x6C616264_6C656164
"""The advisory lock's key ("labdlead"); the migration lock uses another."""

_PING_INTERVAL: Final = 1.0
"""Seconds between checks that the lock's connection still answers."""

_PING_TIMEOUT: Final = 2.0
"""Seconds a check (or a term read) may take before leadership counts as lost."""

_CONNECT_TIMEOUT: Final = 5.0
"""Seconds to open the lock's connection."""

_SESSION: Final = {
    "application_name": APPLICATION,
    # The server drops a silent peer after 3 s idle plus 2 probes 1 s apart,
    # or after 5 s of unacknowledged data: the lock is released within about
    # 5 s of the leader going silent, after the leader stepped down (3 s).
    "tcp_keepalives_idle": "3",
    "tcp_keepalives_interval": "1",
    "tcp_keepalives_count": "2",
    "tcp_user_timeout": "5000",
}


_BUMP: Final = """
    INSERT INTO labd_leader (id, term, holder, acquired_at) VALUES (1, 1, $1, now())
    ON CONFLICT (id) DO UPDATE
    SET term = labd_leader.term + 1, holder = excluded.holder, acquired_at = excluded.acquired_at
    RETURNING term
"""
"""Bump the term (the row is made again if it was emptied)."""


class LeadershipLostError(Exception):
    """This replica does not lead (any more): a leader's action must not go on."""


class LeaderLock(Protocol):
    """How a replica takes, keeps and checks leadership."""

    async def acquire(self) -> int | None:
        """Try once to take leadership; return the new term, or `None` if another leads."""

    async def held(self) -> str:
        """Return, once leadership is lost, why (while it holds, never return)."""

    async def confirm(self, term: int) -> None:
        """Raise `LeadershipLostError` unless this replica still leads in ``term``."""

    async def release(self) -> None:
        """Give leadership up (or stop trying to take it)."""


def leader_lock(database: Database) -> LeaderLock:
    """The leader lock of ``database``: advisory on PostgreSQL, trivial on SQLite."""
    if database.is_sqlite:
        return SoleLeaderLock(database)
    return AdvisoryLeaderLock(database.url)


def _holder() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class AdvisoryLeaderLock:
    """Leadership as a PostgreSQL session advisory lock on a dedicated connection.

    Parameters
    ----------
    url
        The PostgreSQL database (a SQLAlchemy ``postgresql+asyncpg`` URL).
    """

    def __init__(self, url: URL) -> None:
        self._dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
        self._connection: asyncpg.Connection[Any] | None = None
        self._lost = asyncio.Event()
        self._term: int | None = None
        # asyncpg runs one query at a time per connection: pings and term
        # checks take turns.
        self._turn = asyncio.Lock()

    async def acquire(self) -> int | None:
        """Try once to take the lock; on success bump and return the term.

        Raises
        ------
        OSError, asyncpg.PostgresError, TimeoutError
            If the database cannot be reached; the connection is dropped and
            the next try opens a new one.
        """
        try:
            connection = await self._connect()
            async with self._turn:
                taken = await connection.fetchval(
                    "SELECT pg_try_advisory_lock($1)", LEADER_LOCK_KEY, timeout=_PING_TIMEOUT
                )
                if not taken:
                    return None
                term = await connection.fetchval(_BUMP, _holder(), timeout=_PING_TIMEOUT)
        except BaseException:
            self._drop()
            raise
        self._term = int(term)
        return self._term

    async def held(self) -> str:
        """Ping the lock's connection every second; return why it was lost."""
        connection = self._connection
        if connection is None or self._term is None:
            return "not leading"
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._lost.wait(), _PING_INTERVAL)
            if self._lost.is_set():
                self._drop()
                return "connection lost"
            try:
                async with self._turn:
                    await connection.fetchval("SELECT 1", timeout=_PING_TIMEOUT)
            except TimeoutError:
                self._drop()
                return "ping timeout"
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                self._drop()
                return f"connection lost: {describe_error(exc)}"

    async def confirm(self, term: int) -> None:
        """Check on the lock's own connection that ``term`` is still the current one.

        An answer on that connection also proves the session, and so the
        lock, is alive.
        """
        connection = self._connection
        if connection is None or self._lost.is_set() or self._term != term:
            raise LeadershipLostError(f"term {term} is over")
        try:
            async with self._turn:
                current = await connection.fetchval(
                    "SELECT term FROM labd_leader WHERE id = 1", timeout=_PING_TIMEOUT
                )
        except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            self._drop()
            raise LeadershipLostError(f"cannot confirm term {term}: {exc!r}") from exc
        if current != term:
            raise LeadershipLostError(f"term {term} is over: the current term is {current}")

    async def release(self) -> None:
        """Unlock and close the lock's connection.

        Unlocking first means the lock is free when this returns: a closed
        session's locks are released only once its server process has
        ended, a moment later.
        """
        connection, self._connection = self._connection, None
        self._term = None
        if connection is None:
            return
        try:
            async with self._turn:
                await connection.execute("SELECT pg_advisory_unlock_all()", timeout=_PING_TIMEOUT)
            await asyncio.wait_for(connection.close(), _PING_TIMEOUT)
        except Exception:  # A connection that cannot close is cut.
            connection.terminate()

    async def _connect(self) -> asyncpg.Connection[Any]:
        if self._connection is not None and not self._connection.is_closed():
            return self._connection
        self._lost = asyncio.Event()
        lost = self._lost
        connection: asyncpg.Connection[Any] = await asyncpg.connect(
            self._dsn, timeout=_CONNECT_TIMEOUT, server_settings=_SESSION
        )
        connection.add_termination_listener(lambda _connection: lost.set())
        self._connection = connection
        return connection

    def _drop(self) -> None:
        """Cut the connection now: whatever it held is released by the server."""
        connection, self._connection = self._connection, None
        self._term = None
        self._lost.set()
        if connection is not None:
            connection.terminate()


class SoleLeaderLock:
    """The one labd on an SQLite database always leads.

    Parameters
    ----------
    database
        The SQLite database; the term is bumped there all the same.
    """

    def __init__(self, database: Database) -> None:
        self._database = database

    async def acquire(self) -> int | None:
        """Bump the term and return it."""

        def bump(conn: Connection) -> int:
            statement = insert(labd_leader).values(
                id=1, term=1, holder=_holder(), acquired_at=utcnow()
            )
            statement = statement.on_conflict_do_update(
                index_elements=[labd_leader.c.id],
                set_={
                    "term": labd_leader.c.term + 1,
                    "holder": statement.excluded.holder,
                    "acquired_at": statement.excluded.acquired_at,
                },
            )
            conn.execute(statement)
            term: int = conn.execute(
                select(labd_leader.c.term).where(labd_leader.c.id == 1)
            ).scalar_one()
            return term

        return await self._database.run_write(bump)

    async def held(self) -> str:
        """Never return: nothing can take leadership away."""
        await asyncio.get_running_loop().create_future()
        return "unreachable"  # pragma: no cover

    async def confirm(self, term: int) -> None:
        """Nothing to check: no other process serves this database."""

    async def release(self) -> None:
        """Nothing to give up."""
