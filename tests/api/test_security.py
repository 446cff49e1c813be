"""What a hostile caller cannot do through the API (docs/security.md).

A user's own token never chooses identity or quota; what reaches the pod's
environment and the lab's internal URL is checked; every legal username is
answered without a 500, with a ``Location`` that no ``Host`` header steers.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx
import pytest

from labd.db.database import Database
from labd.lab.naming import lab_namespace
from tests.support.api import ALICE, HUB, Stack, build_stack, make_config, spawn_body
from tests.support.usernames import LOOKALIKES

USERS = {
    "default": {"quota": {"cpu": 2, "memory": "8Gi"}},
    "entries": {
        "alice": {
            "name": "Alice",
            "uid": 1101,
            "gid": 1101,
            "groups": [{"name": "alice", "id": 1101}],
        },
        "carol": {"quota": {"spawn": False}},
    },
}


def body(
    *,
    size: str = "Medium",
    user: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
    **variables: str,
) -> dict[str, Any]:
    data = spawn_body(size=[size])
    data["env"].update(env or {}, **variables)
    if user is not None:
        data["user"] = user
    return data


def error_of(response: httpx.Response) -> dict[str, Any]:
    detail: list[dict[str, Any]] = response.json()["detail"]
    assert len(detail) == 1
    return detail[0]


@pytest.fixture
def stack(database: Database) -> Stack:
    return build_stack(database, make_config(users=USERS, lab={"env": {"SITE": "lab.example"}}))


ROOT_IDENTITY = {
    "uid": 1000,
    "gid": 1000,
    "groups": [{"name": "root", "id": 0}, {"name": "docker", "id": 999}],
    "quota": {"cpu": 100, "memory": 10**15, "spawn": True},
}


async def test_a_user_token_cannot_send_an_identity(
    client: httpx.AsyncClient, stack: Stack
) -> None:
    response = await client.post(
        "/spawner/v1/labs/alice/create", json=body(size="Large", user=ROOT_IDENTITY), headers=ALICE
    )
    assert response.status_code == 403
    assert error_of(response) == {
        "loc": ["body", "user"],
        "msg": "Only the hub may send a user's identity and quota",
        "type": "permission_denied",
    }
    assert await stack.store.get_current_lab("alice") is None


async def test_a_user_token_gets_the_configured_identity(
    client: httpx.AsyncClient, stack: Stack
) -> None:
    response = await client.post("/spawner/v1/labs/alice/create", json=body(), headers=ALICE)
    assert response.status_code == 201
    lab = await stack.store.get_current_lab("alice")
    assert lab is not None
    assert lab.spec.to_row()["user"] == {
        "username": "alice",
        "name": "Alice",
        "uid": 1101,
        "gid": 1101,
        "groups": [{"name": "alice", "id": 1101}],
    }
    # alice's entry has no quota: the default entry's applies.
    assert lab.spec.to_row()["quota"] == {"cpu": 2.0, "memory": 8 * 2**30, "spawn": True}


async def test_a_missing_quota_is_the_configured_default_never_no_limit(
    client: httpx.AsyncClient,
) -> None:
    refused = await client.post(
        "/spawner/v1/labs/alice/create", json=body(size="Large"), headers=ALICE
    )
    assert refused.status_code == 403
    assert error_of(refused)["type"] == "insufficient_quota"
    # The hub without `user`, or with a `user` but no quota: the same rule.
    for user in (None, {"uid": 2000, "gid": 2000}):
        response = await client.post(
            "/spawner/v1/labs/alice/create", json=body(size="Large", user=user), headers=HUB
        )
        assert response.status_code == 403, user
        assert error_of(response)["type"] == "insufficient_quota"


async def test_the_configured_quota_can_forbid_spawning(client: httpx.AsyncClient) -> None:
    response = await client.post("/spawner/v1/labs/carol/create", json=body(), headers=HUB)
    assert response.status_code == 403
    assert error_of(response)["type"] == "permission_denied"


async def test_the_hub_still_chooses_identity_and_quota(
    client: httpx.AsyncClient, stack: Stack
) -> None:
    response = await client.post(
        "/spawner/v1/labs/bob/create", json=body(size="Large", user=ROOT_IDENTITY), headers=HUB
    )
    assert response.status_code == 201
    lab = await stack.store.get_current_lab("bob")
    assert lab is not None
    assert lab.spec.to_row()["user"]["uid"] == 1000
    assert lab.spec.to_row()["quota"]["cpu"] == 100


async def test_the_form_offers_the_configured_quota(client: httpx.AsyncClient) -> None:
    form = (await client.get("/spawner/v1/lab-form/alice", headers=ALICE)).text
    assert 'value="medium"' in form
    assert 'value="large"' not in form


@pytest.mark.parametrize(
    "prefix",
    [
        "@evil.example:80/steal/",
        "//evil.example/steal/",
        "user/alice/",
        "/user/../hub/",
        "/user/alice/?next=x",
        "/user/alice/#x",
        "/user/al ice/",
        "/user/renée/",
        "",
    ],
)
async def test_the_service_prefix_must_be_a_path(client: httpx.AsyncClient, prefix: str) -> None:
    response = await client.post(
        "/spawner/v1/labs/alice/create",
        json=body(JUPYTERHUB_SERVICE_PREFIX=prefix),
        headers=HUB,
    )
    assert response.status_code == 422
    error = error_of(response)
    assert error["loc"] == ["body", "env"]
    assert "JUPYTERHUB_SERVICE_PREFIX" in error["msg"]


@pytest.mark.parametrize(
    ("name", "loc"),
    [
        ("", ["body", "env"]),
        ("BAD KEY=1", ["body", "env"]),
        ("1ABC", ["body", "env"]),
        ("LD_PRELOAD", ["body", "env", "LD_PRELOAD"]),
        ("HOME", ["body", "env", "HOME"]),
        ("JUPYTERHUB_USER", ["body", "env", "JUPYTERHUB_USER"]),
        ("MEM_LIMIT", ["body", "env", "MEM_LIMIT"]),
        ("SITE", ["body", "env", "SITE"]),
    ],
)
async def test_env_names_are_checked(
    client: httpx.AsyncClient, stack: Stack, name: str, loc: list[str]
) -> None:
    response = await client.post(
        "/spawner/v1/labs/alice/create", json=body(env={name: "x"}), headers=HUB
    )
    assert response.status_code == 422
    error = error_of(response)
    assert error["loc"] == loc
    assert error["type"] == "value_error"
    assert await stack.store.get_current_lab("alice") is None


async def test_non_ascii_usernames_work_end_to_end(
    client: httpx.AsyncClient, stack: Stack
) -> None:
    namespaces = set()
    for username in LOOKALIKES:
        path = f"/spawner/v1/labs/{quote(username, safe='')}"
        response = await client.post(
            f"{path}/create",
            json=body(JUPYTERHUB_SERVICE_PREFIX=f"/user/{quote(username, safe='')}/"),
            headers={**HUB, "Host": "evil.example"},
        )
        assert response.status_code == 201, username
        # Relative, percent-encoded, whatever the Host header said.
        assert response.headers["location"] == path
        status = await client.get(response.headers["location"], headers=HUB)
        assert status.status_code == 200
        assert status.json()["user"]["username"] == username
        namespaces.add(lab_namespace(stack.config.namespace_prefix, username)[1])
    assert len(namespaces) == len(LOOKALIKES)
    listing = (await client.get("/spawner/v1/labs", headers=HUB)).json()
    assert listing == []  # None running yet; the listing itself answers.


async def test_what_the_hub_copies_from_its_own_process_is_dropped(
    client: httpx.AsyncClient, stack: Stack
) -> None:
    """JupyterHub sends its own PATH (``env_keep``) and ``JUPYTERHUB_USER``: fine, not kept."""
    response = await client.post(
        "/spawner/v1/labs/alice/create",
        json=body(PATH="/opt/hub/bin", VIRTUAL_ENV="/opt/hub", JUPYTERHUB_USER="alice", LANG="C"),
        headers=HUB,
    )
    assert response.status_code == 201
    lab = await stack.store.get_current_lab("alice")
    assert lab is not None
    assert lab.spec.to_row()["env"] == {"JUPYTERHUB_SERVICE_PREFIX": "/user/alice/", "LANG": "C"}


async def test_jupyterhub_user_must_be_the_user(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/spawner/v1/labs/alice/create", json=body(JUPYTERHUB_USER="bob"), headers=ALICE
    )
    assert response.status_code == 422
    assert error_of(response)["loc"] == ["body", "env", "JUPYTERHUB_USER"]


@pytest.mark.parametrize(
    "user", [{"uid": 2**31}, {"gid": 2**31}, {"groups": [{"name": "g", "id": 2**31}]}]
)
async def test_ids_fit_kubernetes(client: httpx.AsyncClient, user: dict[str, Any]) -> None:
    """An id Kubernetes would refuse at spawn time is refused at once."""
    response = await client.post(
        "/spawner/v1/labs/alice/create", json=body(user=user), headers=HUB
    )
    assert response.status_code == 422
    assert error_of(response)["loc"][:2] == ["body", "user"]


@pytest.mark.parametrize(
    "username", ["a\u200db", "a\u200eb", "a\u202eb", "al ice", "a\tb", "a\u00adb"]
)
async def test_invisible_and_space_characters_are_refused(
    client: httpx.AsyncClient, username: str
) -> None:
    response = await client.post(
        f"/spawner/v1/labs/{quote(username, safe='')}/create", json=body(), headers=HUB
    )
    assert response.status_code == 422
    assert error_of(response)["type"] == "invalid_username"
