"""The route handlers: parse the request, ask the service, shape the answer.

Handlers hold no logic of their own.  Authentication, authorization and the
username check happen before a handler runs (`labd.api.routes`), and every
refusal is an exception that `labd.api.errors` turns into the error body.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import quote

from pydantic import BaseModel, TypeAdapter, ValidationError
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response

from labd.api.auth import Authenticator, Caller
from labd.api.errors import RequestValidationError
from labd.api.form import render_form
from labd.api.models import Health, HistoryEntry, HistoryQuery, Ready
from labd.api.service import LabService
from labd.api.sse import EventStreams, parse_last_event_id
from labd.lab.errors import NotReadyError, UnknownUserError
from labd.lab.protocol import LabSpecification
from labd.lab.records import Actor

__all__ = ["LabApi", "Readiness"]

Readiness = Callable[[], Awaitable[str | None]]
MetricsSource = Callable[[], Awaitable[bytes]]
"""Renders the Prometheus text format."""
Leadership = Callable[[], Ready]
"""Says whether this replica leads, for the readiness body."""

METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""Returns `None` when labd is ready, otherwise why it is not."""

_Model = TypeVar("_Model", bound=BaseModel)
_HISTORY: TypeAdapter[list[HistoryEntry]] = TypeAdapter(list[HistoryEntry])


def _json(model: BaseModel, status_code: int = 200) -> Response:
    return Response(model.model_dump_json(), status_code, media_type="application/json")


async def _body(request: Request, model: type[_Model]) -> _Model:
    """Validate the JSON body; malformed JSON and non-objects are 422 too."""
    raw = await request.body()
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise RequestValidationError("body", exc) from None


def _query(request: Request, model: type[_Model]) -> _Model:
    try:
        return model.model_validate(dict(request.query_params))
    except ValidationError as exc:
        raise RequestValidationError("query", exc) from None


class LabApi:
    """The handlers of every route, with what they need.

    Parameters
    ----------
    service
        Where the work is done.
    authenticator
        Recognises tokens.
    readiness
        Says whether labd is ready.
    streams
        Makes event-stream responses.
    openapi
        The OpenAPI document served at ``/openapi.json``.
    metrics
        Renders ``/metrics``; `None` serves an empty document.
    leadership
        Whether this replica leads, for ``/readyz``; `None` says it does not.
    """

    def __init__(
        self,
        *,
        service: LabService,
        authenticator: Authenticator,
        readiness: Readiness,
        streams: EventStreams,
        openapi: dict[str, Any],
        metrics: MetricsSource | None = None,
        leadership: Leadership | None = None,
    ) -> None:
        self.leadership = leadership
        self.service = service
        self.authenticator = authenticator
        self.readiness = readiness
        self.streams = streams
        self.openapi = openapi
        self.metrics_source = metrics

    async def list_labs(self, request: Request, caller: Caller | None) -> Response:
        """Usernames whose lab is running, sorted."""
        return JSONResponse(await self.service.running_users())

    async def get_lab(self, request: Request, caller: Caller | None) -> Response:
        """The user's lab."""
        status = await self.service.get_status(request.path_params["username"])
        return Response(status.body, media_type="application/json")

    async def create_lab(self, request: Request, caller: Caller | None) -> Response:
        """Accept a spawn; 201 with the status URL in ``Location``."""
        username = request.path_params["username"]
        spec = await _body(request, LabSpecification)
        actor = caller.actor if caller is not None else Actor.HUB
        await self.service.create(username, spec, actor=actor)
        # A relative reference (RFC 9110): built from the route, never from
        # the caller's Host header, and percent-encoded so that any legal
        # username fits in a header.
        path = request.app.url_path_for("get_lab", username=quote(username, safe=""))
        return Response(status_code=201, headers={"Location": str(path)})

    async def delete_lab(self, request: Request, caller: Caller | None) -> Response:
        """Delete the user's lab; answers once its objects are gone."""
        actor = caller.actor if caller is not None else Actor.HUB
        await self.service.delete(request.path_params["username"], actor=actor)
        return Response(status_code=204)

    async def lab_events(self, request: Request, caller: Caller | None) -> Response:
        """The event stream of the user's current or latest operation."""
        username = request.path_params["username"]
        after = parse_last_event_id(request.headers.get("last-event-id"))
        return await self.streams.open(
            username, lambda: self.service.open_events(username, after=after)
        )

    async def lab_history(self, request: Request, caller: Caller | None) -> Response:
        """The audit trail of the user's labs, newest first."""
        query = _query(request, HistoryQuery)
        records = await self.service.history(
            request.path_params["username"], limit=query.limit, before=query.before
        )
        entries = [HistoryEntry.from_record(record) for record in records]
        body = _HISTORY.dump_json(entries, by_alias=True)
        return Response(body, media_type="application/json")

    async def user_status(self, request: Request, caller: Caller | None) -> Response:
        """The lab of the token's user."""
        if caller is None or caller.username is None:  # pragma: no cover - routes ensure it
            raise UnknownUserError("No user token")
        try:
            status = await self.service.get_status(caller.username)
        except UnknownUserError:
            # As Nublado: no location, the caller named no path.
            raise UnknownUserError(f"Unknown user {caller.username}") from None
        return Response(status.body, media_type="application/json")

    async def lab_form(self, request: Request, caller: Caller | None) -> Response:
        """The spawn form of the user."""
        choices = await self.service.form_choices(request.path_params["username"])
        return HTMLResponse(render_form(choices))

    async def healthz(self, request: Request, caller: Caller | None) -> Response:
        """200 while the process is alive."""
        return _json(Health())

    async def readyz(self, request: Request, caller: Caller | None) -> Response:
        """200 once labd can serve; 503 with the reason before."""
        reason = await self.readiness()
        if reason is not None:
            raise NotReadyError(reason)
        return _json(Ready() if self.leadership is None else self.leadership())

    async def metrics(self, request: Request, caller: Caller | None) -> Response:
        """Prometheus metrics in the text format."""
        body = b"" if self.metrics_source is None else await self.metrics_source()
        return Response(body, media_type=METRICS_CONTENT_TYPE)

    async def openapi_json(self, request: Request, caller: Caller | None) -> Response:
        """The OpenAPI document of every route."""
        return JSONResponse(self.openapi)
