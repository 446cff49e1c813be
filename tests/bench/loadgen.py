"""A load generator for HTTP GETs: fixed concurrency, fixed duration.

It runs in a process of its own (so it does not share an event loop or the
GIL with the server it measures) and prints one JSON object: requests,
requests per second, status codes, and p50/p99 latency in milliseconds.
Each of ``--concurrency`` workers keeps one keep-alive connection and sends
its next request as soon as the answer is read; the path is
``--path`` with ``{user}`` replaced by a random one of ``--users`` names
``<prefix><i>``.

Run::

    .venv/bin/python tests/bench/loadgen.py --url http://127.0.0.1:8080 \\
        --path /spawner/v1/labs/{user} --users 10000 --concurrency 16 --seconds 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from collections import Counter
from typing import Any

import aiohttp


def percentile(values: list[float], fraction: float) -> float:
    """Return the ``fraction`` quantile of ``values`` (nearest rank)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))
    return ordered[index]


async def run(
    *,
    url: str,
    path: str,
    users: int,
    prefix: str,
    concurrency: int,
    seconds: float,
    warmup: float,
    token: str | None,
) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    errors: Counter[str] = Counter()
    rng = random.Random(1)
    async with aiohttp.ClientSession(base_url=url, connector=connector, headers=headers) as http:
        loop = asyncio.get_running_loop()
        measure_from = loop.time() + warmup
        stop_at = measure_from + seconds

        async def worker() -> None:
            while (now := loop.time()) < stop_at:
                target = path.replace("{user}", f"{prefix}{rng.randrange(users)}")
                began = time.perf_counter()
                try:
                    async with http.get(target) as response:
                        await response.read()
                        status = response.status
                except aiohttp.ClientError as exc:
                    if now >= measure_from:
                        errors[type(exc).__name__] += 1
                    continue
                if now >= measure_from:
                    latencies.append(time.perf_counter() - began)
                    statuses[status] += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return {
        "concurrency": concurrency,
        "seconds": seconds,
        "requests": len(latencies),
        "rps": round(len(latencies) / seconds, 1),
        "p50_ms": round(percentile(latencies, 0.50) * 1000, 2),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
        "statuses": {str(code): count for code, count in sorted(statuses.items())},
        "errors": dict(errors),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--path", default="/spawner/v1/labs/{user}")
    parser.add_argument("--users", type=int, default=1)
    parser.add_argument("--prefix", default="user")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--token")
    args = parser.parse_args()
    result = asyncio.run(
        run(
            url=args.url,
            path=args.path,
            users=args.users,
            prefix=args.prefix,
            concurrency=args.concurrency,
            seconds=args.seconds,
            warmup=args.warmup,
            token=args.token,
        )
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
