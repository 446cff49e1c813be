"""Following lab pods, lab namespaces and pod Events as they change.

Three watches serve every lab at once, whatever their number: one on pods
labelled ``app.kubernetes.io/managed-by=labd`` in all namespaces
(`PodWatcher`), one on namespaces with that label (`NamespaceWatcher`,
which tells deletes that a namespace is gone), and one on core/v1 Events
about pods in all namespaces (`PodEventWatcher`).  One watch (or one poll)
per lab would hold one pooled connection per lab: a thousand concurrent
spawns or deletes would exhaust the pool and load the API server for
nothing.

Why a watch is restarted, and from where:

- A watch is a long HTTP response the API server ends on its own
  (``timeoutSeconds``, its own limit, a restart).  Ending is normal: the
  watch is reopened from the last resourceVersion seen, so no change is
  missed and none is replayed.
- A connection can also go silent without closing (a NAT or load balancer
  that forgot it).  Nothing distinguishes that from a quiet cluster except
  time, so labd asks for bookmarks (the API server then sends one about
  every minute even when nothing changes, each carrying a newer
  resourceVersion) and treats a read that waits longer than
  ``kubernetes.watch_timeout`` as a dead connection: it reopens the watch
  from the last version.  The server-side ``timeoutSeconds`` is set a little
  under that, so a healthy watch ends by itself before the read timeout
  would fire.
- The API server keeps a window of recent changes only.  A watch from a
  version older than that window gets 410 Gone: the changes in between are
  lost for good, and the only way back to a true picture is to LIST again.
  After that re-LIST the pod watcher emits every current pod, and a deleted
  update for each pod it knew that is no longer there, so its consumer can
  treat a re-LIST as a full resync.
- Any other failure (refused connection, 5xx, a bug in a handler of the
  stream) is logged and retried with capped exponential backoff: the
  watchers never die while their consumer iterates.

The Event watch starts from *now*: it LISTs one Event only to learn the
current resourceVersion, then watches from it, so Events that existed
before the watch began are not replayed.  After a 410 it starts from now
again; Events are progress messages, and a few lost ones are not worth a
replay of every Event in the cluster.

Both watchers are async iterators; iterate them from one task and cancel
that task (or close the iterator with `contextlib.aclosing`) to stop: the
open watch connection is closed on the way out.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterable
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, Final

import aiohttp
import structlog
from kubernetes_asyncio import watch
from kubernetes_asyncio.client import ApiClient, CoreV1Api
from kubernetes_asyncio.client.exceptions import ApiException

from labd.config import Config
from labd.kube.builder import LAB_ID_LABEL, MANAGED_SELECTOR, USER_LABEL
from labd.kube.client import CallHook, KubeApi, KubeError, RetryPolicy
from labd.kube.listing import list_objects
from labd.kube.storage import LabPod, pod_status

__all__ = [
    "NamespaceWatcher",
    "PodEvent",
    "PodEventWatcher",
    "PodUpdate",
    "PodWatcher",
    "listed_pod_update",
]

_SERVER_TIMEOUT_SHARE: Final = 0.9
"""Server-side watch timeout, as a share of ``kubernetes.watch_timeout``."""

_LOG = structlog.get_logger()


@dataclass(frozen=True, slots=True)
class PodUpdate:
    """The state of one lab pod, as the watch last saw it."""

    namespace: str
    """The pod's namespace."""

    name: str
    """The pod's name."""

    lab_id: str
    """The lab it belongs to (its ``labd.io/lab-id`` label)."""

    slug: str
    """Its user's slug (its ``labd.io/user`` label)."""

    phase: str
    """``Pending``, ``Running``, ``Succeeded``, ``Failed`` or ``Unknown``;
    for a deleted pod, the last phase it had."""

    deleted: bool
    """Whether the pod is gone."""

    reason: str | None = None
    """Why it is in that phase, when Kubernetes says (``OOMKilled``,
    ``ImagePullBackOff``, ``Unschedulable``, ``Evicted``)."""

    message: str | None = None
    """Details of the reason."""

    pod_ip: str | None = None
    """The pod's address, once it has one."""


