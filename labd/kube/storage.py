"""Lab objects in Kubernetes: create, delete, check and list them.

Every operation here is safe to repeat, because the scheduler repeats steps
after a crash, a restart or a failed attempt:

- A create that finds the object already there (409) reads it and checks
  its `LAB_ID_LABEL`: the same lab means an earlier attempt got this far
  (or a retried create reached etcd before its answer was lost), so labd
  carries on; another lab's object is a real conflict and raises.
- A delete that finds nothing (404) is done.

A namespace that is being deleted cannot receive new objects, and a user's
namespace name is the same for every lab of theirs: a new lab created while
the previous one's namespace terminates must wait.  That case raises
`NamespaceTerminatingError`, whatever step meets it, so the scheduler can
retry later instead of failing the lab.

A new namespace also cannot take pods until its ``default`` ServiceAccount
exists (the ServiceAccount admission plugin answers 403 until the
controller has made it, usually within a second): the pod create waits for
that rather than failing the spawn.

The reconciler lists namespaces and pods once each across all namespaces,
selected by `MANAGED_SELECTOR` and paged, and reads the answers as plain
JSON: it compares what exists with the database and never issues a GET per
lab it already knows.  A lab it adopts costs one GET, of its ConfigMap.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, TypeVar

import structlog
from kubernetes_asyncio.client import ApiClient, CoreV1Api, NetworkingV1Api

from labd.config import Config
from labd.kube.builder import (
    LAB_ID_LABEL,
    MANAGED_SELECTOR,
    LabIdentity,
    LabObjects,
    config_map_name,
    parse_lab_labels,
)
from labd.kube.client import (
    CallHook,
    KubeApi,
    KubeError,
    Reply,
    RetryPolicy,
)
from labd.kube.listing import LIST_PAGE_SIZE, list_objects

__all__ = [
    "LabKube",
    "LabNamespace",
    "LabPod",
    "NamespaceTerminatingError",
    "PodStatus",
    "pod_status",
]

_SERVICE_ACCOUNT_WAIT: Final = 15.0
"""Seconds a pod create waits for its namespace's default ServiceAccount."""

_LOG = structlog.get_logger()

_Item = TypeVar("_Item")


class NamespaceTerminatingError(KubeError):
    """The lab's namespace is being deleted; try again once it is gone.

    Raised by `LabKube.create_lab_objects` when the namespace exists but is
    terminating (usually the user's previous lab), or when an object cannot
    be created in it for that reason.
    """


@dataclass(frozen=True, slots=True)
class PodStatus:
    """The phase of a pod and the most telling reason for it."""

    phase: str
    """``Pending``, ``Running``, ``Succeeded``, ``Failed`` or ``Unknown``."""

    reason: str | None
    """Why, when Kubernetes says: ``OOMKilled``, ``ImagePullBackOff``,
    ``Unschedulable``, ``Evicted``, ``Error``, ``Completed``."""

    message: str | None
    """Details, when Kubernetes gives some (with the exit code of a
    terminated container)."""

    pod_ip: str | None = None
    """The pod's address, once it has one."""


@dataclass(frozen=True, slots=True)
class LabNamespace:
    """A namespace labd manages, as listed."""

    name: str
    """Namespace name."""

    labels: Mapping[str, str]
    """Its labels."""

    annotations: Mapping[str, str]
    """Its annotations (the lab spec among them)."""

    phase: str | None
    """``Active`` or ``Terminating``."""

    deletion_timestamp: datetime | None
    """When its deletion was asked, if it was."""

    @property
    def identity(self) -> LabIdentity | None:
        """The lab it belongs to, or `None` if its labels are incomplete."""
        return parse_lab_labels({"labels": self.labels, "annotations": self.annotations})


@dataclass(frozen=True, slots=True)
class LabPod:
    """A lab pod, as listed."""

    namespace: str
    """Its namespace."""

    name: str
    """Pod name."""

    labels: Mapping[str, str]
    """Its labels."""

    annotations: Mapping[str, str]
    """Its annotations (the lab spec among them)."""

    status: PodStatus
    """Phase and reason."""

    deletion_timestamp: datetime | None
    """When its deletion was asked, if it was."""

    @property
    def phase(self) -> str:
        """The pod phase."""
        return self.status.phase

    @property
    def identity(self) -> LabIdentity | None:
        """The lab it belongs to, or `None` if its labels are incomplete."""
        return parse_lab_labels({"labels": self.labels, "annotations": self.annotations})


