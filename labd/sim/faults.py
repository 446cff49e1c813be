"""Fault injection and request statistics for the simulated API server.

A controller earns trust by surviving what clusters do on bad days: API
errors and throttling, slow answers, watch connections that drop, watches
that go silent without closing, and 410 Gone that forces a re-list. `Faults`
holds what to inject, set from tests (Python), over HTTP (the control API)
or from the command line; the API server consults it on every request.

Faults apply to clients only, not to the sim's own kubelet (recognised by
its User-Agent): a fault meant for labd should not also stall the pods labd
is waiting for. `Stats` counts requests by verb and resource in the same
split, so "Kubernetes API calls per spawn" counts labd's calls only.
"""

from __future__ import annotations

import random
from collections import Counter
from fnmatch import fnmatchcase

from pydantic import BaseModel, ConfigDict, Field, field_validator

from labd.sim.errors import ApiError, status_reason

__all__ = [
    "ErrorFault",
    "FaultSpec",
    "Faults",
    "LatencyFault",
    "Stats",
    "WatchFaults",
    "parse_error_fault",
    "parse_latency_fault",
]

VERBS = ("get", "list", "watch", "create", "update", "patch", "delete", "deletecollection")


def _known_verb(verb: str) -> str:
    if verb != "*" and verb not in VERBS:
        raise ValueError(f"unknown verb {verb!r}: expected one of {', '.join(VERBS)} or *")
    return verb


class ErrorFault(BaseModel):
    """Answer a share of matching requests with an error Status."""

    model_config = ConfigDict(extra="forbid")

    verb: str = "*"
    """Verb to match (``get``, ``list``, ``watch``, ``create``, ``update``,
    ``patch``, ``delete``), or ``*``."""
    resource: str = "*"
    """Resource to match, e.g. ``pods``, ``pods/status``; a glob."""
    rate: float = Field(default=1.0, ge=0.0, le=1.0)
    """Share of matching requests that fail, 0 to 1."""
    status: int = Field(default=500, ge=400, le=599)
    """HTTP status to answer (500, 429, 503, ...)."""

    _verb = field_validator("verb")(_known_verb)


class LatencyFault(BaseModel):
    """Delay matching requests before they are served."""

    model_config = ConfigDict(extra="forbid")

    verb: str = "*"
    """Verb to match, or ``*``."""
    resource: str = "*"
    """Resource to match; a glob."""
    seconds: float = Field(ge=0.0)
    """Added delay."""

    _verb = field_validator("verb")(_known_verb)


class WatchFaults(BaseModel):
    """Misbehaviour of watch streams."""

    model_config = ConfigDict(extra="forbid")

    drop_after_events: int | None = Field(default=None, ge=0)
    """Close every watch stream after sending this many events."""
    drop_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    """Chance, per event about to be sent, that the stream closes instead."""
    silent: bool = False
    """Open streams send nothing at all (no events, no bookmarks) but stay open."""
    force_gone: int = Field(default=0, ge=0)
    """The next this-many watch requests get 410 Gone whatever their version."""


class FaultSpec(BaseModel):
    """Everything the sim injects; the body of ``/sim/v1/faults``."""

    model_config = ConfigDict(extra="forbid")

    errors: list[ErrorFault] = []
    """Error faults; the first one matching a request decides."""
    latency: list[LatencyFault] = []
    """Latency faults; every matching one adds its delay."""
    watch: WatchFaults = WatchFaults()
    """Watch stream faults."""


def _matches(pattern_verb: str, pattern_resource: str, verb: str, resource: str) -> bool:
    return pattern_verb in ("*", verb) and fnmatchcase(resource, pattern_resource)


def parse_error_fault(text: str) -> ErrorFault:
    """Parse the CLI form ``VERB:RESOURCE:RATE[:STATUS]``, e.g. ``create:pods:0.2:500``.

    Raises
    ------
    ValueError
        When the text does not have that form.
    """
    parts = text.split(":")
    if len(parts) not in (3, 4):
        raise ValueError(f"expected VERB:RESOURCE:RATE[:STATUS], got {text!r}")
    status = int(parts[3]) if len(parts) == 4 else 500
    return ErrorFault(verb=parts[0], resource=parts[1], rate=float(parts[2]), status=status)


def parse_latency_fault(text: str) -> LatencyFault:
    """Parse the CLI form ``VERB:RESOURCE:SECONDS``, e.g. ``list:pods:0.5``.

    Raises
    ------
    ValueError
        When the text does not have that form.
    """
    parts = text.split(":")
    if len(parts) != 3:
        raise ValueError(f"expected VERB:RESOURCE:SECONDS, got {text!r}")
    return LatencyFault(verb=parts[0], resource=parts[1], seconds=float(parts[2]))


