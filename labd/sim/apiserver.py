"""The simulated kube-apiserver: Kubernetes REST over HTTP, served by Starlette.

Requests are parsed the way the real API server lays out its URLs:

- ``/api/v1/<resource>[/<name>[/<subresource>]]`` and
  ``/api/v1/namespaces/<ns>/<resource>[/<name>[/<subresource>]]`` for the
  core group, the same under ``/apis/<group>/<version>/`` for the others;
- the HTTP method plus the presence of a name and ``?watch`` give the verb
  (get, list, watch, create, update, patch, delete, deletecollection), which
  is what statistics and faults are keyed by, with the resource
  (``pods``, ``pods/status``).

A watch is a chunked response of JSON lines. Its stream ends at the
client's ``timeoutSeconds`` (or after a default like the real server's
half hour), when a fault drops it, or at shutdown; a too-old version is an
``ERROR`` event carrying a 410 Status, sent with HTTP 200 as Kubernetes does.

Gets, lists and watches of the kinds `labd.sim.tables` prints are answered
as server-side ``Table`` objects when the client asks for them (kubectl
does), otherwise as plain JSON.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import structlog
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from labd.sim import kinds
from labd.sim.errors import ApiError, bad_request, expired
from labd.sim.faults import Faults, Stats
from labd.sim.kinds import Resource, find_resource
from labd.sim.registry import Obj, Registry, Watcher
from labd.sim.selectors import FieldSelector, LabelSelector
from labd.sim.tables import TableFormat, negotiate, table

__all__ = ["INTERNAL_USER_AGENT", "ApiServer", "json_response"]

#: User-Agent prefix of the sim's own clients, which faults spare.
INTERNAL_USER_AGENT = "labd-sim-"

_logger = structlog.get_logger()
_PROPAGATION = (None, "Orphan", "Background", "Foreground")
_RETURNS_OBJECT_ON_DELETE = ("pods", "namespaces")


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """Serialize ``body`` compactly as an ``application/json`` response."""
    return Response(
        json.dumps(body, separators=(",", ":")),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


def _flag(value: str | None) -> bool:
    """Parse a boolean query parameter as Go's ``strconv.ParseBool`` does."""
    return value in ("1", "t", "T", "true", "TRUE", "True")


def _error_response(error: ApiError) -> Response:
    return json_response(error.status(), error.code, error.headers)


def _success(resource: Resource, obj: Obj) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": {
            "name": obj["metadata"]["name"],
            "group": resource.group,
            "kind": resource.plural,
            "uid": obj["metadata"].get("uid"),
        },
    }


@dataclass(frozen=True, slots=True)
class _Target:
    resource: Resource
    namespace: str | None
    name: str | None
    subresource: str | None

    @property
    def key(self) -> str:
        return (
            f"{self.resource.plural}/{self.subresource}"
            if self.subresource
            else self.resource.plural
        )

    @property
    def scope(self) -> str:
        return self.namespace or ""


def _not_served() -> ApiError:
    return ApiError(404, "the server could not find the requested resource")


