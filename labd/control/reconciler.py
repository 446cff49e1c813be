"""The reconciler: the backstop that makes rows and cluster agree.

The pod watch keeps labs current in well under a second, but watches can
miss things (labd was down, a watch was cut) and objects can change behind
labd's back.  At start, and every ``reconcile_interval``, the reconciler
compares the lab rows with the cluster, using one LIST of namespaces and one
of pods, never a GET per known lab:

* lab objects with no row are *adopted*: the row is rebuilt from the
  objects' labels and annotations, and the environment ConfigMap (one GET
  for each lab adopted);
* objects of a lab whose row says ``deleted``, or of a user who already has
  another current lab, are *orphans* and are deleted;
* a ``starting`` or ``running`` lab whose pod or namespace vanished, or
  whose pod moved on while the watch was not looking, is moved along as the
  watch would have.

Races: the rows are read *before* the LISTs, and every change is written
with the version read then.  A lab whose row changed after that read, by a
step, the watch or an API call, fails the version check and is left to the
next pass; labs whose step is in flight in this process are skipped
outright.

Only the leader reconciles (`labd.control.leading`).  Right before each
action (an adoption, an orphan's delete, a lab moved along) it checks that
its term is still current (the *fence*, `labd.db.leadership`); an adoption
checks it again inside its write transaction.  A replica that lost
leadership mid-pass stops there with `LeadershipLostError`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import structlog

from labd.alerts import AlertKind, Alerts
from labd.config import Config
from labd.control.intake import WatchIntake
from labd.control.state import LabLocks
from labd.db.store import LabExistsError, LabStore
from labd.kube.builder import SERVICE_PREFIX_VAR, LabIdentity, internal_url
from labd.kube.storage import LabKube, LabNamespace
from labd.kube.watching import PodUpdate, listed_pod_update
from labd.lab.machine import LabState, Trigger
from labd.lab.records import Actor, LabSummary
from labd.lab.signals import LabSignals
from labd.lab.spec import LabSpec, LabSpecError

__all__ = ["ReconcileReport", "Reconciler"]

_logger = structlog.get_logger()

_WATCHED = frozenset({LabState.STARTING, LabState.RUNNING})


@dataclass(slots=True)
class ReconcileReport:
    """What one reconcile pass found and did."""

    labs: int = 0
    """Rows compared."""

    adopted: list[str] = field(default_factory=list)
    """Lab ids whose rows were rebuilt from the cluster."""

    orphans: list[str] = field(default_factory=list)
    """Namespaces deleted because no current lab owns them."""

    vanished: list[str] = field(default_factory=list)
    """Lab ids whose pod or namespace was gone."""

    updated: list[str] = field(default_factory=list)
    """Lab ids moved along with a pod phase the watch had missed."""

    seconds: float = 0.0
    """How long the pass took."""

    pods: list[PodUpdate] = field(default_factory=list, repr=False)
    """Every lab pod the pass listed (for the pod watch to start from)."""

    pod_version: str | None = None
    """The resourceVersion of the pod LIST."""

    namespaces: list[str] = field(default_factory=list, repr=False)
    """Every lab namespace the pass listed (for the namespace watch to start from)."""

    namespace_version: str | None = None
    """The resourceVersion of the namespace LIST."""

    unseen: list[PodUpdate] = field(default_factory=list, repr=False)
    """Listed pods the pass did not look at: those of labs created, in
    flight or changed since its read of the rows, and of labs not yet
    ``starting``.  A pod watch that starts from the pass's LIST reports
    them first, as one that made the LIST itself would."""


class Reconciler:
    """Compares lab rows with the cluster and repairs the differences.

    Parameters
    ----------
    config
        labd's configuration.
    store
        Lab persistence.
    kube
        LISTs and deletes of lab objects.
    intake
        Applies pod phases the way the watch does.
    locks
        Shared with the scheduler: labs in flight are skipped.
    signals
        Wake-ups for the scheduler.
    alerts
        Where removed orphans are reported; disabled if not given.
    fence
        Returns the leader's term after checking it is still current, or
        raises `LeadershipLostError`; none for a reconciler that always
        leads (tests, benchmarks).
    """

    def __init__(
        self,
        *,
        config: Config,
        store: LabStore,
        kube: LabKube,
        intake: WatchIntake,
        locks: LabLocks,
        signals: LabSignals,
        alerts: Alerts | None = None,
        fence: Callable[[], Awaitable[int]] | None = None,
    ) -> None:
        self._fence = fence
        self._config = config
        self._store = store
        self._kube = kube
        self._intake = intake
        self._locks = locks
        self._signals = signals
        self._alerts = alerts or Alerts()

    async def reconcile(self) -> ReconcileReport:
        """Run one pass; return what it did."""
        start = time.monotonic()
        report = ReconcileReport()
        rows = {lab.id: lab for lab in await self._store.list_lab_summaries(_NOT_DELETED)}
        report.labs = len(rows)
        namespaces, pods = await asyncio.gather(
            self._kube.list_lab_namespaces(), self._kube.list_lab_pods()
        )
        report.pod_version = self._kube.pod_list_version
        report.namespace_version = self._kube.namespace_list_version
        report.namespaces = [namespace.name for namespace in namespaces]
        report.pods = [u for u in map(listed_pod_update, pods) if u is not None]
        listed = {update.lab_id: update for update in report.pods}
        ns_by_lab = _by_lab(namespaces)

        for lab_id, (namespace, ident) in ns_by_lab.items():
            if lab_id in rows or lab_id in self._locks.in_flight:
                continue
            await self._unknown_lab(namespace, ident, listed.get(lab_id), report)

        seen: set[str] = set(report.adopted)
        for lab in rows.values():
            if lab.id in self._locks.in_flight or lab.state not in _WATCHED:
                continue
            namespace_entry = ns_by_lab.get(lab.id)
            listed_pod = listed.get(lab.id)
            gone = (
                namespace_entry is None
                or namespace_entry[0].deletion_timestamp is not None
                or listed_pod is None
            )
            if gone:
                seen.add(lab.id)
                update = PodUpdate(
                    namespace=lab.namespace,
                    name="",
                    lab_id=lab.id,
                    slug=lab.slug,
                    phase="Unknown",
                    deleted=True,
                    reason=None,
                    message=None,
                )
                if await self._apply(lab, update):
                    report.vanished.append(lab.id)
                continue
            assert listed_pod is not None
            phase = listed_pod.phase
            if phase != lab.pod_phase and phase in ("Running", "Succeeded", "Failed"):
                if await self._apply(lab, listed_pod):
                    report.updated.append(lab.id)
                    seen.add(lab.id)
            else:
                # Nothing to do: the watch need not look at this pod again
                # when it starts by replaying every pod.
                self._intake.remember_pod(listed_pod)
                seen.add(lab.id)
        report.unseen = [update for update in report.pods if update.lab_id not in seen]

        report.seconds = time.monotonic() - start
        log = _logger.bind(
            labs=report.labs,
            adopted=len(report.adopted),
            orphans=len(report.orphans),
            vanished=len(report.vanished),
            updated=len(report.updated),
            seconds=round(report.seconds, 3),
        )
        if report.adopted or report.orphans or report.vanished or report.updated:
            log.info("reconciled")
        else:
            log.debug("reconciled")
        self._signals.wake_scheduler()
        return report

    async def _confirm(self) -> int | None:
        """Check this replica still leads, right before an action; return the term."""
        return None if self._fence is None else await self._fence()

    async def _apply(self, lab: LabSummary, update: PodUpdate) -> bool:
        """Apply a pod state the watch missed, unless the lab moved since."""
        await self._confirm()
        return await self._intake.apply_pod_update(update, expected_version=lab.version)

    async def _unknown_lab(
        self,
        namespace: LabNamespace,
        ident: LabIdentity,
        pod: PodUpdate | None,
        report: ReconcileReport,
    ) -> None:
        if namespace.deletion_timestamp is not None:
            return  # Already going away.
        known = await self._store.find_lab(ident.lab_id)
        if known is not None:
            if known.state is LabState.DELETED:
                await self._delete_orphan(namespace, "its lab was deleted", report)
            return  # Created after our read of the rows: next pass.
        if ident.username is None or ident.spec is None:
            await self._delete_orphan(namespace, "it has no labd annotations", report)
            return
        try:
            annotated = LabSpec.from_annotation(ident.spec)
        except LabSpecError:
            why = "its spec annotation is not JSON, or not a lab spec"
            await self._delete_orphan(namespace, why, report)
            return
        env = await self._kube.read_lab_environment(namespace.name, ident.slug) or {}
        spec = annotated.with_env(env)
        pod_phase = pod.phase if pod is not None else None
        term = await self._confirm()
        try:
            lab = await self._store.create_lab(
                lab_id=ident.lab_id,
                username=ident.username,
                slug=ident.slug,
                namespace=namespace.name,
                spec=spec,
                actor=Actor.RECONCILER,
                trigger=Trigger.ADOPT,
                reason="Lab objects found without a row",
                changes={
                    "pod_phase": pod_phase,
                    "internal_url": internal_url(
                        namespace.name,
                        env,
                        self._config,
                        pod_ip=pod.pod_ip if pod is not None else None,
                    )
                    if SERVICE_PREFIX_VAR in env
                    else None,
                },
                leader_term=term,
            )
        except LabExistsError:
            await self._delete_orphan(namespace, "the user has another lab", report)
            return
        report.adopted.append(lab.id)
        _logger.info("lab adopted", username=lab.username, lab_id=lab.id, state=lab.state.value)

    async def _delete_orphan(
        self, namespace: LabNamespace, why: str, report: ReconcileReport
    ) -> None:
        await self._confirm()
        _logger.warning("deleting orphaned lab namespace", namespace=namespace.name, why=why)
        await self._kube.delete_namespace(namespace.name)
        report.orphans.append(namespace.name)
        ident = namespace.identity
        self._alerts.alert(
            AlertKind.ORPHAN_REMOVED,
            f"Deleted orphaned lab namespace {namespace.name}",
            username=ident.username if ident else None,
            lab_id=ident.lab_id if ident else None,
            detail=f"Deleted because {why}",
        )


_NOT_DELETED = [state for state in LabState if state not in (LabState.NEW, LabState.DELETED)]


def _by_lab(namespaces: list[LabNamespace]) -> dict[str, tuple[LabNamespace, LabIdentity]]:
    found = {}
    for namespace in namespaces:
        ident = namespace.identity
        if ident is not None:
            found[ident.lab_id] = (namespace, ident)
    return found
