"""Every failure of a request becomes one error body (docs/api.md "Errors").

Refusals come from three places, all mapped here:

* the service's `~labd.lab.errors.LabdError` hierarchy, which carries its own
  status, type and location;
* request validation (`RequestValidationError`): pydantic's errors, each
  location prefixed with the part of the request it is in (``body``,
  ``query``);
* Starlette itself: 404 for an unknown route, 405 for a wrong method;
* a database that cannot be reached (refused or dropped connections, a
  server starting up or shutting down, an exhausted pool): 503
  ``not_ready``, so the hub retries instead of seeing a 500.  Other
  database errors stay bugs.

Anything else is a bug: `ErrorBoundary` logs it with its traceback and
answers 500 ``internal_error`` with a message that gives nothing away.  It
sits outside Starlette's own exception handling so the exception stops
there, instead of being re-raised to the server as Starlette's
``ServerErrorMiddleware`` would.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

import sqlalchemy.exc
import structlog
from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, ExceptionHandler, Message, Receive, Scope, Send

from labd.alerts import Alerts
from labd.api.models import ErrorBody, ErrorDetail
from labd.db.database import DATABASE_UNREACHABLE, database_unreachable
from labd.db.store import LabExistsError, LabNotFoundError
from labd.lab.errors import LabdError, LabExistsConflictError, NotReadyError, UnknownUserError
from labd.tasks import describe_error

__all__ = [
    "ErrorBoundary",
    "RequestValidationError",
    "error_response",
    "exception_handlers",
]

_logger = structlog.get_logger()

_HTTP_TYPES: Final = {
    404: ("not_found", "No such route"),
    405: ("method_not_allowed", "Method not allowed on this route"),
    413: ("request_too_large", "Request body too large"),
}


class RequestValidationError(Exception):
    """A request whose body or query does not validate.

    Parameters
    ----------
    where
        ``body`` or ``query``: prefixed to every error location.
    error
        What pydantic found.
    """

    def __init__(self, where: str, error: ValidationError) -> None:
        super().__init__(str(error))
        self.details = [
            ErrorDetail(loc=[where, *item["loc"]], msg=item["msg"], type=item["type"])
            for item in error.errors(include_url=False, include_input=False)
        ]


def error_response(
    status_code: int,
    details: Sequence[ErrorDetail],
    *,
    headers: Mapping[str, str] | None = None,
) -> Response:
    """Return the error body of docs/api.md with ``status_code``."""
    body = ErrorBody(detail=list(details)).model_dump_json(exclude_none=True)
    return Response(body, status_code, headers=headers, media_type="application/json")


async def _labd_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, LabdError)
    headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else None
    return error_response(
        exc.status_code, [ErrorDetail.model_validate(exc.to_dict())], headers=headers
    )


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    return error_response(422, exc.details)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    error_type, message = _HTTP_TYPES.get(exc.status_code, ("http_error", exc.detail))
    return error_response(
        exc.status_code, [ErrorDetail(msg=message, type=error_type)], headers=exc.headers
    )


async def _database_error(request: Request, exc: Exception) -> Response:
    if not database_unreachable(exc):
        raise exc  # A real failure: `ErrorBoundary` logs it and answers 500.
    _logger.warning(
        "database unreachable", path=request.url.path, error=describe_error(exc, first_line=True)
    )
    return await _labd_error(request, NotReadyError("Database unavailable; retry later"))


async def _lab_vanished(request: Request, exc: Exception) -> Response:
    # The lab's row went away between two reads of one request: for the
    # client, the user has no lab.
    username = request.path_params.get("username", "")
    return await _labd_error(
        request, UnknownUserError(f"Unknown user {username}", loc=["path", "username"])
    )


async def _lab_exists(request: Request, exc: Exception) -> Response:
    # A concurrent create won the race past the service's own check.
    username = request.path_params.get("username", "")
    return await _labd_error(request, LabExistsConflictError(f"Lab already exists for {username}"))


def exception_handlers() -> dict[Any, ExceptionHandler]:
    """Return the handlers of every expected failure, for the Starlette constructor."""
    return {
        LabdError: _labd_error,
        RequestValidationError: _validation_error,
        HTTPException: _http_error,
        LabNotFoundError: _lab_vanished,
        LabExistsError: _lab_exists,
        **dict.fromkeys((*DATABASE_UNREACHABLE, sqlalchemy.exc.DBAPIError), _database_error),
    }


class ErrorBoundary:
    """Turn any unexpected exception into a logged, generic 500.

    Parameters
    ----------
    app
        The application inside the boundary.
    alerts
        Where the failure is reported to operators; disabled if not given.
    """

    def __init__(self, app: ASGIApp, alerts: Alerts | None = None) -> None:
        self.app = app
        self.alerts = alerts or Alerts()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            _logger.exception("request failed", method=scope.get("method"), path=scope.get("path"))
            self.alerts.unexpected(f"{scope.get('method')} {scope.get('path')}", exc)
            if started:
                # Too late for an error body; the server closes the connection.
                raise
            response = error_response(
                500, [ErrorDetail(msg="Internal server error", type="internal_error")]
            )
            await response(scope, receive, send)
