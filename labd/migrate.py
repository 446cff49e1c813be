"""Schema migrations with Alembic, and the check that the schema is current.

The migration scripts live in the top-level ``migrations/`` folder of the
source tree; a wheel carries them inside the package as ``labd/migrations``.
labd never changes the schema on its own while serving: ``labd migrate`` (run
by systemd's ``ExecStartPre``) does, and the daemon refuses to start on a
database whose schema is not at the head revision.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Final

import click
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import Connection

from labd.database import Database
from labd.revision import SchemaError, check_schema, current_revision

__all__ = [
    "MIGRATION_LOCK_KEY",
    "SchemaError",
    "alembic_config",
    "check_schema",
    "current_revision",
    "downgrade",
    "head_revision",
    "migrate",
    "upgrade",
]

MIGRATION_LOCK_KEY: Final = 0x6C616264  # "labd"
"""PostgreSQL advisory lock key held while migrating."""


def _script_location() -> Path:
    package = Path(__file__).resolve().parent
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


@click.command()
@click.option(
    "--config",
    "config_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    envvar="LABD_CONFIG",
    help="Settings file (YAML); LABD_DATABASE_URL overrides its database_url.",
)
@click.option("--revision", default="head", show_default=True, help="Target revision.")
def migrate(config_file: Path | None, revision: str) -> None:
    """Create or upgrade labd's database schema.

    Safe to run on every start (systemd's ExecStartPre does): an up-to-date
    database is left alone, and concurrent runs on PostgreSQL take turns.
    """
    from labd.config import ConfigError, load_config

    try:
        settings = load_config(config_file)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    database = Database(settings.database_url)

    async def run() -> tuple[str | None, str | None]:
        try:
            before = await upgrade(database, revision)
            return before, await current_revision(database)
        finally:
            await database.dispose()

    before, after = asyncio.run(run())
    url = database.url.render_as_string(hide_password=True)
    if before == after:
        click.echo(f"{url}: schema already at {after}")
    else:
        click.echo(f"{url}: schema upgraded from {before or 'empty'} to {after}")
