"""``labd migrate``: create or upgrade the database schema."""

from __future__ import annotations

import asyncio
from pathlib import Path

import click

from labd.config import ConfigError, load_config
from labd.db.database import Database
from labd.db.migrate import COMPAT_REVISION, MigrationPlan, plan_upgrade, upgrade
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
@click.option("--dry-run", is_flag=True, help="Say what would be applied; apply nothing.")
def migrate(config_file: Path | None, revision: str, dry_run: bool) -> None:
    """Create or upgrade labd's database schema.

    Safe to run on every start (systemd's ExecStartPre does): an up-to-date
    database is left alone, and concurrent runs on PostgreSQL take turns.
    Says, for each migration, whether it is an expand (older labd replicas
    keep running) or a contract (they must be stopped or upgraded first).
    """
    try:
        settings = load_config(config_file)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    database = Database(settings.database_url)

    async def run() -> MigrationPlan:
        try:
            if dry_run:
                return plan_upgrade(before=await current_revision(database), after=revision)
            before = await upgrade(database, revision)
            return plan_upgrade(before=before, after=await current_revision(database))
        finally:
            await database.dispose()

    plan = asyncio.run(run())
    url = database.url.render_as_string(hide_password=True)
    if not plan.migrations:
        click.echo(f"{url}: schema already at {plan.after}")
        return
    before = plan.before or "empty"
    if dry_run:
        click.echo(f"{url}: schema at {before}; would upgrade it to {plan.after} (dry run)")
    else:
        click.echo(f"{url}: schema upgraded from {before} to {plan.after}")
    for migration in plan.migrations:
        click.echo(f"  {migration.revision}  {migration.kind:<8}  {migration.description}")
    click.echo(_older_replicas(plan, dry_run=dry_run))


def _older_replicas(plan: MigrationPlan, *, dry_run: bool) -> str:
    """Say whether replicas of an older labd keep running on the upgraded schema."""
    if plan.before is None:
        return "A new database: no older labd runs on it."
    if not plan.stops_older_replicas:
        return (
            f"Older replicas keep running: labd at revision {plan.oldest_after} or newer"
            " runs on this schema, so replicas may be upgraded one by one."
        )
    contracts = [m.revision for m in plan.migrations if m.kind == "contract"]
    why = (
        f"contract {', '.join(contracts)}"
        if contracts
        else f"labd before {COMPAT_REVISION} runs only on its own revision"
    )
    when = " before migrating" if dry_run else ""
    return (
        f"Older replicas must stop: labd older than revision {plan.oldest_after} cannot run"
        f" on this schema ({why}); stop or upgrade every replica still running it{when}."
    )
