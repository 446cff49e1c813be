"""The schema revision this labd needs, and the check that a database suits it.

Kept apart from `labd.db.migrate` so that a starting daemon checks its database
without importing Alembic (about a tenth of its start-up); a test keeps
`SCHEMA_REVISIONS` equal to the history of the migration scripts.

labd runs on a database at its own revision, and also on a *newer* one that
says it still suits this labd: while replicas are upgraded one by one, the
new release migrates the database first and the older replicas keep serving.
A migration is either an *expand* (it adds only what older code ignores) or
a *contract* (it drops or changes what older code used), and
``labd_schema_compat`` holds the oldest revision whose code may run on the
schema (`labd.db.migrate.oldest_compatible`; docs/replicas.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from sqlalchemy import inspect, select, text
from sqlalchemy.engine import Connection

from labd.db.database import Database
from labd.db.schema import labd_schema_compat

__all__ = [
    "SCHEMA_REVISION",
    "SCHEMA_REVISIONS",
    "SchemaError",
    "check_schema",
    "current_revision",
]

SCHEMA_REVISIONS: Final = ("0001", "0002", "0003", "0004", "0005", "0006", "0007")
"""The revisions of ``migrations/versions`` that this labd knows, oldest first."""

SCHEMA_REVISION: Final = SCHEMA_REVISIONS[-1]
"""The Alembic revision of labd's tables: the head of ``migrations/versions``."""

_VERSION_TABLE: Final = "alembic_version"


class SchemaError(Exception):
    """The database schema is not one this labd can run on."""


def _read_revision(connection: Connection) -> str | None:
    if not inspect(connection).has_table(_VERSION_TABLE):
        return None
    revision = connection.execute(text(f"SELECT version_num FROM {_VERSION_TABLE}"))
    return revision.scalar_one_or_none()


async def current_revision(database: Database) -> str | None:
    """Return the database's revision, or `None` for an empty database."""
    async with database.read() as conn:
        return await conn.run_sync(_read_revision)


async def check_schema(database: Database, *, revisions: Sequence[str] = SCHEMA_REVISIONS) -> str:
    """Refuse a database whose schema this labd cannot run on.

    labd runs on a database at its own revision (the last of ``revisions``),
    or at a newer revision, unknown to it, whose ``labd_schema_compat``
    record names this revision or an older one of ``revisions``: only expand
    migrations were applied since.

    Parameters
    ----------
    database
        The database to check.
    revisions
        The revisions this labd knows, oldest first (tests pass an older
        history to play an older labd).

    Returns
    -------
    str
        The database's revision.

    Raises
    ------
    SchemaError
        With a message that names the revisions and says what to run.
    """
    head = revisions[-1]

    def read(connection: Connection) -> tuple[str | None, str | None]:
        current = _read_revision(connection)
        if current is None or current in revisions:
            return current, None
        if not inspect(connection).has_table(labd_schema_compat.name):
            return current, None
        oldest = connection.execute(select(labd_schema_compat.c.oldest_revision))
        return current, oldest.scalar_one_or_none()

    async with database.read() as conn:
        current, oldest = await conn.run_sync(read)
    if current == head:
        return current
    if current is None:
        raise SchemaError(
            f"The database is empty, but this labd needs revision {head}: run `labd migrate` first"
        )
    if current in revisions:
        raise SchemaError(
            f"The database has schema revision {current}, older than this labd's:"
            f" this labd needs revision {head}: run `labd migrate` first"
        )
    if oldest is None:
        raise SchemaError(
            f"The database has schema revision {current}, unknown to this labd (revision"
            f" {head}), and no record of which labd may run on it: upgrade labd"
        )
    if oldest not in revisions:
        raise SchemaError(
            f"The database has schema revision {current}, which runs labd at revision"
            f" {oldest} or newer (a contract migration dropped or changed what older labd"
            f" uses), but this labd is at revision {head}: upgrade labd"
        )
    return current
