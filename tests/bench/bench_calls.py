"""Count Kubernetes API calls per spawn, delete, status read and reconcile.

labd runs in-process against the simulated cluster (SQLite in a temporary
directory, zero pod start delay); the simulated cluster counts every request
labd makes (its own kubelet's requests are counted apart and left out).
Watch requests are counted when they open, not per event.

Run::

    .venv/bin/python tests/bench/bench_calls.py [--labs 50]

It prints a table and writes ``bench-results/calls.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from labd.config import Config
from labd.daemon.factory import Labd
from labd.db.database import Database
from labd.db.migrate import upgrade
from labd.lab.machine import LabState
from labd.lab.protocol import LabSpecification
from labd.lab.records import Actor
from labd.sim import SimCluster

SPEC = LabSpecification.model_validate(
    {
        "options": {"image_class": "recommended", "size": "small"},
        "env": {"JUPYTERHUB_SERVICE_PREFIX": "/user/x/", "JUPYTERHUB_API_TOKEN": "t"},
    }
)


async def wait_until(labd: Labd, usernames: list[str], state: LabState | None) -> None:
    while True:
        labs = {lab.username: lab.state for lab in await labd.store.list_labs()}
        current = [labs.get(name) for name in usernames]
        if state is None and all(s in (None, LabState.DELETED) for s in current):
            return
        if all(s is state for s in current):
            return
        await asyncio.sleep(0.05)


def per(counter: Counter[str], n: int) -> dict[str, float]:
    return {key: round(value / n, 2) for key, value in sorted(counter.items())}


async def measure(labs: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite+aiosqlite:///{Path(tmp) / 'labd.db'}"
        database = Database(url)
        await upgrade(database)
        await database.dispose()
        async with SimCluster(pod_start_delay=0.0) as sim:
            config = Config.model_validate(
                {
                    "database_url": url,
                    "kubernetes": {"kubeconfig": str(sim.write_kubeconfig(Path(tmp) / "kc"))},
                    "reconcile_interval": 3600,
                    "lab": {"pod_delete_grace": 0},
                }
            )
            labd = await Labd.create(config)
            await labd.start()
            try:
                names = [f"user{i}" for i in range(labs)]
                await asyncio.sleep(0.5)
                sim.stats.reset()
                start = time.perf_counter()
                for name in names:
                    await labd.service.create(name, SPEC, actor=Actor.HUB)
                await wait_until(labd, names, LabState.RUNNING)
                spawn_seconds = time.perf_counter() - start
                spawn = Counter(sim.stats.requests)

                sim.stats.reset()
                for name in names:
                    await labd.service.get_state(name)
                status = Counter(sim.stats.requests)

                sim.stats.reset()
                report = await labd.reconciler.reconcile()
                reconcile = Counter(sim.stats.requests)

                sim.stats.reset()
                await asyncio.gather(*(labd.service.delete(n, actor=Actor.HUB) for n in names))
                delete = Counter(sim.stats.requests)
            finally:
                await labd.stop()
    return {
        "labs": labs,
        "spawn_seconds": round(spawn_seconds, 2),
        "per_spawn": per(spawn, labs),
        "per_spawn_total": round(sum(spawn.values()) / labs, 2),
        "per_status_read_total": round(sum(status.values()) / labs, 2),
        "per_delete": per(delete, labs),
        "per_delete_total": round(sum(delete.values()) / labs, 2),
        "reconcile": dict(sorted(reconcile.items())),
        "reconcile_total": sum(reconcile.values()),
        "reconcile_seconds": round(report.seconds, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--labs", type=int, default=50)
    parser.add_argument("--output", type=Path, default=Path("bench-results/calls.json"))
    args = parser.parse_args()
    result = asyncio.run(measure(args.labs))
    for key in ("per_spawn", "per_delete"):
        print(f"{key} ({result[key + '_total']} in all):")
        for call, count in result[key].items():
            print(f"  {call:<36}{count:>8}")
    print(f"per status read: {result['per_status_read_total']}")
    print(
        f"reconcile of {args.labs} labs: {result['reconcile']} in {result['reconcile_seconds']} s"
    )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
