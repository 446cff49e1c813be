"""The lab routes: create, status, list, delete, user-status, history, form."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from labd.config import Config
from labd.db.database import Database
from labd.lab.machine import LabState, Trigger
from labd.lab.records import Actor
from labd.lab.spec import LabSpec
from tests.support.api import (
    ALICE,
    BOB,
    DAILY,
    HUB,
    RELEASE,
    WEEKLY,
    Stack,
    build_stack,
    make_config,
    spawn_body,
)


def error_of(response: httpx.Response) -> dict[str, Any]:
    """The single error of an error body."""
    body = response.json()
    assert set(body) == {"detail"}
    (detail,) = body["detail"]
    return dict(detail)


async def create(
    client: httpx.AsyncClient,
    username: str = "alice",
    headers: dict[str, str] = HUB,
    **options: Any,
) -> httpx.Response:
    return await client.post(
        f"/spawner/v1/labs/{username}/create", json=spawn_body(**options), headers=headers
    )


async def test_spawn_with_raw_form_data(client: httpx.AsyncClient, stack: Stack) -> None:
    response = await create(client)
    assert response.status_code == 201
    assert response.content == b""
    assert response.headers["location"] == "/spawner/v1/labs/alice"

    status = await client.get("/spawner/v1/labs/alice", headers=HUB)
    assert status.status_code == 200
    state = status.json()
    assert state["status"] == "pending"
    assert state["internal_url"] is None
    assert state["options"] == {
        "image": WEEKLY,
        "size": "medium",
        "enable_debug": False,
        "reset_user_env": True,
    }
    assert state["resources"]["limits"] == {"cpu": 2.0, "memory": 8 * 2**30}
    assert state["user"]["username"] == "alice"
    # Pending labs are not listed as running.
    assert (await client.get("/spawner/v1/labs", headers=HUB)).json() == []

    await stack.driver.spawn("alice")
    running = (await client.get("/spawner/v1/labs/alice", headers=HUB)).json()
    assert running["status"] == "running"
    assert running["internal_url"] == "http://lab.labd-alice:8888/user/alice/"
    assert (await client.get("/spawner/v1/labs", headers=HUB)).json() == ["alice"]


async def test_dropdown_sentinel_and_image_fields(client: httpx.AsyncClient) -> None:
    response = await create(client, image_list=["use_image_from_dropdown"])
    assert response.status_code == 201
    state = (await client.get("/spawner/v1/labs/alice", headers=HUB)).json()
    assert state["options"]["image"] == RELEASE

    response = await create(
        client, "bob", image_list=None, image_dropdown=None, image_tag="d_2026_11_24"
    )
    assert response.status_code == 201
    assert (await client.get("/spawner/v1/labs/bob", headers=HUB)).json()["options"][
        "image"
    ] == DAILY


async def test_list_is_sorted(client: httpx.AsyncClient, stack: Stack) -> None:
    for name in ("carol", "Alice", "bob"):
        assert (await create(client, name)).status_code == 201
        await stack.driver.spawn(name)
    assert (await client.get("/spawner/v1/labs", headers=HUB)).json() == ["Alice", "bob", "carol"]


async def test_user_may_create_own_lab(client: httpx.AsyncClient) -> None:
    response = await create(client, headers=ALICE)
    assert response.status_code == 201
    history = (await client.get("/spawner/v1/labs/alice/history", headers=HUB)).json()
    assert history[0]["actor"] == "user"


async def test_create_conflicts(client: httpx.AsyncClient, stack: Stack) -> None:
    assert (await create(client)).status_code == 201
    response = await create(client)
    assert response.status_code == 409
    assert error_of(response)["type"] == "lab_exists"

    await stack.driver.spawn("alice")
    response = await create(client)
    assert response.status_code == 409
    assert error_of(response)["type"] == "lab_exists"

    delete = asyncio.create_task(client.delete("/spawner/v1/labs/alice", headers=HUB))
    await stack.driver.wait_for("alice", LabState.DELETING)
    response = await create(client)
    assert response.status_code == 409
    assert error_of(response)["type"] == "operation_in_progress"
    await stack.driver.finish_delete("alice")
    assert (await delete).status_code == 204


async def test_concurrent_creates_one_wins(client: httpx.AsyncClient) -> None:
    responses = await asyncio.gather(*(create(client) for _ in range(4)))
    assert sorted(r.status_code for r in responses) == [201, 409, 409, 409]


async def test_create_after_failure_replaces_the_lab(
    client: httpx.AsyncClient, stack: Stack
) -> None:
    assert (await create(client)).status_code == 201
    await stack.driver.objects_ready("alice")
    await stack.driver.fail("alice", "Image pull failed")
    assert (await client.get("/spawner/v1/labs/alice", headers=HUB)).json()["status"] == "failed"
    assert (await create(client)).status_code == 201
    assert (await client.get("/spawner/v1/labs/alice", headers=HUB)).json()["status"] == "pending"


async def test_delete_waits_then_404(client: httpx.AsyncClient, stack: Stack) -> None:
    assert (await create(client)).status_code == 201
    await stack.driver.spawn("alice")
    finisher = asyncio.create_task(stack.driver.when_deleting("alice"))
    response = await client.delete("/spawner/v1/labs/alice", headers=HUB)
    assert response.status_code == 204
    assert response.content == b""
    assert (await finisher).state is LabState.DELETED

    again = await client.delete("/spawner/v1/labs/alice", headers=HUB)
    assert again.status_code == 404
    assert error_of(again) == {
        "loc": ["path", "username"],
        "msg": "Unknown user alice",
        "type": "unknown_user",
    }
    status = await client.get("/spawner/v1/labs/alice", headers=HUB)
    assert status.status_code == 404
    assert error_of(status)["type"] == "unknown_user"
    assert (await client.get("/spawner/v1/labs", headers=HUB)).json() == []


async def test_concurrent_deletes_join(client: httpx.AsyncClient, stack: Stack) -> None:
    assert (await create(client)).status_code == 201
    await stack.driver.spawn("alice")
    finisher = asyncio.create_task(stack.driver.when_deleting("alice"))
    responses = await asyncio.gather(
        *(client.delete("/spawner/v1/labs/alice", headers=HUB) for _ in range(3))
    )
    assert [r.status_code for r in responses] == [204, 204, 204]
    await finisher


async def test_delete_timeout_is_delete_failed(database: Database) -> None:
    stack = build_stack(database, make_config(timeouts={"spawn": 60, "delete": 0.01}))
    transport = httpx.ASGITransport(app=stack.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://labd") as client:
        assert (await create(client)).status_code == 201
        await stack.driver.spawn("alice")
        # The scheduler gives up on the delete: the waiting request answers
        # at once with the failure.
        deleting = asyncio.create_task(client.delete("/spawner/v1/labs/alice", headers=HUB))
        lab = await stack.driver.wait_for("alice", LabState.DELETING)
        await stack.store.transition(
            lab.id,
            Trigger.DELETE_FAILED,
            actor=Actor.SCHEDULER,
            changes={"last_error": "namespace stuck"},
        )
        stack.signals.notify(lab.id)
        response = await deleting
    assert response.status_code == 500
    assert error_of(response)["type"] == "delete_failed"
    assert "namespace stuck" in error_of(response)["msg"]


async def test_delete_unknown_user(client: httpx.AsyncClient) -> None:
    response = await client.delete("/spawner/v1/labs/nobody", headers=HUB)
    assert response.status_code == 404
    assert error_of(response)["type"] == "unknown_user"


async def test_user_status(client: httpx.AsyncClient, stack: Stack) -> None:
    response = await client.get("/spawner/v1/user-status", headers=ALICE)
    assert response.status_code == 404
    assert error_of(response) == {"msg": "Unknown user alice", "type": "unknown_user"}

    assert (await create(client)).status_code == 201
    response = await client.get("/spawner/v1/user-status", headers=ALICE)
    assert response.status_code == 200
    assert response.json()["user"]["username"] == "alice"
    assert (await client.get("/spawner/v1/user-status", headers=BOB)).status_code == 404

    hub = await client.get("/spawner/v1/user-status", headers=HUB)
    assert hub.status_code == 403
    assert error_of(hub)["type"] == "permission_denied"


async def test_history(client: httpx.AsyncClient, stack: Stack) -> None:
    assert (await create(client)).status_code == 201
    await stack.driver.spawn("alice")
    response = await client.get("/spawner/v1/labs/alice/history", headers=HUB)
    assert response.status_code == 200
    entries = response.json()
    assert [(e["from"], e["to"], e["trigger"]) for e in entries] == [
        ("starting", "running", "pod_running"),
        ("creating", "starting", "objects_ready"),
        ("requested", "creating", "start"),
        ("new", "requested", "request"),
    ]
    assert set(entries[0]) == {
        "id",
        "lab_id",
        "time",
        "from",
        "to",
        "trigger",
        "actor",
        "reason",
        "details",
    }
    assert entries[-1]["actor"] == "hub"
    assert entries[-1]["reason"] == "Lab requested"

    page = await client.get(
        "/spawner/v1/labs/alice/history",
        params={"limit": 2, "before": entries[1]["id"]},
        headers=HUB,
    )
    assert [e["id"] for e in page.json()] == [entries[2]["id"], entries[3]["id"]]

    assert (await client.get("/spawner/v1/labs/nobody/history", headers=HUB)).json() == []


@pytest.mark.parametrize(
    ("params", "loc", "error_type"),
    [
        ({"limit": "0"}, ["query", "limit"], "greater_than_equal"),
        ({"limit": "1001"}, ["query", "limit"], "less_than_equal"),
        ({"limit": "ten"}, ["query", "limit"], "int_parsing"),
        ({"before": "x"}, ["query", "before"], "int_parsing"),
        ({"before": str(2**63)}, ["query", "before"], "less_than_equal"),
    ],
)
async def test_history_bad_query(
    client: httpx.AsyncClient, params: dict[str, str], loc: list[str], error_type: str
) -> None:
    response = await client.get("/spawner/v1/labs/alice/history", params=params, headers=HUB)
    assert response.status_code == 422
    error = error_of(response)
    assert error["loc"] == loc
    assert error["type"] == error_type


async def test_lab_form(client: httpx.AsyncClient) -> None:
    response = await client.get("/spawner/v1/lab-form/alice", headers=ALICE)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    form = response.text
    assert f'<input type="radio" name="image_list" value="{WEEKLY}" checked>' in form
    assert 'name="image_list" value="use_image_from_dropdown"' in form
    assert '<select name="image_dropdown">' in form
    assert f'<option value="{DAILY}">' in form
    assert '<option value="medium" selected>Medium (2 CPU, 8 GiB)</option>' in form
    assert 'name="enable_debug" value="true"' in form
    assert 'name="reset_user_env" value="true"' in form


async def test_lab_form_follows_quota(client: httpx.AsyncClient, stack: Stack) -> None:
    body = spawn_body(size=["small"])
    body["user"] = {"quota": {"cpu": 1.5, "memory": 2**40}}
    response = await client.post("/spawner/v1/labs/alice/create", json=body, headers=HUB)
    assert response.status_code == 201
    form = (await client.get("/spawner/v1/lab-form/alice", headers=HUB)).text
    assert 'value="small"' in form
    assert 'value="medium"' not in form

    body["user"] = {"quota": {"spawn": False}}
    await stack.driver.objects_ready("alice")
    await stack.driver.fail("alice", "gone")
    refused = await client.post("/spawner/v1/labs/alice/create", json=body, headers=HUB)
    assert refused.status_code == 403
    assert error_of(refused)["type"] == "permission_denied"


async def test_lab_form_refuses_when_spawning_forbidden(database: Database) -> None:
    stack = build_stack(database, make_config())
    await stack.store.create_lab(
        username="alice",
        slug="alice",
        namespace="labd-alice",
        spec=LabSpec.from_row({"quota": {"spawn": False}}),
        actor=Actor.HUB,
    )
    transport = httpx.ASGITransport(app=stack.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://labd") as client:
        response = await client.get("/spawner/v1/lab-form/alice", headers=HUB)
    assert response.status_code == 200
    assert "<form" not in response.text
    assert "not permitted" in response.text
    assert "<select" not in response.text


async def test_lab_form_escapes(database: Database) -> None:
    config = make_config(
        images={
            "available": [{"reference": WEEKLY, "name": "<script>alert(1)</script>"}],
            "recommended": WEEKLY,
        },
        sizes={
            "small": {
                "limits": {"cpu": 1, "memory": "4Gi"},
                "requests": {"cpu": 1, "memory": "1Gi"},
                "description": 'a "quoted" & <b>bold</b> size',
            }
        },
        default_size="small",
    )
    stack = build_stack(database, config)
    transport = httpx.ASGITransport(app=stack.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://labd") as client:
        ok = (await client.get("/spawner/v1/lab-form/alice", headers=HUB)).text
    assert "<script>" not in ok
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in ok
    assert "&quot;quoted&quot; &amp; &lt;b&gt;bold&lt;/b&gt;" in ok


@pytest.mark.parametrize(
    ("options", "status", "loc", "error_type"),
    [
        (
            {"image_list": ["registry.example/other:w_2026_47"]},
            400,
            ["body", "options", "image_list"],
            "unknown_image",
        ),
        (
            {"image_list": None, "image_dropdown": None, "image_tag": "w_1999_01"},
            400,
            ["body", "options", "image_tag"],
            "unknown_image",
        ),
        (
            {"image_list": ["registry.example/sciplat/lab"]},
            422,
            ["body", "options", "image_list"],
            "invalid_docker_reference",
        ),
        ({"size": ["Huge"]}, 422, ["body", "options", "size"], "invalid_lab_size"),
        ({"size": ["small", "large"]}, 422, ["body", "options", "size"], "value_error"),
        # null is the option left out, as in the reference protocol.
        ({"size": None}, 422, ["body", "options", "size"], "missing"),
        ({"enable_debug": ["maybe"]}, 422, ["body", "options", "enable_debug"], "bool_parsing"),
        (
            {"image_list": None, "image_dropdown": None},
            422,
            ["body", "options"],
            "value_error",
        ),
        (
            {"image_class": ["latest-monthly"]},
            422,
            ["body", "options", "image_class"],
            "enum",
        ),
    ],
)
async def test_create_refusals(
    client: httpx.AsyncClient,
    options: dict[str, Any],
    status: int,
    loc: list[str],
    error_type: str,
) -> None:
    response = await create(client, **options)
    assert response.status_code == status, response.text
    errors = response.json()["detail"]
    assert {"loc": loc, "type": error_type} in [
        {"loc": e.get("loc"), "type": e["type"]} for e in errors
    ]
    assert all(e["msg"] for e in errors)
    assert (await client.get("/spawner/v1/labs/alice", headers=HUB)).status_code == 404


async def test_missing_fields(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/spawner/v1/labs/alice/create", json={"options": {"image_tag": "x"}}, headers=HUB
    )
    assert response.status_code == 422
    locs = {(tuple(e["loc"]), e["type"]) for e in response.json()["detail"]}
    assert (("body", "options", "size"), "missing") in locs
    assert (("body", "env"), "missing") in locs

    body = spawn_body()
    body["env"] = {}
    response = await client.post("/spawner/v1/labs/alice/create", json=body, headers=HUB)
    assert response.status_code == 422
    assert error_of(response)["loc"] == ["body"]
    assert "JUPYTERHUB_SERVICE_PREFIX" in error_of(response)["msg"]


async def test_over_quota(client: httpx.AsyncClient) -> None:
    body = spawn_body(size=["Large"])
    body["user"] = {"name": "Alice", "uid": 1101, "gid": 1101, "quota": {"cpu": 2.0}}
    response = await client.post("/spawner/v1/labs/alice/create", json=body, headers=HUB)
    assert response.status_code == 403
    assert error_of(response)["type"] == "insufficient_quota"
    assert error_of(response)["loc"] == ["body", "options", "size"]


async def test_spawning_forbidden(client: httpx.AsyncClient) -> None:
    body = spawn_body()
    body["user"] = {"quota": {"spawn": False}}
    response = await client.post("/spawner/v1/labs/alice/create", json=body, headers=HUB)
    assert response.status_code == 403
    assert error_of(response)["type"] == "permission_denied"


@pytest.mark.parametrize(
    "username", ["Alice", "alice@example.org", "a.b", "a_b", "a+b", "a-b", "x" * 255]
)
async def test_legal_usernames(client: httpx.AsyncClient, username: str) -> None:
    assert (await create(client, username)).status_code == 201
    response = await client.get(f"/spawner/v1/labs/{username}", headers=HUB)
    assert response.status_code == 200
    assert response.json()["user"]["username"] == username


@pytest.mark.parametrize(
    "username", ["a%20b", "a%2Fb", "x" * 256, "a%00b", "a%0Ab", "a%0A", "caf%C3%A9%21"]
)
async def test_invalid_usernames(client: httpx.AsyncClient, username: str) -> None:
    for method, path in [
        ("GET", "/spawner/v1/labs/{}"),
        ("DELETE", "/spawner/v1/labs/{}"),
        ("POST", "/spawner/v1/labs/{}/create"),
        ("GET", "/spawner/v1/labs/{}/events"),
        ("GET", "/spawner/v1/labs/{}/history"),
        ("GET", "/spawner/v1/lab-form/{}"),
    ]:
        url = path.format(username)
        response = await client.request(method, url, headers=HUB, json=spawn_body())
        assert response.status_code == 422, (method, url, response.text)
        error = error_of(response)
        assert error["type"] == "invalid_username"
        assert error["loc"] == ["path", "username"]


async def test_prefix(database: Database) -> None:
    config: Config = make_config(path_prefix="/labd")
    stack = build_stack(database, config)
    transport = httpx.ASGITransport(app=stack.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://labd") as client:
        response = await client.post(
            "/labd/spawner/v1/labs/alice/create", json=spawn_body(), headers=HUB
        )
        assert response.status_code == 201
        assert response.headers["location"] == "/labd/spawner/v1/labs/alice"
        assert (await client.get("/labd/healthz")).status_code == 200
        assert (await client.get("/spawner/v1/labs", headers=HUB)).status_code == 404
        schema = (await client.get("/labd/openapi.json")).json()
    assert "/labd/spawner/v1/labs/{username}" in schema["paths"]
