"""Server-side tables: what ``kubectl get`` prints, computed by the server.

kubectl asks for lists, objects and watch events as ``Table`` objects
(``Accept: application/json;as=Table;v=v1;g=meta.k8s.io, ...,
application/json``) and prints their columns as they come, so the columns
of ``kubectl get pods`` (READY, STATUS, RESTARTS) are the API server's. The
sim answers tables for the kinds a person looks at with kubectl on a lab,
pods and namespaces, with the columns and cell rules of Kubernetes' own
printers (``pkg/printers/internalversion``); for the other kinds it answers
the plain list, which the same ``Accept`` header also allows, and kubectl
prints names and ages for those.

A row carries the object's metadata (``includeObject=Metadata``, the
default), which kubectl reads for ``-A``'s NAMESPACE column and
``--show-labels``; ``includeObject=Object`` carries the whole object and
``None`` nothing. In a watch, only the first event's table carries the
column definitions, as the real server sends them.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Iterable
from typing import Any

__all__ = ["TableFormat", "human_duration", "negotiate", "table"]

Obj = dict[str, Any]

_NAME = {
    "name": "Name",
    "type": "string",
    "format": "name",
    "description": "Name must be unique within a namespace.",
    "priority": 0,
}
_AGE = {
    "name": "Age",
    "type": "string",
    "format": "",
    "description": "CreationTimestamp is when the server created the object.",
    "priority": 0,
}


def _column(name: str, description: str, *, priority: int = 0) -> dict[str, Any]:
    return {
        "name": name,
        "type": "string",
        "format": "",
        "description": description,
        "priority": priority,
    }


_POD_COLUMNS = [
    _NAME,
    _column("Ready", "The aggregate readiness state of this pod for accepting traffic."),
    _column("Status", "The aggregate status of the containers in this pod."),
    _column(
        "Restarts",
        "The number of times the containers in this pod have been restarted and when the "
        "last container in this pod has restarted.",
    ),
    _AGE,
    _column("IP", "IP address allocated to the pod.", priority=1),
    _column("Node", "The node the pod is bound to.", priority=1),
    _column("Nominated Node", "The node the scheduler nominated for the pod.", priority=1),
    _column("Readiness Gates", "Pod readiness gates that are true, of all.", priority=1),
]

_NAMESPACE_COLUMNS = [
    _NAME,
    _column("Status", "The status of the namespace"),
    _AGE,
]


class TableFormat:
    """How a request wants its answer as a table: the ``meta.k8s.io`` version and object."""

    __slots__ = ("include", "version")

    def __init__(self, version: str, include: str) -> None:
        self.version = version
        """``v1`` or ``v1beta1``: the Table's ``apiVersion`` is ``meta.k8s.io/<version>``."""
        self.include = include
        """``Metadata`` (the default), ``Object`` or ``None``: what each row carries."""


def negotiate(accept: str, include_object: str | None, resource: str) -> TableFormat | None:
    """Decide whether to answer with a Table.

    Parameters
    ----------
    accept
        The request's ``Accept`` header.
    include_object
        Its ``includeObject`` query parameter.
    resource
        The plural resource asked for.

    Returns
    -------
    TableFormat or None
        The table to answer with, or None for the plain JSON answer: when
        the client did not ask for a table before plain JSON, or the sim
        prints no table for the resource.
    """
    if resource not in _PRINTERS:
        return None
    for entry in accept.split(","):
        media, *parameters = (part.strip() for part in entry.split(";"))
        if media not in ("application/json", "application/*", "*/*"):
            continue
        options = dict(p.partition("=")[::2] for p in parameters)
        if options.get("as") is None:
            return None  # Plain JSON comes first.
        if (
            options.get("as") == "Table"
            and options.get("g") == "meta.k8s.io"
            and options.get("v") in ("v1", "v1beta1")
        ):
            include = include_object if include_object in ("None", "Object") else "Metadata"
            return TableFormat(options["v"], include)
    return None


def table(
    fmt: TableFormat,
    resource: str,
    objects: Iterable[Obj],
    *,
    list_meta: dict[str, Any] | None = None,
    columns: bool = True,
    now: datetime.datetime | None = None,
) -> dict[str, Any]:
    """Return the ``Table`` of ``objects``.

    Parameters
    ----------
    fmt
        From `negotiate`.
    resource
        Plural resource name of the objects.
    objects
        The objects, one row each.
    list_meta
        The table's ``metadata`` (``resourceVersion``, ``continue``...).
    columns
        Include the column definitions (a watch sends them once).
    now
        The time ages are counted to (default: now).
    """
    columns_of, row_of = _PRINTERS[resource]
    now = now or datetime.datetime.now(datetime.UTC)
    rows = []
    for obj in objects:
        cells, conditions = row_of(obj, now)
        row: dict[str, Any] = {"cells": cells}
        if conditions:
            row["conditions"] = conditions
        if fmt.include == "Object":
            row["object"] = obj
        elif fmt.include == "Metadata":
            row["object"] = {
                "kind": "PartialObjectMetadata",
                "apiVersion": f"meta.k8s.io/{fmt.version}",
                "metadata": obj.get("metadata", {}),
            }
        rows.append(row)
    return {
        "kind": "Table",
        "apiVersion": f"meta.k8s.io/{fmt.version}",
        "metadata": list_meta or {},
        "columnDefinitions": columns_of if columns else None,
        "rows": rows,
    }


