"""Database engines for SQLite and PostgreSQL, from the same code.

SQLite is the embedded default and needs care to behave under concurrent
writers (see TRAPS.md):

* Python's sqlite3 driver sends no ``BEGIN`` before a ``SELECT``, so a
  transaction that reads and then writes starts as a reader and fails at once
  with ``SQLITE_BUSY`` when another connection holds the write lock, whatever
  the busy timeout.  labd takes the transaction handling away from the driver
  (``isolation_level = None``) and emits ``BEGIN IMMEDIATE`` itself for write
  transactions: the write lock is taken up front, where the busy timeout
  applies.
* Write transactions run whole, one after another, on one thread of their
  own with a synchronous connection (`Database.run_write`).  Through
  aiosqlite every statement is three or four hops between the event loop
  and aiosqlite's thread (cursor, execute, fetch, close), and a busy event
  loop makes each hop wait its turn: the write lock was held about 8 ms per
  transaction under load, and writes queued behind it.  On the writer
  thread a transaction holds it for the time SQLite needs (well under a
  millisecond plus the fsync), and the queue is the thread's own, in order,
  rather than SQLite's busy handler, which sleeps in growing steps.  Other
  processes (``labd labs``, a second daemon by mistake) are still kept safe
  by ``BEGIN IMMEDIATE`` and the busy timeout.
* Writes queued while the thread is busy commit together (group commit):
  one transaction, one ``COMMIT`` and so one fsync for the group.  One by
  one, the fsync was the ceiling of every burst of spawns or deletes.  When
  a write of the group fails, the group is rolled back and done again with
  each write in a savepoint of its own, so that only the failing write is
  undone; a savepoint for every write cost two statements of the five or
  six a write has.
* Reads of one statement (`Database.fetch`, the store's hot reads) run on
  a few reader threads with the same driver, one hop each way.  Through
  aiosqlite a read was five hops between the event loop and its thread
  (``BEGIN``, cursor, execute, fetch, rollback), each a wake-up of the
  loop through its self-pipe and a hand-over of the interpreter lock: in
  a burst of deletes, whose only read is the lab's row, the aiosqlite
  threads used more CPU than the event loop spent on the two Kubernetes
  calls.
* WAL lets readers proceed while a writer commits; foreign keys are off
  unless asked for on every connection.

PostgreSQL needs no such care for correctness: its write transactions take
row locks as they go, and the store's ``SELECT ... FOR UPDATE`` makes
read-then-write safe.  It gains from group commit too: `Database.run_write`
queues the same transaction code there, and one task on the event loop
commits what is queued, a group per transaction, through asyncpg.  Every
transaction costs asyncpg and SQLAlchemy a ``BEGIN`` and a ``COMMIT``, a
pool checkout and a task, and the server a WAL flush: in a burst of 1,000
spawns, one transaction per write took 16 s of labd's CPU and 5 s of the
server's, groups 10 s and 2.3 s.  One group at a time, so that this
process's groups never wait for each other's row locks; a group that
deadlocks with another replica's (PostgreSQL breaks the cycle by failing
one) is done again with savepoints, as after any failing write.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Final, Generic, Protocol, TypeVar

import asyncpg
import sqlalchemy.exc
from sqlalchemy import Executable, Row, create_engine, event
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry

__all__ = ["DATABASE_UNREACHABLE", "SUPPORTED_DRIVERS", "Database", "database_unreachable"]

SUPPORTED_DRIVERS: Final = ("sqlite+aiosqlite", "postgresql+asyncpg")

_SQLITE_BUSY_TIMEOUT_MS: Final = 60_000
_WRITE_OPTION: Final = "labd_write"
_ONE_STATEMENT_OPTION: Final = "labd_one_statement"
"""On SQLite, a connection whose transaction is one read: no ``BEGIN``, since
a statement outside one is a transaction of its own, with one snapshot."""
_BACKEND_PID: Final = "labd_backend_pid"
"""Where a pooled PostgreSQL connection keeps its server process id."""

_SQLITE_READERS: Final = 4
"""Threads that run `Database.fetch` on SQLite: SQLite reads in parallel
under WAL, but a read is mostly Python, which holds the interpreter lock."""

_GROUP_LIMIT: Final = 256
"""Writes committed together at most, so one group's transaction stays short."""

