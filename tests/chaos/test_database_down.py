"""A labd whose database is out of reach answers 503 ``not_ready``, never 500.

Found by the chaos run: while PostgreSQL restarted, status reads answered
500 ``internal_error`` (asyncpg raises a bare ``ConnectionRefusedError``
while connecting).  docs/api.md promises 503 ``not_ready``, which the hub
retries.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import httpx
import pytest
import sqlalchemy.exc
from sqlalchemy import text

from labd.api import Authenticator, create_app, hash_token
from labd.api.service import LabService
from labd.config import Config
from labd.daemon.factory import Labd
from labd.db.database import Database, database_unreachable
from labd.db.store import LabStore
from labd.images.catalog import ImageCatalog
from labd.lab.machine import LabState
from labd.lab.records import Actor
from labd.lab.signals import LabSignals
from tests.support.core import IMAGE, LabdFactory, spec, wait_state
from tests.support.processes import free_port

TOKEN = "hub-token"


async def _ready() -> None:
    return None


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, LabStore]]:
    """The API on a PostgreSQL URL where nothing listens."""
    token_file = tmp_path / "tokens"
    token_file.write_text(f"{hash_token(TOKEN)} hub\n")
    config = Config.model_validate(
        {
            "database_url": f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/labd",
            "token_file": str(token_file),
            "images": {"available": [{"reference": IMAGE}], "recommended": "w_2026_47"},
        }
    )
    database = Database(config.database_url)
    store = LabStore(database)
    service = LabService(
        config=config, store=store, signals=LabSignals(), images=ImageCatalog(config.images)
    )
    app = create_app(
        config=config,
        service=service,
        authenticator=Authenticator.from_file(token_file),
        readiness=_ready,
    )
    headers = {"Authorization": f"Bearer {TOKEN}"}
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://labd", headers=headers
    ) as c:
        yield c, store
    await database.dispose()


def _not_ready(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.json()["detail"][0]["type"] == "not_ready"


async def test_refused_connection_is_not_ready(
    client: tuple[httpx.AsyncClient, LabStore],
) -> None:
    http, _ = client
    _not_ready(await http.get("/spawner/v1/labs/alice"))
    _not_ready(await http.delete("/spawner/v1/labs/alice"))


async def test_lost_connection_is_not_ready(
    client: tuple[httpx.AsyncClient, LabStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    http, store = client

    async def lost(username: str) -> None:
        raise sqlalchemy.exc.InterfaceError("SELECT 1", {}, Exception("connection was closed"))

    monkeypatch.setattr(store, "get_current_lab", lost)
    _not_ready(await http.get("/spawner/v1/labs/alice"))


async def test_other_failures_stay_internal_errors(
    client: tuple[httpx.AsyncClient, LabStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    http, store = client

    async def broken(username: str) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(store, "get_current_lab", broken)
    response = await http.get("/spawner/v1/labs/alice")
    assert response.status_code == 500
    assert response.json()["detail"][0]["type"] == "internal_error"


def _wrapped(cause: Exception) -> sqlalchemy.exc.DBAPIError:
    """A failure as SQLAlchemy raises it, the driver's error as its cause."""
    try:
        try:
            raise cause
        except Exception as exc:
            raise sqlalchemy.exc.DBAPIError("SELECT 1", {}, exc) from exc
    except sqlalchemy.exc.DBAPIError as error:
        return error


async def test_server_shutting_down_is_not_ready(
    client: tuple[httpx.AsyncClient, LabStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    # What the chaos run saw while PostgreSQL restarted: a plain DBAPIError
    # wrapping asyncpg's CannotConnectNowError.
    http, store = client

    async def restarting(username: str) -> None:
        raise _wrapped(asyncpg.CannotConnectNowError("the database system is shutting down"))

    monkeypatch.setattr(store, "get_current_lab", restarting)
    _not_ready(await http.get("/spawner/v1/labs/alice"))


async def test_other_database_errors_stay_internal_errors(
    client: tuple[httpx.AsyncClient, LabStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    http, store = client

    async def bad_sql(username: str) -> None:
        raise _wrapped(ValueError("syntax error at or near SELEC"))

    monkeypatch.setattr(store, "get_current_lab", bad_sql)
    response = await http.get("/spawner/v1/labs/alice")
    assert response.status_code == 500
    assert response.json()["detail"][0]["type"] == "internal_error"


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_a_delete_behind_a_lock_held_elsewhere_fails_as_not_ready_and_loses_nothing(
    labd_factory: LabdFactory,
) -> None:
    """An operator's open ``SELECT ... FOR UPDATE`` on a lab's row.

    The delete's write waits ``database_lock_timeout`` for the lock, then
    fails as an unreachable database does, which the API answers with 503
    ``not_ready`` (above) and the hub retries; the lab is untouched.  Once
    the lock is gone the retried delete goes through.
    """
    labd: Labd = await labd_factory(database_lock_timeout=0.2)
    await labd.service.create("alice", spec(), actor=Actor.HUB)
    await wait_state(labd, "alice", LabState.RUNNING)
    async with labd.database.engine.connect() as operator:
        await operator.execute(text("SELECT id FROM labs WHERE username = 'alice' FOR UPDATE"))
        with pytest.raises(sqlalchemy.exc.DBAPIError) as caught:
            # Well inside the default timeout of 5 s: the setting is what ends the wait.
            await asyncio.wait_for(labd.service.delete("alice", actor=Actor.HUB), 3)
        await operator.rollback()
    assert database_unreachable(caught.value), caught.value
    lab = await labd.store.get_current_lab("alice")
    assert lab is not None
    assert lab.state is LabState.RUNNING
    await asyncio.wait_for(labd.service.delete("alice", actor=Actor.HUB), 30)
    assert await labd.store.get_current_lab("alice") is None
