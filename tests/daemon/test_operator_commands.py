"""``labd labs`` and ``labd history`` on a database filled through the store.

Each test runs on SQLite and PostgreSQL.  The commands run through click's
runner in this process, so they are sync tests: the commands call
`asyncio.run` themselves.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner, Result

from labd.cli.main import main
from labd.db.database import Database
from labd.db.migrate import downgrade, head_revision
from labd.db.store import LabStore
from labd.lab.machine import Trigger
from labd.lab.records import Actor
from labd.lab.spec import LabSpec

IMAGE = "registry.example/sciplat/lab:w_2026_47"
LONG_ERROR = "Kubernetes said: " + "quota exceeded for resource requests.memory " * 4


@dataclass(frozen=True)
class Labs:
    """Ids of the labs `_fill` created."""

    alice: str
    """Running."""

    bob: str
    """Failed with a long error."""

    carol_old: str
    """Deleted."""

    carol: str
    """Requested (carol's second lab)."""


async def _fill(url: str) -> Labs:
    database = Database(url)
    store = LabStore(database)
    try:

        async def create(username: str) -> str:
            lab = await store.create_lab(
                username=username,
                slug=username,
                namespace=f"labd-{username}",
                spec=LabSpec.from_row({"options": {"image": IMAGE, "size": "small"}}),
                actor=Actor.HUB,
            )
            return lab.id

        alice = await create("alice")
        for trigger in (Trigger.START, Trigger.OBJECTS_READY, Trigger.POD_RUNNING):
            await store.transition(alice, trigger, actor=Actor.SCHEDULER)
        bob = await create("bob")
        await store.transition(bob, Trigger.START, actor=Actor.SCHEDULER)
        await store.transition(
            bob,
            Trigger.FAIL,
            actor=Actor.SCHEDULER,
            reason="quota exceeded",
            changes={"last_error": LONG_ERROR},
        )
        carol_old = await create("carol")
        await store.transition(
            carol_old, Trigger.DELETE, actor=Actor.OPERATOR, reason="disk full on node"
        )
        await store.transition(carol_old, Trigger.DELETED, actor=Actor.SCHEDULER)
        carol = await create("carol")
        return Labs(alice=alice, bob=bob, carol_old=carol_old, carol=carol)
    finally:
        await database.dispose()


@pytest.fixture
def labs(database_url: str) -> Labs:
    """Three users' labs in several states."""
    return asyncio.run(_fill(database_url))


@pytest.fixture
def config_file(tmp_path: Path, database_url: str) -> Path:
    """A settings file naming the test database."""
    path = tmp_path / "labd.yaml"
    path.write_text(yaml.safe_dump({"database_url": database_url}))
    return path


def _run(*args: str, env: dict[str, str] | None = None) -> Result:
    # LABD_* variables of the developer's shell must not leak in.
    clean: dict[str, str | None] = {"LABD_CONFIG": None, "LABD_DATABASE_URL": None}
    clean.update(env or {})
    return CliRunner().invoke(main, list(args), env=clean, catch_exceptions=False)


def _rows(output: str) -> list[list[str]]:
    return [line.split() for line in output.splitlines()[1:]]


def test_labs_shows_current_labs(labs: Labs, config_file: Path) -> None:
    result = _run("labs", "--config", str(config_file))

    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["USER", "STATE", "STATUS", "AGE", "IMAGE", "LAST", "ERROR"]
    rows = _rows(result.output)
    assert [row[:3] for row in rows] == [
        ["alice", "running", "running"],
        ["bob", "failed", "failed"],
        ["carol", "requested", "pending"],
    ]
    assert all(row[4] == IMAGE for row in rows)
    assert all(row[3].endswith("s") for row in rows), rows  # Created seconds ago.
    bob_line = lines[2]
    assert "Kubernetes said: quota exceeded" in bob_line
    assert bob_line.endswith("…")
    assert LONG_ERROR.strip() not in bob_line


def test_labs_all_includes_deleted_labs(labs: Labs, database_url: str) -> None:
    result = _run("labs", "--all", env={"LABD_DATABASE_URL": database_url})

    assert result.exit_code == 0, result.output
    assert sorted(row[1] for row in _rows(result.output) if row[0] == "carol") == [
        "deleted",
        "requested",
    ]
    deleted = next(row for row in _rows(result.output) if row[1] == "deleted")
    assert deleted[2] == "-"  # No API status: the API answers 404.


def test_labs_filters_by_state(labs: Labs, config_file: Path) -> None:
    result = _run("labs", "--config", str(config_file), "--state", "failed", "--state", "deleted")

    assert result.exit_code == 0, result.output
    assert [row[:2] for row in _rows(result.output)] == [
        ["bob", "failed"],
        ["carol", "deleted"],
    ]


def test_labs_on_an_empty_database(config_file: Path) -> None:
    result = _run("labs", "--config", str(config_file))

    assert result.exit_code == 0
    assert result.output == "No labs.\n"


def test_labs_usage_errors_exit_2(config_file: Path) -> None:
    both = _run("labs", "--config", str(config_file), "--all", "--state", "running")
    unknown = _run("labs", "--config", str(config_file), "--state", "sleeping")

    assert both.exit_code == 2
    assert "--state and --all exclude each other" in both.output
    assert unknown.exit_code == 2
    assert "'sleeping' is not one of" in unknown.output


def test_bad_configuration_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "labd.yaml"
    path.write_text(yaml.safe_dump({"database_url": "mysql://labd@db/labd"}))

    for command in (["labs"], ["history", "alice"]):
        result = _run(*command, "--config", str(path))
        assert result.exit_code == 2, result.output
        assert "database_url" in result.output


def test_history_newest_first(labs: Labs, config_file: Path) -> None:
    result = _run("history", "carol", "--config", str(config_file))

    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["TIME", "LAB", "TRANSITION", "TRIGGER", "ACTOR", "REASON"]
    rows = [line.split(maxsplit=7) for line in lines[1:]]
    # date, time, lab, from, ->, to, trigger, actor [reason]
    assert [(row[2], row[3], row[5], row[6]) for row in rows] == [
        (labs.carol[:8], "new", "requested", "request"),
        (labs.carol_old[:8], "deleting", "deleted", "deleted"),
        (labs.carol_old[:8], "requested", "deleting", "delete"),
        (labs.carol_old[:8], "new", "requested", "request"),
    ]
    assert rows[2][7].split(maxsplit=1) == ["operator", "disk full on node"]


def test_history_limit_and_json(labs: Labs, config_file: Path) -> None:
    result = _run("history", "alice", "--config", str(config_file), "--limit", "2", "--json")

    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [(row["from"], row["to"], row["version"]) for row in rows] == [
        ("starting", "running", 4),
        ("creating", "starting", 3),
    ]
    assert {row["lab_id"] for row in rows} == {labs.alice}
    assert rows[0]["actor"] == "scheduler"
    assert rows[0]["time"].endswith("+00:00")


def test_history_of_an_unknown_user_exits_1(labs: Labs, config_file: Path) -> None:
    plain = _run("history", "nobody", "--config", str(config_file))
    as_json = _run("history", "nobody", "--config", str(config_file), "--json")

    assert plain.exit_code == 1
    assert plain.stdout == ""
    assert "no history for user 'nobody'" in plain.stderr
    assert as_json.exit_code == 1
    assert json.loads(as_json.stdout) == []


def test_history_rejects_a_zero_limit(config_file: Path) -> None:
    result = _run("history", "alice", "--config", str(config_file), "--limit", "0")

    assert result.exit_code == 2


def test_schema_not_current_exits_3(config_file: Path, database_url: str) -> None:
    async def go_back() -> None:
        database = Database(database_url)
        try:
            await downgrade(database, "base")
        finally:
            await database.dispose()

    asyncio.run(go_back())
    try:
        for command in (["labs"], ["history", "alice"]):
            result = _run(*command, "--config", str(config_file))
            assert result.exit_code == 3, result.output
            assert f"this labd needs revision {head_revision()}" in result.stderr
            assert "run `labd migrate` first" in result.stderr
    finally:
        assert _run("migrate", "--config", str(config_file)).exit_code == 0


def test_missing_sqlite_file_is_not_created(tmp_path: Path) -> None:
    path = tmp_path / "typo.db"

    result = _run("labs", env={"LABD_DATABASE_URL": f"sqlite+aiosqlite:///{path}"})

    assert result.exit_code == 3
    assert f"there is no database at {path}" in result.stderr
    assert not path.exists()


def test_unreachable_database_exits_4() -> None:
    # Port 1 on the loopback interface: nothing listens there.
    url = "postgresql+asyncpg://labd:hunter2@127.0.0.1:1/labd"

    result = _run("labs", env={"LABD_DATABASE_URL": url})

    assert result.exit_code == 4, result.output
    assert "cannot read the database postgresql+asyncpg://labd:***@127.0.0.1:1/labd" in (
        result.stderr
    )
    assert "hunter2" not in result.output