_LOCK_TIMEOUT: Final = 5.0
"""Seconds a PostgreSQL group waits for a lock held outside it (see `Database`)."""

_T = TypeVar("_T")

UNBATCHED: Final = object()
"""A `Batcher`'s answer for an item it did not write: the write's own work runs."""


class Batcher(Protocol):
    """Writes many queued writes of one kind together (`Database.run_write`'s ``batch``).

    Called in the group's transaction with the items of consecutive writes
    of the group that it batches, no two with the same target; it returns
    each item's result, as the write's ``work`` would, or `UNBATCHED` for
    one whose ``work`` should run instead, after the batch, in the same
    transaction.  If it raises, the group is done again without batches,
    as after a write that raises; if it waited out the lock timeout, its
    writes fail as one write that did would, and are not done again.
    """

    def __call__(self, conn: Connection, items: list[Any], /) -> list[Any]: ...


@dataclass(frozen=True, slots=True)
class Batch:
    """How a write may be written with others of its kind: see `Batcher`."""

    batcher: Batcher
    target: object
    """What the write changes (a lab): a batch holds one write per target."""
    item: Any


@dataclass(frozen=True, slots=True)
class _QueuedWrite(Generic[_T]):
    """A write waiting for the SQLite writer thread, and who waits for it."""

    work: Callable[[Connection], _T]
    done: asyncio.Future[_T]
    loop: asyncio.AbstractEventLoop
    batch: Batch | None = None

    def settle_threadsafe(self, ok: bool, value: Any) -> None:
        """Hand the outcome to the waiting coroutine from another thread."""
        with contextlib.suppress(RuntimeError):  # The loop has closed: no one waits.
            self.loop.call_soon_threadsafe(self.settle, ok, value)

    def settle(self, ok: bool, value: Any) -> None:
        """Hand the outcome to the waiting coroutine (on its event loop)."""
        if self.done.cancelled():
            return
        if ok:
            self.done.set_result(value)
        else:
            self.done.set_exception(value)


class _GroupWriteError(Exception):
    """The ``count`` writes from ``index`` of a group (a write, or a batch) raised ``error``.

    The group is rolled back.
    """

    def __init__(self, index: int, error: Exception, count: int = 1) -> None:
        super().__init__(str(error))
        self.index = index
        self.count = count
        self.error = error


