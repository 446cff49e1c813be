"""The simulated API server's object store, versions and watch fan-out.

Kubernetes controllers rely on a few storage guarantees, which this module
provides in memory:

- One global, strictly increasing ``resourceVersion``: every write takes the
  next number, so a list's version tells a watch exactly where to resume.
- Objects keyed by (resource, namespace, name), in nested dicts so a
  namespace's objects are one lookup away (the namespace index).
- A bounded log of the last ``window`` changes. A watch from a version still
  in the window replays what followed it; from an older version it fails with
  410 Gone, as etcd compaction makes a real API server do, which is what
  forces a controller to re-list. Every write appends exactly one change, so
  log positions follow from version numbers without a search.
- Watchers fed through asyncio queues at the moment of the write. The store
  is synchronous and single-threaded (one event loop), so "replay the log,
  then register for live changes" happens without an ``await`` in between and
  no change can fall into the gap.

Stored objects are never mutated after they are stored: the watch log and
open list responses share them. Every write builds a new dict.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import json
import random
import uuid
from collections import deque
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from labd.sim import strategies
from labd.sim.errors import (
    ApiError,
    already_exists,
    bad_request,
    conflict,
    expired,
    forbidden,
    invalid,
    not_found,
)
from labd.sim.kinds import RESOURCES, Resource, resource_named
from labd.sim.patching import apply_patch
from labd.sim.selectors import FieldSelector, LabelSelector

__all__ = ["Change", "Obj", "Registry", "Watcher"]

Obj = dict[str, Any]
ChangeType = Literal["ADDED", "MODIFIED", "DELETED"]

_NAMESPACES = resource_named("namespaces")
_PODS = resource_named("pods")
_SERVICE_ACCOUNTS = resource_named("serviceaccounts")

#: Characters Kubernetes uses for ``generateName`` suffixes (no vowels, no 0/1/3).
_SUFFIX_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
#: A watcher this far behind is cut off, as the real API server drops slow watchers.
_MAX_BACKLOG = 100_000


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


class Change:
    """One write, as a watch reports it.

    Parameters
    ----------
    version
        The resourceVersion the write took.
    type
        ``ADDED``, ``MODIFIED`` or ``DELETED``.
    resource
        The resource type of the object.
    namespace
        The object's namespace (``""`` for cluster-scoped objects).
    obj
        The object after the write (for DELETED: its last state).
    old
        The object before the write, for MODIFIED (a selector watch turns a
        change into ADDED or DELETED when the object enters or leaves it).
    """

    __slots__ = ("_body", "namespace", "obj", "old", "resource", "type", "version")

    def __init__(
        self,
        version: int,
        type: ChangeType,
        resource: Resource,
        namespace: str,
        obj: Obj,
        old: Obj | None,
        body: bytes | None = None,
    ) -> None:
        self.version = version
        self.type = type
        self.resource = resource
        self.namespace = namespace
        self.obj = obj
        self.old = old
        self._body = body

    def line(self, type: ChangeType) -> bytes:
        """Render the watch event line; the object is serialized once for all watchers."""
        if self._body is None:
            self._body = _dumps(self.obj).encode()
        return b"".join((b'{"type":"', type.encode(), b'","object":', self._body, b"}\n"))


class Watcher:
    """One open watch: which objects it selects and the queue of lines to send.

    Parameters
    ----------
    resource
        The watched resource type.
    namespace
        The watched namespace, or None for all namespaces.
    labels
        The label selector.
    fields
        The field selector.
    """

    __slots__ = ("fields", "labels", "namespace", "queue", "resource")

    def __init__(
        self,
        resource: Resource,
        namespace: str | None,
        labels: LabelSelector,
        fields: FieldSelector,
    ) -> None:
        self.resource = resource
        self.namespace = namespace
        self.labels = labels
        self.fields = fields
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        """Event lines to send; None means the watch must end."""

    def selects(self, obj: Obj) -> bool:
        """Return whether the watch's selectors select ``obj``."""
        return self.labels.matches(obj["metadata"].get("labels")) and self.fields.matches(obj)

    def offer(self, change: Change) -> None:
        """Queue ``change`` if this watch sees it."""
        if self.namespace is not None and change.namespace != self.namespace:
            return
        kind: ChangeType = change.type
        now_selected = self.selects(change.obj)
        if change.old is not None and not (self.labels.empty and self.fields.empty):
            was_selected = self.selects(change.old)
            if was_selected and not now_selected:
                kind, now_selected = "DELETED", True
            elif now_selected and not was_selected:
                kind = "ADDED"
        if not now_selected:
            return
        if self.queue.qsize() >= _MAX_BACKLOG:
            self.close()
            return
        self.queue.put_nowait(change.line(kind))

    def close(self) -> None:
        """End the watch stream once the queued lines are sent."""
        self.queue.put_nowait(None)


