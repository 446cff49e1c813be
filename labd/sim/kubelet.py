"""A kubelet stand-in that moves pods through their lives, KWOK-style.

Like KWOK's controller it is an ordinary Kubernetes API client: it lists and
watches pods (``list_pod_for_all_namespaces``, resuming from the list's
resourceVersion, re-listing after 410 Gone), binds unscheduled pods to its
Node through ``pods/binding``, writes status through the ``status``
subresource and reports progress as core/v1 Events. Nothing in it depends on
the sim, so the same code can drive pods on a real kube-apiserver that has
no nodes; it creates its Node object when missing.

Pod deletion follows real Kubernetes: the API server only marks a bound pod
(``deletionTimestamp``, ``deletionGracePeriodSeconds``); the kubelet sees the
mark, stops the containers (``stop_delay``, capped by the grace period) and
deletes the pod with grace 0 and a UID precondition, so a pod recreated
under the same name is never deleted by mistake. Without a kubelet, a bound
pod that is deleted stays Terminating, as on a cluster whose node is gone.

Images follow a real kubelet too: the node remembers the images it pulled
(`labd.sim.images.NodeImages`) and each container's ``imagePullPolicy``
decides whether to pull again (``Always``), to use the image on the node
(``IfNotPresent``: ``Container image "..." already present on machine``) or
to wait without pulling (``Never``: ``ErrImageNeverPull`` when absent).

What happens to each pod is its `Outcome` (see `labd.sim.outcomes`).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import structlog
from kubernetes_asyncio.client import ApiClient, Configuration, CoreV1Api
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.watch import Watch

from labd.sim.images import NodeImages
from labd.sim.outcomes import OUTCOME_ANNOTATION, Outcome, Rules
from labd.sim.strategies import default_pull_policy, now
from labd.tasks import cancel_and_wait, spawn

__all__ = ["KUBELET_USER_AGENT", "Kubelet"]

KUBELET_USER_AGENT = "labd-sim-kubelet/1.0"
"""User-Agent of the kubelet's requests (the sim spares them its faults)."""

_logger = structlog.get_logger()
_MERGE = "application/merge-patch+json"
_IMAGE_REASONS = ("ErrImagePull", "ImagePullBackOff")
_HOST_IP = "10.0.0.10"
Pod = dict[str, Any]


class _PodGoneError(Exception):
    """The pod was deleted or replaced while the kubelet worked on it."""


@dataclass(slots=True)
class _PodWork:
    """What the kubelet is doing for one pod (by UID)."""

    task: asyncio.Task[Any] | None = None
    """The running lifecycle or termination task."""
    terminating: bool = False
    """Whether the pod's deletion has been seen."""
    running: bool = False
    """Whether its containers were started."""
    pod_ip: str = ""
    """The IP the pod got."""
    started: dict[str, str] = field(default_factory=dict)
    """Start time of the pod (``pod``) and of its containers (``running``)."""
    image_ids: dict[str, str] = field(default_factory=dict)
    """The image ID each started container runs, by container name."""


def _unready(pod: Pod) -> str:
    """The message of a kubelet's Ready condition while containers are not ready."""
    names = " ".join(c["name"] for c in pod["spec"]["containers"])
    return f"containers with unready status: [{names}]"


def _condition(kind: str, status: bool, reason: str = "", message: str = "") -> dict[str, Any]:
    condition: dict[str, Any] = {
        "type": kind,
        "status": "True" if status else "False",
        "lastProbeTime": None,
        "lastTransitionTime": now(),
    }
    if reason:
        condition["reason"] = reason
    if message:
        condition["message"] = message
    return condition


