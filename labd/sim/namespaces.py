"""The namespace controller: what kube-controller-manager does for namespaces.

Two behaviours of real clusters that lab controllers trip over:

- A new namespace is not immediately usable for pods: the service account
  controller creates its ``default`` ServiceAccount a moment later (and the
  root CA publisher the ConfigMap ``kube-root-ca.crt``), and until then pod
  creation is refused (403) by service account admission. The delay is
  configurable; the sim provisions both together, a real cluster in either
  order.
- Deleting a namespace is a process, not an event: the namespace is marked
  (``deletionTimestamp``, phase ``Terminating``, new content refused with
  403), everything inside is deleted (pods gracefully, so their kubelet
  finishes them), and only when the namespace is empty is it removed.

The controller runs in the sim's process and works on the registry
directly; it follows namespace changes through a registry watch like any
other watcher.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Coroutine
from typing import Any

import structlog

from labd.sim.errors import ApiError
from labd.sim.kinds import resource_named
from labd.sim.registry import Registry, Watcher
from labd.sim.selectors import FieldSelector, LabelSelector
from labd.tasks import cancel_and_wait, spawn

__all__ = ["NamespaceController"]

_logger = structlog.get_logger()
_NAMESPACES = resource_named("namespaces")
_SERVICE_ACCOUNTS = resource_named("serviceaccounts")
_CONFIG_MAPS = resource_named("configmaps")

#: A self-signed placeholder; nothing in the sim verifies TLS.
_ROOT_CA = (
    "-----BEGIN CERTIFICATE-----\n"
    "c2ltdWxhdGVkIGNsdXN0ZXIgcm9vdCBDQQ==\n"
    "-----END CERTIFICATE-----\n"
)


class NamespaceController:
    """Provision new namespaces and carry out namespace deletion.

    Parameters
    ----------
    registry
        The object store.
    service_account_delay
        Seconds before a new namespace gets its ``default`` ServiceAccount.
    poll_interval
        Longest wait between checks of whether a terminating namespace is
        empty.
    """

    def __init__(
        self,
        registry: Registry,
        *,
        service_account_delay: float = 0.0,
        poll_interval: float = 0.25,
    ) -> None:
        self._registry = registry
        self._delay = service_account_delay
        self._poll = poll_interval
        self._tasks: dict[str, asyncio.Task[None]] = {}

    async def run(self) -> None:
        """Follow namespace changes until cancelled."""
        watcher: Watcher = self._registry.watch(
            _NAMESPACES, None, "0", LabelSelector.parse(""), FieldSelector.parse("", ())
        )
        try:
            while True:
                line = await watcher.queue.get()
                if line is None:
                    return
                self._observe(line)
        finally:
            self._registry.unwatch(watcher)
            await cancel_and_wait(list(self._tasks.values()))

    def _observe(self, line: bytes) -> None:
        event = json.loads(line)
        meta = event["object"]["metadata"]
        uid, name = meta["uid"], meta["name"]
        if event["type"] == "DELETED":
            return
        if meta.get("deletionTimestamp"):
            key = f"terminate/{uid}"
            if key not in self._tasks:
                self._start(key, self._terminate(name, uid))
        elif event["type"] == "ADDED":
            self._start(f"provision/{uid}", self._provision(name, uid))

    def _start(self, key: str, work: Coroutine[Any, Any, None]) -> None:
        task = spawn(work, name=f"sim-namespace-{key}")
        self._tasks[key] = task
        task.add_done_callback(lambda _: self._tasks.pop(key, None))

    def _current(self, name: str, uid: str) -> bool:
        ns = self._registry.find(_NAMESPACES, "", name)
        return ns is not None and ns["metadata"]["uid"] == uid

    async def _provision(self, name: str, uid: str) -> None:
        if self._delay > 0:
            await asyncio.sleep(self._delay)
        if not self._current(name, uid):
            return
        for resource, body in (
            (_SERVICE_ACCOUNTS, {"metadata": {"name": "default"}}),
            (
                _CONFIG_MAPS,
                {"metadata": {"name": "kube-root-ca.crt"}, "data": {"ca.crt": _ROOT_CA}},
            ),
        ):
            if self._registry.find(resource, name, body["metadata"]["name"]) is not None:
                continue
            try:
                self._registry.create(resource, name, body)
            except ApiError as error:
                # The namespace began terminating meanwhile: nothing to provision.
                _logger.debug("sim namespace not provisioned", namespace=name, error=error.message)

    async def _terminate(self, name: str, uid: str) -> None:
        registry, wait = self._registry, 0.01
        deleted: set[str] = set()
        while self._current(name, uid):
            contents = registry.namespace_contents(name)
            if not contents:
                registry.remove(_NAMESPACES, "", name)
                _logger.debug("sim namespace removed", namespace=name)
                return
            for resource, obj in contents:
                meta = obj["metadata"]
                if meta["uid"] in deleted:
                    continue
                deleted.add(meta["uid"])
                try:
                    registry.delete(resource, name, meta["name"])
                except ApiError:
                    # Deleted by someone else between listing and deleting.
                    continue
            await asyncio.sleep(wait)
            wait = min(wait * 2, self._poll)