def _timestamp(text: Any) -> datetime | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


def pod_status(pod: Mapping[str, Any]) -> PodStatus:
    """Summarise a pod's status as a phase, a reason and a message.

    The reason is the most specific one found: the pod's own when it has
    one (``Evicted``, ``DeadlineExceeded``), else a terminated or waiting
    container's (``OOMKilled``, ``Error``, ``ImagePullBackOff``), else a
    failed scheduling condition (``Unschedulable``).

    A pod that Kubernetes calls Running but whose ``Ready`` condition is
    false is ``Pending`` here, with the condition's reason: its containers
    run, but the lab does not answer yet (its readiness probe has not
    passed), and the hub must not send a user to it.  A lab therefore
    becomes ``running`` only once it answers; a running lab that stops
    answering for a while stays ``running`` (labd never moves a lab back
    to ``starting``).

    Parameters
    ----------
    pod
        The pod as a JSON dict.

    Returns
    -------
    PodStatus
        Its phase (``Unknown`` when unset), reason and message.
    """
    status = pod.get("status") or {}
    phase = status.get("phase") or "Unknown"
    pod_ip = status.get("podIP") or None
    if phase == "Running":
        ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), None)
        if ready is not None and ready.get("status") != "True":
            reason = ready.get("reason") or "ContainersNotReady"
            return PodStatus("Pending", reason, ready.get("message"), pod_ip)
    if status.get("reason"):
        return PodStatus(phase, status["reason"], status.get("message"), pod_ip)
    for container in status.get("containerStatuses") or []:
        state = container.get("state") or {}
        terminated = state.get("terminated")
        if terminated:
            code = terminated.get("exitCode")
            message = terminated.get("message") or (
                f"container {container.get('name')} exited with code {code}"
            )
            return PodStatus(phase, terminated.get("reason"), message, pod_ip)
        waiting = state.get("waiting")
        if waiting and waiting.get("reason") not in (None, "ContainerCreating"):
            return PodStatus(phase, waiting.get("reason"), waiting.get("message"), pod_ip)
    for condition in status.get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
            return PodStatus(phase, condition.get("reason"), condition.get("message"), pod_ip)
    return PodStatus(phase, None, status.get("message"), pod_ip)


def _metadata(
    obj: Mapping[str, Any],
) -> tuple[str, str, dict[str, str], dict[str, str], datetime | None]:
    """Return namespace, name, labels, annotations and deletion time of an object."""
    meta = obj.get("metadata") or {}
    return (
        meta.get("namespace", ""),
        meta.get("name", ""),
        meta.get("labels") or {},
        meta.get("annotations") or {},
        _timestamp(meta.get("deletionTimestamp")),
    )


def _deleted_at_once(obj: Mapping[str, Any]) -> bool:
    """Whether the object a DELETE answered with was removed, not marked for deletion.

    The API server removes an object at once when it has no finalizers and
    no grace period: it answers with the object as it was (no
    ``deletionTimestamp``) or, having first set a grace period of 0, with
    ``deletionGracePeriodSeconds: 0``.  An object kept for its grace period
    or its finalizers is answered marked with a longer period, or with its
    finalizers.
    """
    meta = obj.get("metadata") or {}
    if meta.get("finalizers"):
        return False
    return not meta.get("deletionTimestamp") or meta.get("deletionGracePeriodSeconds") == 0


def _is_terminating_refusal(error: KubeError) -> bool:
    """Whether a 403 says the namespace is being terminated."""
    return error.status == 403 and "being terminated" in error.message


@dataclass(frozen=True, slots=True)
class _Kind:
    """How to create and read one kind of lab object."""

    kind: str
    create: Callable[..., Awaitable[Any]]
    read: Callable[..., Awaitable[Any]]
    namespaced: bool = True