class Kubelet:
    """Drive the pods of one simulated node through the Kubernetes API.

    Parameters
    ----------
    configuration
        How to reach the API server (e.g. from the sim's kubeconfig).
    rules
        Outcome rules; their default applies when nothing else decides.
    images
        The images the node holds (empty by default); the kubelet adds each
        image it pulls.
    node_name
        The Node this kubelet plays.
    start_delay
        Seconds from binding to Running (image pull and container start).
    stop_delay
        Seconds a container takes to stop after deletion, capped by the
        pod's grace period.
    watch_timeout
        ``timeoutSeconds`` of each watch request; the watch then resumes.
    read_timeout
        Seconds of silence after which a watch connection is presumed dead.
    user_agent
        User-Agent of its requests; the sim spares ``labd-sim-*`` agents its
        faults, so another agent lets a test inject faults into the kubelet.
    """

    def __init__(
        self,
        configuration: Configuration,
        *,
        rules: Rules | None = None,
        images: NodeImages | None = None,
        node_name: str = "sim-node",
        start_delay: float = 1.0,
        stop_delay: float = 0.0,
        watch_timeout: int = 300,
        read_timeout: float = 90.0,
        user_agent: str = KUBELET_USER_AGENT,
    ) -> None:
        self._configuration = configuration
        self.rules = rules or Rules()
        """The outcome rules consulted for new pods."""
        self.images = NodeImages() if images is None else images
        """The images the node holds."""
        self.node_name = node_name
        self._start_delay = start_delay
        self._stop_delay = stop_delay
        self._watch_timeout = watch_timeout
        self._read_timeout = read_timeout
        self._user_agent = user_agent
        self._pods: dict[str, _PodWork] = {}
        self._ips = itertools.count()
        self._core: CoreV1Api | None = None

    # Plumbing ----------------------------------------------------------------

    @property
    def core(self) -> CoreV1Api:
        """The API client (only while `run` runs)."""
        if self._core is None:
            raise RuntimeError("the kubelet is not running")
        return self._core

    async def _call(self, method: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> Any:
        """Call an API method, retrying transient failures; return the decoded body.

        Responses are read raw (``_preload_content=False``): decoding every pod
        into generated model classes would dominate the kubelet's time.
        """
        error: Exception = RuntimeError("no attempt made")
        for attempt in range(6):
            try:
                response = await method(*args, _preload_content=False, **kwargs)
                try:
                    data = await response.read()
                finally:
                    response.release()
                if 200 <= response.status < 300:
                    return json.loads(data) if data else None
                api_error = ApiException(status=response.status, reason=response.reason)
                api_error.body = data.decode(errors="replace")
                if response.status < 500 and response.status != 429:
                    raise api_error
                error = api_error
            except (aiohttp.ClientError, TimeoutError) as failure:
                error = failure
            await asyncio.sleep(min(0.05 * 2**attempt, 2.0))
        raise error

    # The main loop -------------------------------------------------------------

    async def run(self) -> None:
        """Serve pods until cancelled."""
        async with ApiClient(self._configuration) as api:
            api.user_agent = self._user_agent
            self._core = CoreV1Api(api)
            try:
                await self._ensure_node()
                await self._sync_forever()
            finally:
                await cancel_and_wait([w.task for w in self._pods.values() if w.task])
                self._pods.clear()
                self._core = None

    async def _ensure_node(self) -> None:
        try:
            await self._call(self.core.read_node, self.node_name)
            return
        except ApiException as error:
            if error.status != 404:
                raise
        node = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.node_name,
                "labels": {
                    "kubernetes.io/hostname": self.node_name,
                    "kubernetes.io/os": "linux",
                    "type": "kwok",
                },
            },
            "status": {
                "addresses": [{"type": "InternalIP", "address": _HOST_IP}],
                "capacity": {"cpu": "64", "memory": "256Gi", "pods": "5000"},
                "allocatable": {"cpu": "64", "memory": "256Gi", "pods": "5000"},
                "conditions": [_condition("Ready", True, "KubeletReady", "kubelet is ready")],
                "nodeInfo": {
                    "architecture": "amd64",
                    "bootID": secrets.token_hex(16),
                    "containerRuntimeVersion": "containerd://1.7.0",
                    "kernelVersion": "6.1.0",
                    "kubeProxyVersion": "v1.31.0-labd-sim",
                    "kubeletVersion": "v1.31.0-labd-sim",
                    "machineID": secrets.token_hex(16),
                    "operatingSystem": "linux",
                    "osImage": "labd simulated node",
                    "systemUUID": secrets.token_hex(16),
                },
            },
        }
        try:
            await self._call(self.core.create_node, node)
        except ApiException as error:
            if error.status != 409:
                raise
        # A real API server may drop status sent with a create: set it through
        # the status subresource, as a kubelet reports its node.
        await self._call(
            self.core.patch_node_status,
            self.node_name,
            {"status": node["status"]},
            _content_type=_MERGE,
        )

    async def _sync_forever(self) -> None:
        backoff = 0.05
        while True:
            try:
                version = await self._relist()
                await self._follow(version)
                backoff = 0.05
            except Exception as error:
                # Whatever broke the list or the watch (an API error, a dropped
                # connection, a garbled line), the cure is the same: re-list.
                _logger.warning("sim kubelet sync failed, re-listing", error=str(error))
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def _relist(self) -> str:
        listing = await self._call(self.core.list_pod_for_all_namespaces)
        seen: set[str] = set()
        for pod in listing["items"]:
            seen.add(pod["metadata"]["uid"])
            self._observe("ADDED", pod)
        for uid in set(self._pods) - seen:
            self._forget(uid)
        return str(listing["metadata"]["resourceVersion"])

    async def _follow(self, version: str) -> None:
        """Watch pods from ``version`` until the watch expires (410): then re-list."""
        while True:
            async with Watch(return_type="object") as watch:
                stream = watch.stream(
                    self.core.list_pod_for_all_namespaces,
                    resource_version=version,
                    allow_watch_bookmarks=True,
                    timeout_seconds=self._watch_timeout,
                    _request_timeout=(10, self._read_timeout),
                )
                try:
                    async for event in stream:
                        raw = event["raw_object"]
                        version = raw["metadata"]["resourceVersion"]
                        if event["type"] != "BOOKMARK":
                            self._observe(event["type"], raw)
                except ApiException as error:
                    if error.status == 410:
                        return
                    raise

    # Per-pod work --------------------------------------------------------------

    def _observe(self, kind: str, pod: Pod) -> None:
        meta, spec = pod["metadata"], pod.get("spec", {})
        uid = meta["uid"]
        node = spec.get("nodeName")
        if node and node != self.node_name:
            return
        if kind == "DELETED":
            self._forget(uid)
            return
        work = self._pods.get(uid)
        if meta.get("deletionTimestamp"):
            if work is None:
                work = self._pods[uid] = _PodWork()
            if not work.terminating:
                work.terminating = True
                if work.task is not None:
                    work.task.cancel()
                work.task = spawn(self._stop(pod, work), name=f"sim-kubelet-stop-{meta['name']}")
            return
        if work is None:
            work = self._pods[uid] = _PodWork()
            # A pod already past Pending (e.g. after a kubelet restart) is left as it is.
            if pod.get("status", {}).get("phase", "Pending") == "Pending":
                work.task = spawn(self._live(pod, work), name=f"sim-kubelet-{meta['name']}")

    def _forget(self, uid: str) -> None:
        work = self._pods.pop(uid, None)
        if work is not None and work.task is not None:
            work.task.cancel()

    def _outcome(self, pod: Pod) -> Outcome:
        meta = pod["metadata"]
        annotation = (meta.get("annotations") or {}).get(OUTCOME_ANNOTATION)
        try:
            return self.rules.decide(meta["namespace"], meta["name"], annotation)
        except ValueError as error:
            _logger.warning(
                "sim kubelet ignores an invalid outcome", pod=meta["name"], error=str(error)
            )
            return self.rules.decide(meta["namespace"], meta["name"], None)

    async def _live(self, pod: Pod, work: _PodWork) -> None:
        try:
            await self._lifecycle(pod, work, self._outcome(pod))
        except _PodGoneError:
            return
        except ApiException as error:
            if error.status in (404, 409):
                return
            raise

    async def _event(
        self,
        pod: Pod,
        reason: str,
        message: str,
        *,
        warning: bool = False,
        container: str | None = None,
        component: str = "kubelet",
    ) -> None:
        meta = pod["metadata"]
        involved: dict[str, Any] = {
            "kind": "Pod",
            "namespace": meta["namespace"],
            "name": meta["name"],
            "uid": meta["uid"],
            "apiVersion": "v1",
            "resourceVersion": meta.get("resourceVersion", ""),
        }
        if container is not None:
            involved["fieldPath"] = f"spec.containers{{{container}}}"
        stamp = now()
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "name": f"{meta['name']}.{secrets.token_hex(8)}",
                "namespace": meta["namespace"],
            },
            "involvedObject": involved,
            "reason": reason,
            "message": message,
            "type": "Warning" if warning else "Normal",
            "source": {
                "component": component,
                **({"host": self.node_name} if component == "kubelet" else {}),
            },
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
            "reportingComponent": component,
            "reportingInstance": self.node_name if component == "kubelet" else "",
        }
        try:
            await self._call(self.core.create_namespaced_event, meta["namespace"], body)
        except ApiException as error:
            # The namespace is going away; its pod will too.
            if error.status not in (403, 404):
                raise

    async def _status(self, pod: Pod, status: dict[str, Any]) -> None:
        meta = pod["metadata"]
        try:
            await self._call(
                self.core.patch_namespaced_pod_status,
                meta["name"],
                meta["namespace"],
                {"metadata": {"uid": meta["uid"]}, "status": status},
                _content_type=_MERGE,
            )
        except ApiException as error:
            if error.status in (404, 409):
                raise _PodGoneError from None
            raise

    def _base_status(self, pod: Pod, work: _PodWork) -> dict[str, Any]:
        status: dict[str, Any] = {
            "hostIP": _HOST_IP,
            "hostIPs": [{"ip": _HOST_IP}],
            "startTime": work.started["pod"],
        }
        if work.pod_ip:
            status["podIP"] = work.pod_ip
            status["podIPs"] = [{"ip": work.pod_ip}]
        return status

    def _waiting(self, pod: Pod, work: _PodWork, reason: str, message: str = "") -> dict[str, Any]:
        unready = _unready(pod)
        state: dict[str, Any] = {"reason": reason}
        if message:
            state["message"] = message
        return {
            **self._base_status(pod, work),
            "phase": "Pending",
            "conditions": [
                _condition("PodReadyToStartContainers", reason != "ContainerCreating"),
                _condition("Initialized", True),
                _condition("Ready", False, "ContainersNotReady", unready),
                _condition("ContainersReady", False, "ContainersNotReady", unready),
                _condition("PodScheduled", True),
            ],
            "containerStatuses": [
                {
                    "name": c["name"],
                    "image": c["image"],
                    "imageID": "",
                    "ready": False,
                    "restartCount": 0,
                    "started": False,
                    "state": {"waiting": state},
                    "lastState": {},
                }
                for c in pod["spec"]["containers"]
            ],
        }

    def _container_status(
        self, container: dict[str, Any], work: _PodWork, state: dict[str, Any], ready: bool
    ) -> dict[str, Any]:
        return {
            "name": container["name"],
            "image": container["image"],
            "imageID": work.image_ids.get(container["name"], ""),
            "containerID": f"containerd://{secrets.token_hex(32)}",
            "ready": ready,
            "restartCount": 0,
            "started": ready,
            "state": state,
            "lastState": {},
        }

    def _running(self, pod: Pod, work: _PodWork, *, ready: bool = True) -> dict[str, Any]:
        started = work.started["running"]
        reason, message = ("", "") if ready else ("ContainersNotReady", _unready(pod))
        return {
            **self._base_status(pod, work),
            "phase": "Running",
            "conditions": [
                _condition("PodReadyToStartContainers", True),
                _condition("Initialized", True),
                _condition("Ready", ready, reason, message),
                _condition("ContainersReady", ready, reason, message),
                _condition("PodScheduled", True),
            ],
            "containerStatuses": [
                self._container_status(c, work, {"running": {"startedAt": started}}, ready)
                for c in pod["spec"]["containers"]
            ],
        }

    def _terminated(self, pod: Pod, work: _PodWork, reason: str, code: int) -> dict[str, Any]:
        terminated = {
            "exitCode": code,
            "reason": reason,
            "startedAt": work.started["running"],
            "finishedAt": now(),
        }
        return {
            **self._base_status(pod, work),
            "phase": "Succeeded" if code == 0 else "Failed",
            "conditions": [
                _condition("PodReadyToStartContainers", False),
                _condition("Initialized", True, "PodCompleted" if code == 0 else ""),
                _condition("Ready", False, "PodCompleted" if code == 0 else "PodFailed"),
                _condition("ContainersReady", False, "PodCompleted" if code == 0 else "PodFailed"),
                _condition("PodScheduled", True),
            ],
            "containerStatuses": [
                self._container_status(c, work, {"terminated": terminated}, False)
                for c in pod["spec"]["containers"]
            ],
        }

    async def _lifecycle(self, pod: Pod, work: _PodWork, outcome: Outcome) -> None:
        meta, spec = pod["metadata"], pod["spec"]
        namespace, name = meta["namespace"], meta["name"]
        containers = spec["containers"]
        if outcome.kind == "pending" and outcome.reason == "Unschedulable":
            message = (
                "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector. "
                "preemption: 0/1 nodes are available: 1 Preemption is not helpful for scheduling."
            )
            condition = _condition("PodScheduled", False, "Unschedulable", message)
            await self._status(pod, {"phase": "Pending", "conditions": [condition]})
            await self._event(
                pod, "FailedScheduling", message, warning=True, component="default-scheduler"
            )
            return
        if not spec.get("nodeName"):
            await self._bind(pod)
            await self._event(
                pod,
                "Scheduled",
                f"Successfully assigned {namespace}/{name} to {self.node_name}",
                component="default-scheduler",
            )
        work.started["pod"] = now()
        await self._status(pod, self._waiting(pod, work, "ContainerCreating"))
        pulls = await self._ensure_images(pod, work, outcome)
        if pulls is None:
            return
        await asyncio.sleep(self._start_delay)
        if outcome.kind == "pending":
            await self._stay_pending(pod, work, outcome.reason, pulls)
            return
        work.pod_ip = self._next_ip()
        for c in containers:
            if c["name"] in pulls:
                work.image_ids[c["name"]] = self.images.add(c["image"])
                took = f"{self._start_delay:.3f}s"
                pulled = f'Successfully pulled image "{c["image"]}" in {took}'
                pulled += f" ({took} including waiting)"
                await self._event(pod, "Pulled", pulled, container=c["name"])
            await self._event(
                pod, "Created", f"Created container {c['name']}", container=c["name"]
            )
            await self._event(
                pod, "Started", f"Started container {c['name']}", container=c["name"]
            )
        work.started["running"] = now()
        if outcome.kind == "unready":
            # As a real kubelet while a readiness probe has not passed yet.
            await self._status(pod, self._running(pod, work, ready=False))
            await self._event(
                pod,
                "Unhealthy",
                "Readiness probe failed: connection refused",
                warning=True,
                container=containers[0]["name"],
            )
            await asyncio.sleep(outcome.after)
        await self._status(pod, self._running(pod, work))
        work.running = True
        if outcome.kind in ("run", "unready"):
            return
        await asyncio.sleep(outcome.after)
        if outcome.kind == "exit":
            await self._status(pod, self._terminated(pod, work, "Completed", 0))
        elif outcome.kind == "crash":
            code = 137 if outcome.reason == "OOMKilled" else 1
            await self._status(pod, self._terminated(pod, work, outcome.reason, code))
        else:
            await self._delete(pod)

    async def _ensure_images(self, pod: Pod, work: _PodWork, outcome: Outcome) -> set[str] | None:
        """Decide, container by container, whether to pull, as a real kubelet does.

        ``Always`` pulls; ``IfNotPresent`` pulls an image the node lacks and
        otherwise reports it ``already present on machine``; ``Never`` never
        pulls, and an image the node lacks leaves the pod waiting with
        ``ErrImageNeverPull``. A pull-failure outcome (``pending:ErrImagePull``,
        ``pending:ImagePullBackOff``) stands for an image the registry does not
        have, so for that pod the node does not hold it either: the kubelet
        pulls it (unless ``Never``) and fails; the node's images are unchanged.

        Returns
        -------
        set of str or None
            The names of the containers whose image is being pulled; None when
            a container cannot get its image (the pod was left waiting).
        """
        pulls: set[str] = set()
        absent: list[str] = []
        pull_fails = outcome.kind == "pending" and outcome.reason in _IMAGE_REASONS
        for c in pod["spec"]["containers"]:
            image, cname = c["image"], c["name"]
            present = not pull_fails and image in self.images
            policy = c.get("imagePullPolicy") or default_pull_policy(image)
            if policy == "Always" or (policy == "IfNotPresent" and not present):
                pulls.add(cname)
                await self._event(pod, "Pulling", f'Pulling image "{image}"', container=cname)
            elif present:
                work.image_ids[cname] = self.images.image_id(image)
                message = f'Container image "{image}" already present on machine'
                await self._event(pod, "Pulled", message, container=cname)
            else:
                message = f'Container image "{image}" is not present with pull policy of Never'
                absent.append(message)
                await self._event(pod, "ErrImageNeverPull", message, warning=True, container=cname)
                await self._event(
                    pod, "Failed", "Error: ErrImageNeverPull", warning=True, container=cname
                )
        if absent:
            await self._status(pod, self._waiting(pod, work, "ErrImageNeverPull", absent[0]))
            return None
        return pulls

    async def _stay_pending(self, pod: Pod, work: _PodWork, reason: str, pulls: set[str]) -> None:
        if reason not in _IMAGE_REASONS:
            # Event first, as on every other path: once the status shows the
            # reason, its Event is there to read.
            await self._event(pod, reason, f"Pod is waiting: {reason}", warning=True)
            await self._status(pod, self._waiting(pod, work, reason))
            return
        # Only the images being pulled fail (`_ensure_images` made sure there is one).
        failing = [c for c in pod["spec"]["containers"] if c["name"] in pulls]
        for c in failing:
            image, cname = c["image"], c["name"]
            await self._event(
                pod,
                "Failed",
                f'Failed to pull image "{image}": rpc error: code = NotFound desc = failed to '
                f'pull and unpack image "{image}": not found',
                warning=True,
                container=cname,
            )
            await self._event(pod, "Failed", "Error: ErrImagePull", warning=True, container=cname)
        first = failing[0]["image"]
        pull_message = f'rpc error: code = NotFound desc = failed to pull image "{first}"'
        await self._status(pod, self._waiting(pod, work, "ErrImagePull", pull_message))
        if reason == "ImagePullBackOff":
            for c in failing:
                image, cname = c["image"], c["name"]
                await self._event(
                    pod, "BackOff", f'Back-off pulling image "{image}"', container=cname
                )
                await self._event(
                    pod, "Failed", "Error: ImagePullBackOff", warning=True, container=cname
                )
            message = f'Back-off pulling image "{first}"'
            await self._status(pod, self._waiting(pod, work, "ImagePullBackOff", message))

    def _next_ip(self) -> str:
        n = next(self._ips)
        return f"10.244.{n // 250 % 250}.{n % 250 + 2}"

    async def _bind(self, pod: Pod) -> None:
        meta = pod["metadata"]
        body = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": meta["name"], "namespace": meta["namespace"], "uid": meta["uid"]},
            "target": {"apiVersion": "v1", "kind": "Node", "name": self.node_name},
        }
        await self._call(
            self.core.create_namespaced_pod_binding, meta["name"], meta["namespace"], body
        )

    async def _delete(self, pod: Pod) -> None:
        meta = pod["metadata"]
        options = {
            "apiVersion": "v1",
            "kind": "DeleteOptions",
            "gracePeriodSeconds": 0,
            "preconditions": {"uid": meta["uid"]},
        }
        try:
            await self._call(
                self.core.delete_namespaced_pod,
                meta["name"],
                meta["namespace"],
                grace_period_seconds=0,
                body=options,
            )
        except ApiException as error:
            # 404: already gone; 409: the name now belongs to a newer pod.
            if error.status not in (404, 409):
                raise

    async def _stop(self, pod: Pod, work: _PodWork) -> None:
        grace = float(pod["metadata"].get("deletionGracePeriodSeconds") or 0)
        try:
            if work.running:
                for c in pod["spec"]["containers"]:
                    await self._event(
                        pod, "Killing", f"Stopping container {c['name']}", container=c["name"]
                    )
            await asyncio.sleep(min(grace, self._stop_delay))
            await self._delete(pod)
        except _PodGoneError:
            return
