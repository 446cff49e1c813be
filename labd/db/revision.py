"""The schema revision this labd needs, and the check that a database has it.

Kept apart from `labd.db.migrate` so that a starting daemon checks its database
without importing Alembic (about a tenth of its start-up); a test keeps
`SCHEMA_REVISION` equal to the head of the migration scripts.
"""

from __future__ import annotations

from typing import Final

from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection

from labd.db.database import Database

__all__ = ["SCHEMA_REVISION", "SchemaError", "check_schema", "current_revision"]

SCHEMA_REVISION: Final = "0006"
"""The Alembic revision of labd's tables: the head of ``migrations/versions``."""

_VERSION_TABLE: Final = "alembic_version"


class SchemaError(Exception):
    """The database schema is not the one this labd needs."""


async def current_revision(database: Database) -> str | None:
    """Return the database's revision, or `None` for an empty database."""

    def read(connection: Connection) -> str | None:
        if not inspect(connection).has_table(_VERSION_TABLE):
            return None
        revision = connection.execute(text(f"SELECT version_num FROM {_VERSION_TABLE}"))
        return revision.scalar_one_or_none()

    async with database.read() as conn:
        return await conn.run_sync(read)


async def check_schema(database: Database) -> None:
    """Refuse a database whose schema is not at `SCHEMA_REVISION`.

    Raises
    ------
    SchemaError
        With a message that says what to run.
    """
    current = await current_revision(database)
    if current != SCHEMA_REVISION:
        found = "an empty database" if current is None else f"schema revision {current}"
        raise SchemaError(
            f"The database has {found}, but this labd needs revision {SCHEMA_REVISION}:"
            " run `labd migrate` first"
        )