@dataclass(frozen=True, slots=True)
class PodEvent:
    """A Kubernetes Event about a pod in a lab namespace."""

    namespace: str
    """The pod's namespace."""

    pod_name: str
    """The pod's name."""

    reason: str
    """What happened: ``Scheduled``, ``Pulling``, ``Pulled``, ``Created``,
    ``Started``, ``Failed``, ``BackOff``, ``FailedScheduling``, ..."""

    message: str
    """The Event's text."""

    type: str
    """``Normal`` or ``Warning``."""


@dataclass(frozen=True, slots=True)
class _Listed:
    """A (re-)LIST happened; ``items`` is everything there is."""

    items: list[dict[str, Any]]


@dataclass(frozen=True, slots=True)
class _Changed:
    """One watch event."""

    type: str
    obj: dict[str, Any]


class _Backoff:
    """Capped exponential backoff with full jitter, reset by progress."""

    def __init__(self, policy: RetryPolicy) -> None:
        self._policy = policy
        self.failures = 0

    def reset(self) -> None:
        self.failures = 0

    async def wait(self) -> None:
        self.failures += 1
        ceiling = min(self._policy.maximum, self._policy.initial * 2 ** (self.failures - 1))
        await asyncio.sleep(random.uniform(ceiling / 2, ceiling))


_DEFAULT_BACKOFF: Final = RetryPolicy(attempts=1, initial=0.5, maximum=30.0)


class _Follower:
    """LIST, then watch from the LIST's version, forever: the shared engine.

    Yields `_Listed` after every (re-)LIST and `_Changed` for every change.
    """

    def __init__(
        self,
        api: KubeApi,
        *,
        kind: str,
        method: Callable[..., Awaitable[Any]],
        lister: Callable[[], Awaitable[tuple[list[dict[str, Any]], str]]],
        label_selector: str | None,
        field_selector: str | None,
        read_timeout: float,
        server_timeout: int,
        backoff: RetryPolicy,
    ) -> None:
        self._api = api
        self._kind = kind
        self._method = method
        self._lister = lister
        self._selectors: dict[str, str] = {}
        if label_selector:
            self._selectors["label_selector"] = label_selector
        if field_selector:
            self._selectors["field_selector"] = field_selector
        self._read_timeout = read_timeout
        self._server_timeout = server_timeout
        self._backoff = _Backoff(backoff)
        self.resource_version: str | None = None
        """The last version seen; `None` until listed, or when a re-LIST is due."""

    async def changes(self) -> AsyncGenerator[_Listed | _Changed, None]:
        log = _LOG.bind(watch=self._kind)
        while True:
            if self.resource_version is None:
                try:
                    items, version = await self._lister()
                except KubeError as error:
                    log.warning("LIST before watch failed", error=str(error))
                    await self._backoff.wait()
                    continue
                except Exception:
                    log.exception("LIST before watch failed unexpectedly")
                    await self._backoff.wait()
                    continue
                self.resource_version = version
                yield _Listed(items)
            received = 0
            try:
                async with aclosing(self._watch_once()) as stream:
                    async for change in stream:
                        received += 1
                        self._backoff.reset()
                        if change is not None:
                            yield change
            except ApiException as exc:
                self._api.record("watch", self._kind, error=True)
                if exc.status == 410:
                    log.info("Watch version expired (410 Gone); listing again")
                    self.resource_version = None
                    continue
                log.warning("Watch failed", status=exc.status, reason=exc.reason)
                await self._backoff.wait()
                continue
            except TimeoutError:
                self._api.record("watch", self._kind, error=True)
                log.warning("Watch silent too long; restarting", seconds=self._read_timeout)
                continue
            except (aiohttp.ClientError, OSError) as exc:
                self._api.record("watch", self._kind, error=True)
                log.warning("Watch connection failed", error=str(exc) or type(exc).__name__)
                await self._backoff.wait()
                continue
            except Exception:
                self._api.record("watch", self._kind, error=True)
                log.exception("Watch failed unexpectedly")
                await self._backoff.wait()
                continue
            self._api.record("watch", self._kind, error=False)
            log.debug("Watch ended; resuming", events=received)
            if received == 0:
                # An empty watch that ends at once (a proxy closing it, a
                # server that drops every stream) must not become a busy loop.
                await self._backoff.wait()

    async def _watch_once(self) -> AsyncGenerator[_Changed | None, None]:
        """Run one watch connection; yield `None` for a bookmark."""
        async with _Watch(self._api.api_client) as stream:
            events = stream.stream(
                self._method,
                resource_version=self.resource_version,
                allow_watch_bookmarks=True,
                timeout_seconds=self._server_timeout,
                _request_timeout=(self._api.request_timeout, self._read_timeout),
                **self._selectors,
            )
            async for event in events:
                if not isinstance(event, dict):
                    # kubernetes-asyncio passes on a line that is not JSON
                    # (a proxy's error page) as it is.
                    raise ValueError(f"watch stream sent something else: {str(event)[:200]!r}")
                obj = event.get("raw_object")
                if not isinstance(obj, dict):
                    raise ValueError(f"watch event without an object: {event!r}")
                version = (obj.get("metadata") or {}).get("resourceVersion")
                if version:
                    self.resource_version = str(version)
                kind = str(event.get("type", ""))
                yield None if kind == "BOOKMARK" else _Changed(kind, obj)