class Database:
    """An async engine with read and write transactions.

    Parameters
    ----------
    url
        A SQLAlchemy async URL: ``sqlite+aiosqlite:///path`` or
        ``postgresql+asyncpg://...``.
    pool_size
        Connections open at once at most, each kept once opened: a pool
        that closed those beyond a smaller kept number as each burst ended
        opened them again for the next (on SQLite a thread and four
        ``PRAGMA`` each, on PostgreSQL a server process and asyncpg's
        set-up: 144 connects in a burst of 1,000 spawns and 1,000 deletes).
    lock_timeout
        PostgreSQL: seconds a group of writes waits for a lock held outside
        it (a row another replica is writing, or that an operator's open
        ``SELECT ... FOR UPDATE`` holds).  The write that waited fails with
        ``LockNotAvailableError``, which callers take for the database
        being out of reach (a 503, a step retried); the others of its group
        are done again without it.  Without a limit the one writer would
        hold up every write of this process behind one lock.
    echo
        Log every statement (debugging only).
    """

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 20,
        lock_timeout: float = _LOCK_TIMEOUT,
        echo: bool = False,
    ) -> None:
        parsed = make_url(url)
        if parsed.drivername not in SUPPORTED_DRIVERS:
            raise ValueError(
                f"Unsupported database driver {parsed.drivername!r};"
                f" use one of {', '.join(SUPPORTED_DRIVERS)}"
            )
        self.url = parsed
        self.dialect: Final = parsed.get_backend_name()
        # No SQL parameters in logs or errors, ever: some are secrets.
        options: dict[str, Any] = {"echo": echo, "hide_parameters": True}
        options.update(pool_size=pool_size, max_overflow=0)
        if self.dialect == "sqlite":
            options["connect_args"] = {"timeout": _SQLITE_BUSY_TIMEOUT_MS / 1000}
        self.engine: AsyncEngine = create_async_engine(parsed, **options)
        self._write_engine = self.engine.execution_options(**{_WRITE_OPTION: True})
        self._sqlite_writer = asyncio.Lock() if self.dialect == "sqlite" else None
        self._sqlite_sync: Engine | None = None
        self._sqlite_fetches: Engine | None = None
        self._sqlite_thread: ThreadPoolExecutor | None = None
        self._sqlite_readers: ThreadPoolExecutor | None = None
        self._queued: deque[_QueuedWrite[Any]] = deque()
        self._writer: asyncio.Task[None] | None = None
        self._group_setup = f"SET LOCAL lock_timeout = '{round(lock_timeout * 1000)}ms'"
        self.backend_pids: set[int] = set()
        """PostgreSQL: the server process ids of this engine's open connections,
        which sign the notifications its commits send (`labd.db.changes`)."""
        if self.dialect != "sqlite":
            _track_backends(self.engine.sync_engine, self.backend_pids)
            _drop_closed_connections(self.engine.sync_engine)
        if self.dialect == "sqlite":
            _install_sqlite_handlers(self.engine.sync_engine)
            # The engine of the writer thread and of the reader threads
            # (`fetch`): the standard library driver on the same file, each
            # connection used by one thread at a time.
            sync_options = {
                **options,
                "connect_args": {**options["connect_args"], "check_same_thread": False},
            }
            self._sqlite_sync = create_engine(parsed.set(drivername="sqlite"), **sync_options)
            _install_sqlite_handlers(self._sqlite_sync)
            self._sqlite_fetches = self._sqlite_sync.execution_options(
                **{_ONE_STATEMENT_OPTION: True}
            )

    @property
    def is_sqlite(self) -> bool:
        """Whether this is the embedded SQLite database."""
        return self.dialect == "sqlite"

    @property
    def sync_engines(self) -> list[Engine]:
        """Every synchronous engine beneath this database, for event hooks.

        The async engine's, and on SQLite that of the writer and reader
        threads: a hook on ``before_cursor_execute`` (a statement counter)
        sees every statement only when it listens on both.
        """
        engines = [self.engine.sync_engine]
        if self._sqlite_sync is not None:
            engines.append(self._sqlite_sync)
        return engines

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        """Open a read transaction (rolled back at the end)."""
        async with self.engine.connect() as conn:
            yield conn

    async def fetch(
        self, statement: Executable, params: Mapping[str, Any] | None = None
    ) -> Sequence[Row[Any]]:
        """Run one read-only statement in a read transaction of its own; its rows.

        On SQLite on a reader thread, through the driver directly (see the
        module docstring); on PostgreSQL as `read` would.
        """
        if self._sqlite_sync is None:
            async with self.read() as conn:
                return (await conn.execute(statement, params)).all()
        if self._sqlite_readers is None:
            self._sqlite_readers = ThreadPoolExecutor(
                _SQLITE_READERS, thread_name_prefix="labd-sqlite-reader"
            )
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._sqlite_readers, self._fetch_sqlite, statement, params
        )

    def _fetch_sqlite(
        self, statement: Executable, params: Mapping[str, Any] | None
    ) -> Sequence[Row[Any]]:
        """On a reader thread: the rows of ``statement``."""
        assert self._sqlite_fetches is not None
        with self._sqlite_fetches.connect() as conn:
            return conn.execute(statement, params).all()

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """Open a write transaction, committed if the block succeeds.

        On SQLite the transaction starts with ``BEGIN IMMEDIATE`` and writers
        of this process take turns; see the module docstring.
        """
        if self._sqlite_writer is None:
            async with self._write_engine.begin() as conn:
                yield conn
            return
        async with self._sqlite_writer, self._write_engine.begin() as conn:
            yield conn

    async def run_write(
        self, work: Callable[[Connection], _T], *, batch: Batch | None = None
    ) -> _T:
        """Run ``work`` in a write transaction, committed if it returns.

        ``work`` is synchronous SQLAlchemy Core code.  It is queued, and
        committed together with the writes queued beside it (group commit):
        on SQLite by the writer thread, on PostgreSQL by one task on the
        event loop, through asyncpg.  One that raises undoes only its own
        statements and gets its exception, and it returns once its group
        has committed.  It may be run twice (the first time rolled back):
        it must do nothing but its statements.

        A caller that is cancelled while its write is queued or running
        does not stop it: the write commits or rolls back whole, the
        cancellation is raised once it has, and the caller, like one that
        lost its connection after a commit, reads the row again to learn
        the outcome.

        Parameters
        ----------
        work
            Called with the transaction's connection; what it returns is
            returned.
        batch
            How the write may instead be written together with the writes
            of its kind queued beside it, in fewer statements (`Batcher`).
        """
        loop = asyncio.get_running_loop()
        done: asyncio.Future[_T] = loop.create_future()
        self._queued.append(_QueuedWrite(work, done, loop, batch))
        if self._sqlite_sync is not None:
            if self._sqlite_thread is None:
                self._sqlite_thread = ThreadPoolExecutor(
                    1, thread_name_prefix="labd-sqlite-writer"
                )
            # Every write asks the thread once; the first asking after it was
            # queued takes it with whatever else is queued by then.
            loop.run_in_executor(self._sqlite_thread, self._write_sqlite_group)
        elif self._writer is None:
            self._writer = loop.create_task(self._write_groups(), name="labd-db-writer")
        try:
            return await asyncio.shield(done)
        except asyncio.CancelledError:
            # The write ends with its group whatever happens here: wait for
            # it, so that what a cancelled caller does next (its `finally`,
            # the status cache's invalidation) comes after the commit.
            with contextlib.suppress(Exception):
                await done
            raise

    def _take_group(self) -> list[_QueuedWrite[Any]]:
        """The queued writes (at most `_GROUP_LIMIT`) that commit together next."""
        group: list[_QueuedWrite[Any]] = []
        while self._queued and len(group) < _GROUP_LIMIT:
            group.append(self._queued.popleft())
        return group

    def _write_sqlite_group(self) -> None:
        """On the SQLite writer thread: commit what is queued, as one group."""
        assert self._sqlite_sync is not None
        group = self._take_group()
        if not group:
            return  # An earlier call took this one's write.
        outcomes: list[tuple[bool, Any]]
        try:
            with self._sqlite_sync.connect() as conn:
                outcomes = _commit_group(conn.execution_options(**{_WRITE_OPTION: True}), group)
        except Exception as exc:  # Not even a connection: nothing was written.
            outcomes = [(False, exc)] * len(group)
        for queued, (ok, value) in zip(group, outcomes, strict=True):
            queued.settle_threadsafe(ok, value)

    async def _write_groups(self) -> None:
        """PostgreSQL's writer: commit what is queued, a group at a time, until none is left.

        One group at a time, so that the groups of this process never wait
        for each other's row locks.
        """
        group: list[_QueuedWrite[Any]] = []
        try:
            while group := self._take_group():
                outcomes: list[tuple[bool, Any]]
                try:
                    async with self._write_engine.connect() as conn:
                        outcomes = await conn.run_sync(_commit_group, group, self._group_setup)
                except Exception as exc:  # Not even a connection: nothing was written.
                    outcomes = [(False, exc)] * len(group)
                for queued, (ok, value) in zip(group, outcomes, strict=True):
                    queued.settle(ok, value)
        except BaseException:
            # Cancelled (the event loop is closing): so are the writes it held.
            for queued in [*group, *self._queued]:
                queued.done.cancel()
            self._queued.clear()
            raise
        finally:
            self._writer = None

    async def dispose(self) -> None:
        """Close every pooled connection (and stop the SQLite writer thread)."""
        if self._writer is not None:
            await asyncio.wait([self._writer])  # Its groups commit before the pool closes.
        await self.engine.dispose()
        if self._sqlite_readers is not None:
            readers, self._sqlite_readers = self._sqlite_readers, None
            await asyncio.to_thread(readers.shutdown)  # Reads running end first.
        if self._sqlite_thread is not None and self._sqlite_sync is not None:
            thread, self._sqlite_thread = self._sqlite_thread, None
            # Queued behind any write still running; a later write starts a
            # new thread.
            await asyncio.get_running_loop().run_in_executor(thread, self._sqlite_sync.dispose)
            thread.shutdown()
        elif self._sqlite_sync is not None:
            self._sqlite_sync.dispose()  # Only read from: no writer to wait for.


