"""The composition root: builds labd's parts and runs them together.

`Labd` is the one place where the database, the store, the service, the
Kubernetes client, the watches, the scheduler and the reconciler are wired
to each other.  ``labd serve``, ``labd dev``, the tests and the benchmarks
all build labd through it, so they all run the same thing.

Start-up order: the schema is checked first (labd refuses a database it
cannot run on: an older one, or a newer one past a contract migration);
then `Labd.start` starts the scheduler and the first try at leadership
(`labd.control.leading`) and returns, and labd serves.  Its answers come
from the rows, which hold everything users asked for, so a restarted labd
is ready before its first reconcile has caught up with what changed in the
cluster while it was down, as a replica that does not lead always is.  If
it leads, that reconcile runs in the background and the watches start from
its LISTs.  A lone labd (SQLite) withdraws readiness only once a try at
the leader's duties failed, until one succeeds.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from typing import Any

import structlog
from kubernetes_asyncio.client import ApiClient

from labd import tasks
from labd.alerts import Alerts
from labd.api.service import LabService
from labd.config import Config
from labd.control.intake import WatchIntake
from labd.control.leading import Leader
from labd.control.reconciler import Reconciler, ReconcileReport
from labd.control.scheduler import Scheduler
from labd.control.state import ControlState, LabLocks
from labd.control.steps import LabSteps
from labd.db.changes import ChangeListener, warm_status
from labd.db.database import Database
from labd.db.leadership import LeadershipLostError, leader_lock
from labd.db.revision import SCHEMA_REVISION, check_schema
from labd.db.status import StatusCache
from labd.db.store import LabStore
from labd.images.catalog import ImageCatalog
from labd.images.registry import RegistryClient
from labd.kube.client import KubeError, create_api_client
from labd.kube.storage import LabKube
from labd.kube.watching import NamespaceWatcher, PodEventWatcher, PodWatcher
from labd.lab.machine import LabState
from labd.lab.metrics import Metrics
from labd.lab.signals import LabSignals

__all__ = ["Labd"]

_logger = structlog.get_logger()

_STOP_GRACE = 10.0
"""Seconds in-flight steps get to finish on shutdown before they are cancelled."""


class Labd:
    """All of labd's parts, wired together.

    Build with `Labd.create`; then `start` and, at the end, `stop`.
    """

    def __init__(
        self,
        *,
        config: Config,
        database: Database,
        api_client: ApiClient,
        alerts: Alerts | None = None,
    ) -> None:
        self.config = config
        self.database = database
        self.api_client = api_client
        self.metrics = Metrics()
        self.alerts = alerts or Alerts.from_config(config.alerts, metrics=self.metrics)
        self.store = LabStore(database)
        # On PostgreSQL other replicas write too: the cache waits for the
        # change listener.  On SQLite labd is the only writer.
        self.status = StatusCache(self.store, enabled=database.is_sqlite, metrics=self.metrics)
        self.store.on_write.append(self.status.invalidate)
        # Likewise every change is heard on SQLite; on PostgreSQL while the
        # change listener listens.
        self.signals = LabSignals(complete=database.is_sqlite, sole_writer=database.is_sqlite)
        self.store.on_row.append(self.signals.seen)
        self.store.on_change.append(self.signals.notify)
        self.change_listener = (
            None
            if database.is_sqlite
            else ChangeListener(
                database.url,
                status=self.status,
                signals=self.signals,
                own_backends=database.backend_pids,
            )
        )
        registry = config.images.registry
        self.images = ImageCatalog(
            config.images,
            registry=RegistryClient(registry) if registry is not None else None,
            metrics=self.metrics,
        )
        self.service = LabService(
            config=config,
            store=self.store,
            signals=self.signals,
            images=self.images,
            metrics=self.metrics,
            status=self.status,
        )
        self.kube = LabKube(api_client, config, on_call=self.metrics.kube_call)
        self.control = ControlState(locks=LabLocks(), alerts=self.alerts)
        steps = LabSteps(
            config=config,
            store=self.store,
            signals=self.signals,
            kube=self.kube,
            state=self.control,
            metrics=self.metrics,
            alerts=self.alerts,
        )
        self.intake = WatchIntake(
            store=self.store, signals=self.signals, state=self.control, steps=steps
        )
        self.scheduler = Scheduler(
            config=config,
            store=self.store,
            signals=self.signals,
            state=self.control,
            steps=steps,
            alerts=self.alerts,
        )
        self.leader = Leader(leader_lock(database), duties=self._lead, metrics=self.metrics)
        self.reconciler = Reconciler(
            config=config,
            store=self.store,
            kube=self.kube,
            intake=self.intake,
            locks=self.control.locks,
            signals=self.signals,
            alerts=self.alerts,
            fence=self.leader.confirm,
        )
        self.last_reconcile: ReconcileReport | None = None
        self._leading: asyncio.Task[None] | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._not_ready = "starting"
        self._stopped = False
        self._stopping = asyncio.Event()
        self._loop: asyncio.Task[None] | None = None

    @classmethod
    async def create(cls, config: Config) -> Labd:
        """Connect to the database and Kubernetes; refuse a stale schema.

        Raises
        ------
        SchemaError
            If labd cannot run on the database's schema.
        """
        database = Database(config.database_url, lock_timeout=config.database_lock_timeout)
        try:
            revision = await check_schema(database)
            if revision != SCHEMA_REVISION:
                _logger.info(
                    "running on a newer schema (only expand migrations since this labd's)",
                    schema_revision=revision,
                    labd_revision=SCHEMA_REVISION,
                )
            api_client = await create_api_client(config.kubernetes)
        except BaseException:
            await database.dispose()
            raise
        return cls(config=config, database=database, api_client=api_client)

    async def start(self) -> None:
        """Read the image registry, start the loops and the first try at leadership.

        It returns without waiting for that try (`wait_settled` waits): the
        scheduler claims labs meanwhile, as on a replica that does not lead,
        and the first reconcile skips the labs it steps.  A registry that
        cannot be read does not stop the start: labd serves the configured
        images until a later refresh succeeds.
        """
        self.alerts.start()
        if self.change_listener is not None:
            self._tasks.append(tasks.spawn(self.change_listener.run(), name="change-listener"))
        await self.images.refresh()
        self._leading = tasks.spawn(self.leader.run(), name="leadership")
        self._loop = tasks.spawn(self.scheduler.run(), name="scheduler")
        self._tasks += [
            tasks.spawn(self.images.refresh_periodically(self._stopping), name="image-refresh"),
            tasks.spawn(self._warm_status(), name="status-warm"),
        ]
        self._not_ready = ""
        _logger.info("labd started")

    async def wait_settled(self) -> None:
        """Wait until the first try at leadership has ended.

        That is: this replica is on duty (its first reconcile done, its
        watches started), another replica leads, or the try failed.

        Raises
        ------
        Exception
            Whatever ended the leadership task, which cannot end on its own.
        """
        assert self._leading is not None, "start labd first"
        settled = tasks.spawn(self.leader.settled.wait(), name="leadership-settled")
        await asyncio.wait({self._leading, settled}, return_when=asyncio.FIRST_COMPLETED)
        await tasks.cancel_and_wait([settled])
        if self._leading.done():
            self._leading.result()

    async def _lead(self, term: int) -> None:
        """The leader's duties in one term; they run until cancelled.

        A reconcile first, then the pod and namespace watches from its
        LISTs (no second LIST of every pod, no replay of them all), the
        Event watch from now, and a reconcile every ``reconcile_interval``.
        The scheduler steps labs meanwhile, so the watches first report what
        the reconcile's LISTs hold that it did not act on: the pods it did
        not look at, and the namespaces of deletes that went before them.
        """
        self.intake.forget()
        report = await self._reconcile()
        on_call = self.metrics.kube_call
        pods = PodWatcher(self.api_client, self.config, on_call=on_call)
        namespaces = NamespaceWatcher(self.api_client, self.config, on_call=on_call)
        events = PodEventWatcher(self.api_client, self.config, on_call=on_call)
        if report.pod_version:
            pods.start_from(report.pod_version, report.pods, unseen=report.unseen)
        if report.namespace_version:
            namespaces.start_from(report.namespace_version, report.namespaces)
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(
                    self.intake.run(
                        pods=pods.updates(), events=events.events(), namespaces=namespaces.gone()
                    ),
                    name="watches",
                )
                group.create_task(self._reconcile_periodically(), name="reconcile")
                group.create_task(self._gone_before(report.namespaces), name="gone-before")
                self.control.watching = True
                self.leader.on_duty()
        finally:
            self.control.watching = False

    async def _gone_before(self, listed: list[str]) -> None:
        """Finish the deletes whose namespace went before the reconcile's LIST.

        The namespace watch starts from that LIST, so it never reports
        them: a delete stepped while the first reconcile ran, say.  Each
        namespace a delete waits for that the LIST did not have is read
        once; one that exists now is reported by the watch when it goes.
        """
        waiting = set(self.control.deleting)
        try:
            deleting = await self.store.list_lab_summaries([LabState.DELETING])
        except Exception as exc:
            # Not worth the leader's duties: each delete rechecks on its own.
            _logger.warning(
                "could not read the labs being deleted; their deletes recheck",
                error=tasks.describe_error(exc),
            )
            deleting = []
        waiting.update(lab.namespace for lab in deleting)
        for namespace in sorted(waiting.difference(listed)):
            try:
                gone = await self.kube.namespace_gone(namespace)
            except KubeError as exc:
                _logger.warning(
                    "could not read the namespace of a lab being deleted; its delete rechecks it",
                    namespace=namespace,
                    error=tasks.describe_error(exc),
                )
                continue
            if gone:
                self.intake.namespace_gone(namespace)

    async def _warm_status(self) -> None:
        """Preload every user's status after the first try at leadership.

        Not before: the first reconcile comes first.  On PostgreSQL, also
        not before the change listener listens.
        """
        await self.leader.settled.wait()
        if self.change_listener is not None:
            await self.change_listener.listening.wait()
        await warm_status(self.status)

    async def stop(self) -> None:
        """Stop the loops, give in-flight steps a moment, close connections.

        Nothing is cancelled in the middle of a database write if it can be
        helped: the scheduler loop is asked to stop and awaited, the watch
        loops (which only wait on their watches) are cancelled, and the steps
        and changes already started get `_STOP_GRACE` seconds to finish.
        Labs keep running; unfinished steps resume from their rows on the
        next start.
        """
        if self._stopped:
            return
        self._stopped = True
        self._not_ready = "stopping"
        self._stopping.set()
        if self._leading is not None:
            # Hand leadership over first: another replica takes it at once.
            await tasks.cancel_and_wait([self._leading])
        self.scheduler.request_stop()
        if self._loop is not None:
            _, pending = await asyncio.wait({self._loop}, timeout=_STOP_GRACE)
            await tasks.cancel_and_wait(list(pending))
        await tasks.cancel_and_wait(self._tasks)
        await self.scheduler.drain(grace=_STOP_GRACE)
        await self.scheduler.release_leases()
        await self.alerts.stop()
        await self.images.aclose()
        await self.api_client.close()
        await self.database.dispose()

    async def readiness(self) -> str | None:
        """Return why labd is not ready, or `None` when it is."""
        if self._not_ready:
            return self._not_ready
        if (
            self.database.is_sqlite
            and self.leader.settled.is_set()
            and self.leader.on_duty_since is None
        ):
            # The only labd leads, and a try at its duties failed: until one
            # succeeds, no pod change moves a lab along.  (During the first
            # try labd is ready: it answers from the rows.)
            return "the reconcile has not succeeded yet (is Kubernetes reachable?); retrying"
        try:
            await check_schema(self.database)
        except Exception as exc:
            return f"database not usable: {exc}"
        return None

    async def _reconcile(self) -> ReconcileReport:
        report = await self.reconciler.reconcile()
        self.metrics.reconcile_duration.observe(report.seconds)
        for action, items in (
            ("adopted", report.adopted),
            ("orphan", report.orphans),
            ("vanished", report.vanished),
            ("updated", report.updated),
        ):
            if items:
                self.metrics.reconcile_actions.labels(action).inc(len(items))
        self.last_reconcile = dataclasses.replace(report, pods=[], unseen=[])
        return report

    async def _reconcile_periodically(self) -> None:
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.config.reconcile_interval)
            if self._stopping.is_set():
                return
            try:
                await self._reconcile()
            except LeadershipLostError:
                raise  # The leader steps down.
            except Exception as exc:
                _logger.exception("reconcile failed; will try again")
                self.alerts.unexpected("the periodic reconcile", exc)