class _Watch(watch.Watch):
    """kubernetes-asyncio's watch, each event's object handed over as parsed once.

    The library parses each line, then, to build the object's model, turns
    the object back into JSON and parses that again, even when there is no
    model to build (``return_type="object"``): three JSON passes per event
    where one does, and a pod is several kilobytes.  Lines that are not
    events (a proxy's error page, an ``ERROR`` event, a ``Status``) still
    take the library's own path and its errors.

    The library also makes an `ApiClient` of its own for each watch, only
    to build models: a connection pool and an SSL context that reads the
    system's CA certificates, some 30 ms of the event loop per connection
    (at every start, for each watch, and at every reconnect).  This watch
    builds plain objects with the watcher's client, and leaves it open.
    """

    def __init__(self, api_client: ApiClient) -> None:
        # The library's own fields (kubernetes-asyncio 35 and 36), but the client.
        self._raw_return_type = "object"
        self._stop = False
        self._api_client = api_client
        self.resource_version = None
        self.resp = None

    async def close(self) -> None:
        """End the watch's response; the client is the watcher's to close."""
        response: Any = self.resp  # Typed as always None by the library.
        if response is not None:
            response.release()
            self.resp = None

    def unmarshal_event(self, data: str | bytes, response_type: str | None) -> Any:
        try:
            event = json.loads(data)
        except ValueError:
            return data
        if (
            not isinstance(event, dict)
            or not isinstance(event.get("object"), dict)
            or str(event.get("type", "")).upper() not in _EVENT_TYPES
        ):
            return super().unmarshal_event(data, response_type)
        event["raw_object"] = event["object"]
        version = (event["object"].get("metadata") or {}).get("resourceVersion")
        if version:
            self.resource_version = version
        return event


_EVENT_TYPES: Final = frozenset({"ADDED", "MODIFIED", "DELETED", "BOOKMARK"})


def _api(
    api_client: ApiClient,
    config: Config,
    *,
    retry: RetryPolicy | None,
    on_call: CallHook | None,
) -> KubeApi:
    """The calls of one watcher: the configured timeout, its retries and hook."""
    return KubeApi(
        api_client,
        request_timeout=config.kubernetes.request_timeout,
        retry=retry,
        on_call=on_call,
    )


def _timeouts(config: Config, server_timeout: int | None) -> tuple[float, int]:
    read_timeout = config.kubernetes.watch_timeout
    if server_timeout is None:
        server_timeout = max(1, int(read_timeout * _SERVER_TIMEOUT_SHARE))
    return read_timeout, server_timeout


