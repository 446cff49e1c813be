"""One error body for everything: bad JSON, big bodies, bad routes, bugs."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
import structlog

from labd.db.database import Database
from tests.support.api import HUB, Stack, build_stack, make_config, serve, spawn_body

CREATE = "/spawner/v1/labs/alice/create"


def only_error(response: httpx.Response) -> dict[str, Any]:
    assert response.headers["content-type"] == "application/json"
    (error,) = response.json()["detail"]
    return dict(error)


@pytest.mark.parametrize(
    "content", [b"{", b"", b"not json", b'{"options": }', b"\xff\xfe", b'{"a": 1} trailing']
)
async def test_malformed_json(client: httpx.AsyncClient, content: bytes) -> None:
    response = await client.post(CREATE, content=content, headers=HUB)
    assert response.status_code == 422
    error = only_error(response)
    assert error["type"] == "json_invalid"
    assert error["loc"] == ["body"]


@pytest.mark.parametrize("content", [b"[]", b"42", b'"text"', b"null", b"[1, 2]"])
async def test_json_not_an_object(client: httpx.AsyncClient, content: bytes) -> None:
    response = await client.post(CREATE, content=content, headers=HUB)
    assert response.status_code == 422
    error = only_error(response)
    assert error["type"] == "model_type"
    assert error["loc"] == ["body"]


async def test_unknown_fields_ignored(client: httpx.AsyncClient) -> None:
    body = spawn_body(colour=["blue"])
    body["extra"] = {"x": 1}
    assert (await client.post(CREATE, json=body, headers=HUB)).status_code == 201


async def test_body_too_large(client: httpx.AsyncClient, stack: Stack) -> None:
    body = spawn_body()
    body["env"]["PADDING"] = "x" * stack.config.max_body_size
    response = await client.post(CREATE, json=body, headers=HUB)
    assert response.status_code == 413
    assert only_error(response)["type"] == "request_too_large"
    # Also before authentication: no body is read for nothing.
    response = await client.post(CREATE, json=body)
    assert response.status_code == 413


async def test_streamed_body_too_large(stack: Stack) -> None:
    limit = stack.config.max_body_size

    async def chunks() -> Any:
        for _ in range(4):
            yield b" " * (limit // 2)

    async with serve(stack.app) as url, httpx.AsyncClient(base_url=url) as client:
        response = await client.post(CREATE, content=chunks(), headers=HUB)
    assert response.status_code == 413
    assert only_error(response)["type"] == "request_too_large"


async def test_body_at_limit_is_read(database: Database) -> None:
    stack = build_stack(database, make_config(max_body_size=1024))
    content = json.dumps(spawn_body()).encode()
    content += b" " * (1024 - len(content))
    transport = httpx.ASGITransport(app=stack.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://labd") as client:
        assert (await client.post(CREATE, content=content, headers=HUB)).status_code == 201
        response = await client.post(
            "/spawner/v1/labs/bob/create", content=content + b" ", headers=HUB
        )
    assert response.status_code == 413


async def test_unknown_route(client: httpx.AsyncClient) -> None:
    for path in ("/nowhere", "/spawner/v2/labs", "/spawner/v1/labs/alice/create/more"):
        response = await client.get(path, headers=HUB)
        assert response.status_code in (404, 422), path
    response = await client.get("/nowhere")
    assert response.status_code == 404
    assert only_error(response) == {"msg": "No such route", "type": "not_found"}


async def test_wrong_method(client: httpx.AsyncClient) -> None:
    response = await client.put("/spawner/v1/labs", headers=HUB)
    assert response.status_code == 405
    assert only_error(response)["type"] == "method_not_allowed"
    assert set(response.headers["allow"].split(", ")) == {"GET", "HEAD"}
    response = await client.patch("/spawner/v1/labs/alice", headers=HUB)
    assert response.status_code == 405
    assert set(response.headers["allow"].split(", ")) == {"GET", "HEAD", "DELETE"}


async def test_internal_error_is_generic_and_logged(
    client: httpx.AsyncClient, stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken() -> list[str]:
        raise RuntimeError("password=hunter2 in the connection string")

    monkeypatch.setattr(stack.service, "running_users", broken)
    with structlog.testing.capture_logs() as logs:
        response = await client.get("/spawner/v1/labs", headers=HUB)
    assert response.status_code == 500
    assert only_error(response) == {"msg": "Internal server error", "type": "internal_error"}
    assert "hunter2" not in response.text
    (entry,) = [e for e in logs if e["event"] == "request failed"]
    assert entry["log_level"] == "error"
    assert entry["exc_info"] is True
    assert entry["path"] == "/spawner/v1/labs"


async def test_readiness(client: httpx.AsyncClient, stack: Stack) -> None:
    # No leadership source: the body says this replica does not lead.
    ready = {"status": "ok", "leader": False, "leader_since": None}
    assert (await client.get("/readyz")).json() == ready
    stack.not_ready.append("database schema is not at head")
    response = await client.get("/readyz")
    assert response.status_code == 503
    assert response.json() == {
        "detail": [{"msg": "database schema is not at head", "type": "not_ready"}]
    }
    assert (await client.get("/healthz")).json() == {"status": "ok"}
