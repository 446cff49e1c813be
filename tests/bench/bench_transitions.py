"""Benchmark: persisted lab transitions per second, on SQLite and PostgreSQL.

Each transition is one write transaction: lock the lab row, ask the state
machine, update the row, append the audit row.  Labs are driven through the
full life (request, start, objects_ready, pod_running, delete, deleted: six
transitions) by concurrent workers, each lab by one worker at a time, as the
scheduler does.

Run::

    .venv/bin/python tests/bench/bench_transitions.py [--labs 500] [--workers 1,16]

It prints a table and writes ``bench-results/transitions.json``.  PostgreSQL
is the server on 127.0.0.1:5432 (``LABD_TEST_POSTGRES_URL`` to change); a
throw-away database is created and dropped.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy.engine import make_url

from labd.db.database import Database
from labd.db.migrate import upgrade
from labd.db.store import LabStore
from labd.lab.machine import Trigger
from labd.lab.records import Actor
from labd.lab.spec import LabSpec

LIFE = [Trigger.START, Trigger.OBJECTS_READY, Trigger.POD_RUNNING, Trigger.DELETE, Trigger.DELETED]
ADMIN_URL = os.environ.get(
    "LABD_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
)


async def run_one(url: str, labs: int, workers: int) -> dict[str, Any]:
    database = Database(url, pool_size=max(workers, 5))
    await upgrade(database)
    store = LabStore(database)
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(labs):
        queue.put_nowait(i)
    prefix = f"w{workers}-"

    async def worker() -> int:
        done = 0
        while not queue.empty():
            i = queue.get_nowait()
            name = f"{prefix}{i}"
            lab = await store.create_lab(
                username=name, slug=name, namespace=f"labd-{name}", spec=LabSpec(), actor=Actor.HUB
            )
            for trigger in LIFE:
                lab = await store.transition(lab.id, trigger, actor=Actor.SCHEDULER, expected=lab)
            done += 1 + len(LIFE)
        return done

    start = time.perf_counter()
    counts = await asyncio.gather(*(worker() for _ in range(workers)))
    elapsed = time.perf_counter() - start
    await database.dispose()
    total = sum(counts)
    return {
        "labs": labs,
        "workers": workers,
        "transitions": total,
        "seconds": round(elapsed, 3),
        "transitions_per_second": round(total / elapsed, 1),
    }


async def with_postgres(labs: int, workers: list[int]) -> list[dict[str, Any]]:
    dsn = make_url(ADMIN_URL).set(drivername="postgresql").render_as_string(False)
    name = f"labd_bench_{os.getpid()}"
    admin = await asyncpg.connect(dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        url = make_url(ADMIN_URL).set(database=name).render_as_string(False)
        return [await run_one(url, labs, w) for w in workers]
    finally:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()


async def with_sqlite(labs: int, workers: list[int]) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite+aiosqlite:///{Path(tmp) / 'bench.db'}"
        return [await run_one(url, labs, w) for w in workers]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--labs", type=int, default=500, help="labs per run")
    parser.add_argument("--workers", default="1,16", help="comma-separated concurrency levels")
    parser.add_argument("--output", type=Path, default=Path("bench-results/transitions.json"))
    args = parser.parse_args()
    workers = [int(w) for w in args.workers.split(",")]
    results = {
        "sqlite": asyncio.run(with_sqlite(args.labs, workers)),
        "postgresql": asyncio.run(with_postgres(args.labs, workers)),
    }
    print(f"{'backend':<12}{'workers':>8}{'transitions':>13}{'seconds':>9}{'per second':>12}")
    for backend, runs in results.items():
        for run in runs:
            print(
                f"{backend:<12}{run['workers']:>8}{run['transitions']:>13}"
                f"{run['seconds']:>9}{run['transitions_per_second']:>12}"
            )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    report = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version()}, **results}
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
