"""Prometheus metrics of one labd process.

Each `Labd` owns a `Metrics` with its own registry (tests run several labd
instances in one process).  Counters and histograms are updated where things
happen; the per-state lab gauge and the queue depth are read from SQL when
``/metrics`` is scraped, so they are exact without a background task.
"""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from labd.lab.machine import LabState
from labd.lab.records import utcnow

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]

_DURATION_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200)


class LabCounts(Protocol):
    """Where `Metrics.render` reads the SQL-derived gauges (`labd.db.store.LabStore`)."""

    async def count_by_state(self) -> dict[LabState, int]: ...

    async def due_summary(self) -> tuple[int, datetime | None]: ...


class Metrics:
    """The metrics of one labd process."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        """Where every metric below is registered."""
        self.labs = Gauge(
            "labd_labs",
            "Labs by state (deleted ones excluded).",
            ["state"],
            registry=self.registry,
        )
        self.spawn_duration = Histogram(
            "labd_spawn_duration_seconds",
            "Time from a create to the lab running.",
            buckets=_DURATION_BUCKETS,
            registry=self.registry,
        )
        self.delete_duration = Histogram(
            "labd_delete_duration_seconds",
            "Time from a delete (or cleanup) to the lab's objects being gone.",
            buckets=_DURATION_BUCKETS,
            registry=self.registry,
        )
        self.spawn_failures = Counter(
            "labd_spawn_failures_total",
            "Spawns that failed, by reason (kubernetes, configuration, timeout, pod_failed, "
            "pod_lost).",
            ["reason"],
            registry=self.registry,
        )
        self.delete_failures = Counter(
            "labd_delete_failures_total", "Deletes that failed.", registry=self.registry
        )
        self.kube_calls = Counter(
            "labd_kubernetes_calls_total",
            "Kubernetes API calls (every attempt), by verb and kind.",
            ["verb", "kind"],
            registry=self.registry,
        )
        self.kube_errors = Counter(
            "labd_kubernetes_errors_total",
            "Kubernetes API calls that failed, by verb and kind.",
            ["verb", "kind"],
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "labd_scheduler_queue_depth",
            "Labs whose next step is due now.",
            registry=self.registry,
        )
        self.scheduler_lag = Gauge(
            "labd_scheduler_lag_seconds",
            "How long the most overdue step has been waiting.",
            registry=self.registry,
        )
        self.steps = Counter(
            "labd_scheduler_steps_total",
            "Scheduler steps run, by the lab's state.",
            ["state"],
            registry=self.registry,
        )
        self.reconcile_duration = Histogram(
            "labd_reconcile_duration_seconds",
            "Duration of a reconcile pass.",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
            registry=self.registry,
        )
        self.reconcile_actions = Counter(
            "labd_reconcile_actions_total",
            "What reconcile passes did (adopted, orphan, vanished, updated).",
            ["action"],
            registry=self.registry,
        )
        self.sse_subscribers = Gauge(
            "labd_sse_subscribers",
            "Open event streams.",
            registry=self.registry,
        )
        self.status_reads = Counter(
            "labd_status_reads_total",
            "Lab status reads, by where they were answered from (memory, sql).",
            ["source"],
            registry=self.registry,
        )
        self.leader = Gauge(
            "labd_leader",
            "1 while this replica leads (runs the watches and the reconciler), else 0.",
            registry=self.registry,
        )
        self.status_cache_enabled = Gauge(
            "labd_status_cache_enabled",
            "1 while status reads may be answered from memory; 0 while they all go to SQL"
            " (on PostgreSQL: while the change listener is not connected).",
            registry=self.registry,
        )
        self.image_refresh_failures = Counter(
            "labd_image_refresh_failures_total",
            "Image registry reads that failed (the last good list is kept), by reason "
            "(unreachable, auth, not_found, protocol, credentials).",
            ["reason"],
            registry=self.registry,
        )
        self.image_last_success = Gauge(
            "labd_image_last_success_timestamp_seconds",
            "Unix time of the last successful image registry read (0: none yet).",
            registry=self.registry,
        )
        self.images_known = Gauge(
            "labd_images_known",
            "Images users may spawn now (configured and from the registry).",
            registry=self.registry,
        )
        self.alerts_sent = Counter(
            "labd_alerts_sent_total",
            "Alert posts delivered, by kind and target (slack, webhook).",
            ["kind", "target"],
            registry=self.registry,
        )
        self.alerts_failed = Counter(
            "labd_alerts_failed_total",
            "Alert posts given up after their retries, by kind and target.",
            ["kind", "target"],
            registry=self.registry,
        )
        self.alerts_dropped = Counter(
            "labd_alerts_dropped_total",
            "Alert posts dropped unsent (queue full, or pending at shutdown), by kind and target.",
            ["kind", "target"],
            registry=self.registry,
        )
        self.alerts_grouped = Counter(
            "labd_alerts_grouped_total",
            "Alerts folded into a summary instead of being posted alone, by kind.",
            ["kind"],
            registry=self.registry,
        )

    def kube_call(self, verb: str, kind: str, error: bool) -> None:
        """Count one Kubernetes API call (the hook of `labd.kube`)."""
        self.kube_calls.labels(verb, kind).inc()
        if error:
            self.kube_errors.labels(verb, kind).inc()

    async def render(self, store: LabCounts) -> bytes:
        """Refresh the SQL-derived gauges and render the text format."""
        counts = await store.count_by_state()
        for state in LabState:
            if state not in (LabState.NEW, LabState.DELETED):
                self.labs.labels(state.value).set(counts.get(state, 0))
        due, oldest = await store.due_summary()
        self.queue_depth.set(due)
        self.scheduler_lag.set(_age(oldest))
        return generate_latest(self.registry)


def _age(since: datetime | None) -> float:
    if since is None:
        return 0.0
    return max(0.0, (utcnow() - since).total_seconds())
