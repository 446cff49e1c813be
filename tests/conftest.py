"""Shared fixtures: every database test runs on SQLite and on PostgreSQL.

PostgreSQL is the machine's server on 127.0.0.1:5432 (``make test`` starts it
when it is down).  Each test session creates its own database, named after
the process, migrates it once and empties its tables before each test, so
concurrent test runs on one server do not see each other.  SQLite tests copy
a database file migrated once per session.

Fixtures that more than one directory of tests uses live in `tests.support`
modules registered below; helpers are imported from `tests.support`, whose
assertions pytest rewrites as it does the tests' own.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import logging
import os
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
import structlog
from sqlalchemy import text
from sqlalchemy.engine import make_url

from labd.db.database import Database
from labd.db.migrate import upgrade
from labd.db.schema import metadata

pytest.register_assert_rewrite("tests.support")

pytest_plugins = ["tests.support.core"]

POSTGRES_ADMIN_URL = os.environ.get(
    "LABD_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
)

_empty_databases = itertools.count()


def _asyncpg_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def _create_postgres_database(name: str) -> None:
    conn = await asyncpg.connect(_asyncpg_dsn(POSTGRES_ADMIN_URL))
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def _drop_postgres_database(name: str) -> None:
    conn = await asyncpg.connect(_asyncpg_dsn(POSTGRES_ADMIN_URL))
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def _migrate(url: str) -> None:
    database = Database(url)
    try:
        await upgrade(database)
    finally:
        await database.dispose()


class PostgresDatabases:
    """Creates empty PostgreSQL databases for this test session."""

    def __init__(self) -> None:
        self._names: list[str] = []

    def create(self, suffix: str) -> str:
        """Create an empty database and return its async URL."""
        name = f"labd_test_{os.getpid()}_{suffix}"
        asyncio.run(_create_postgres_database(name))
        self._names.append(name)
        return make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(False)

    def drop_all(self) -> None:
        for name in self._names:
            asyncio.run(_drop_postgres_database(name))


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_url(
    request: pytest.FixtureRequest, tmp_path: Path, postgres_databases: PostgresDatabases
) -> str:
    """URL of a database with no schema at all."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}"
    return postgres_databases.create(f"empty_{next(_empty_databases)}")


@pytest.fixture
async def empty_database(empty_url: str) -> AsyncIterator[Database]:
    database = Database(empty_url)
    yield database
    await database.dispose()


@pytest.fixture(scope="session")
def postgres_databases() -> Iterator[PostgresDatabases]:
    """Factory of throw-away PostgreSQL databases, dropped at session end."""
    databases = PostgresDatabases()
    yield databases
    databases.drop_all()


@pytest.fixture(scope="session")
def migrated_postgres_url(postgres_databases: PostgresDatabases) -> str:
    """A PostgreSQL database at the head revision, shared by the session."""
    url = postgres_databases.create("main")
    asyncio.run(_migrate(url))
    return url


@pytest.fixture(scope="session")
def migrated_sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file at the head revision, copied for each test."""
    path = tmp_path_factory.mktemp("sqlite-template") / "labd.db"
    asyncio.run(_migrate(f"sqlite+aiosqlite:///{path}"))
    return path


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    migrated_sqlite_template: Path,
) -> str:
    """URL of an empty database at the head revision, on each backend."""
    if request.param == "sqlite":
        path = tmp_path / "labd.db"
        shutil.copyfile(migrated_sqlite_template, path)
        return f"sqlite+aiosqlite:///{path}"
    url: str = request.getfixturevalue("migrated_postgres_url")
    asyncio.run(_truncate(url))
    return url


async def _truncate(url: str) -> None:
    database = Database(url)
    try:
        async with database.write() as conn:
            tables = ", ".join(table.name for table in metadata.sorted_tables)
            await conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    finally:
        await database.dispose()


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    """A `Database` on an empty, migrated database, on each backend."""
    db = Database(database_url)
    yield db
    await db.dispose()


@pytest.fixture(autouse=True)
def _collect_garbage() -> Iterator[None]:
    """Collect garbage after each test, so a leaked connection fails its own test."""
    yield
    gc.collect()


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """Undo `labd.daemon.logs.configure_logging`: root handlers and every logger's level."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    levels = {
        name: logger.level
        for name, logger in logging.root.manager.loggerDict.items()
        if isinstance(logger, logging.Logger)
    }
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, logger_level in levels.items():
        logging.getLogger(name).setLevel(logger_level)
    structlog.reset_defaults()