def human_duration(seconds: float) -> str:
    """Format a duration as Kubernetes' ``duration.HumanDuration`` (``5s``, ``2m3s``, ``4d``)."""
    whole = int(seconds)
    if whole < -1:
        return "<invalid>"
    if whole < 0:
        return "0s"
    if whole < 120:
        return f"{whole}s"
    minutes = whole // 60
    if minutes < 10:
        rest = whole % 60
        return f"{minutes}m{rest}s" if rest else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = whole // 3600
    if hours < 8:
        rest = minutes % 60
        return f"{hours}h{rest}m" if rest else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        rest = hours % 24
        return f"{hours // 24}d{rest}h" if rest else f"{hours // 24}d"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        days = (hours // 24) % 365
        return f"{hours // 24 // 365}y{days}d" if days else f"{hours // 24 // 365}y"
    return f"{hours // 24 // 365}y"


def _since(timestamp: Any, now: datetime.datetime) -> str:
    """``translateTimestampSince``: the age of an RFC 3339 timestamp, ``<unknown>`` if none."""
    if not isinstance(timestamp, str) or not timestamp:
        return "<unknown>"
    try:
        then = datetime.datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    except ValueError:
        return "<unknown>"
    if then.tzinfo is None:
        then = then.replace(tzinfo=datetime.UTC)
    return human_duration((now - then).total_seconds())


_COMPLETED = [{"type": "Completed", "status": "True"}]


def _pod_row(pod: Obj, now: datetime.datetime) -> tuple[list[Any], list[dict[str, str]]]:
    """The cells of ``kubectl get pods``, by the rules of Kubernetes' ``printPod``."""
    meta, spec, status = pod.get("metadata", {}), pod.get("spec", {}), pod.get("status", {})
    phase = status.get("phase") or ""
    reason = status.get("reason") or phase
    for condition in status.get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("reason") == (
            "SchedulingGated"
        ):
            reason = "SchedulingGated"
    conditions = _COMPLETED if phase in ("Succeeded", "Failed") else []
    restarts, ready, last_restart = 0, 0, ""
    initializing, init_total = False, len(spec.get("initContainers") or [])
    for index, container in enumerate(status.get("initContainerStatuses") or []):
        restarts += int(container.get("restartCount") or 0)
        state = container.get("state") or {}
        terminated = state.get("terminated")
        if terminated is not None and terminated.get("exitCode") == 0:
            continue
        initializing = True
        if terminated is not None:
            reason = "Init:" + (
                terminated.get("reason")
                or (
                    f"Signal:{terminated['signal']}"
                    if terminated.get("signal")
                    else f"ExitCode:{terminated.get('exitCode')}"
                )
            )
        elif (state.get("waiting") or {}).get("reason") not in (None, "", "PodInitializing"):
            reason = "Init:" + state["waiting"]["reason"]
        else:
            reason = f"Init:{index}/{init_total}"
        break
    if not initializing or _condition_true(status, "Initialized"):
        restarts, has_running = 0, False
        for container in reversed(status.get("containerStatuses") or []):
            restarts += int(container.get("restartCount") or 0)
            finished = ((container.get("lastState") or {}).get("terminated") or {}).get(
                "finishedAt"
            )
            if finished and finished > last_restart:
                last_restart = finished
            state = container.get("state") or {}
            waiting, terminated = state.get("waiting"), state.get("terminated")
            if waiting is not None and waiting.get("reason"):
                reason = waiting["reason"]
            elif terminated is not None and terminated.get("reason"):
                reason = terminated["reason"]
            elif terminated is not None:
                reason = (
                    f"Signal:{terminated['signal']}"
                    if terminated.get("signal")
                    else f"ExitCode:{terminated.get('exitCode', 0)}"
                )
            elif container.get("ready") and state.get("running") is not None:
                has_running = True
                ready += 1
        if reason == "Completed" and has_running:
            reason = "Running" if _condition_true(status, "Ready") else "NotReady"
    if meta.get("deletionTimestamp"):
        if status.get("reason") == "NodeLost":
            reason = "Unknown"
        elif phase not in ("Succeeded", "Failed"):
            reason = "Terminating"
    restarts_cell = str(restarts)
    if restarts and last_restart:
        restarts_cell = f"{restarts} ({_since(last_restart, now)} ago)"
    ips = status.get("podIPs") or []
    ip = (ips[0].get("ip") if ips else None) or status.get("podIP") or "<none>"
    gates = spec.get("readinessGates") or []
    gates_cell = "<none>"
    if gates:
        wanted = {gate.get("conditionType") for gate in gates}
        true = sum(
            1
            for condition in status.get("conditions") or []
            if condition.get("type") in wanted and condition.get("status") == "True"
        )
        gates_cell = f"{true}/{len(gates)}"
    cells = [
        meta.get("name", ""),
        f"{ready}/{len(spec.get('containers') or [])}",
        reason,
        restarts_cell,
        _since(meta.get("creationTimestamp"), now),
        ip,
        spec.get("nodeName") or "<none>",
        status.get("nominatedNodeName") or "<none>",
        gates_cell,
    ]
    return cells, conditions


def _condition_true(status: Obj, kind: str) -> bool:
    return any(
        condition.get("type") == kind and condition.get("status") == "True"
        for condition in status.get("conditions") or []
    )


def _namespace_row(
    namespace: Obj, now: datetime.datetime
) -> tuple[list[Any], list[dict[str, str]]]:
    meta = namespace.get("metadata", {})
    phase = (namespace.get("status") or {}).get("phase") or ""
    return [meta.get("name", ""), phase, _since(meta.get("creationTimestamp"), now)], []


_Row = Callable[[Obj, datetime.datetime], tuple[list[Any], list[dict[str, str]]]]

_PRINTERS: dict[str, tuple[list[dict[str, Any]], _Row]] = {
    "pods": (_POD_COLUMNS, _pod_row),
    "namespaces": (_NAMESPACE_COLUMNS, _namespace_row),
}