class LabKube:
    """Kubernetes operations on labs, each idempotent.

    Parameters
    ----------
    api_client
        Client from `labd.kube.client.create_api_client`; the caller
        closes it.
    config
        labd's configuration (request timeout).
    retry
        Retries of each call; the default is 3 tries within about 2 s.
    on_call
        Hook counting calls and errors by verb and kind.
    page_size
        Objects per page of the reconciler's LISTs.
    """

    def __init__(
        self,
        api_client: ApiClient,
        config: Config,
        *,
        retry: RetryPolicy | None = None,
        on_call: CallHook | None = None,
        page_size: int = LIST_PAGE_SIZE,
    ) -> None:
        self.api = KubeApi(
            api_client,
            request_timeout=config.kubernetes.request_timeout,
            retry=retry,
            on_call=on_call,
        )
        """Makes the calls."""
        self._page_size = page_size
        self.pod_list_version: str | None = None
        """resourceVersion of the last `list_lab_pods` (a watch can follow it)."""
        self.namespace_list_version: str | None = None
        """resourceVersion of the last `list_lab_namespaces` (a watch can follow it)."""
        core = CoreV1Api(api_client)
        networking = NetworkingV1Api(api_client)
        self._core = core
        self._kinds = {
            kind.kind: kind
            for kind in (
                _Kind("Namespace", core.create_namespace, core.read_namespace, namespaced=False),
                _Kind(
                    "ConfigMap",
                    core.create_namespaced_config_map,
                    core.read_namespaced_config_map,
                ),
                _Kind("Secret", core.create_namespaced_secret, core.read_namespaced_secret),
                _Kind(
                    "NetworkPolicy",
                    networking.create_namespaced_network_policy,
                    networking.read_namespaced_network_policy,
                ),
                _Kind(
                    "ResourceQuota",
                    core.create_namespaced_resource_quota,
                    core.read_namespaced_resource_quota,
                ),
                _Kind(
                    "PersistentVolumeClaim",
                    core.create_namespaced_persistent_volume_claim,
                    core.read_namespaced_persistent_volume_claim,
                ),
                _Kind("Service", core.create_namespaced_service, core.read_namespaced_service),
                _Kind("Pod", core.create_namespaced_pod, core.read_namespaced_pod),
            )
        }

    # Creation ------------------------------------------------------------

    async def create_lab_objects(self, objects: LabObjects) -> None:
        """Create a lab's objects, or accept those of the same lab already there.

        The namespace comes first and the pod last (`LabObjects.in_creation_order`).

        Parameters
        ----------
        objects
            The lab's manifests from `labd.kube.builder.build_lab_objects`.

        Raises
        ------
        NamespaceTerminatingError
            If the namespace is being deleted: retry once it is gone.
        KubeError
            If a call failed after its retries, or an object of the same
            name belongs to another lab (status 409, reason ``Conflict``).
        """
        for manifest in objects.in_creation_order():
            await self._create(manifest)

    async def _create(self, manifest: dict[str, Any]) -> None:
        spec = self._kinds[manifest["kind"]]
        meta = manifest["metadata"]
        name, namespace = meta["name"], meta.get("namespace")
        args = (manifest,) if not spec.namespaced else (namespace, manifest)
        # One more round when the object vanished between the 409 and the read.
        for _ in range(2):
            try:
                reply = await self._create_once(spec, args, namespace=namespace, name=name)
            except KubeError as error:
                if _is_terminating_refusal(error):
                    raise _terminating(error, namespace or name) from error
                raise
            if reply.ok:
                if spec.kind == "Namespace":
                    self._check_namespace(reply.body, manifest, fresh=True)
                return
            existing = await self._read(spec, namespace=namespace, name=name)
            if existing is None:
                continue
            if spec.kind == "Namespace":
                self._check_namespace(existing, manifest, fresh=False)
            else:
                self._check_owner(existing, manifest, spec.kind)
            _LOG.debug("Lab object already exists", kind=spec.kind, namespace=namespace, name=name)
            return
        raise KubeError(
            verb="create",
            kind=spec.kind,
            namespace=namespace,
            name=name,
            status=409,
            reason="Conflict",
            message="the object exists and vanishes again on every read",
        )

    async def _create_once(
        self, spec: _Kind, args: tuple[Any, ...], *, namespace: str | None, name: str
    ) -> Reply:
        """Create once, accepting 409; a pod waits for the ServiceAccount."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _SERVICE_ACCOUNT_WAIT
        delay = 0.05
        while True:
            try:
                return await self.api.call(
                    "create",
                    spec.kind,
                    spec.create,
                    *args,
                    namespace=namespace,
                    name=name,
                    accept=(409,),
                )
            except KubeError as error:
                waiting_for_account = (
                    spec.kind == "Pod"
                    and error.status == 403
                    and "service account" in error.message
                )
                if not waiting_for_account or loop.time() + delay > deadline:
                    raise
                _LOG.debug("Waiting for the namespace's service account", namespace=namespace)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    async def _read(
        self, spec: _Kind, *, namespace: str | None, name: str
    ) -> dict[str, Any] | None:
        args = (name,) if not spec.namespaced else (name, namespace)
        reply = await self.api.call(
            "get", spec.kind, spec.read, *args, namespace=namespace, name=name, accept=(404,)
        )
        return reply.body if reply.ok else None

    def _check_owner(self, existing: dict[str, Any], wanted: dict[str, Any], kind: str) -> None:
        """Raise unless ``existing`` carries the lab id of ``wanted``."""
        meta = wanted["metadata"]
        ours = meta["labels"][LAB_ID_LABEL]
        theirs = ((existing.get("metadata") or {}).get("labels") or {}).get(LAB_ID_LABEL)
        if theirs != ours:
            owner = f"lab {theirs}" if theirs else "something other than labd"
            raise KubeError(
                verb="create",
                kind=kind,
                namespace=meta.get("namespace"),
                name=meta["name"],
                status=409,
                reason="Conflict",
                message=f"already exists and belongs to {owner}, not to lab {ours}",
            )

    def _check_namespace(
        self, existing: dict[str, Any], wanted: dict[str, Any], *, fresh: bool
    ) -> None:
        """Raise if the namespace terminates, or (when not fresh) is not ours."""
        meta = existing.get("metadata") or {}
        phase = (existing.get("status") or {}).get("phase")
        name = wanted["metadata"]["name"]
        if meta.get("deletionTimestamp") or phase == "Terminating":
            raise NamespaceTerminatingError(
                verb="create",
                kind="Namespace",
                namespace=None,
                name=name,
                status=409,
                reason="AlreadyExists",
                message="the namespace is being deleted; retry once it is gone",
            )
        if not fresh:
            self._check_owner(existing, wanted, "Namespace")

    # Reading -------------------------------------------------------------

    async def read_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        """Read a Secret that labd copies from (``lab.secrets``, ``lab.pull_secret``).

        The answer holds secret values: callers keep it no longer than the
        step that needs it, and never log it.

        Parameters
        ----------
        namespace
            The Secret's namespace.
        name
            The Secret's name.

        Returns
        -------
        dict or None
            The Secret as a JSON dict, or `None` if it does not exist.

        Raises
        ------
        KubeError
            If the call failed after its retries (403 without the right).
        """
        return await self._read(self._kinds["Secret"], namespace=namespace, name=name)

    async def read_lab_environment(self, namespace: str, slug: str) -> dict[str, str] | None:
        """Read a lab's environment from its ConfigMap (``<slug>-nb-env``).

        Only the reconciler needs this, and only for a lab it adopts: one
        GET then, rather than a LIST of every lab's ConfigMap each pass.

        Parameters
        ----------
        namespace
            The lab's namespace.
        slug
            The user's slug.

        Returns
        -------
        dict or None
            The ConfigMap's data, or `None` if it does not exist.

        Raises
        ------
        KubeError
            If the call failed after its retries.
        """
        found = await self._read(
            self._kinds["ConfigMap"], namespace=namespace, name=config_map_name(slug)
        )
        if found is None:
            return None
        data = found.get("data") or {}
        return {str(key): str(value) for key, value in data.items()}

    # Deletion ------------------------------------------------------------

    async def delete_pod(self, namespace: str, name: str, *, grace_seconds: int) -> bool:
        """Ask for a pod's deletion; a missing pod is already deleted.

        Parameters
        ----------
        namespace
            The pod's namespace.
        name
            The pod's name.
        grace_seconds
            Seconds the lab gets to shut down.

        Returns
        -------
        bool
            Whether the pod is gone: it was missing, or the API server
            removed it at once (grace 0, a pod not bound to a node or
            finished), as the object it answers with tells.  Otherwise the
            pod takes its grace period, and the pod watch tells when it is
            gone.

        Raises
        ------
        KubeError
            If the call failed after its retries.
        """
        reply = await self.api.call(
            "delete",
            "Pod",
            self._core.delete_namespaced_pod,
            name,
            namespace,
            grace_period_seconds=grace_seconds,
            namespace=namespace,
            name=name,
            accept=(404,),
        )
        return reply.status == 404 or _deleted_at_once(reply.body)

    async def delete_namespace(self, namespace: str) -> bool:
        """Ask for a namespace's deletion, which removes everything in it.

        A missing namespace is already deleted; one already terminating
        (409 on a real API server) is being deleted.

        Parameters
        ----------
        namespace
            The namespace.

        Returns
        -------
        bool
            Whether the namespace was gone already (its deletion may take a
            while otherwise: `namespace_gone`, or a watch, tells when).

        Raises
        ------
        KubeError
            If the call failed after its retries.
        """
        reply = await self.api.call(
            "delete",
            "Namespace",
            self._core.delete_namespace,
            namespace,
            propagation_policy="Background",
            name=namespace,
            accept=(404, 409),
        )
        return reply.status == 404

    async def namespace_gone(self, namespace: str) -> bool:
        """Tell whether a namespace no longer exists (while deleting it).

        Raises
        ------
        KubeError
            If the call failed after its retries.
        """
        reply = await self.api.call(
            "get",
            "Namespace",
            self._core.read_namespace,
            namespace,
            name=namespace,
            accept=(404,),
        )
        return reply.status == 404

    async def pod_gone(self, namespace: str, name: str) -> bool:
        """Tell whether a pod no longer exists (while deleting it).

        Raises
        ------
        KubeError
            If the call failed after its retries.
        """
        reply = await self.api.call(
            "get",
            "Pod",
            self._core.read_namespaced_pod,
            name,
            namespace,
            namespace=namespace,
            name=name,
            accept=(404,),
        )
        return reply.status == 404

    # Listing -------------------------------------------------------------

    async def list_lab_namespaces(self) -> list[LabNamespace]:
        """List every namespace labd manages (one paged LIST).

        Raises
        ------
        KubeError
            If a call failed after its retries.
        """
        namespaces, self.namespace_list_version = await self._list_lab_objects(
            "Namespace", self._core.list_namespace, _lab_namespace
        )
        return namespaces

    async def list_lab_pods(self) -> list[LabPod]:
        """List every pod labd manages, in all namespaces (one paged LIST).

        Raises
        ------
        KubeError
            If a call failed after its retries.
        """
        pods, self.pod_list_version = await self._list_lab_objects(
            "Pod", self._core.list_pod_for_all_namespaces, _lab_pod
        )
        return pods

    async def _list_lab_objects(
        self,
        kind: str,
        method: Callable[..., Awaitable[Any]],
        convert: Callable[[dict[str, Any]], _Item],
    ) -> tuple[list[_Item], str]:
        return await list_objects(
            self.api,
            kind,
            method,
            convert=convert,
            label_selector=MANAGED_SELECTOR,
            page_size=self._page_size,
        )


def _lab_namespace(item: dict[str, Any]) -> LabNamespace:
    _, name, labels, annotations, deleted = _metadata(item)
    phase = (item.get("status") or {}).get("phase")
    return LabNamespace(name, labels, annotations, phase, deleted)


def _lab_pod(item: dict[str, Any]) -> LabPod:
    namespace, name, labels, annotations, deleted = _metadata(item)
    return LabPod(namespace, name, labels, annotations, pod_status(item), deleted)


def _terminating(error: KubeError, namespace: str) -> NamespaceTerminatingError:
    return NamespaceTerminatingError(
        verb=error.verb,
        kind=error.kind,
        namespace=error.namespace,
        name=error.name,
        status=error.status,
        reason=error.reason,
        message=f"namespace {namespace} is being deleted; retry once it is gone",
    )
