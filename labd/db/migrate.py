"""Schema migrations with Alembic, and the check that the schema is current.

The migration scripts live in the top-level ``migrations/`` folder of the
source tree; a wheel carries them inside the package as ``labd/migrations``.
labd never changes the schema on its own while serving: ``labd migrate`` (run
by systemd's ``ExecStartPre``) does, and the daemon refuses to start on a
database whose schema is not at the head revision.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Final

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import Connection

from labd.db.database import Database
from labd.db.revision import SchemaError, check_schema, current_revision

__all__ = [
    "MIGRATION_LOCK_KEY",
    "SchemaError",
    "alembic_config",
    "check_schema",
    "current_revision",
    "downgrade",
    "head_revision",
    "upgrade",
]

MIGRATION_LOCK_KEY: Final = 0x6C616264  # "labd"
"""PostgreSQL advisory lock key held while migrating."""


def _script_location() -> Path:
    package = Path(__file__).resolve().parents[1]  # labd/, where a wheel puts them
    for candidate in (package / "migrations", package.parent / "migrations"):
        if (candidate / "env.py").is_file():
            return candidate
    raise SchemaError("labd's migration scripts are missing from this installation")


def alembic_config() -> Config:
    """Build the Alembic configuration without needing ``alembic.ini``."""
    config = Config()
    config.set_main_option("script_location", str(_script_location()))
    return config


def head_revision() -> str:
    """Return the revision that this labd's code expects."""
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:
        raise SchemaError("labd has no migrations")
    return head


async def _run(database: Database, action: Callable[[Config], None]) -> str | None:
    """Run an Alembic command on a connection of ours; return the revision before.

    On PostgreSQL the migration lock is taken first (``env.py`` takes it too,
    for the ``alembic`` command; the lock is re-entrant), so the revision read
    here is the one the command really starts from.
    """
    config = alembic_config()

    def run(connection: Connection) -> str | None:
        if connection.dialect.name == "postgresql":
            connection.execute(
                text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY}
            )
        before = MigrationContext.configure(connection).get_current_revision()
        config.attributes["connection"] = connection
        action(config)
        return before

    async with database.write() as conn:
        return await conn.run_sync(run)


async def upgrade(database: Database, revision: str = "head") -> str | None:
    """Upgrade the schema to ``revision``; return the revision before."""
    return await _run(database, lambda config: command.upgrade(config, revision))


async def downgrade(database: Database, revision: str = "base") -> str | None:
    """Downgrade the schema to ``revision``; return the revision before."""
    return await _run(database, lambda config: command.downgrade(config, revision))