def _commit_group(
    conn: Connection, group: list[_QueuedWrite[Any]], setup: str | None = None
) -> list[tuple[bool, Any]]:
    """Run a group's writes in one transaction and commit it: each write's outcome, in order.

    First without savepoints, which are two statements of a write's five or
    six.  If a write raises, the group is rolled back and done again with
    each write in a savepoint of its own, so that a write that fails then
    is undone alone: a write can fail on what the writes before it in the
    group did, and a deadlock with another replica's group is over once
    either has rolled back.  Two failures are not done again: a write (or
    each write of a batch) that waited out the lock timeout fails as it is
    (it would only wait again),
    and a group that lost the database fails whole with that error; a group
    of one write fails with its own error.
    ``setup`` is run first in each transaction.
    """
    try:
        try:
            with conn.begin():
                if setup is not None:
                    conn.exec_driver_sql(setup)
                return _run_group(conn, group, each_in_savepoint=False)
        except _GroupWriteError as failed:
            error = failed.error
            skipped = range(0)
            if _lock_timed_out(error):
                # The write, or every write of the batch, that waited.
                skipped = range(failed.index, failed.index + failed.count)
            elif len(group) == 1 or database_unreachable(error):
                # Rolled back whole: its own error, or the database's.
                return [(False, error)] * len(group)
            again = [queued for index, queued in enumerate(group) if index not in skipped]
            outcomes: list[tuple[bool, Any]] = []
            if again:
                with conn.begin():
                    if setup is not None:
                        conn.exec_driver_sql(setup)
                    outcomes = _run_group(conn, again, each_in_savepoint=True)
            for index in skipped:
                outcomes.insert(index, (False, error))
            return outcomes
    except Exception as exc:
        # The commit itself failed: nothing of the group was written.
        return [(False, exc)] * len(group)


