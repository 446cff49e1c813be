"""Run the scale benchmark on SQLite and PostgreSQL and print one table.

Run::

    .venv/bin/python tests/bench/run_all.py            # 10,000 labs, 1,000 spawns
    .venv/bin/python tests/bench/run_all.py --quick    # 2,000 labs, 200 spawns
    .venv/bin/python tests/bench/run_all.py --reuse    # the table of the last results

Each backend runs `bench_scale.py` in a fresh process (so one backend's
memory and event loop do not colour the other's) and writes
``bench-results/scale-<backend>.json``; this script then prints the targets
of issue 8 next to the figures and writes ``bench-results/summary.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
RESULTS = Path("bench-results")

Figure = Callable[[dict[str, Any]], float]


def _reads(concurrency: int, key: str) -> Figure:
    def figure(result: dict[str, Any]) -> float:
        reads = {r["concurrency"]: r for r in result["status_reads"]}
        if not reads[concurrency]["requests"]:
            # No answer at all in the whole run: no latency to show, and a miss.
            return 0.0 if key == "rps" else float("inf")
        value: float = reads[concurrency][key]
        return value

    return figure


def _bare_level(result: dict[str, Any], concurrency: int) -> dict[str, Any]:
    """The bare fastest-stack route's figures at ``concurrency`` clients."""
    return next(r for r in result["read_ceiling"]["starlette"] if r["concurrency"] == concurrency)


def _read_ratio(concurrency: int) -> Figure:
    def figure(result: dict[str, Any]) -> float:
        reads = {r["concurrency"]: r for r in result["status_reads"]}
        bare = _bare_level(result, concurrency)
        return round(float(reads[concurrency]["rps"]) / float(bare["rps"]), 2)

    return figure


def _bare(concurrency: int, key: str) -> Figure:
    def figure(result: dict[str, Any]) -> float:
        value: float = _bare_level(result, concurrency)[key]
        return value

    return figure


def _calls_per_kind(result: dict[str, Any]) -> float:
    return float(max(result["reconcile"]["kube_calls"].values()))


TARGETS: list[tuple[str, Figure, str, Callable[[float], bool]]] = [
    ("status reads/s, 16 clients", _reads(16, "rps"), ">= 5000", lambda v: v >= 5000),
    ("status read p99 ms, 16 clients", _reads(16, "p99_ms"), "< 5", lambda v: v < 5),
    ("status reads / bare fastest stack, 16", _read_ratio(16), ">= 0.7", lambda v: v >= 0.7),
    ("  bare route p99 ms, 16 clients", _bare(16, "p99_ms"), "", lambda v: True),
    ("  CPU us per read, 16: labd", _reads(16, "cpu_us_per_read"), "", lambda v: True),
    ("  CPU us per read, 16: bare route", _bare(16, "cpu_us_per_read"), "", lambda v: True),
    ("status reads/s, 1 client", _reads(1, "rps"), "", lambda v: True),
    ("status reads/s, 128 clients", _reads(128, "rps"), "", lambda v: True),
    ("status read p99 ms, 128 clients", _reads(128, "p99_ms"), "", lambda v: True),
    (
        "N spawns at once: s to all running",
        lambda r: r["spawn"]["wall_seconds"],
        "< 20 (N=1000)",
        lambda v: v < 20,
    ),
    (
        "spawns/s / sim alone",
        lambda r: round(r["spawn"]["spawns_per_second"] / r["ceiling"]["spawns_per_second"], 2),
        ">= 0.7",
        lambda v: v >= 0.7,
    ),
    ("spawn p99 s to running", lambda r: r["spawn"]["p99_to_running_s"], "", lambda v: True),
    (
        "Kubernetes calls per spawn",
        lambda r: r["spawn"]["kube_calls_per_spawn"],
        "",
        lambda v: True,
    ),
    (
        "SQL statements per spawn",
        lambda r: r["spawn"]["sql_statements_per_spawn"],
        "",
        lambda v: True,
    ),
    ("N deletes at once: s", lambda r: r["delete"]["wall_seconds"], "", lambda v: True),
    (
        "deletes/s / sim alone",
        lambda r: round(r["delete"]["deletes_per_second"] / r["ceiling"]["deletes_per_second"], 2),
        ">= 0.5",
        lambda v: v >= 0.5,
    ),
    (
        "SQL statements per delete",
        lambda r: r["delete"]["sql_statements_per_delete"],
        "",
        lambda v: True,
    ),
    ("reconcile of all labs, s", lambda r: r["reconcile"]["seconds"], "< 1.5", lambda v: v < 1.5),
    ("reconcile LIST requests per kind", _calls_per_kind, "<= 1", lambda v: v <= 1),
    ("restart to ready, s", lambda r: r["restart_to_ready_s"], "< 2", lambda v: v < 2),
    (
        "restart to reconciled (on duty), s",
        lambda r: r["restart_to_reconciled_s"],
        "",
        lambda v: True,
    ),
    (
        "after ready: s until reads are quick",
        lambda r: r["after_ready"]["seconds_until_quick"],
        "",
        lambda v: True,
    ),
    ("peak RSS MB", lambda r: r["rss_peak_mb"], "< 200", lambda v: v < 200),
    ("pod Running -> status p50 ms", lambda r: r["pod_to_status"]["p50_ms"], "", lambda v: True),
    (
        "pod Running -> status p99 ms",
        lambda r: r["pod_to_status"]["p99_ms"],
        "< 200",
        lambda v: v < 200,
    ),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--backends", nargs="+", default=["sqlite", "postgresql"])
    parser.add_argument("--profile", type=Path, help="py-spy profiles into this directory")
    parser.add_argument(
        "--reuse", action="store_true", help="print the table from the last JSON results only"
    )
    args = parser.parse_args()
    size = ["--labs", "2000", "--spawns", "200", "--seconds", "3", "--latency-labs", "50"]
    results: dict[str, dict[str, Any]] = {}
    for backend in args.backends:
        output = RESULTS / f"scale-{backend}.json"
        if args.reuse:
            results[backend] = json.loads(output.read_text())
            continue
        command = [sys.executable, str(HERE / "bench_scale.py"), "--backend", backend]
        command += ["--output", str(output), "--quiet"]
        command += size if args.quick else []
        command += ["--profile", str(args.profile)] if args.profile else []
        subprocess.run(command, check=True)
        results[backend] = json.loads(output.read_text())
    print()
    header = f"{'figure':<38}{'target':<16}" + "".join(f"{b:>14}" for b in results)
    print(header)
    summary: list[dict[str, Any]] = []
    for name, figure, target, met in TARGETS:
        values = {backend: figure(result) for backend, result in results.items()}
        marks = {
            b: ("" if not target else " ok" if met(v) else " MISS") for b, v in values.items()
        }
        print(
            f"{name:<38}{target:<16}" + "".join(f"{v:>10}{marks[b]:<4}" for b, v in values.items())
        )
        summary.append(
            {
                "figure": name,
                "target": target,
                "values": values,
                "met": {b: met(v) for b, v in values.items()} if target else None,
            }
        )
    for backend, result in results.items():
        machine = result["machine"]
        print(
            f"{backend}: load {' '.join(machine['loadavg_at_start'])} at start,"
            f" {' '.join(machine['loadavg_at_end'])} at end; {machine['cpus']} CPUs"
            f" ({machine['cpu']}), Python {machine['python']}; 10 million additions in"
            f" {machine.get('python_loop_s_at_start')} s at start,"
            f" {machine.get('python_loop_s_at_end')} s at end"
        )
    (RESULTS / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
