"""Upgrades with older replicas running: migration kinds, the compat record, the check.

A throw-away script directory (labd's migrations plus 0008 expand, 0009
contract, 0010 expand) plays a later release; `check_schema` with a shorter
history plays an older labd.
"""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import pytest
from alembic.script import Script, ScriptDirectory
from click.testing import CliRunner
from sqlalchemy import select, text

import labd.db.migrate
from labd.cli.main import main
from labd.db.database import Database
from labd.db.migrate import (
    COMPAT_REVISION,
    alembic_config,
    downgrade,
    migration_kind,
    oldest_compatible,
    upgrade,
)
from labd.db.revision import SCHEMA_REVISIONS, SchemaError, check_schema, current_revision
from labd.db.schema import labd_schema_compat

LATER: tuple[str, ...] = (*SCHEMA_REVISIONS, "0008", "0009", "0010")
"""The history of the throw-away release."""


def _script(revision: str, parent: str, kind: str | None, upgrade: str, downgrade: str) -> str:
    declared = "" if kind is None else f"labd_kind = {kind!r}\n"
    return (
        textwrap.dedent(
            f'''\
        """Test migration {revision}, a {kind}.

        Revision ID: {revision}
        Revises: {parent}
        """

        import sqlalchemy as sa
        from alembic import op

        revision = {revision!r}
        down_revision = {parent!r}
        branch_labels = None
        depends_on = None
        '''
        )
        + declared
        + textwrap.dedent(
            f"""

        def upgrade() -> None:
            {upgrade}


        def downgrade() -> None:
            {downgrade}
        """
        )
    )


def _later_scripts(root: Path) -> Path:
    """Copy labd's migrations to ``root`` and add 0008 expand, 0009 contract, 0010 expand."""
    location = root / "migrations"
    shutil.copytree(alembic_config().get_main_option("script_location") or "", location)
    versions = location / "versions"
    create = 'op.create_table("probe", sa.Column("id", sa.Integer, primary_key=True))'
    drop = 'op.drop_table("probe")'
    (versions / "0008_probe.py").write_text(_script("0008", "0007", "expand", create, drop))
    (versions / "0009_drop_probe.py").write_text(_script("0009", "0008", "contract", drop, create))
    (versions / "0010_nothing.py").write_text(_script("0010", "0009", "expand", "pass", "pass"))
    return location


