"""Fixtures for the API: the real app on the real store, on both databases.

The app is built as ``labd serve`` builds it (`tests.support.api.build_stack`).
Plain routes are called through httpx's ASGI transport; event streams
through a real uvicorn on 127.0.0.1, since the ASGI transport buffers whole
responses.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from labd.config import Config
from labd.db.database import Database
from tests.support.api import Stack, build_stack, make_config, serve


@pytest.fixture
def config() -> Config:
    """The configuration of the app under test."""
    return make_config()


@pytest.fixture
def stack(database: Database, config: Config) -> Stack:
    """The app on an empty database (SQLite and PostgreSQL)."""
    return build_stack(database, config, keepalive=0.2)


@pytest.fixture
async def client(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client calling the app in process."""
    transport = httpx.ASGITransport(app=stack.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://labd") as client:
        yield client


@pytest.fixture
async def server(stack: Stack) -> AsyncIterator[str]:
    """Base URL of the app served by a real uvicorn."""
    async with serve(stack.app) as url:
        yield url
