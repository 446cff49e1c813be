"""Alembic environment for labd.

Two ways in:

* ``labd migrate`` (and the tests) open the connection themselves and pass it
  in ``config.attributes["connection"]``, so migrating works inside a running
  event loop.
* ``alembic ...`` from a shell gets no connection; the URL then comes from
  ``LABD_DATABASE_URL`` (or ``sqlalchemy.url``) and an async engine is made
  here.

On PostgreSQL the migration takes a transaction-level advisory lock first, so
two replicas upgrading at once run one after the other instead of racing.
At the end of each run, in its transaction, ``labd_schema_compat`` gets the
oldest labd revision that may run on the schema (`record_compatibility`);
offline mode (``alembic upgrade --sql``) does not write it.
"""

from __future__ import annotations

import asyncio
import os

from alembic import context
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from labd.db.migrate import MIGRATION_LOCK_KEY, record_compatibility
from labd.db.schema import metadata

config = context.config


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=True,
        compare_type=True,
        compare_server_default=True,
    )


def _run(connection: Connection) -> None:
    _configure(connection)
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            connection.execute(
                text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY}
            )
        context.run_migrations()
        record_compatibility(connection, context.script)


async def _run_with_engine(url: str) -> None:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run)
            await connection.commit()
    finally:
        await engine.dispose()


def _url() -> str:
    url = os.environ.get("LABD_DATABASE_URL") or config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("Set LABD_DATABASE_URL to the database to migrate")
    return url


if context.is_offline_mode():
    context.configure(url=_url(), target_metadata=metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
elif (connection := config.attributes.get("connection")) is not None:
    _run(connection)
else:
    asyncio.run(_run_with_engine(_url()))
