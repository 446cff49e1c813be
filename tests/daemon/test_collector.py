"""The daemon's collector leaves a burst of work to reference counting."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from labd.daemon.collector import THRESHOLDS

_BURST = """
import gc, json, sys
from labd.daemon.collector import tune_collector
if sys.argv[1] == "tuned":
    tune_collector()
full = gc.get_stats()[2]["collections"]
young = gc.get_stats()[0]["collections"]
alive = [{"n": n} for n in range(100_000)]  # a burst's objects, alive while it lasts
print(json.dumps({
    "full": gc.get_stats()[2]["collections"] - full,
    "young": gc.get_stats()[0]["collections"] - young,
    "frozen": gc.get_freeze_count(),
    "thresholds": gc.get_threshold(),
}))
"""


def _burst(mode: str) -> dict[str, Any]:
    """Run the burst in a fresh interpreter (this one's collector is pytest's)."""
    output = subprocess.run(
        [sys.executable, "-c", _BURST, mode], check=True, capture_output=True, text=True
    ).stdout
    result: dict[str, Any] = json.loads(output)
    return result


def test_the_burst_runs_full_passes_on_the_default_thresholds() -> None:
    """The control: the burst below is one that costs full passes untuned."""
    assert _burst("default")["full"] > 0


def test_a_burst_of_live_objects_costs_no_full_pass_once_tuned() -> None:
    result = _burst("tuned")

    assert result["full"] == 0
    assert result["young"] <= 100_000 // THRESHOLDS[0] + 1
    assert result["frozen"] > 0, "what was loaded at start is out of the collector's reach"
    assert tuple(result["thresholds"]) == THRESHOLDS
