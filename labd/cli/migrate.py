"""``labd migrate``: create or upgrade the database schema."""

from __future__ import annotations

import asyncio
from pathlib import Path

import click

from labd.config import ConfigError, load_config
from labd.db.database import Database
from labd.db.migrate import upgrade
from labd.db.revision import current_revision

__all__ = ["migrate"]


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
