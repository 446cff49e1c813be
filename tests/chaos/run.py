"""Run the chaos suite for a while and print what it did and verified.

Run::

    .venv/bin/python tests/chaos/run.py --minutes 3 [--backend postgresql] [--users 24]
    .venv/bin/python tests/chaos/run.py --minutes 3 --replicas 3

On PostgreSQL (a throw-away database on the local server) the server is
restarted once in the middle of the run: other connections to it, such as
other test runs', are dropped then.  ``--replicas N`` (N > 1, PostgreSQL
only) runs the replica chaos of `tests.chaos.replicas`: N replicas behind
HAProxy.  Exit status 0 when every check passed.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.chaos.chaos import ChaosReport, run_chaos
from tests.chaos.replicas import run_replica_chaos
from tests.support.databases import scratch_database


async def main_async(
    backend: str, minutes: float, users: int, seed: int, replicas: int, log: Path | None
) -> ChaosReport:
    with tempfile.TemporaryDirectory() as tmp:
        try:
            async with scratch_database(backend, Path(tmp), "labd_chaos") as url:
                if replicas > 1:
                    return await run_replica_chaos(
                        database_url=url,
                        workdir=Path(tmp),
                        seconds=minutes * 60,
                        users=users,
                        replicas=replicas,
                        seed=seed,
                    )
                return await run_chaos(
                    database_url=url,
                    workdir=Path(tmp),
                    seconds=minutes * 60,
                    users=users,
                    seed=seed,
                    restart_postgres=backend == "postgresql",
                )
        finally:
            if log is not None:
                _keep_logs(Path(tmp), log)


def _keep_logs(directory: Path, log: Path) -> None:
    """Copy labd's log to ``log``; the replicas' ``labd-r0.log``... to ``<log>-r0``..."""
    for kept in sorted(directory.glob("labd*.log")):
        replica = kept.stem.removeprefix("labd")
        shutil.copyfile(kept, log.with_name(log.stem + replica + log.suffix))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--backend", choices=["sqlite", "postgresql"], default="postgresql")
    parser.add_argument("--users", type=int, default=24)
    parser.add_argument("--seed", type=int, default=20261125)
    parser.add_argument("--replicas", type=int, default=1, help="labd replicas behind HAProxy")
    parser.add_argument(
        "--log", type=Path, help="keep labd's log (all its runs) here; replica r0's in PATH-r0..."
    )
    args = parser.parse_args()
    if args.replicas > 1 and args.backend != "postgresql":
        parser.error("--replicas needs --backend postgresql (SQLite is single-process)")
    began = time.monotonic()
    report = asyncio.run(
        main_async(args.backend, args.minutes, args.users, args.seed, args.replicas, args.log)
    )
    replicas = f", {args.replicas} replicas" if args.replicas > 1 else ""
    print(f"chaos run on {args.backend}{replicas}, {args.users} users, seed {args.seed}:")
    for line in report.lines():
        print(line)
    print(f"passed in {time.monotonic() - began:.0f} s")


if __name__ == "__main__":
    main()