class Faults:
    """The faults currently injected; change them at any time.

    Parameters
    ----------
    seed
        Seed for the random choices of rates, for repeatable runs.
    """

    def __init__(self, *, seed: int | None = None) -> None:
        self.spec = FaultSpec()
        """The current fault specification (replace it or use the methods)."""
        self._random = random.Random(seed)

    def set(self, spec: FaultSpec) -> None:
        """Replace every fault with ``spec``."""
        self.spec = spec

    def clear(self) -> None:
        """Stop injecting anything."""
        self.spec = FaultSpec()

    def add_error(
        self, verb: str = "*", resource: str = "*", *, rate: float = 1.0, status: int = 500
    ) -> None:
        """Fail a share of requests, e.g. ``add_error("create", "pods", rate=0.2, status=429)``."""
        self.spec.errors.append(ErrorFault(verb=verb, resource=resource, rate=rate, status=status))

    def add_latency(self, verb: str = "*", resource: str = "*", *, seconds: float) -> None:
        """Delay requests, e.g. ``add_latency("list", "pods", seconds=0.5)``."""
        self.spec.latency.append(LatencyFault(verb=verb, resource=resource, seconds=seconds))

    def drop_watches(self, *, after_events: int | None = None, rate: float = 0.0) -> None:
        """Close watch streams after ``after_events`` events, or at ``rate`` per event."""
        self.spec.watch.drop_after_events = after_events
        self.spec.watch.drop_rate = rate

    def silence_watches(self, silent: bool = True) -> None:
        """Make watch streams (open ones included) send nothing while staying open."""
        self.spec.watch.silent = silent

    def expire_next_watches(self, count: int = 1) -> None:
        """Answer the next ``count`` watch requests with 410 Gone."""
        self.spec.watch.force_gone += count

    def error_for(self, verb: str, resource: str) -> ApiError | None:
        """Return the error to answer for this request, or None to serve it."""
        for fault in self.spec.errors:
            if _matches(fault.verb, fault.resource, verb, resource) and (
                self._random.random() < fault.rate
            ):
                headers = {"Retry-After": "1"} if fault.status == 429 else {}
                details = {"retryAfterSeconds": 1} if fault.status == 429 else {}
                return ApiError(
                    fault.status,
                    f"sim fault injected: {verb} {resource} answered {fault.status} "
                    f"{status_reason(fault.status)}",
                    details=details,
                    headers=headers,
                )
        return None

    def delay_for(self, verb: str, resource: str) -> float:
        """Return the seconds to wait before serving this request."""
        return sum(
            f.seconds for f in self.spec.latency if _matches(f.verb, f.resource, verb, resource)
        )

    def take_forced_gone(self) -> bool:
        """Consume one forced 410 for a watch about to open; return whether there was one."""
        if self.spec.watch.force_gone > 0:
            self.spec.watch.force_gone -= 1
            return True
        return False

    def should_drop(self, events_sent: int) -> bool:
        """Return whether a watch stream that sent ``events_sent`` events must close now."""
        watch = self.spec.watch
        if watch.drop_after_events is not None and events_sent >= watch.drop_after_events:
            return True
        return watch.drop_rate > 0 and self._random.random() < watch.drop_rate

    @property
    def silent(self) -> bool:
        """Whether watch streams are silenced."""
        return self.spec.watch.silent


class Stats:
    """Requests counted by ``"<verb> <resource>"``, split into clients and the sim's own."""

    def __init__(self) -> None:
        self.requests: Counter[str] = Counter()
        """Requests from clients, e.g. ``{"create pods": 3}``."""
        self.internal: Counter[str] = Counter()
        """Requests from the sim's own components (its kubelet)."""
        self.errors: Counter[str] = Counter()
        """Client requests answered with an error status, by ``"<verb> <resource> <code>"``."""

    def record(self, verb: str, resource: str, *, internal: bool) -> None:
        """Count one request."""
        (self.internal if internal else self.requests)[f"{verb} {resource}"] += 1

    def record_error(self, verb: str, resource: str, code: int) -> None:
        """Count one client request that failed with ``code``."""
        self.errors[f"{verb} {resource} {code}"] += 1

    def reset(self) -> None:
        """Start counting from zero."""
        self.requests.clear()
        self.internal.clear()
        self.errors.clear()

    def total(self) -> int:
        """Return the number of client requests."""
        return sum(self.requests.values())

    def snapshot(self) -> dict[str, object]:
        """Return the counts as JSON-ready data (the body of ``/sim/v1/stats``)."""
        return {
            "total": self.total(),
            "requests": dict(sorted(self.requests.items())),
            "errors": dict(sorted(self.errors.items())),
            "internal": dict(sorted(self.internal.items())),
        }