def _lock_timed_out(exc: BaseException) -> bool:
    """Whether ``exc`` is, or wraps, PostgreSQL's ``lock_timeout`` error."""
    return any(
        isinstance(cause, asyncpg.exceptions.LockNotAvailableError) for cause in _causes(exc)
    )


def _run_group(
    conn: Connection, group: list[_QueuedWrite[Any]], *, each_in_savepoint: bool
) -> list[tuple[bool, Any]]:
    """Run a group's writes in the transaction of ``conn``: each's outcome, in order.

    Without savepoints, consecutive writes of one `Batcher` are written by
    it together (`_batches`), and the first write or batch that raises ends
    the group (`_GroupWriteError`), to be rolled back; with savepoints, each
    write runs alone and undoes only its own statements if it raises, and
    the others go on.
    """
    if each_in_savepoint:
        outcomes: list[tuple[bool, Any]] = []
        for queued in group:
            try:
                with conn.begin_nested():
                    outcomes.append((True, queued.work(conn)))
            except Exception as exc:
                outcomes.append((False, exc))
        return outcomes
    outcomes = []
    for start, run in _batches(group):
        results: list[Any] = [UNBATCHED]
        if len(run) > 1:
            batches = [queued.batch for queued in run if queued.batch is not None]
            try:
                results = batches[0].batcher(conn, [batch.item for batch in batches])
            except Exception as exc:
                raise _GroupWriteError(start, exc, len(run)) from exc
        for index, (queued, result) in enumerate(zip(run, results, strict=True), start):
            if result is UNBATCHED:
                try:
                    result = queued.work(conn)
                except Exception as exc:
                    raise _GroupWriteError(index, exc) from exc
            outcomes.append((True, result))
    return outcomes