def _lab_object_follower(
    api_client: ApiClient,
    config: Config,
    *,
    kind: str,
    method: Callable[..., Awaitable[Any]],
    convert: Callable[[dict[str, Any]], dict[str, Any]],
    on_call: CallHook | None,
    server_timeout: int | None,
    backoff: RetryPolicy,
    retry: RetryPolicy | None,
) -> _Follower:
    """A follower of the objects of one kind labd manages (`MANAGED_SELECTOR`).

    ``convert`` keeps what the watcher needs of each listed object.
    """
    api = _api(api_client, config, retry=retry, on_call=on_call)
    read_timeout, server_timeout = _timeouts(config, server_timeout)

    async def lister() -> tuple[list[dict[str, Any]], str]:
        return await list_objects(
            api, kind, method, convert=convert, label_selector=MANAGED_SELECTOR
        )

    return _Follower(
        api,
        kind=kind,
        method=method,
        lister=lister,
        label_selector=MANAGED_SELECTOR,
        field_selector=None,
        read_timeout=read_timeout,
        server_timeout=server_timeout,
        backoff=backoff,
    )


class PodWatcher:
    """Follows every lab pod through one label-selected, cluster-wide watch.

    Iterate `updates` for `PodUpdate` objects.  After the first LIST and
    after every re-LIST (410 Gone) it yields one update per existing pod
    and a ``deleted`` update for each previously seen pod that is gone;
    after that, one update per change.  Updates may repeat a state already
    reported; consumers should act on the state, not on the update.

    Parameters
    ----------
    api_client
        Client from `labd.kube.client.create_api_client`; the caller
        closes it.
    config
        ``kubernetes.watch_timeout`` and ``request_timeout``.
    on_call
        Hook counting calls and errors by verb and kind.
    server_timeout
        Seconds the API server keeps one watch open; by default a little
        under ``kubernetes.watch_timeout``.
    backoff
        Delays between reconnections after failures (``attempts`` unused).
    retry
        Retries of each LIST call.
    """

    def __init__(
        self,
        api_client: ApiClient,
        config: Config,
        *,
        on_call: CallHook | None = None,
        server_timeout: int | None = None,
        backoff: RetryPolicy = _DEFAULT_BACKOFF,
        retry: RetryPolicy | None = None,
    ) -> None:
        self._follower = _lab_object_follower(
            api_client,
            config,
            kind="Pod",
            method=CoreV1Api(api_client).list_pod_for_all_namespaces,
            convert=_as_listed,
            on_call=on_call,
            server_timeout=server_timeout,
            backoff=backoff,
            retry=retry,
        )

        self._known: dict[tuple[str, str], PodUpdate] = {}
        self._unseen: list[PodUpdate] = []

    @property
    def resource_version(self) -> str | None:
        """The last resourceVersion seen (bookmarks included)."""
        return self._follower.resource_version

    def start_from(
        self, version: str, pods: Iterable[PodUpdate], *, unseen: Iterable[PodUpdate] = ()
    ) -> None:
        """Skip the first LIST: watch from a LIST already made (by the reconciler).

        Call before iterating `updates`.  ``pods`` are that LIST's lab pods,
        which a later re-LIST compares with to report the pods deleted
        meanwhile; only those in ``unseen`` are reported now, first.

        Parameters
        ----------
        version
            The resourceVersion of that LIST.
        pods
            What it listed.
        unseen
            Those of ``pods`` the caller did not act on.
        """
        self._follower.resource_version = version
        self._known = {(pod.namespace, pod.name): pod for pod in pods}
        self._unseen = list(unseen)

    async def updates(self) -> AsyncGenerator[PodUpdate, None]:
        """Yield pod updates until cancelled; never raises `KubeError`.

        Yields
        ------
        PodUpdate
            The state of one lab pod.
        """
        known = self._known
        unseen, self._unseen = self._unseen, []
        for update in unseen:
            yield update
        async with aclosing(self._follower.changes()) as changes:
            async for change in changes:
                for update in _apply(change, known):
                    yield update