@pytest.fixture
def later_release(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Make labd's migrations those of a later release (0008 to 0010 added)."""
    location = _later_scripts(tmp_path)
    monkeypatch.setattr(labd.db.migrate, "_script_location", lambda: location)
    return location


async def recorded(database: Database) -> str | None:
    async with database.read() as conn:
        result = await conn.execute(select(labd_schema_compat.c.oldest_revision))
        return result.scalar_one_or_none()


def test_every_migration_declares_its_kind() -> None:
    """Each script says expand or contract; the history is one line, as labd knows it."""
    scripts = ScriptDirectory.from_config(alembic_config())
    history = [script for script in scripts.walk_revisions() if isinstance(script, Script)]
    kinds = {script.revision: migration_kind(script) for script in history}
    # 0001 creates everything, but no older labd exists to break; 0003 only
    # scrubs data; the others add tables, a nullable column and triggers.
    assert kinds == dict.fromkeys(SCHEMA_REVISIONS, "expand")
    assert all(isinstance(script.down_revision, str | None) for script in history)
    assert [script.revision for script in reversed(history)] == list(SCHEMA_REVISIONS)
    assert oldest_compatible(scripts, SCHEMA_REVISIONS[-1]) == COMPAT_REVISION


def test_a_migration_without_a_valid_kind_is_refused(tmp_path: Path) -> None:
    location = _later_scripts(tmp_path)
    versions = location / "versions"
    (versions / "0010_nothing.py").unlink()
    (versions / "0010_no_kind.py").write_text(_script("0010", "0009", None, "pass", "pass"))
    (versions / "0011_bad_kind.py").write_text(_script("0011", "0010", "shrink", "pass", "pass"))
    config = alembic_config()
    config.set_main_option("script_location", str(location))
    scripts = ScriptDirectory.from_config(config)
    for revision, declared in (("0010", "None"), ("0011", "'shrink'")):
        script = scripts.get_revision(revision)
        assert script is not None
        with pytest.raises(
            SchemaError, match=f"Migration {revision} declares labd_kind = {declared}"
        ):
            migration_kind(script)


@pytest.mark.usefixtures("later_release")
async def test_the_record_follows_expands_and_contracts(empty_database: Database) -> None:
    await upgrade(empty_database, "0006")
    await upgrade(empty_database, COMPAT_REVISION)
    assert await recorded(empty_database) == "0007"  # no labd before 0007 reads it
    await upgrade(empty_database, "0008")
    assert await recorded(empty_database) == "0007"  # an expand leaves it
    await upgrade(empty_database, "0009")
    assert await recorded(empty_database) == "0008"  # a contract: its parent
    await upgrade(empty_database, "0010")
    assert await recorded(empty_database) == "0008"
    await downgrade(empty_database, "0008")
    assert await recorded(empty_database) == "0007"  # a downgrade goes back
    # A lost row is written again by the next migration run.
    async with empty_database.write() as conn:
        await conn.execute(labd_schema_compat.delete())
    await upgrade(empty_database, "0010")
    assert await recorded(empty_database) == "0008"


@pytest.mark.usefixtures("later_release")
async def test_older_labd_runs_on_a_newer_schema_until_a_contract(
    empty_database: Database,
) -> None:
    at_0006: tuple[str, ...] = SCHEMA_REVISIONS[:-1]
    at_0007: tuple[str, ...] = SCHEMA_REVISIONS
    at_0008, at_0009, at_0010 = LATER[:-2], LATER[:-1], LATER
    await upgrade(empty_database, "0008")
    # Expand only since 0007: labd at 0007 runs on it.
    assert await check_schema(empty_database, revisions=at_0007) == "0008"
    # labd before 0007 runs only on its own revision (and reads no record).
    with pytest.raises(SchemaError, match=r"revision 0008, which runs labd at revision 0007"):
        await check_schema(empty_database, revisions=at_0006)
    # A database older than the labd: migrate.
    for revisions in (at_0009, at_0010):
        with pytest.raises(SchemaError, match=r"revision 0008, older.*run `labd migrate` first"):
            await check_schema(empty_database, revisions=revisions)

    await upgrade(empty_database)
    assert await current_revision(empty_database) == "0010"
    # Past the contract 0009: labd at 0007 must be upgraded, 0008 on run.
    with pytest.raises(
        SchemaError,
        match=r"schema revision 0010, which runs labd at revision 0008 or newer.*"
        r"this labd is at revision 0007: upgrade labd",
    ):
        await check_schema(empty_database, revisions=at_0007)
    for revisions in (at_0008, at_0009, at_0010):
        assert await check_schema(empty_database, revisions=revisions) == "0010"


async def test_a_revision_unknown_to_labd_needs_a_record(empty_database: Database) -> None:
    """A revision labd does not know is a newer one: the record decides."""
    await upgrade(empty_database)
    async with empty_database.write() as conn:
        await conn.execute(text("UPDATE alembic_version SET version_num = 'ffff'"))
    assert await check_schema(empty_database) == "ffff"
    async with empty_database.write() as conn:
        await conn.execute(labd_schema_compat.update().values(oldest_revision="fffe"))
    with pytest.raises(SchemaError, match=r"revision ffff, which runs labd at revision fffe"):
        await check_schema(empty_database)
    async with empty_database.write() as conn:
        await conn.execute(labd_schema_compat.delete())
    with pytest.raises(
        SchemaError, match=r"revision ffff, unknown to this labd \(revision 0007\), and no record"
    ):
        await check_schema(empty_database)


def _migrate(*args: str) -> str:
    result = CliRunner().invoke(main, ["migrate", *args])
    assert result.exit_code == 0, result.output
    return result.output


def test_migrate_says_what_older_replicas_may_do(
    empty_url: str, monkeypatch: pytest.MonkeyPatch, later_release: Path
) -> None:
    monkeypatch.setenv("LABD_DATABASE_URL", empty_url)
    output = _migrate("--revision", "0006")
    assert "schema upgraded from empty to 0006" in output
    assert "  0001  expand    Initial schema: labs, lab_transitions, lab_events." in output
    assert "A new database: no older labd runs on it." in output

    output = _migrate("--revision", "0007")
    assert "schema upgraded from 0006 to 0007" in output
    assert "  0007  expand    Record which labd may still run on the schema" in output
    assert (
        "Older replicas must stop: labd older than revision 0007 cannot run on this schema"
        " (labd before 0007 runs only on its own revision)"
    ) in output

    output = _migrate("--revision", "0008", "--dry-run")
    assert "schema at 0007; would upgrade it to 0008 (dry run)" in output
    assert "  0008  expand    Test migration 0008, a expand." in output
    assert "Older replicas keep running: labd at revision 0007 or newer" in output
    assert _migrate("--revision", "0007", "--dry-run").endswith("schema already at 0007\n")
    assert "schema already at 0007" in _migrate("--revision", "0007")

    output = _migrate("--revision", "0008")
    assert "schema upgraded from 0007 to 0008" in output
    assert "Older replicas keep running" in output

    output = _migrate()
    assert "schema upgraded from 0008 to 0010" in output
    lines = output.splitlines()
    assert lines[1:3] == [
        "  0009  contract  Test migration 0009, a contract.",
        "  0010  expand    Test migration 0010, a expand.",
    ]
    assert lines[3] == (
        "Older replicas must stop: labd older than revision 0008 cannot run on this schema"
        " (contract 0009); stop or upgrade every replica still running it."
    )
    assert "schema already at 0010" in _migrate()