class ApiServer:
    """The HTTP face of a `Registry`.

    Parameters
    ----------
    registry
        The object store.
    faults
        Faults to inject into client requests.
    stats
        Request counters.
    token
        Bearer token clients must present; None accepts any request.
    bookmark_interval
        Seconds between BOOKMARK events on watches that asked for them.
    watch_timeout
        Seconds a watch without ``timeoutSeconds`` stays open.
    extra_routes
        More routes to serve (the control API).
    """

    def __init__(
        self,
        registry: Registry,
        *,
        faults: Faults,
        stats: Stats,
        token: str | None = None,
        bookmark_interval: float = 60.0,
        watch_timeout: float = 1800.0,
        extra_routes: list[BaseRoute] | None = None,
    ) -> None:
        self.registry = registry
        self.faults = faults
        self.stats = stats
        self.token = token
        self.bookmark_interval = bookmark_interval
        self.watch_timeout = watch_timeout
        methods = ["GET", "POST", "PUT", "PATCH", "DELETE"]
        routes: list[BaseRoute] = [
            Route("/version", self._version),
            Route("/healthz", self._ok),
            Route("/readyz", self._ok),
            Route("/livez", self._ok),
            Route("/api", self._core_versions),
            Route("/apis", self._groups),
            Route("/api/{path:path}", self._core, methods=methods),
            Route("/apis/{path:path}", self._grouped, methods=methods),
            *(extra_routes or []),
        ]
        self.app = Starlette(routes=routes)
        """The ASGI application."""

    def authorize(self, request: Request) -> None:
        """Check the bearer token.

        Raises
        ------
        ApiError
            401 Unauthorized.
        """
        if self.token is None:
            return
        if request.headers.get("authorization") != f"Bearer {self.token}":
            raise ApiError(401, "Unauthorized")

    def close_watches(self) -> None:
        """End every open watch stream (at shutdown)."""
        for watcher in self.registry.watchers():
            watcher.close()

    # Discovery -------------------------------------------------------------

    async def _version(self, request: Request) -> Response:
        return json_response(kinds.version_info())

    async def _ok(self, request: Request) -> Response:
        return Response("ok", media_type="text/plain")

    async def _core_versions(self, request: Request) -> Response:
        try:
            self.authorize(request)
        except ApiError as error:
            return _error_response(error)
        return json_response(kinds.api_versions(request.url.netloc))

    async def _groups(self, request: Request) -> Response:
        try:
            self.authorize(request)
        except ApiError as error:
            return _error_response(error)
        return json_response(kinds.api_group_list())

    # Resources -------------------------------------------------------------

    async def _core(self, request: Request) -> Response:
        parts = request.path_params["path"].strip("/").split("/")
        return await self._serve(request, "", parts[0], parts[1:])

    async def _grouped(self, request: Request) -> Response:
        parts = request.path_params["path"].strip("/").split("/")
        if len(parts) == 1:
            try:
                self.authorize(request)
            except ApiError as error:
                return _error_response(error)
            group = kinds.api_group(parts[0])
            return json_response(group) if group else _error_response(_not_served())
        return await self._serve(request, parts[0], parts[1], parts[2:])

    async def _serve(
        self, request: Request, group: str, version: str, rest: list[str]
    ) -> Response:
        internal = request.headers.get("user-agent", "").startswith(INTERNAL_USER_AGENT)
        verb, key = "", ""
        try:
            self.authorize(request)
            if not rest or rest == [""]:
                listing = kinds.api_resource_list(group, version)
                if listing is None or request.method != "GET":
                    raise _not_served()
                return json_response(listing)
            target = self._target(group, version, rest)
            verb = self._verb(request, target)
            key = target.key
            self.stats.record(verb, key, internal=internal)
            if not internal:
                delay = self.faults.delay_for(verb, key)
                if delay > 0:
                    await asyncio.sleep(delay)
                error = self.faults.error_for(verb, key)
                if error is not None:
                    raise error
            if "dryRun" in request.query_params:
                # Serving it as a real write would persist what the client meant to try.
                raise bad_request("dryRun is not supported by the simulated cluster")
            return await self._dispatch(request, verb, target, internal)
        except ApiError as error:
            if verb and not internal:
                self.stats.record_error(verb, key, error.code)
            return _error_response(error)
        except Exception:
            # A bug in the sim: answer like an API server would, and say where.
            _logger.exception(
                "sim API server failed", method=request.method, path=request.url.path
            )
            return _error_response(ApiError(500, "internal error in the simulated API server"))

    def _target(self, group: str, version: str, rest: list[str]) -> _Target:
        namespace: str | None = None
        if rest[0] == "namespaces" and len(rest) >= 3 and rest[2] != "status":
            namespace, rest = rest[1], rest[2:]
        resource = find_resource(group, version, rest[0])
        if resource is None or len(rest) > 3 or "" in rest:
            raise _not_served()
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else None
        if sub is not None and sub not in resource.subresources:
            raise _not_served()
        if resource.namespaced and namespace is None and name is not None:
            raise _not_served()
        if not resource.namespaced and namespace is not None:
            raise _not_served()
        return _Target(resource, namespace, name, sub)

    @staticmethod
    def _verb(request: Request, target: _Target) -> str:
        method = request.method
        if method == "GET":
            if target.name is not None:
                return "get"
            return "watch" if _flag(request.query_params.get("watch")) else "list"
        if method == "POST" and (target.name is None or target.subresource == "binding"):
            return "create"
        if method == "PUT" and target.name is not None:
            return "update"
        if method == "PATCH" and target.name is not None:
            return "patch"
        if method == "DELETE":
            return "delete" if target.name is not None else "deletecollection"
        raise ApiError(405, "the server does not allow this method on the requested resource")

    async def _body(self, request: Request, *, required: bool = True) -> Any:
        raw = await request.body()
        if not raw.strip():
            if required:
                raise bad_request("the body of the request is empty")
            return {}
        try:
            return json.loads(raw)
        except ValueError as error:
            raise bad_request(f"the body of the request is not valid JSON: {error}") from None

    async def _dispatch(
        self, request: Request, verb: str, target: _Target, internal: bool
    ) -> Response:
        registry, resource = self.registry, target.resource
        if verb == "get":
            obj = registry.get(resource, target.scope, str(target.name))
            fmt = self._table_format(request, target)
            if fmt is not None:
                version = obj["metadata"].get("resourceVersion", "")
                meta = {"resourceVersion": version}
                return json_response(table(fmt, resource.plural, [obj], list_meta=meta))
            return json_response(obj)
        if verb == "list":
            return self._list(request, target)
        if verb == "watch":
            return self._watch(request, target, internal)
        if verb == "create":
            body = await self._body(request)
            if target.subresource == "binding":
                registry.bind(target.scope, str(target.name), body)
                pod = registry.get(resource, target.scope, str(target.name))
                return json_response({**_success(resource, pod), "code": 201}, 201)
            return json_response(registry.create(resource, target.scope, body), 201)
        if verb == "update":
            body = await self._body(request)
            obj = registry.replace(
                resource, target.scope, str(target.name), body, subresource=target.subresource
            )
            return json_response(obj)
        if verb == "patch":
            body = await self._body(request)
            content_type = request.headers.get("content-type", "")
            obj = registry.patch(
                resource,
                target.scope,
                str(target.name),
                body,
                content_type,
                subresource=target.subresource,
            )
            return json_response(obj)
        if verb == "delete":
            grace, preconditions = await self._delete_options(request)
            obj, gone = registry.delete(
                resource,
                target.scope,
                str(target.name),
                grace_period=grace,
                preconditions=preconditions,
            )
            if gone and resource.plural not in _RETURNS_OBJECT_ON_DELETE:
                return json_response(_success(resource, obj))
            return json_response(obj)
        return await self._delete_collection(request, target)

    async def _delete_options(self, request: Request) -> tuple[int | None, dict[str, Any] | None]:
        body = await self._body(request, required=False)
        if not isinstance(body, dict):
            raise bad_request("DeleteOptions must be a JSON object")
        query = request.query_params
        grace_text = query.get("gracePeriodSeconds")
        grace = body.get("gracePeriodSeconds")
        if grace is None and grace_text is not None:
            try:
                grace = int(grace_text)
            except ValueError:
                raise bad_request(f"invalid gracePeriodSeconds: {grace_text!r}") from None
        propagation = body.get("propagationPolicy") or query.get("propagationPolicy")
        if propagation not in _PROPAGATION:
            raise bad_request(
                f"propagationPolicy: Unsupported value: {propagation!r}: supported values: "
                '"Foreground", "Background", "Orphan"'
            )
        preconditions = body.get("preconditions")
        if preconditions is not None and not isinstance(preconditions, dict):
            raise bad_request("preconditions must be an object")
        return (int(grace) if grace is not None else None), preconditions

    async def _delete_collection(self, request: Request, target: _Target) -> Response:
        grace, _ = await self._delete_options(request)
        resource = target.resource
        labels, fields = self._selectors(request, resource)
        for obj in self.registry.select(resource, target.namespace, labels, fields):
            meta = obj["metadata"]
            self.registry.delete(
                resource, meta.get("namespace", ""), meta["name"], grace_period=grace
            )
        return json_response(
            {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}
        )

    @staticmethod
    def _table_format(request: Request, target: _Target) -> TableFormat | None:
        """The table the client asked for, or None for plain JSON."""
        if target.subresource is not None:
            return None
        return negotiate(
            request.headers.get("accept", ""),
            request.query_params.get("includeObject"),
            target.resource.plural,
        )

    @staticmethod
    def _selectors(request: Request, resource: Resource) -> tuple[LabelSelector, FieldSelector]:
        query = request.query_params
        labels = LabelSelector.parse(query.get("labelSelector"))
        fields = FieldSelector.parse(query.get("fieldSelector"), resource.fields)
        return labels, fields

    def _list(self, request: Request, target: _Target) -> Response:
        resource = target.resource
        labels, fields = self._selectors(request, resource)
        items = self.registry.select(resource, target.namespace, labels, fields)
        version = self.registry.resource_version
        meta: dict[str, Any] = {"resourceVersion": str(version)}
        query = request.query_params
        token = query.get("continue")
        if token:
            try:
                state = json.loads(base64.urlsafe_b64decode(token.encode()))
                after = (str(state["namespace"]), str(state["name"]))
            except (ValueError, KeyError, TypeError):
                raise bad_request("continue key is not valid") from None
            items = [
                i
                for i in items
                if (i["metadata"].get("namespace", ""), i["metadata"]["name"]) > after
            ]
        limit_text = query.get("limit")
        limit = int(limit_text) if limit_text and limit_text.isdigit() else 0
        if 0 < limit < len(items):
            last = items[limit - 1]["metadata"]
            state = {"namespace": last.get("namespace", ""), "name": last["name"]}
            meta["continue"] = base64.urlsafe_b64encode(json.dumps(state).encode()).decode()
            meta["remainingItemCount"] = len(items) - limit
            items = items[:limit]
        fmt = self._table_format(request, target)
        if fmt is not None:
            return json_response(table(fmt, resource.plural, items, list_meta=meta))
        head = json.dumps(
            {"kind": f"{resource.kind}List", "apiVersion": resource.api_version, "metadata": meta},
            separators=(",", ":"),
        )
        encoded = self.registry.encoded
        body = b"".join((head[:-1].encode(), b',"items":[', b",".join(map(encoded, items)), b"]}"))
        return Response(body, media_type="application/json")

    def _watch(self, request: Request, target: _Target, internal: bool) -> Response:
        resource = target.resource
        labels, fields = self._selectors(request, resource)
        query = request.query_params
        timeout_text = query.get("timeoutSeconds")
        try:
            timeout = float(timeout_text) if timeout_text else self.watch_timeout
        except ValueError:
            raise bad_request(f"invalid timeoutSeconds: {timeout_text!r}") from None
        bookmarks = _flag(query.get("allowWatchBookmarks"))
        since = query.get("resourceVersion")
        try:
            if not internal and self.faults.take_forced_gone():
                requested = int(since) if since and since.isdigit() else 0
                raise expired(requested, self.registry.resource_version)
            watcher = self.registry.watch(resource, target.namespace, since, labels, fields)
        except ApiError as error:
            if error.code != 410:
                raise
            line = json.dumps({"type": "ERROR", "object": error.status()}) + "\n"
            return Response(line, media_type="application/json")
        fmt = self._table_format(request, target)
        stream = self._stream(
            watcher,
            duration=timeout,
            bookmarks=bookmarks,
            faulty=not internal,
            transform=_table_events(fmt, resource.plural) if fmt is not None else None,
        )
        return StreamingResponse(stream, media_type="application/json")

    async def _stream(
        self,
        watcher: Watcher,
        *,
        duration: float,
        bookmarks: bool,
        faulty: bool,
        transform: Callable[[bytes], bytes] | None = None,
    ) -> AsyncIterator[bytes]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + duration
        next_bookmark = loop.time() + self.bookmark_interval if bookmarks else math.inf
        queue, faults, sent = watcher.queue, self.faults, 0
        resource = watcher.resource
        try:
            while True:
                now = loop.time()
                if now >= deadline:
                    return
                if queue.empty():
                    try:
                        async with asyncio.timeout(min(deadline, next_bookmark) - now):
                            line = await queue.get()
                    except TimeoutError:
                        if loop.time() >= next_bookmark:
                            next_bookmark = loop.time() + self.bookmark_interval
                            if not (faulty and faults.silent):
                                # The queue is empty, so every change up to the
                                # current version has been offered to this watch.
                                yield self._bookmark(resource)
                        continue
                else:
                    line = queue.get_nowait()
                if line is None:
                    return
                if faulty:
                    if faults.silent:
                        continue
                    if faults.should_drop(sent):
                        return
                yield line if transform is None else transform(line)
                sent += 1
        finally:
            self.registry.unwatch(watcher)

    def _bookmark(self, resource: Resource) -> bytes:
        obj = {
            "kind": resource.kind,
            "apiVersion": resource.api_version,
            "metadata": {"resourceVersion": str(self.registry.resource_version)},
        }
        return (json.dumps({"type": "BOOKMARK", "object": obj}) + "\n").encode()


def _table_events(fmt: TableFormat, resource: str) -> Callable[[bytes], bytes]:
    """Turn watch event lines into events whose object is a one-row ``Table``.

    Only the first table carries the column definitions: clients keep them
    for the later rows, as with a real API server.
    """
    first = True

    def transform(line: bytes) -> bytes:
        nonlocal first
        event = json.loads(line)
        if event.get("type") not in ("ADDED", "MODIFIED", "DELETED"):
            return line
        obj = event["object"]
        meta = {"resourceVersion": obj.get("metadata", {}).get("resourceVersion", "")}
        event["object"] = table(fmt, resource, [obj], list_meta=meta, columns=first)
        first = False
        return (json.dumps(event, separators=(",", ":")) + "\n").encode()

    return transform
