"""How labd's cost grows as the number of labs grows.

Runs `bench_scale.py` once per size and database, each in a fresh process,
with what does not depend on the number of labs kept small: ``--spawns``
(the spawn and delete phases; the fill needs one spawned lab as its
template), ``--latency-labs`` (pod to status), and no status-read ceilings.
Each run's result goes to ``bench-results/curves/<backend>-<labs>.json``,
with a ``curves_run`` entry added: when, on which commit, how long the run
took, and the peak of the summed RSS of its process tree (the benchmark,
the sim, ``labd serve``, the load generator; not the PostgreSQL server).

Then it draws five figures from every JSON file there (``--plot-only``:
without measuring, from those of ``--backends`` / ``--sizes`` when given;
the figures' footnote names the commits) into ``docs/images/perf-*.png``:
reconcile seconds, restart to ready seconds, restart to on duty seconds
(the first reconcile done and the watches started), peak RSS of ``labd serve`` and
status-read p99 at 16 clients, each with a line growing in proportion to
the labs through the first point, and the targets as dashed lines; and it
prints the raw figures as a Markdown table, also written to
``bench-results/curves/table.md``.

Run::

    .venv/bin/python tests/bench/curves.py              # 1,000 to 20,000 labs, both databases
    .venv/bin/python tests/bench/curves.py --with-50k   # and 50,000
    .venv/bin/python tests/bench/curves.py --sizes 1000 2000 --backends sqlite
    .venv/bin/python tests/bench/curves.py --plot-only  # redraw from the JSON files

Before each size it estimates the memory the run needs (the largest
smaller size's process-tree peak, scaled in proportion to the labs) and
skips the size if that exceeds 80 % of ``MemAvailable`` (``--force`` runs
it anyway).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
RESULTS = ROOT / "bench-results" / "curves"
IMAGES = ROOT / "docs" / "images"
SIZES = [1_000, 5_000, 10_000, 20_000]
BIG = 50_000
BACKENDS = ["sqlite", "postgresql"]
NAMES = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}
COLOURS = {"sqlite": "tab:blue", "postgresql": "tab:orange"}
RESULT_FILE = re.compile(r"(?P<backend>[a-z]+)-(?P<labs>\d+)\.json")

Result = dict[str, Any]


# The figures ----------------------------------------------------------------------


def _status_p99(result: Result) -> float | None:
    reads = {r["concurrency"]: r for r in result["status_reads"]}
    if not reads[16]["requests"]:
        return None  # no answer in the whole run: no latency to show
    value: float = reads[16]["p99_ms"]
    return value


@dataclass(frozen=True)
class Curve:
    """One figure: how to read it from a result, and its target."""

    name: str  # docs/images/perf-<name>.png
    title: str
    unit: str
    column: str  # the Markdown table's header
    value: Callable[[Result], float | None]
    target: float | None
    target_label: str


CURVES = [
    Curve(
        "reconcile",
        "Reconcile of all labs",
        "s",
        "reconcile, s",
        lambda r: float(r["reconcile"]["seconds"]),
        1.5,
        "target: < 1.5 s at 10,000 labs",
    ),
    Curve(
        "restart",
        "Restart to ready: labd serve's start to /readyz 200",
        "s",
        "restart to ready, s",
        lambda r: float(r["restart_to_ready_s"]),
        2.0,
        "target: < 2 s",
    ),
    Curve(
        "on-duty",
        "Restart to on duty: labd serve's start to its first reconcile's end",
        "s",
        "restart to on duty, s",
        lambda r: r.get("restart_to_reconciled_s"),  # absent before 2026-12-06
        None,
        "",
    ),
    Curve(
        "rss",
        "Peak RSS of labd serve (VmHWM)",
        "MB",
        "peak RSS, MB",
        lambda r: float(r["rss_peak_mb"]),
        200.0,
        "target: < 200 MB at 10,000 labs",
    ),
    Curve(
        "status-p99",
        "Status read p99, 16 clients",
        "ms",
        "status read p99 (16 clients), ms",
        _status_p99,
        5.0,
        "target: < 5 ms",
    ),
]


# Measuring ------------------------------------------------------------------------


def result_path(backend: str, labs: int) -> Path:
    return RESULTS / f"{backend}-{labs}.json"


def mem_available_mb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no MemAvailable in /proc/meminfo")


def tree_rss_mb(root: int) -> float:
    """The summed RSS of ``root`` and its descendants (shared pages counted in each)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    total_pages = 0
    pending = [root]
    while pending:
        pid = pending.pop()
        pending.extend(children.get(pid, []))
        try:
            total_pages += int(Path(f"/proc/{pid}/statm").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue
    return total_pages * os.sysconf("SC_PAGE_SIZE") / 2**20


class TreeMemory:
    """Samples `tree_rss_mb` of a process every ``every`` seconds; keeps the peak."""

    def __init__(self, pid: int, every: float = 1.0) -> None:
        self.pid = pid
        self.every = every
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.peak_mb = max(self.peak_mb, tree_rss_mb(self.pid))

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return round(self.peak_mb, 1)


def commit() -> str:
    """HEAD's short hash, with ``+dirty`` when labd/ has uncommitted changes."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, check=False
        ).stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    return head + ("+dirty" if git("status", "--porcelain", "--", "labd") else "")


def memory_needed_mb(labs: int) -> float | None:
    """The peak of the largest smaller size measured, scaled to ``labs``."""
    measured: dict[int, float] = {}
    for (_, size), result in load_results(None, None).items():
        peak = result.get("curves_run", {}).get("tree_rss_peak_mb")
        if size < labs and peak:
            measured[size] = max(measured.get(size, 0.0), float(peak))
    if not measured:
        return None
    largest = max(measured)
    return measured[largest] * labs / largest


def measure(backend: str, labs: int, args: argparse.Namespace) -> float | None:
    """Run `bench_scale.py` for one size; return its wall seconds (None: skipped)."""
    needed = memory_needed_mb(labs)
    available = mem_available_mb()
    if needed is not None and needed > 0.8 * available and not args.force:
        print(
            f"skipping {backend} at {labs:,} labs: needs about {needed:,.0f} MB"
            f" (scaled from a smaller size), {available:,.0f} MB available (--force runs it)",
            flush=True,
        )
        return None
    output = result_path(backend, labs)
    output.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, str(HERE / "bench_scale.py"), "--backend", backend]
    command += ["--labs", str(labs), "--spawns", str(args.spawns)]
    command += ["--latency-labs", str(args.latency_labs), "--seconds", str(args.seconds)]
    command += ["--no-read-ceiling", "--output", str(output)]
    command += ["--quiet"] if args.quiet else []
    print(f"== {backend}, {labs:,} labs: {' '.join(command[1:])}", flush=True)
    started = datetime.now(UTC)
    began = time.monotonic()
    process = subprocess.Popen(command, cwd=ROOT)
    memory = TreeMemory(process.pid)
    try:
        status = process.wait()
    finally:
        peak = memory.stop()
    wall = time.monotonic() - began
    if status != 0:
        raise SystemExit(f"bench_scale.py failed for {backend} at {labs} labs (exit {status})")
    result = json.loads(output.read_text())
    result["curves_run"] = {
        "started": started.isoformat(timespec="seconds"),
        "commit": commit(),
        "wall_seconds": round(wall, 1),
        "tree_rss_peak_mb": peak,
        "spawns": args.spawns,
        "latency_labs": args.latency_labs,
        "seconds_per_load_level": args.seconds,
    }
    output.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"== {backend}, {labs:,} labs: {wall:.0f} s, process tree peak {peak:,.0f} MB",
        flush=True,
    )
    return wall


# Drawing --------------------------------------------------------------------------


def load_results(
    backends: list[str] | None, sizes: list[int] | None
) -> dict[tuple[str, int], Result]:
    """The JSON results on disk, by (backend, labs), filtered when asked."""
    found: dict[tuple[str, int], Result] = {}
    if not RESULTS.is_dir():
        return found
    for path in sorted(RESULTS.glob("*.json")):
        match = RESULT_FILE.fullmatch(path.name)
        if match is None:
            continue
        backend, labs = match["backend"], int(match["labs"])
        if (backends and backend not in backends) or (sizes and labs not in sizes):
            continue
        found[backend, labs] = json.loads(path.read_text())
    return found


def series(
    results: dict[tuple[str, int], Result], curve: Curve
) -> dict[str, list[tuple[int, float]]]:
    """Per backend (in `BACKENDS` order), the (labs, value) points, by labs."""
    lines: dict[str, list[tuple[int, float]]] = {}
    for backend in sorted({b for b, _ in results}, key=_backend_order):
        points = []
        for labs in sorted(n for b, n in results if b == backend):
            value = curve.value(results[backend, labs])
            if value is not None:
                points.append((labs, value))
        if points:
            lines[backend] = points
    return lines


def _backend_order(backend: str) -> tuple[int, str]:
    return (BACKENDS.index(backend) if backend in BACKENDS else len(BACKENDS), backend)


def _name(backend: str) -> str:
    return NAMES.get(backend, backend)


def _labs_tick(labs: float, _: object = None) -> str:
    return f"{labs / 1000:g}k" if labs else "0"


def machine_note(results: dict[tuple[str, int], Result]) -> str:
    """One line on where the figures were measured."""
    machines = {
        (r["machine"]["cpus"], r["machine"]["cpu"], r["machine"]["python"])
        for r in results.values()
    }
    commits = sorted({r.get("curves_run", {}).get("commit", "?") for r in results.values()})
    where = "; ".join(f"{cpus} CPUs ({cpu}), Python {python}" for cpus, cpu, python in machines)
    return f"tests/bench/curves.py: {where}; labd {', '.join(commits)}"


def plot(results: dict[tuple[str, int], Result], images: Path) -> list[Path]:
    """Draw one PNG per curve; return their paths."""
    images.mkdir(parents=True, exist_ok=True)
    sizes = sorted({labs for _, labs in results})
    note = machine_note(results)
    written = []
    for curve in CURVES:
        figure = Figure(figsize=(7.5, 4.5), layout="constrained")
        FigureCanvasAgg(figure)
        axes = figure.add_subplot()
        top = 0.0
        for backend, points in series(results, curve).items():
            xs = [labs for labs, _ in points]
            ys = [value for _, value in points]
            colour = COLOURS.get(backend)
            axes.plot(xs, ys, marker="o", color=colour, label=_name(backend))
            first_labs, first_value = points[0]
            if len(points) > 1:
                axes.plot(
                    [first_labs, xs[-1]],
                    [first_value, first_value * xs[-1] / first_labs],
                    linestyle=":",
                    color=colour,
                    label=f"{_name(backend)}, in proportion to labs from {first_labs:,}",
                )
            top = max(top, *ys)
        if curve.target is not None:
            axes.axhline(
                curve.target,
                linestyle="--",
                color="tab:red",
                linewidth=1,
                label=curve.target_label,
            )
            top = max(top, curve.target)
        # Room above the data and target; the proportional lines may leave the frame.
        axes.set_ylim(0, top * 1.3 if top > 0 else 1)
        axes.set_xlim(0, max(sizes) * 1.05)
        axes.set_xticks(sizes)
        axes.xaxis.set_major_formatter(FuncFormatter(_labs_tick))
        axes.set_xlabel("labs")
        axes.set_ylabel(curve.unit)
        axes.set_title(curve.title)
        axes.grid(True, alpha=0.3)
        axes.legend(loc="upper left", fontsize="small")
        figure.supxlabel(note, x=0.99, ha="right", fontsize=6, color="grey")
        path = images / f"perf-{curve.name}.png"
        figure.savefig(path, dpi=110)
        written.append(path)
    return written


def _figure(value: float | None) -> str:
    if value is None:
        return "no answer"
    return f"{value:,.0f}" if value >= 100 else f"{value:.3f}" if value < 1 else f"{value:.2f}"


def table(results: dict[tuple[str, int], Result]) -> str:
    """The raw figures: a row per size, a column per figure, ``SQLite / PostgreSQL`` cells."""
    backends = sorted({b for b, _ in results}, key=_backend_order)
    sizes = sorted({labs for _, labs in results})
    lines = [
        "| labs | " + " | ".join(curve.column for curve in CURVES) + " |",
        "|---:|" + "---:|" * len(CURVES),
        "| target | "
        + " | ".join(curve.target_label.removeprefix("target: ") for curve in CURVES)
        + " |",
    ]
    for labs in sizes:
        cells = []
        for curve in CURVES:
            values = [
                _figure(curve.value(results[b, labs])) if (b, labs) in results else "-"
                for b in backends
            ]
            cells.append(" / ".join(values))
        lines.append(f"| {labs:,} | " + " | ".join(cells) + " |")
    if len(sizes) > 1:
        first, last = sizes[0], sizes[-1]
        cells = []
        for curve in CURVES:
            ratios = []
            for b in backends:
                a = curve.value(results[b, first]) if (b, first) in results else None
                z = curve.value(results[b, last]) if (b, last) in results else None
                ratios.append(f"x{z / a:.1f}" if a and z is not None else "-")
            cells.append(" / ".join(ratios))
        lines.append(
            f"| {last:,} / {first:,} (labs x{last / first:g}) | " + " | ".join(cells) + " |"
        )
    lines += [
        "",
        f"Each cell: {' / '.join(_name(b) for b in backends)}. {machine_note(results)}.",
    ]
    return "\n".join(lines) + "\n"


def draw(backends: list[str] | None, sizes: list[int] | None) -> None:
    results = load_results(backends, sizes)
    if not results:
        raise SystemExit(f"no results in {RESULTS}")
    print("plotting " + ", ".join(f"{b}-{n}" for b, n in sorted(results)))
    for path in plot(results, IMAGES):
        print(f"wrote {path.relative_to(ROOT)}")
    text = table(results)
    (RESULTS / "table.md").write_text(text)
    print(f"wrote {(RESULTS / 'table.md').relative_to(ROOT)}\n")
    print(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, help="default: both")
    parser.add_argument(
        "--sizes", nargs="+", type=int, help="labs per run; default: 1000 5000 10000 20000"
    )
    parser.add_argument("--with-50k", action="store_true", help=f"add {BIG:,} labs to the sizes")
    parser.add_argument("--spawns", type=int, default=100, help="bench_scale --spawns")
    parser.add_argument("--latency-labs", type=int, default=20, help="bench_scale --latency-labs")
    parser.add_argument(
        "--seconds", type=float, default=5.0, help="bench_scale --seconds (per load level)"
    )
    parser.add_argument("--force", action="store_true", help="run sizes that may not fit")
    parser.add_argument("--quiet", action="store_true", help="no per-phase progress")
    parser.add_argument(
        "--plot-only",
        action="store_true",
        help="redraw the PNGs and the table from the JSON files (of --backends / --sizes"
        " when given, else all)",
    )
    args = parser.parse_args()
    sizes: list[int] | None = sorted(set(args.sizes)) if args.sizes else None
    if args.with_50k:
        sizes = sorted({*(sizes or SIZES), BIG})
    if args.plot_only:
        draw(args.backends, sizes)
        return
    backends: list[str] = args.backends or BACKENDS
    sizes = sizes or SIZES
    walls: dict[tuple[str, int], float | None] = {}
    for labs in sizes:
        for backend in backends:
            walls[backend, labs] = measure(backend, labs, args)
    print()
    for (backend, labs), wall in walls.items():
        print(f"{backend:<11}{labs:>7,} labs: " + ("skipped" if wall is None else f"{wall:.0f} s"))
    print()
    draw(None, None)


if __name__ == "__main__":
    main()
