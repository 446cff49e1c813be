"""The route table: every route of docs/api.md, declared once.

Each `Operation` says what the route is (method, path, handler), who may
call it and what it can answer.  The Starlette routes and the OpenAPI
document are both built from `OPERATIONS`, so the schema cannot drift from
what is served.

Every route with a user in its path runs the same checks before its
handler, in an order that leaks nothing: the token (401), whether it may
act for that user (403), then whether the username is legal at all (422).

Paths match the username with a convertor that takes any character, so
that a username holding an encoded slash (``a%2Fb``) or a control character
reaches the username check and is refused as ``invalid_username`` instead of
falling through to a 404; a literal slash (``/labs/alice/unknown``) is an
unknown sub-path, and gets the 404 of any unknown route.  So
``/labs/alice/events`` is never read as the user ``alice/events``, whatever
the order of the routes.

Starlette tries the routes in order, and each route tried costs a request a
regular-expression match.  The lab's own path comes first: the hub polls it
for every user, all the time.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from pydantic import BaseModel
from starlette.convertors import StringConvertor, register_url_convertor
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match, Route
from starlette.types import Scope

from labd.api.auth import Access, Caller
from labd.api.handlers import LabApi
from labd.api.models import Health, HistoryEntry, HistoryQuery, Ready
from labd.api.service import check_username
from labd.lab.protocol import LabSpecification, LabStateModel

__all__ = ["OPERATIONS", "Operation", "Reply", "build_routes"]

Handler = Callable[[LabApi, Request, Caller | None], Awaitable[Response]]


class _AnyText(StringConvertor):
    """Any non-empty text, slashes and newlines included."""

    regex = r"[\s\S]+"


register_url_convertor("labd_username", _AnyText())


@dataclass(frozen=True, slots=True)
class Reply:
    """A successful answer of a route."""

    description: str
    """What it means."""

    media_type: str | None = "application/json"
    """Content type of the body; `None` for no body."""

    model: type[BaseModel] | None = None
    """Model of a JSON body."""

    array: bool = False
    """Whether the body is a JSON array of `model`."""

    schema: dict[str, Any] | None = None
    """JSON schema of the body, when it is not a model."""

    headers: tuple[str, ...] = ()
    """Headers it always carries."""


@dataclass(frozen=True, slots=True)
class Operation:
    """One route of the API."""

    name: str
    """Route name and OpenAPI ``operationId``."""

    method: str
    """HTTP method."""

    path: str
    """Path below the configured prefix, ``{username}`` for the user."""

    handler: Handler
    """What answers it."""

    access: Access
    """Who may call it."""

    summary: str
    """One line for the schema."""

    replies: Mapping[int, Reply]
    """Successful answers by status."""

    errors: tuple[int, ...] = ()
    """Error statuses beyond those every route of its access can give."""

    body: type[BaseModel] | None = None
    """Model of the JSON request body."""

    query: type[BaseModel] | None = None
    """Model of the query parameters."""

    request_headers: Mapping[str, str] = field(default_factory=dict)
    """Optional request headers it reads, with their meaning."""

    @property
    def has_username(self) -> bool:
        """Whether the path names a user."""
        return "{username}" in self.path

    @property
    def error_statuses(self) -> tuple[int, ...]:
        """Every error status the route can answer, sorted."""
        statuses = set(self.errors) | {500}
        if self.access is not Access.PUBLIC:
            statuses |= {401, 403}
        if self.has_username:
            statuses.add(422)
        if self.body is not None:
            statuses |= {413, 422}
        if self.query is not None:
            statuses.add(422)
        return tuple(sorted(statuses))


_LAB_STATE: Final = Reply("The user's lab.", model=LabStateModel)
_PREFIX: Final = "/spawner/v1"

OPERATIONS: Final[tuple[Operation, ...]] = (
    Operation(
        name="list_labs",
        method="GET",
        path=f"{_PREFIX}/labs",
        handler=LabApi.list_labs,
        access=Access.HUB,
        summary="Usernames whose lab is running, sorted.",
        replies={200: Reply("Usernames.", schema={"type": "array", "items": {"type": "string"}})},
    ),
    Operation(
        name="create_lab",
        method="POST",
        path=f"{_PREFIX}/labs/{{username}}/create",
        handler=LabApi.create_lab,
        access=Access.HUB_OR_USER,
        summary="Spawn a lab for the user; it proceeds in the background.",
        replies={
            201: Reply(
                "Accepted; `Location` is the lab's status URL.",
                media_type=None,
                headers=("Location",),
            )
        },
        errors=(400, 409),
        body=LabSpecification,
    ),
    Operation(
        name="lab_events",
        method="GET",
        path=f"{_PREFIX}/labs/{{username}}/events",
        handler=LabApi.lab_events,
        access=Access.HUB_OR_USER,
        summary="Server-sent events of the user's current or latest operation.",
        replies={
            200: Reply(
                "`text/event-stream` of `info`, `error`, `failed` and `complete` events.",
                media_type="text/event-stream",
                schema={"type": "string"},
            )
        },
        errors=(404, 429),
        request_headers={"Last-Event-ID": "Resume after this event id."},
    ),
    Operation(
        name="lab_history",
        method="GET",
        path=f"{_PREFIX}/labs/{{username}}/history",
        handler=LabApi.lab_history,
        access=Access.HUB,
        summary="The audit trail of the user's labs, newest first.",
        replies={200: Reply("Transitions, newest first.", model=HistoryEntry, array=True)},
        query=HistoryQuery,
    ),
    Operation(
        name="get_lab",
        method="GET",
        path=f"{_PREFIX}/labs/{{username}}",
        handler=LabApi.get_lab,
        access=Access.HUB,
        summary="The user's lab, from labd's own state.",
        replies={200: _LAB_STATE},
        errors=(404,),
    ),
    Operation(
        name="delete_lab",
        method="DELETE",
        path=f"{_PREFIX}/labs/{{username}}",
        handler=LabApi.delete_lab,
        access=Access.HUB,
        summary="Delete the user's lab; answers once its objects are gone.",
        replies={204: Reply("Deleted.", media_type=None)},
        errors=(404, 503),
    ),
    Operation(
        name="user_status",
        method="GET",
        path=f"{_PREFIX}/user-status",
        handler=LabApi.user_status,
        access=Access.USER,
        summary="The lab of the user whose token this is.",
        replies={200: _LAB_STATE},
        errors=(404,),
    ),
    Operation(
        name="lab_form",
        method="GET",
        path=f"{_PREFIX}/lab-form/{{username}}",
        handler=LabApi.lab_form,
        access=Access.HUB_OR_USER,
        summary="The spawn form (an HTML fragment) for the user.",
        replies={200: Reply("HTML fragment.", media_type="text/html", schema={"type": "string"})},
    ),
    Operation(
        name="healthz",
        method="GET",
        path="/healthz",
        handler=LabApi.healthz,
        access=Access.PUBLIC,
        summary="Liveness: 200 while the process is alive.",
        replies={200: Reply("Alive.", model=Health)},
    ),
    Operation(
        name="readyz",
        method="GET",
        path="/readyz",
        handler=LabApi.readyz,
        access=Access.PUBLIC,
        summary="Readiness: 200 once labd can serve, else 503 with the reason.",
        replies={200: Reply("Ready; says whether this replica leads.", model=Ready)},
        errors=(503,),
    ),
    Operation(
        name="metrics",
        method="GET",
        path="/metrics",
        handler=LabApi.metrics,
        access=Access.PUBLIC,
        summary="Prometheus metrics (text format).",
        replies={200: Reply("Metrics.", media_type="text/plain", schema={"type": "string"})},
    ),
    Operation(
        name="openapi",
        method="GET",
        path="/openapi.json",
        handler=LabApi.openapi_json,
        access=Access.PUBLIC,
        summary="This document.",
        replies={200: Reply("OpenAPI 3.1 document.", schema={"type": "object"})},
    ),
)
"""Every route, in the order the OpenAPI document lists them."""

_POLLED: Final = next(operation for operation in OPERATIONS if operation.name == "get_lab")
"""The operation the hub calls most: a status poll for every user it knows."""


def _endpoint(
    operations: Mapping[str, Operation], api: LabApi
) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        # Starlette answers HEAD with the GET route; it only sends no body.
        operation = operations["GET" if request.method == "HEAD" else request.method]
        caller = None
        if operation.access is not Access.PUBLIC:
            caller = api.authenticator.authenticate(request.headers.get("authorization"))
            username: str | None = request.path_params.get("username")
            caller.authorize(operation.access, username)
            if username is not None:
                check_username(username)
        return await operation.handler(api, request, caller)

    return endpoint


class _LabRoute(Route):
    """A route whose ``{username}`` may hold any character but a literal slash.

    ``/labs/alice/unknown`` is a path labd does not have: it matches no route
    and gets the 404 of any unknown path, whatever the method.  But
    ``/labs/a%2Fb`` names the user ``a/b`` and reaches the username check
    (422).  Starlette matches on the decoded path, so the raw one tells them
    apart: a literal ``/`` is one more than the encoded ones.
    """

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child = super().matches(scope)
        username = child.get("path_params", {}).get("username")
        if match is not Match.NONE and username is not None and _literal_slash(scope, username):
            return Match.NONE, {}
        return match, child


def _literal_slash(scope: Scope, username: str) -> bool:
    if "/" not in username:
        return False
    raw_path: bytes | None = scope.get("raw_path")
    if not raw_path:
        return True  # A server that keeps no raw path: every slash is taken as literal.
    return username.count("/") > raw_path.partition(b"?")[0].lower().count(b"%2f")


def build_routes(api: LabApi, *, prefix: str) -> list[Route]:
    """Return the Starlette routes of `OPERATIONS` under ``prefix``.

    Operations on one path share one route, so that a wrong method gets a
    405 whose ``Allow`` lists every method of the path.  The route is named
    after the path's first operation (``url_for("get_lab", ...)``).  The
    path of `_POLLED` comes first (see the module docstring).
    """
    by_path: dict[str, dict[str, Operation]] = {_POLLED.path: {}}
    for operation in OPERATIONS:
        by_path.setdefault(operation.path, {})[operation.method] = operation
    return [
        (_LabRoute if "{username}" in path else Route)(
            prefix + path.replace("{username}", "{username:labd_username}"),
            _endpoint(operations, api),
            methods=list(operations),
            name=next(iter(operations.values())).name,
        )
        for path, operations in by_path.items()
    ]