def _apply(change: _Listed | _Changed, known: dict[tuple[str, str], PodUpdate]) -> list[PodUpdate]:
    """Update ``known`` (pods by namespace and name) and return what to report."""
    if isinstance(change, _Listed):
        current: dict[tuple[str, str], PodUpdate] = {}
        for item in change.items:
            update = _pod_update(item, deleted=False)
            if update is not None:
                current[(update.namespace, update.name)] = update
        gone = [
            dataclasses.replace(known[key], deleted=True)
            for key in sorted(known.keys() - current.keys())
        ]
        known.clear()
        known.update(current)
        return [*gone, *current.values()]
    if change.type not in ("ADDED", "MODIFIED", "DELETED"):
        return []
    update = _pod_update(change.obj, deleted=change.type == "DELETED")
    if update is None:
        return []
    key = (update.namespace, update.name)
    if update.deleted:
        known.pop(key, None)
    else:
        known[key] = update
    return [update]


def listed_pod_update(pod: LabPod) -> PodUpdate | None:
    """Describe a listed lab pod as the watch would; `None` without lab labels."""
    identity = pod.identity
    if identity is None:
        return None
    return PodUpdate(
        namespace=pod.namespace,
        name=pod.name,
        lab_id=identity.lab_id,
        slug=identity.slug,
        phase=pod.phase,
        deleted=False,
        reason=pod.status.reason,
        message=pod.status.message,
        pod_ip=pod.status.pod_ip,
    )


def _as_listed(pod: dict[str, Any]) -> dict[str, Any]:
    """Keep a listed pod as it is: the watch turns it into an update as it replays it."""
    return pod


def _pod_update(pod: dict[str, Any], *, deleted: bool) -> PodUpdate | None:
    """Describe a pod; `None` for one without labd's lab labels."""
    meta = pod.get("metadata") or {}
    labels = meta.get("labels") or {}
    lab_id, slug = labels.get(LAB_ID_LABEL), labels.get(USER_LABEL)
    if not lab_id or not slug:
        _LOG.debug("Ignoring pod without lab labels", namespace=meta.get("namespace"))
        return None
    status = pod_status(pod)
    return PodUpdate(
        namespace=meta.get("namespace", ""),
        name=meta.get("name", ""),
        lab_id=lab_id,
        slug=slug,
        phase=status.phase,
        deleted=deleted,
        reason=status.reason,
        message=status.message,
        pod_ip=status.pod_ip,
    )


class NamespaceWatcher:
    """Reports lab namespaces that are gone, through one label-selected watch.

    Iterate `gone` for the names of deleted lab namespaces: one per
    ``DELETED`` change, and after every re-LIST (410 Gone) one for each
    namespace seen before that the LIST no longer has.  Only names are
    kept, so following 10,000 namespaces costs little memory.

    Parameters
    ----------
    api_client
        Client from `labd.kube.client.create_api_client`; the caller
        closes it.
    config
        ``kubernetes.watch_timeout`` and ``request_timeout``.
    on_call
        Hook counting calls and errors by verb and kind.
    server_timeout
        Seconds the API server keeps one watch open; by default a little
        under ``kubernetes.watch_timeout``.
    backoff
        Delays between reconnections after failures (``attempts`` unused).
    retry
        Retries of each LIST call.
    """

    def __init__(
        self,
        api_client: ApiClient,
        config: Config,
        *,
        on_call: CallHook | None = None,
        server_timeout: int | None = None,
        backoff: RetryPolicy = _DEFAULT_BACKOFF,
        retry: RetryPolicy | None = None,
    ) -> None:
        self._follower = _lab_object_follower(
            api_client,
            config,
            kind="Namespace",
            method=CoreV1Api(api_client).list_namespace,
            convert=_name_only,
            on_call=on_call,
            server_timeout=server_timeout,
            backoff=backoff,
            retry=retry,
        )
        self._known: set[str] = set()

    def start_from(self, version: str, names: Iterable[str]) -> None:
        """Skip the first LIST: watch from a LIST already made (by the reconciler).

        Call before iterating `gone`.

        Parameters
        ----------
        version
            The resourceVersion of that LIST.
        names
            The lab namespaces it listed.
        """
        self._follower.resource_version = version
        self._known = set(names)

    async def gone(self) -> AsyncGenerator[str, None]:
        """Yield the names of deleted lab namespaces until cancelled; never raises.

        Yields
        ------
        str
            A namespace that no longer exists.
        """
        async with aclosing(self._follower.changes()) as changes:
            async for change in changes:
                for name in self._gone(change):
                    yield name

    def _gone(self, change: _Listed | _Changed) -> list[str]:
        if isinstance(change, _Listed):
            listed = {_name_of(item) for item in change.items}
            gone = sorted(self._known - listed)
            self._known = listed
            return gone
        name = _name_of(change.obj)
        if change.type == "DELETED":
            self._known.discard(name)
            return [name]
        if change.type == "ADDED":
            self._known.add(name)
        return []


