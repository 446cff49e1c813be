"""Where a hub that drives Nublado's controller would notice labd differ: it must not.

Each case is what Nublado's lab controller answers for the same request:
options are read as its ``LabRequestOptions`` reads them, and an unknown
sub-path of a lab route is a 404 like any unknown route.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from starlette.types import Receive, Scope, Send

from tests.support.api import HUB, Stack, spawn_body


async def create(client: httpx.AsyncClient, **options: Any) -> httpx.Response:
    return await client.post(
        "/spawner/v1/labs/alice/create", json=spawn_body(**options), headers=HUB
    )


async def options_of(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get("/spawner/v1/labs/alice", headers=HUB)
    assert response.status_code == 200, response.text
    options: dict[str, Any] = response.json()["options"]
    return options


@pytest.mark.parametrize("value", ["yes", "no", "on", "1", "0", "True", "FALSE", "t", 1, 0])
async def test_booleans_are_true_false_or_their_strings_only(
    client: httpx.AsyncClient, value: object
) -> None:
    for field in ("enable_debug", "reset_user_env"):
        for sent in (value, [value]):
            response = await create(client, **{field: sent})
            assert response.status_code == 422, (field, sent, response.text)
            (error,) = response.json()["detail"]
            assert error["loc"] == ["body", "options", field]
            assert error["type"] == "bool_parsing"


@pytest.mark.parametrize(
    ("sent", "expected"),
    [(True, True), ("true", True), (["true"], True), (False, False), (["false"], False)],
)
async def test_the_booleans_the_reference_accepts(
    client: httpx.AsyncClient, sent: object, expected: bool
) -> None:
    response = await create(client, enable_debug=sent)
    assert response.status_code == 201, response.text
    assert (await options_of(client))["enable_debug"] is expected


async def test_an_empty_list_is_the_option_left_out(client: httpx.AsyncClient) -> None:
    response = await create(
        client, enable_debug=[], reset_user_env=[], image_list=[], image_tag=[], image_class=[]
    )
    assert response.status_code == 201, response.text
    options = await options_of(client)
    assert (options["enable_debug"], options["reset_user_env"]) == (False, False)
    # The dropdown is the one image left.
    assert options["image"].startswith(spawn_body()["options"]["image_dropdown"][0])


async def test_null_is_the_option_left_out(client: httpx.AsyncClient) -> None:
    response = await create(client, enable_debug=None, image_list=None)
    assert response.status_code == 201, response.text
    assert (await options_of(client))["enable_debug"] is False


async def test_a_required_option_left_out_is_missing(client: httpx.AsyncClient) -> None:
    sent: list[str] | None
    for sent in ([], None):
        response = await create(client, size=sent)
        assert response.status_code == 422
        assert {"loc": ["body", "options", "size"], "type": "missing"} in [
            {"loc": e["loc"], "type": e["type"]} for e in response.json()["detail"]
        ]


@pytest.mark.parametrize("size", ["Medium", ["MEDIUM"], "medium"])
async def test_sizes_in_any_case(client: httpx.AsyncClient, size: object) -> None:
    response = await create(client, size=size)
    assert response.status_code == 201, response.text
    assert (await options_of(client))["size"] == "medium"


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/spawner/v1/labs/alice/unknown"),
        ("DELETE", "/spawner/v1/labs/alice/unknown"),
        ("GET", "/spawner/v1/labs/alice/events/more"),
        ("POST", "/spawner/v1/labs/alice/create/again"),
        ("GET", "/spawner/v1/lab-form/alice/extra"),
    ],
)
async def test_unknown_sub_paths_are_not_found(
    client: httpx.AsyncClient, method: str, path: str
) -> None:
    for headers in (HUB, {}):
        response = await client.request(method, path, headers=headers)
        assert response.status_code == 404, (path, response.text)
        assert response.json()["detail"][0]["type"] == "not_found"


@pytest.mark.parametrize("username", ["a%2Fb", "alice%2Fevents", "alice%2Fhistory"])
async def test_an_encoded_slash_is_still_a_username(
    client: httpx.AsyncClient, username: str
) -> None:
    # Not alice's events or history: the path names one user, "alice/events".
    response = await client.get(f"/spawner/v1/labs/{username}", headers=HUB)
    assert response.status_code == 422
    assert response.json()["detail"][0]["type"] == "invalid_username"


async def test_without_a_raw_path_every_slash_is_literal(
    client: httpx.AsyncClient, stack: Stack
) -> None:
    # A server that gives no ``raw_path`` cannot tell "%2F" from "/": the
    # path is then alice's history, whatever order the routes are tried in.
    async def no_raw_path(scope: Scope, receive: Receive, send: Send) -> None:
        scope.pop("raw_path", None)
        await stack.app(scope, receive, send)

    await create(client)
    path = "/spawner/v1/labs/alice/history"
    expected = await client.get(path, headers=HUB)
    assert expected.status_code == 200, expected.text
    transport = httpx.ASGITransport(app=no_raw_path)
    async with httpx.AsyncClient(transport=transport, base_url="http://labd") as bare:
        response = await bare.get(path, headers=HUB)
    assert (response.status_code, response.json()) == (200, expected.json())
