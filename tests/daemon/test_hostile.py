"""The hostile inputs of security issue 15, replayed against ``labd dev``.

One ``labd dev`` process, as a newcomer starts it, with the hub's token and
a ``user:alice`` token.  Every request below once produced a 500, a secret
in SQL or in the log, or an identity or quota of the user's own choosing.
Now: no 5xx at all, no secret value anywhere in the database or the log,
and alice's lab runs as the operator configured.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from labd.api import hash_token
from labd.daemon.dev import sample_config
from tests.support.dev import running_labd_dev, write_dev_config
from tests.support.processes import free_port
from tests.support.usernames import LOOKALIKES

HUB_TOKEN = "hostile-test-hub-token-7f3a"
ALICE_TOKEN = "hostile-test-alice-token-91c2"
SECRETS = {
    "JUPYTERHUB_API_TOKEN": "secret-hub-api-token-1",
    "api_key": "secret-api-key-2",
    "ACCESS_KEY": "secret-access-key-3",
    "DB_PASS": "secret-db-pass-4",
    "COOKIE": "secret-cookie-5",
    "credentials": "secret-credentials-6",
    "passwd": "secret-passwd-7",
    "github_token": "secret-github-token-8",
}


@dataclass(frozen=True)
class Dev:
    url: str
    state_dir: Path
    log: Path

    def client(self, token: str) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {token}"}, timeout=30
        )


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dev]:
    state_dir = tmp_path_factory.mktemp("hostile")
    port = free_port()
    config = sample_config(state_dir, port)
    config["timeouts"] = {"spawn": 30, "delete": 30}
    config["lab"] = {"pod_delete_grace": 0}
    config["users"] = {"entries": {"alice": {"uid": 1101, "gid": 1101}}}
    write_dev_config(state_dir, config)
    (state_dir / "hub-token").write_text(HUB_TOKEN + "\n")
    (state_dir / "tokens").write_text(
        f"{hash_token(HUB_TOKEN)} hub\n{hash_token(ALICE_TOKEN)} user:alice\n"
    )
    with running_labd_dev(state_dir, port=port, pod_start_delay=0.3) as url:
        yield Dev(url=url, state_dir=state_dir, log=state_dir / "labd.log")


def create_body(username: str, **env: str) -> dict[str, object]:
    return {
        "options": {"image_class": "recommended", "size": "medium"},
        "env": {"JUPYTERHUB_SERVICE_PREFIX": f"/user/{quote(username, safe='')}/", **env},
    }


def wait_status(client: httpx.Client, username: str, *statuses: str | None) -> None:
    deadline = time.monotonic() + 30
    while True:
        response = client.get(f"/spawner/v1/labs/{quote(username, safe='')}")
        assert response.status_code < 500, response.text
        status = response.json()["status"] if response.status_code == 200 else None
        if status in statuses:
            return
        assert time.monotonic() < deadline, f"{username}: {status}"
        time.sleep(0.1)


def test_hostile_inputs_get_clear_errors_and_leave_no_secret(dev: Dev) -> None:
    answers: list[httpx.Response] = []
    with dev.client(HUB_TOKEN) as hub, dev.client(ALICE_TOKEN) as alice:
        # 1. A user token cannot choose identity or quota.
        root = {
            "uid": 1000,
            "gid": 1000,
            "groups": [{"name": "root", "id": 0}, {"name": "docker", "id": 999}],
            "quota": {"cpu": 100, "memory": 10**15},
        }
        response = alice.post(
            "/spawner/v1/labs/alice/create", json={**create_body("alice"), "user": root}
        )
        answers.append(response)
        assert response.status_code == 403
        # 6. What reaches the pod and the internal URL is checked.
        for env in (
            {"JUPYTERHUB_SERVICE_PREFIX": "@evil.example:80/steal/"},
            {"": "x"},
            {"BAD KEY=1": "x"},
            {"LD_PRELOAD": "/tmp/x.so"},
        ):
            body = create_body("alice")
            body["env"] = {**body["env"], **env}  # type: ignore[dict-item]
            response = alice.post("/spawner/v1/labs/alice/create", json=body)
            answers.append(response)
            assert response.status_code == 422, env
        # 5. A header past 16 KiB is refused.
        response = hub.get("/spawner/v1/labs", headers={"X-Big": "a" * 60_000})
        answers.append(response)
        assert response.status_code == 431
        # alice's own spawn: the configured identity, secrets kept out of SQL.
        response = alice.post(
            "/spawner/v1/labs/alice/create",
            json=create_body("alice", **SECRETS),
            headers={"Host": "evil.example"},
        )
        answers.append(response)
        assert response.status_code == 201, response.text
        assert response.headers["location"] == "/spawner/v1/labs/alice"
        wait_status(hub, "alice", "running")
        state = hub.get("/spawner/v1/labs/alice").json()
        assert (state["user"]["uid"], state["user"]["gid"], state["user"]["groups"]) == (
            1101,
            1101,
            [],
        )
        # 2. A delete right after a create leaves no token behind.
        response = hub.post("/spawner/v1/labs/bob/create", json=create_body("bob", **SECRETS))
        answers.append(response)
        answers.append(hub.delete("/spawner/v1/labs/bob"))
        assert answers[-1].status_code == 204
        # 4. Usernames of any script: created, reported, deleted; no 500.
        for username in LOOKALIKES:
            path = f"/spawner/v1/labs/{quote(username, safe='')}"
            response = hub.post(f"{path}/create", json=create_body(username))
            answers.append(response)
            assert response.status_code == 201, (username, response.text)
            assert response.headers["location"] == path
            wait_status(hub, username, "running")
            answers.append(hub.delete(path))
            assert answers[-1].status_code == 204
        answers.append(hub.delete("/spawner/v1/labs/alice"))
    assert [r.status_code for r in answers if r.status_code >= 500] == []

    # No secret value anywhere in the database (every table, every column)...
    with sqlite3.connect(dev.state_dir / "labd.db") as db:
        rows = [
            json.dumps(row, default=str)
            for table in ("labs", "lab_transitions", "lab_events")
            for row in db.execute(f"SELECT * FROM {table}")
        ]
    dump = "\n".join(rows)
    assert rows
    # ...nor in labd's log, nor the tokens.
    log = dev.log.read_text(errors="replace")
    for value in [*SECRETS.values(), HUB_TOKEN, ALICE_TOKEN]:
        assert value not in dump, value
        assert value not in log, value