def _name_only(namespace: dict[str, Any]) -> dict[str, Any]:
    """Keep a listed namespace's name only."""
    return {"metadata": {"name": _name_of(namespace)}}


def _name_of(namespace: dict[str, Any]) -> str:
    return str((namespace.get("metadata") or {}).get("name") or "")


class PodEventWatcher:
    """Follows Kubernetes Events about pods in lab namespaces, from now on.

    Iterate `events` for `PodEvent` objects.  One watch covers the whole
    cluster (Events about pods, selected by field); Events outside
    namespaces starting with ``<namespace_prefix>-`` are dropped here.

    Parameters
    ----------
    api_client
        Client from `labd.kube.client.create_api_client`; the caller
        closes it.
    config
        ``namespace_prefix``, ``kubernetes.watch_timeout`` and
        ``request_timeout``.
    on_call
        Hook counting calls and errors by verb and kind.
    server_timeout
        Seconds the API server keeps one watch open; by default a little
        under ``kubernetes.watch_timeout``.
    backoff
        Delays between reconnections after failures (``attempts`` unused).
    retry
        Retries of each LIST call.
    """

    def __init__(
        self,
        api_client: ApiClient,
        config: Config,
        *,
        on_call: CallHook | None = None,
        server_timeout: int | None = None,
        backoff: RetryPolicy = _DEFAULT_BACKOFF,
        retry: RetryPolicy | None = None,
    ) -> None:
        api = _api(api_client, config, retry=retry, on_call=on_call)
        core = CoreV1Api(api_client)
        read_timeout, server_timeout = _timeouts(config, server_timeout)
        self._prefix = f"{config.namespace_prefix}-"

        async def now() -> tuple[list[dict[str, Any]], str]:
            # One Event is enough to learn the current version.
            reply = await api.call(
                "list",
                "Event",
                core.list_event_for_all_namespaces,
                field_selector=_POD_EVENTS,
                limit=1,
            )
            version = (reply.body.get("metadata") or {}).get("resourceVersion") or ""
            return [], str(version)

        self._follower = _Follower(
            api,
            kind="Event",
            method=core.list_event_for_all_namespaces,
            lister=now,
            label_selector=None,
            field_selector=_POD_EVENTS,
            read_timeout=read_timeout,
            server_timeout=server_timeout,
            backoff=backoff,
        )

    async def events(self) -> AsyncGenerator[PodEvent, None]:
        """Yield Events about lab pods until cancelled; never raises `KubeError`.

        An Event updated in place (its count raised because it happened
        again) is yielded again.

        Yields
        ------
        PodEvent
            One Event.
        """
        async with aclosing(self._follower.changes()) as changes:
            async for change in changes:
                event = self._event(change)
                if event is not None:
                    yield event

    def _event(self, change: _Listed | _Changed) -> PodEvent | None:
        """The Event a change reports, if it is about a pod in a lab namespace."""
        if isinstance(change, _Listed) or change.type not in ("ADDED", "MODIFIED"):
            return None
        involved = change.obj.get("involvedObject") or {}
        namespace = str(involved.get("namespace") or "")
        if involved.get("kind") != "Pod" or not namespace.startswith(self._prefix):
            return None
        return PodEvent(
            namespace=namespace,
            pod_name=str(involved.get("name") or ""),
            reason=str(change.obj.get("reason") or ""),
            message=str(change.obj.get("message") or ""),
            type=str(change.obj.get("type") or "Normal"),
        )


_POD_EVENTS: Final = "involvedObject.kind=Pod"
"""Field selector of Events about pods."""