def _batches(group: list[_QueuedWrite[Any]]) -> Iterator[tuple[int, list[_QueuedWrite[Any]]]]:
    """The group in runs to write together: each run's start and writes.

    A run is consecutive writes of one `Batcher`, each of its own target,
    so that no write is reordered with one of the same target; a write
    without a batch is a run of its own.
    """
    start = 0
    while start < len(group):
        first = group[start].batch
        run = [group[start]]
        if first is not None:
            targets = {first.target}
            for queued in group[start + 1 :]:
                batch = queued.batch
                if batch is None or batch.batcher != first.batcher or batch.target in targets:
                    break
                targets.add(batch.target)
                run.append(queued)
        yield start, run
        start += len(run)


def _track_backends(engine: Engine, pids: set[int]) -> None:
    """Keep ``pids`` the server process ids of the engine's open connections."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: DBAPIConnection, record: ConnectionPoolEntry) -> None:
        pid = dbapi_connection.driver_connection.get_server_pid()
        record.info[_BACKEND_PID] = pid
        pids.add(pid)

    def _on_close(
        _dbapi_connection: DBAPIConnection, record: ConnectionPoolEntry, *_: Any
    ) -> None:
        pids.discard(record.info.pop(_BACKEND_PID, None))

    event.listen(engine, "close", _on_close)
    event.listen(engine, "invalidate", _on_close)


def _drop_closed_connections(engine: Engine) -> None:
    """Replace a pooled PostgreSQL connection the server has closed, on checkout.

    A server that restarts, or ends a session (``pg_terminate_backend``,
    ``idle_session_timeout``), closes its connections; asyncpg sees the
    socket close the moment the event loop reads it, and then says so
    without a round trip.  SQLAlchemy's ``pool_pre_ping`` asks the server
    instead, in three round trips per checkout (``BEGIN``, an empty query,
    ``ROLLBACK``): 7 % of the event loop's time in a burst of 1,000 spawns.
    A connection that dies after this check fails its statement, and that
    invalidates it, as a ping that came a moment too early would have.
    """

    @event.listens_for(engine, "checkout")
    def _on_checkout(dbapi_connection: DBAPIConnection, *_: Any) -> None:
        if dbapi_connection.driver_connection.is_closed():
            raise sqlalchemy.exc.DisconnectionError("the server closed the connection")


def _install_sqlite_handlers(engine: Engine) -> None:
    """Take transaction control from the SQLite driver (see the module doc)."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: DBAPIConnection, _record: ConnectionPoolEntry) -> None:
        # The driver must not open transactions on its own.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        for pragma in (
            "PRAGMA journal_mode=WAL",
            "PRAGMA foreign_keys=ON",
            "PRAGMA synchronous=FULL",
            f"PRAGMA busy_timeout={_SQLITE_BUSY_TIMEOUT_MS}",
        ):
            cursor.execute(pragma)
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        options = conn.get_execution_options()
        if options.get(_ONE_STATEMENT_OPTION, False):
            return
        conn.exec_driver_sql("BEGIN IMMEDIATE" if options.get(_WRITE_OPTION, False) else "BEGIN")


DATABASE_UNREACHABLE: Final = (
    OSError,
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    sqlalchemy.exc.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.LockNotAvailableError,
    asyncpg.InterfaceError,
)
"""Failures that mean the database is out of reach for now, not a bug.

A write that waited out the lock timeout (`Database`) is one: what it
needs is held elsewhere, for now.

asyncpg raises a refused connection as a bare `ConnectionRefusedError`;
SQLAlchemy wraps a server that is shutting down or starting
(`CannotConnectNowError`) in a plain `DBAPIError`, and lost connections in
its `OperationalError` and `InterfaceError`.
"""


def database_unreachable(exc: BaseException) -> bool:
    """Whether ``exc``, or what it wraps, says the database is out of reach."""
    return any(
        isinstance(cause, DATABASE_UNREACHABLE)
        or (isinstance(cause, sqlalchemy.exc.DBAPIError) and cause.connection_invalidated)
        for cause in _causes(exc)
    )


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and the exceptions it was raised from or during, innermost last."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__