def _timestamp(offset_seconds: int = 0) -> str:
    moment = datetime.now(UTC) + timedelta(seconds=offset_seconds)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _content(obj: Obj) -> Obj:
    """What ``generation`` tracks: everything but metadata and status."""
    return {k: v for k, v in obj.items() if k not in ("metadata", "status", "kind", "apiVersion")}


class Registry:
    """In-memory Kubernetes object storage with resource versions and watches.

    Parameters
    ----------
    window
        How many changes the watch log keeps; a watch from an older version
        gets 410 Gone.
    service_account_admission
        Refuse pods whose service account does not exist (403), as the
        ServiceAccount admission plugin of a real API server does.
    """

    def __init__(self, *, window: int = 10_000, service_account_admission: bool = True) -> None:
        self._objects: dict[Resource, dict[str, dict[str, Obj]]] = {r: {} for r in RESOURCES}
        # (label key, label value) -> {(namespace, name)}, per resource: a
        # controller's "list pods with labd.io/user=x" must not scan them all.
        self._labels: dict[Resource, dict[tuple[str, str], set[tuple[str, str]]]] = {
            r: {} for r in RESOURCES
        }
        self._log: deque[Change] = deque(maxlen=window)
        self._compacted = 0
        self._version = 0
        self._watchers: dict[Resource, set[Watcher]] = {r: set() for r in RESOURCES}
        self._service_account_admission = service_account_admission
        self._random = random.Random()
        # id(stored object) -> (object, resourceVersion, its JSON): a LIST
        # serializes each stored version once, as a real API server's watch
        # cache does, instead of on every LIST.
        self._encoded: dict[int, tuple[Obj, str, bytes]] = {}

    @property
    def resource_version(self) -> int:
        """The resourceVersion of the latest write."""
        return self._version

    # Reads ---------------------------------------------------------------

    def find(self, resource: Resource, namespace: str, name: str) -> Obj | None:
        """Return a stored object, or None (``namespace`` is ``""`` for cluster scope)."""
        return self._objects[resource].get(namespace, {}).get(name)

    def get(self, resource: Resource, namespace: str, name: str) -> Obj:
        """Return a stored object.

        Raises
        ------
        ApiError
            404 NotFound.
        """
        obj = self.find(resource, namespace, name)
        if obj is None:
            raise not_found(resource.qualified, name, resource.group)
        return obj

    def select(
        self,
        resource: Resource,
        namespace: str | None,
        labels: LabelSelector,
        fields: FieldSelector,
    ) -> list[Obj]:
        """Return selected objects sorted by namespace and name.

        Parameters
        ----------
        resource
            The resource type.
        namespace
            One namespace, or None for all (and for cluster-scoped kinds).
        labels
            Label selector.
        fields
            Field selector.
        """
        if labels.required:
            return self._select_indexed(resource, namespace, labels, fields)
        by_namespace = self._objects[resource]
        buckets: Iterable[dict[str, Obj]]
        if namespace is None:
            buckets = [by_namespace[ns] for ns in sorted(by_namespace)]
        else:
            buckets = [by_namespace.get(namespace, {})]
        only = fields.only_name()
        check_fields = not fields.empty
        items: list[Obj] = []
        for bucket in buckets:
            if only is not None:
                candidates: Iterable[Obj] = [bucket[only]] if only in bucket else []
            else:
                candidates = (bucket[name] for name in sorted(bucket))
            for obj in candidates:
                if labels.matches(obj["metadata"].get("labels")) and (
                    not check_fields or fields.matches(obj)
                ):
                    items.append(obj)
        return items

    def _select_indexed(
        self,
        resource: Resource,
        namespace: str | None,
        labels: LabelSelector,
        fields: FieldSelector,
    ) -> list[Obj]:
        index = self._labels[resource]
        keys: set[tuple[str, str]] | None = None
        for key, values in labels.required:
            found: set[tuple[str, str]] = set()
            for value in values:
                found |= index.get((key, value), set())
            keys = found if keys is None or len(found) < len(keys) else keys
        items: list[Obj] = []
        by_namespace = self._objects[resource]
        for ns, name in sorted(keys or ()):
            if namespace is not None and ns != namespace:
                continue
            obj = by_namespace[ns][name]
            if labels.matches(obj["metadata"].get("labels")) and fields.matches(obj):
                items.append(obj)
        return items

    def encoded(self, obj: Obj) -> bytes:
        """Return a stored object as compact JSON, serialized once per version."""
        version = obj["metadata"].get("resourceVersion", "")
        entry = self._encoded.get(id(obj))
        if entry is not None and entry[0] is obj and entry[1] == version:
            return entry[2]
        data = _dumps(obj).encode()
        self._encoded[id(obj)] = (obj, version, data)
        return data

    def objects(self, resource: Resource) -> list[Obj]:
        """Return every stored object of ``resource``, sorted by namespace and name."""
        return self.select(resource, None, LabelSelector.parse(""), FieldSelector.parse("", ()))

    def namespace_contents(self, namespace: str) -> list[tuple[Resource, Obj]]:
        """Return every object stored in ``namespace``, of every resource type."""
        found: list[tuple[Resource, Obj]] = []
        for resource, by_namespace in self._objects.items():
            if resource.namespaced:
                found.extend((resource, obj) for obj in by_namespace.get(namespace, {}).values())
        return found

    # Writes --------------------------------------------------------------

    def _next_version(self) -> int:
        self._version += 1
        return self._version

    def _publish(self, change: Change) -> None:
        log = self._log
        if log.maxlen is not None and len(log) == log.maxlen:
            self._compacted = log[0].version
        log.append(change)
        for watcher in list(self._watchers[change.resource]):
            watcher.offer(change)

    def _store(self, resource: Resource, obj: Obj, old: Obj | None) -> Obj:
        meta = obj["metadata"]
        version = self._next_version()
        meta["resourceVersion"] = str(version)
        namespace = meta.get("namespace", "")
        self._objects[resource].setdefault(namespace, {})[meta["name"]] = obj
        if old is not None:
            self._encoded.pop(id(old), None)
        self._index_labels(resource, namespace, meta["name"], old, obj)
        kind: ChangeType = "ADDED" if old is None else "MODIFIED"
        # Watched kinds are serialized for the watchers anyway: the same
        # bytes then serve LISTs.
        body = self.encoded(obj) if self._watchers[resource] else None
        self._publish(Change(version, kind, resource, namespace, obj, old, body))
        return obj

    def _index_labels(
        self, resource: Resource, namespace: str, name: str, old: Obj | None, new: Obj | None
    ) -> None:
        before = (old["metadata"].get("labels") or {}) if old else {}
        after = (new["metadata"].get("labels") or {}) if new else {}
        if before == after:
            return
        index, key = self._labels[resource], (namespace, name)
        for pair in before.items():
            if pair not in after.items():
                holders = index.get(pair)
                if holders is not None:
                    holders.discard(key)
                    if not holders:
                        del index[pair]
        for pair in after.items():
            index.setdefault(pair, set()).add(key)

    def remove(self, resource: Resource, namespace: str, name: str) -> Obj:
        """Remove an object for good and publish DELETED (the last step of a deletion).

        Raises
        ------
        ApiError
            404 when the object is already gone.
        """
        old = self.get(resource, namespace, name)
        bucket = self._objects[resource][namespace]
        del bucket[name]
        self._encoded.pop(id(old), None)
        if not bucket:
            del self._objects[resource][namespace]
        self._index_labels(resource, namespace, name, old, None)
        final = {**old, "metadata": dict(old["metadata"])}
        version = self._next_version()
        final["metadata"]["resourceVersion"] = str(version)
        self._publish(Change(version, "DELETED", resource, namespace, final, None))
        return final

    def _check_namespace_open(self, resource: Resource, namespace: str, name: str) -> None:
        ns = self.find(_NAMESPACES, "", namespace)
        if ns is None:
            raise not_found("namespaces", namespace)
        if ns["metadata"].get("deletionTimestamp"):
            raise forbidden(
                resource.qualified,
                name,
                f"unable to create new content in namespace {namespace} "
                "because it is being terminated",
                resource.group,
            )

    def _generated_name(self, resource: Resource, namespace: str, prefix: str) -> str:
        for _ in range(100):
            suffix = "".join(self._random.choice(_SUFFIX_ALPHABET) for _ in range(5))
            if self.find(resource, namespace, prefix + suffix) is None:
                return prefix + suffix
        raise ApiError(500, f"unable to generate a unique name from {prefix!r}")

    def create(self, resource: Resource, namespace: str, body: Any) -> Obj:
        """Create an object, as ``POST`` does.

        Parameters
        ----------
        resource
            The resource type.
        namespace
            The namespace from the URL (``""`` for cluster-scoped kinds).
        body
            The decoded request body; the registry takes ownership of it.

        Raises
        ------
        ApiError
            400 on a malformed body, 404 when the namespace does not exist,
            403 when it is terminating (or the pod's service account is
            missing), 409 AlreadyExists, 422 Invalid.
        """
        if not isinstance(body, dict) or not isinstance(body.get("metadata", {}), dict):
            raise bad_request("the body of the request must be a JSON object with metadata")
        if body.get("kind") not in (None, resource.kind):
            raise bad_request(
                f"the kind of the body ({body.get('kind')}) does not match the URL "
                f"({resource.kind})"
            )
        meta = body.setdefault("metadata", {})
        name = meta.get("name")
        if not name:
            prefix = meta.get("generateName")
            if not prefix:
                raise ApiError(
                    422,
                    f'{resource.kind} in version "{resource.version}" cannot be handled as a '
                    f"{resource.kind}: metadata.name: Required value: name or generateName is "
                    "required",
                    reason="Invalid",
                )
            name = self._generated_name(resource, namespace, prefix)
            meta["name"] = name
        if resource.namespaced:
            if meta.get("namespace") not in (None, "", namespace):
                raise bad_request(
                    "the namespace of the provided object does not match the namespace sent "
                    "on the request"
                )
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
        strategies.validate(resource, body)
        if resource.namespaced:
            self._check_namespace_open(resource, namespace, name)
        if self.find(resource, namespace, name) is not None:
            raise already_exists(resource.qualified, name, resource.group)
        if resource is _PODS and self._service_account_admission:
            account = (body.get("spec") or {}).get("serviceAccountName") or "default"
            if self.find(_SERVICE_ACCOUNTS, namespace, account) is None:
                raise forbidden(
                    "pods",
                    name,
                    f"error looking up service account {namespace}/{account}: "
                    f'serviceaccount "{account}" not found',
                )
        strategies.prepare_create(resource, body)
        for key in ("deletionTimestamp", "deletionGracePeriodSeconds", "resourceVersion"):
            meta.pop(key, None)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = _timestamp()
        meta["generation"] = 1
        obj = {"kind": resource.kind, "apiVersion": resource.api_version, **body}
        obj["kind"], obj["apiVersion"] = resource.kind, resource.api_version
        return self._store(resource, obj, None)

    def replace(
        self,
        resource: Resource,
        namespace: str,
        name: str,
        body: Any,
        *,
        subresource: str | None = None,
    ) -> Obj:
        """Replace an object, as ``PUT`` does.

        A ``metadata.resourceVersion`` in the body must equal the stored one
        (optimistic concurrency); an empty one replaces unconditionally.

        Raises
        ------
        ApiError
            400 on a name or namespace mismatch, 404 NotFound, 409 Conflict,
            422 Invalid.
        """
        old = self.get(resource, namespace, name)
        if not isinstance(body, dict) or not isinstance(body.get("metadata", {}), dict):
            raise bad_request("the body of the request must be a JSON object with metadata")
        meta = body.get("metadata", {})
        if meta.get("name") not in (None, name):
            raise bad_request(
                f"the name of the object ({meta.get('name')}) does not match the name on the "
                f"URL ({name})"
            )
        if resource.namespaced and meta.get("namespace") not in (None, "", namespace):
            raise bad_request(
                "the namespace of the provided object does not match the namespace sent on "
                "the request"
            )
        self._check_version(resource, old, meta.get("resourceVersion"))
        return self._write(resource, old, body, subresource)

    def patch(
        self,
        resource: Resource,
        namespace: str,
        name: str,
        patch: Any,
        content_type: str,
        *,
        subresource: str | None = None,
    ) -> Obj:
        """Patch an object, as ``PATCH`` does (merge, strategic-as-merge, JSON patch).

        A patch that sets ``metadata.resourceVersion`` acts as a precondition.

        Raises
        ------
        ApiError
            404 NotFound, 409 Conflict, 415 for an unknown patch type, 422.
        """
        old = self.get(resource, namespace, name)
        new = apply_patch(old, patch, content_type)
        meta = new.get("metadata")
        if not isinstance(meta, dict):
            raise bad_request("patch: metadata must be an object")
        self._check_version(resource, old, meta.get("resourceVersion"))
        if meta.get("uid") != old["metadata"]["uid"]:
            # A patch naming a UID only applies to that incarnation of the object.
            raise conflict(
                resource.qualified,
                name,
                f"Precondition failed: UID in precondition: {meta.get('uid')}, UID in object "
                f"meta: {old['metadata']['uid']}",
                resource.group,
            )
        return self._write(resource, old, new, subresource)

    def _check_version(self, resource: Resource, old: Obj, version: Any) -> None:
        if version and str(version) != old["metadata"]["resourceVersion"]:
            raise conflict(
                resource.qualified,
                old["metadata"]["name"],
                "the object has been modified; please apply your changes to the latest "
                "version and try again",
                resource.group,
            )

    def _write(self, resource: Resource, old: Obj, body: Obj, subresource: str | None) -> Obj:
        old_meta = old["metadata"]
        if subresource == "status":
            status = body.get("status")
            new: Obj = {**old, "metadata": dict(old_meta), "status": copy.deepcopy(status or {})}
        else:
            new = copy.deepcopy(body)
            new["kind"], new["apiVersion"] = resource.kind, resource.api_version
            if "status" in resource.subresources or "status" in old:
                if "status" in old:
                    new["status"] = old["status"]
                else:
                    new.pop("status", None)
            meta = new.setdefault("metadata", {})
            for key in (
                "name",
                "namespace",
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "generation",
                "generateName",
            ):
                if key in old_meta:
                    meta[key] = old_meta[key]
                else:
                    meta.pop(key, None)
            strategies.prepare_update(resource, old, new)
            strategies.validate(resource, new)
            if _content(new) != _content(old):
                meta["generation"] = old_meta.get("generation", 1) + 1
        new_meta = new["metadata"]
        new_meta["resourceVersion"] = old_meta["resourceVersion"]
        if new == old:
            # A write that changes nothing is a no-op: no new version, no event.
            return old
        if (
            new_meta.get("deletionTimestamp")
            and new_meta.get("deletionGracePeriodSeconds") == 0
            and not new_meta.get("finalizers")
            and resource is not _NAMESPACES
        ):
            # The last finalizer of an object being deleted is gone.
            self._store(resource, new, old)
            return self.remove(resource, new_meta.get("namespace", ""), new_meta["name"])
        return self._store(resource, new, old)

    def bind(self, namespace: str, name: str, body: Any) -> None:
        """Bind a pod to a node, as ``POST pods/<name>/binding`` does.

        Raises
        ------
        ApiError
            404 for an unknown pod, 409 when it is already bound, 422 without
            a target.
        """
        pod = self.get(_PODS, namespace, name)
        target = body.get("target") if isinstance(body, dict) else None
        node = target.get("name") if isinstance(target, dict) else None
        if not node:
            raise invalid("Binding", name, "target.name", "", "Required value")
        if pod.get("spec", {}).get("nodeName"):
            raise conflict(
                "pods/binding",
                name,
                f'pod {name} is already assigned to node "{pod["spec"]["nodeName"]}"',
            )
        new = copy.deepcopy(pod)
        new["spec"]["nodeName"] = node
        conditions = [
            c for c in new["status"].get("conditions", []) if c.get("type") != "PodScheduled"
        ]
        conditions.append(
            {
                "type": "PodScheduled",
                "status": "True",
                "lastProbeTime": None,
                "lastTransitionTime": _timestamp(),
            }
        )
        new["status"]["conditions"] = conditions
        self._store(_PODS, new, pod)

    def delete(
        self,
        resource: Resource,
        namespace: str,
        name: str,
        *,
        grace_period: int | None = None,
        preconditions: dict[str, Any] | None = None,
    ) -> tuple[Obj, bool]:
        """Delete an object, gracefully where Kubernetes does.

        - A namespace is marked (``deletionTimestamp``, phase Terminating);
          the namespace controller empties and removes it.
        - A pod bound to a node and not finished is marked with
          ``deletionTimestamp = now + grace`` and
          ``deletionGracePeriodSeconds``; its kubelet stops it and deletes it
          with grace 0. An unbound or finished pod, or grace 0, goes at once.
        - An object with ``metadata.finalizers`` is marked and stays until
          its finalizers are removed.
        - Anything else is removed at once.

        Parameters
        ----------
        resource
            The resource type.
        namespace
            The namespace (``""`` for cluster scope).
        name
            The object name.
        grace_period
            ``gracePeriodSeconds`` of the request; None = the pod's own
            ``terminationGracePeriodSeconds``.
        preconditions
            ``{"uid": ..., "resourceVersion": ...}``; a mismatch is 409.

        Returns
        -------
        tuple
            The object (final or marked) and whether it is gone.
        """
        old = self.get(resource, namespace, name)
        meta = old["metadata"]
        for key in ("uid", "resourceVersion"):
            wanted = (preconditions or {}).get(key)
            if wanted and wanted != meta.get(key):
                label = "UID" if key == "uid" else "ResourceVersion"
                raise conflict(
                    resource.qualified,
                    name,
                    f"Precondition failed: {label} in precondition: {wanted}, {label} in "
                    f"object meta: {meta.get(key)}",
                    resource.group,
                )
        if resource is _NAMESPACES:
            if meta.get("deletionTimestamp"):
                return old, False
            marked: Obj = {
                **old,
                "metadata": {**meta, "deletionTimestamp": _timestamp(),
                             "deletionGracePeriodSeconds": 0},
                "status": {"phase": "Terminating"},
            }  # fmt: skip
            return self._store(resource, marked, old), False
        period = 0
        if resource is _PODS:
            spec, status = old.get("spec", {}), old.get("status", {})
            period = (
                grace_period
                if grace_period is not None
                else int(spec.get("terminationGracePeriodSeconds", 30))
            )
            if not spec.get("nodeName") or status.get("phase") in ("Succeeded", "Failed"):
                period = 0
            period = max(period, 0)
            current = meta.get("deletionGracePeriodSeconds")
            if current is not None and current <= period:
                return old, False
        if period == 0 and not meta.get("finalizers"):
            return self.remove(resource, namespace, name), True
        if meta.get("deletionTimestamp") and period == meta.get("deletionGracePeriodSeconds"):
            return old, False
        marked = {
            **old,
            "metadata": {**meta, "deletionTimestamp": _timestamp(period),
                         "deletionGracePeriodSeconds": period},
        }  # fmt: skip
        return self._store(resource, marked, old), False

    # Watches -------------------------------------------------------------

    def watch(
        self,
        resource: Resource,
        namespace: str | None,
        since: str | None,
        labels: LabelSelector,
        fields: FieldSelector,
    ) -> Watcher:
        """Open a watch.

        Parameters
        ----------
        resource
            The resource type.
        namespace
            One namespace, or None for all.
        since
            The resourceVersion to resume after. Unset or ``"0"``: start with
            a synthetic ADDED for every selected object, then follow.
        labels
            Label selector.
        fields
            Field selector.

        Raises
        ------
        ApiError
            400 for a malformed version, 410 Expired when it is older than
            the kept window.
        """
        watcher = Watcher(resource, namespace, labels, fields)
        if since in (None, "", "0"):
            for obj in self.select(resource, namespace, labels, fields):
                watcher.queue.put_nowait(f'{{"type":"ADDED","object":{_dumps(obj)}}}\n'.encode())
        else:
            try:
                start = int(str(since))
            except ValueError:
                raise bad_request(f"invalid resource version: {since!r}") from None
            if start < self._compacted:
                raise expired(start, self._log[0].version)
            if self._log:
                skip = max(0, start - self._log[0].version + 1)
                for change in itertools.islice(self._log, skip, None):
                    if change.resource is resource:
                        watcher.offer(change)
        self._watchers[resource].add(watcher)
        return watcher

    def unwatch(self, watcher: Watcher) -> None:
        """Forget a watch whose stream has ended."""
        self._watchers[watcher.resource].discard(watcher)

    def watchers(self) -> Iterator[Watcher]:
        """Iterate over every open watch."""
        for watchers in self._watchers.values():
            yield from list(watchers)

    def oldest_version(self) -> int:
        """Return the oldest resourceVersion a watch may still resume from."""
        return self._compacted
