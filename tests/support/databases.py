"""Throw-away databases at the head revision, for scripts outside pytest."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy import text
from sqlalchemy.engine import make_url

from labd.db.database import Database
from labd.db.migrate import upgrade

__all__ = ["POSTGRES_ADMIN_URL", "scratch_database", "terminate_sessions"]

POSTGRES_ADMIN_URL = os.environ.get(
    "LABD_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
)


def _asyncpg_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def terminate_sessions(url: str, where: str, **params: Any) -> int:
    """``pg_terminate_backend`` of the sessions on ``url``'s database that match ``where``.

    ``where`` is a condition on ``pg_stat_activity`` with ``:name`` parameters
    (``params``).  Returns how many, once every one of them has ended (a
    client that reconnects meanwhile has a new session, not waited for).
    """
    database = Database(url)
    matching = f"SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND ({where})"
    ended = "pid = ANY(CAST(:pids AS integer[]))"
    try:
        async with database.write() as conn:
            pids = list((await conn.execute(text(matching), params)).scalars())
            await conn.execute(
                text(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE {ended}"),
                {"pids": pids},
            )
        while True:
            async with database.read() as conn:
                left = await conn.scalar(
                    text(f"SELECT count(*) FROM pg_stat_activity WHERE {ended}"), {"pids": pids}
                )
            if not left:
                return len(pids)
            await asyncio.sleep(0.02)
    finally:
        await database.dispose()


async def _drop(server_url: str, name: str) -> None:
    conn = await asyncpg.connect(_asyncpg_dsn(server_url))
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@asynccontextmanager
async def scratch_database(
    backend: str, directory: Path, name: str, *, server_url: str = POSTGRES_ADMIN_URL
) -> AsyncIterator[str]:
    """Yield the URL of an empty database at head; drop it afterwards.

    Parameters
    ----------
    backend
        ``sqlite`` (a file in ``directory``) or ``postgresql`` (database
        ``<name>_<pid>`` on the local server).
    directory
        Where a SQLite file goes.
    name
        Prefix of the PostgreSQL database's name.
    server_url
        The PostgreSQL server; its own database serves only to create and
        drop the scratch one.
    """
    database_name: str | None = None
    if backend == "sqlite":
        url = f"sqlite+aiosqlite:///{directory / 'labd.db'}"
    else:
        database_name = f"{name}_{os.getpid()}"
        await _drop(server_url, database_name)
        conn = await asyncpg.connect(_asyncpg_dsn(server_url))
        try:
            await conn.execute(f'CREATE DATABASE "{database_name}"')
        finally:
            await conn.close()
        url = make_url(server_url).set(database=database_name).render_as_string(False)
    database = Database(url)
    try:
        await upgrade(database)
    finally:
        await database.dispose()
    try:
        yield url
    finally:
        if database_name is not None:
            await _drop(server_url, database_name)
