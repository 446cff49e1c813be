"""Schema migrations with Alembic, and the check that the schema is current.

The migration scripts live in the top-level ``migrations/`` folder of the
source tree; a wheel carries them inside the package as ``labd/migrations``.
labd never changes the schema on its own while serving: ``labd migrate`` (run
by systemd's ``ExecStartPre``) does, and the daemon refuses to start on a
database whose schema it cannot run on (`labd.db.revision.check_schema`).

Each script declares its kind in ``labd_kind``: ``"expand"`` (it adds only
what older code ignores) or ``"contract"`` (it drops or changes what older
code used).  From the kinds follows the oldest revision whose code may run on
a schema (`oldest_compatible`); every migration run writes it to
``labd_schema_compat`` (`record_compatibility`, called by ``env.py``), where
labd of an older release reads it, as it cannot know the newer scripts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal, cast, get_args

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import Script, ScriptDirectory
from sqlalchemy import insert, inspect, text, update
from sqlalchemy.engine import Connection

from labd.db.database import Database
from labd.db.revision import SchemaError, check_schema, current_revision
from labd.db.schema import labd_schema_compat

__all__ = [
    "COMPAT_REVISION",
    "MIGRATION_LOCK_KEY",
    "Kind",
    "Migration",
    "MigrationPlan",
    "SchemaError",
    "alembic_config",
    "check_schema",
    "current_revision",
    "downgrade",
    "head_revision",
    "migration_kind",
    "oldest_compatible",
    "plan_upgrade",
    "record_compatibility",
    "upgrade",
]

MIGRATION_LOCK_KEY: Final = 0x6C616264  # "labd"
"""PostgreSQL advisory lock key held while migrating."""

Kind = Literal["expand", "contract"]
"""What a migration does to older code: nothing (expand), or break it (contract)."""

COMPAT_REVISION: Final = "0007"
"""The migration that created ``labd_schema_compat``.

labd before it accepts only its own revision, so no older labd runs on a
schema at or after it, whatever the kinds.
"""


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


def migration_kind(script: Script) -> Kind:
    """Return the kind a migration script declares in ``labd_kind``.

    Raises
    ------
    SchemaError
        If the script declares none, or not one of `Kind`.
    """
    kind = getattr(script.module, "labd_kind", None)
    if kind in get_args(Kind):
        return cast(Kind, kind)
    raise SchemaError(
        f"Migration {script.revision} declares labd_kind = {kind!r}, not one of"
        f" {', '.join(get_args(Kind))}"
    )


def oldest_compatible(scripts: ScriptDirectory, revision: str) -> str | None:
    """Return the oldest revision whose code may run on a schema at ``revision``.

    That is the parent of the newest contract up to ``revision`` (that
    release already stopped using what the contract drops), but never older
    than `COMPAT_REVISION`; `None` for a schema before `COMPAT_REVISION`,
    which has no record.
    """
    for script in scripts.iterate_revisions(revision, "base"):
        assert isinstance(script, Script)
        if migration_kind(script) == "contract":
            if not isinstance(script.down_revision, str):
                raise SchemaError(f"Contract migration {script.revision} has no single parent")
            return script.down_revision
        if script.revision == COMPAT_REVISION:
            return COMPAT_REVISION
    return None


def record_compatibility(connection: Connection, scripts: ScriptDirectory) -> None:
    """Write `oldest_compatible` of the database's revision to ``labd_schema_compat``.

    ``env.py`` calls it at the end of every migration run, in the run's
    transaction, so upgrades and downgrades alike leave the record right.
    """
    current = MigrationContext.configure(connection).get_current_revision()
    oldest = None if current is None else oldest_compatible(scripts, current)
    if oldest is None or not inspect(connection).has_table(labd_schema_compat.name):
        return
    written = connection.execute(update(labd_schema_compat).values(oldest_revision=oldest))
    if written.rowcount == 0:  # The row went missing: write it again.
        connection.execute(insert(labd_schema_compat).values(id=1, oldest_revision=oldest))


@dataclass(frozen=True, kw_only=True)
class Migration:
    """One migration script, as ``labd migrate`` reports it."""

    revision: str
    """Its Alembic revision."""

    kind: Kind
    """Whether older code keeps running after it."""

    description: str
    """The first line of its docstring."""


@dataclass(frozen=True, kw_only=True)
class MigrationPlan:
    """The migrations that take a database from one revision to another."""

    before: str | None
    """The database's revision before them; `None` for an empty database."""

    after: str | None
    """Its revision after them."""

    migrations: list[Migration]
    """The migrations in between, oldest first."""

    oldest_before: str | None
    """The oldest revision whose code may run on the schema before them."""

    oldest_after: str | None
    """The oldest revision whose code may run on the schema after them."""

    @property
    def stops_older_replicas(self) -> bool:
        """Whether some labd that ran on the schema before cannot run on it after."""
        return self.before is not None and self.oldest_after != self.oldest_before


def plan_upgrade(*, before: str | None, after: str | None) -> MigrationPlan:
    """Describe the upgrade from ``before`` to ``after`` (``"head"`` allowed)."""
    scripts = ScriptDirectory.from_config(alembic_config())
    target = scripts.get_revision(after) if after is not None else None
    oldest_before = None if before is None else oldest_compatible(scripts, before)
    if target is None or target.revision == before:
        return MigrationPlan(
            before=before,
            after=before,
            migrations=[],
            oldest_before=oldest_before,
            oldest_after=oldest_before,
        )
    migrations = [
        Migration(
            revision=script.revision,
            kind=migration_kind(script),
            description=" ".join(script.doc.split()),
        )
        for script in scripts.iterate_revisions(target.revision, before or "base")
        if isinstance(script, Script)
    ]
    return MigrationPlan(
        before=before,
        after=target.revision,
        migrations=migrations[::-1],
        oldest_before=oldest_before,
        oldest_after=oldest_compatible(scripts, target.revision),
    )


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
