"""One labd per SQLite database.

SQLite is the embedded, single-process default: the status cache, the
event streams and the scheduler's in-memory state assume that no other
labd writes the file (several replicas need PostgreSQL).  A second
``labd serve`` (or ``labd dev``) on the same file would run its own
scheduler and watches beside the first, so it is refused before it does
anything: the first holds an exclusive ``flock`` on a lock file beside the
database (``<database>-labd.lock``, which records its PID), and the lock
goes with the process, however it ends.  ``labd labs``, ``labd history``
and ``labd migrate`` take no lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy.engine import make_url

__all__ = ["DatabaseInUseError", "lock_path", "sole_server"]


class DatabaseInUseError(Exception):
    """Another labd already serves this SQLite database."""


def lock_path(database_url: str) -> Path | None:
    """The lock file of an SQLite database URL; `None` for PostgreSQL or memory."""
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    return Path(f"{Path(url.database).resolve()}-labd.lock")


@contextlib.contextmanager
def sole_server(database_url: str) -> Iterator[None]:
    """Be the only labd serving the SQLite database of ``database_url``, or raise.

    Raises
    ------
    DatabaseInUseError
        If another process holds the lock.
    """
    path = lock_path(database_url)
    if path is None:
        yield
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            database = path.with_name(path.name.removesuffix("-labd.lock"))
            raise DatabaseInUseError(
                f"another labd (PID {holder}) already serves {database}: an SQLite"
                " database serves one labd process; run replicas on PostgreSQL"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # Releases the lock.
