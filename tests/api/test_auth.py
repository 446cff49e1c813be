"""Tokens: the token file, 401 and 403 on every route, and the check order."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog

from labd.api import Authenticator, Caller, TokenFileError, hash_token
from labd.api.auth import RECHECK_INTERVAL
from labd.lab.errors import InvalidTokenError
from tests.support.api import ALICE, ALICE_TOKEN, BOB, HUB, HUB_TOKEN, spawn_body

ROUTES = [
    ("GET", "/spawner/v1/labs"),
    ("GET", "/spawner/v1/labs/alice"),
    ("DELETE", "/spawner/v1/labs/alice"),
    ("POST", "/spawner/v1/labs/alice/create"),
    ("GET", "/spawner/v1/labs/alice/events"),
    ("GET", "/spawner/v1/labs/alice/history"),
    ("GET", "/spawner/v1/user-status"),
    ("GET", "/spawner/v1/lab-form/alice"),
]
HUB_ONLY = {
    ("GET", "/spawner/v1/labs"),
    ("GET", "/spawner/v1/labs/alice"),
    ("DELETE", "/spawner/v1/labs/alice"),
    ("GET", "/spawner/v1/labs/alice/history"),
}


def test_token_file(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(
        "# labd tokens\n"
        f"{hash_token('hub-token')} hub\n"
        "\n"
        f"  {hash_token('alice-token').upper()}   user:Alice.B@example.org  \n"
    )
    authenticator = Authenticator.from_file(path)
    assert authenticator.authenticate("Bearer hub-token") == Caller(username=None)
    assert authenticator.authenticate("bearer  alice-token") == Caller(
        username="Alice.B@example.org"
    )
    with pytest.raises(InvalidTokenError):
        authenticator.authenticate(f"Bearer {hash_token('hub-token')}")


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("abc hub", "line 2: the first field is not a SHA-256 hex digest"),
        (f"{hash_token('t')}", "line 2: expected '<sha256-hex> <role>'"),
        (f"{hash_token('t')} hub extra", "line 2: expected '<sha256-hex> <role>'"),
        (f"{hash_token('t')} admin", "line 2: unknown role \\(use 'hub'"),
        (f"{hash_token('t')} user:", "line 2: invalid username in role: Username is empty"),
        (f"{hash_token('t')} user:a/b", "line 2: invalid username in role"),
    ],
)
def test_malformed_token_file(tmp_path: Path, line: str, problem: str) -> None:
    path = tmp_path / "tokens"
    path.write_text(f"# first\n{line}\n")
    with pytest.raises(TokenFileError, match=problem):
        Authenticator.from_file(path)


def test_unreadable_token_file(tmp_path: Path) -> None:
    with pytest.raises(TokenFileError, match="cannot read"):
        Authenticator.from_file(tmp_path / "missing")


def test_no_token_file_accepts_nothing() -> None:
    with pytest.raises(InvalidTokenError):
        Authenticator.from_file(None).authenticate("Bearer anything")


# Reloading the token file while labd runs


def _accepts(authenticator: Authenticator, token: str) -> bool:
    try:
        authenticator.authenticate(f"Bearer {token}")
    except InvalidTokenError:
        return False
    return True


def _write(path: Path, *lines: str) -> None:
    path.write_text("".join(line + "\n" for line in lines))


def test_reload_reads_the_changed_token_file(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    _write(path, f"{hash_token('hub-token')} hub")
    authenticator = Authenticator.from_file(path, recheck_interval=3600)
    _write(path, f"{hash_token('hub-token')} hub", f"{hash_token('alice-token')} user:alice")
    assert not _accepts(authenticator, "alice-token")  # Not checked before the interval.
    with structlog.testing.capture_logs() as logs:
        assert authenticator.reload()  # SIGHUP.
    assert authenticator.authenticate("Bearer alice-token") == Caller(username="alice")
    assert _accepts(authenticator, "hub-token")
    assert logs == [
        {"event": "token file reloaded", "log_level": "info", "path": str(path), "tokens": 2}
    ]


def test_a_changed_token_file_is_noticed_without_a_signal(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    _write(path, f"{hash_token('hub-token')} hub")
    authenticator = Authenticator.from_file(path, recheck_interval=0)
    _write(path, f"{hash_token('alice-token')} user:alice")  # Edited in place...
    assert _accepts(authenticator, "alice-token")
    assert not _accepts(authenticator, "hub-token")  # ...revoking the hub's token.
    replacement = tmp_path / "tokens.new"
    _write(replacement, f"{hash_token('bob-token')} user:bob", "# replaced by a rename")
    replacement.rename(path)
    assert _accepts(authenticator, "bob-token")
    assert not _accepts(authenticator, "alice-token")


def test_the_file_is_checked_at_most_once_per_interval(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "tokens"
    _write(path, f"{hash_token('hub-token')} hub")
    authenticator = Authenticator.from_file(path)
    stats: list[object] = []
    real_stat = os.stat

    def counting_stat(path: object, *args: Any, **kwargs: Any) -> os.stat_result:
        stats.append(path)
        return real_stat(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "stat", counting_stat)
    for _ in range(1000):
        assert _accepts(authenticator, "hub-token")
    assert stats == []  # No file access on the hot path within RECHECK_INTERVAL.
    assert RECHECK_INTERVAL <= 2


@pytest.mark.parametrize(
    ("lines", "problem"),
    [
        ((f"{hash_token('alice-token')} user:alice", f"{hash_token('x')} admin"), ", line 3: "),
        ((f"{hash_token('alice-token')} user:alice", "alice-token user:alice"), ", line 3: "),
        ((), ": cannot read the token file"),
    ],
)
def test_an_unusable_new_file_keeps_the_tokens_in_force(
    tmp_path: Path, lines: tuple[str, ...], problem: str
) -> None:
    path = tmp_path / "tokens"
    _write(path, f"{hash_token('hub-token')} hub")
    authenticator = Authenticator.from_file(path, recheck_interval=0)
    if lines:
        _write(path, f"{hash_token('hub-token')} hub", *lines)
    else:
        path.unlink()
    with structlog.testing.capture_logs() as logs:
        for _ in range(3):
            assert _accepts(authenticator, "hub-token")
            assert not _accepts(authenticator, "alice-token")
        assert not authenticator.reload()
    # Logged once when noticed and once for the explicit reload; never a secret.
    assert [log["event"] for log in logs] == [
        "token file not reloaded, the previous tokens stay valid"
    ] * 2
    assert logs[0]["log_level"] == "error"
    assert logs[0]["error"].startswith(f"{path}{problem}")
    for secret in ("alice-token", hash_token("alice-token"), hash_token("x"), "hub-token"):
        assert secret not in repr(logs)
    # Once fixed, the file is read again.
    _write(path, f"{hash_token('alice-token')} user:alice")
    assert _accepts(authenticator, "alice-token")


@pytest.mark.parametrize(("method", "path"), ROUTES)
async def test_missing_or_wrong_token(client: httpx.AsyncClient, method: str, path: str) -> None:
    for headers in [
        {},
        {"Authorization": "Bearer wrong-token"},
        {"Authorization": f"Basic {HUB_TOKEN}"},
        {"Authorization": "Bearer "},
        {"Authorization": HUB_TOKEN},
    ]:
        response = await client.request(method, path, headers=headers, json=spawn_body())
        assert response.status_code == 401, headers
        assert response.headers["www-authenticate"] == "Bearer"
        (error,) = response.json()["detail"]
        assert error["type"] == "invalid_token"
        assert "loc" not in error


@pytest.mark.parametrize(("method", "path"), ROUTES)
async def test_other_users_token(client: httpx.AsyncClient, method: str, path: str) -> None:
    response = await client.request(method, path, headers=BOB, json=spawn_body())
    if path.endswith("user-status"):
        assert response.status_code == 404  # Bob's own status: he has no lab.
        return
    assert response.status_code == 403
    assert response.json()["detail"][0]["type"] == "permission_denied"


@pytest.mark.parametrize(("method", "path"), sorted(HUB_ONLY))
async def test_user_token_on_hub_routes(client: httpx.AsyncClient, method: str, path: str) -> None:
    response = await client.request(method, path, headers=ALICE)
    assert response.status_code == 403
    assert response.json()["detail"][0]["type"] == "permission_denied"


async def test_user_token_on_own_routes(client: httpx.AsyncClient) -> None:
    assert (await client.get("/spawner/v1/lab-form/alice", headers=ALICE)).status_code == 200
    created = await client.post("/spawner/v1/labs/alice/create", json=spawn_body(), headers=ALICE)
    assert created.status_code == 201
    assert (await client.get("/spawner/v1/user-status", headers=ALICE)).status_code == 200


async def test_check_order(client: httpx.AsyncClient) -> None:
    bad = "/spawner/v1/labs/a%20b/create"
    assert (await client.post(bad, json=spawn_body())).status_code == 401
    assert (await client.post(bad, json=spawn_body(), headers=ALICE)).status_code == 403
    assert (await client.post(bad, json=spawn_body(), headers=HUB)).status_code == 422
    # A bad token does not get to learn whether the body is valid.
    assert (await client.post("/spawner/v1/labs/alice/create", content=b"{")).status_code == 401


async def test_public_routes_need_no_token(client: httpx.AsyncClient) -> None:
    for path in ("/healthz", "/readyz", "/openapi.json"):
        assert (await client.get(path)).status_code == 200


async def test_tokens_never_logged(client: httpx.AsyncClient) -> None:
    with structlog.testing.capture_logs() as logs:
        await client.get("/spawner/v1/labs", headers={"Authorization": "Bearer wrong-secret"})
        await client.post("/spawner/v1/labs/alice/create", json=spawn_body(), headers=ALICE)
    text = repr(logs)
    for secret in ("wrong-secret", ALICE_TOKEN, hash_token(ALICE_TOKEN), "lab-token"):
        assert secret not in text
