"""The README tells the truth: its state diagram and its SQL examples."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from sqlalchemy import text

from labd.db.database import Database
from labd.db.store import LabStore
from labd.lab.machine import LabState, Trigger, mermaid_diagram
from labd.lab.progress import Step
from labd.lab.records import Actor, NewEvent
from labd.lab.spec import LabSpec

README = Path(__file__).resolve().parent.parent / "README.md"


def readme() -> str:
    return README.read_text()


def test_state_diagram_is_generated_from_the_machine() -> None:
    match = re.search(
        r"<!-- state-diagram:start -->\n```mermaid\n(.*?)```\n<!-- state-diagram:end -->",
        readme(),
        re.S,
    )
    assert match, "README lost its state diagram markers"
    assert match.group(1) == mermaid_diagram(), (
        "README's state diagram is stale: replace it with `python -m labd.lab.machine`"
    )


def sql_examples() -> list[tuple[str | None, str]]:
    """Return (dialect or None for both, query) for each ```sql block."""
    examples = []
    for block in re.findall(r"```sql\n(.*?)```", readme(), re.S):
        first = block.splitlines()[0].strip()
        dialect = first.removeprefix("-- ") if first in ("-- sqlite", "-- postgresql") else None
        examples.append((dialect, block))
    return examples


def test_readme_has_sql_examples() -> None:
    dialects = [dialect for dialect, _ in sql_examples()]
    assert dialects.count(None) >= 4
    assert "sqlite" in dialects
    assert "postgresql" in dialects


async def _history(store: LabStore) -> None:
    """Labs that ran, failed, were deleted and cleaned up."""
    for name, path in [
        ("alice", [Trigger.START, Trigger.OBJECTS_READY, Trigger.POD_RUNNING, Trigger.DELETE]),
        ("bob", [Trigger.START, Trigger.FAIL, Trigger.CLEANUP, Trigger.DELETED]),
        ("carol", [Trigger.START, Trigger.OBJECTS_READY, Trigger.POD_RUNNING]),
    ]:
        lab = await store.create_lab(
            username=name, slug=name, namespace=f"labd-{name}", spec=LabSpec(), actor=Actor.HUB
        )
        for trigger in path:
            lab = await store.transition(lab.id, trigger, actor=Actor.SCHEDULER, reason="test")
    dave = await store.create_lab(
        username="dave", slug="dave", namespace="labd-dave", spec=LabSpec(), actor=Actor.HUB
    )
    await store.update(dave.id, {"attempts": 2, "last_error": "create Pod: 500"})
    # alice's delete has asked her pod to stop, and waits for it.
    alice = await store.get_current_lab("alice")
    assert alice is not None
    await store.add_events(alice.id, [NewEvent.at(Step.POD_STOPPING, "alice")])


@pytest.mark.parametrize(("index", "example"), list(enumerate(sql_examples())))
async def test_sql_example_runs(
    database: Database, index: int, example: tuple[str | None, str]
) -> None:
    dialect, query = example
    if dialect is not None and dialect != database.dialect:
        pytest.skip(f"example {index} is for {dialect}")
    await _history(LabStore(database))
    async with database.read() as conn:
        rows = (await conn.execute(text(query))).all()
    assert rows, f"example {index} returned nothing:\n{query}"
    if "EXTRACT" in query or "julianday" in query:
        assert {row.username for row in rows} == {"alice", "carol"}
        assert all(row.seconds >= 0 for row in rows)
    if "to_state = 'failed'" in query:
        assert [row.failures for row in rows] == [1]
    assert LabState.DELETED.value in readme()
