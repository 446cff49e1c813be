"""Errors that reach the clients of labd's API.

Every refusal the service layer can give is one of these classes.  Each
carries the HTTP status, the stable ``type`` code of docs/api.md, the message and
where in the request the problem is; the API turns any of them into the one
error body of docs/api.md in a single place::

    {"detail": [{"loc": ["path", "username"], "msg": "...", "type": "unknown_user"}]}
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "DeleteFailedError",
    "InsufficientQuotaError",
    "InvalidLabSizeError",
    "InvalidRequestError",
    "InvalidTokenError",
    "InvalidUsernameError",
    "LabExistsConflictError",
    "LabdError",
    "NotReadyError",
    "OperationInProgressError",
    "PermissionDeniedError",
    "RequestHeaderTooLargeError",
    "RequestTooLargeError",
    "TooManyConnectionsError",
    "TooManyStreamsError",
    "UnknownImageError",
    "UnknownUserError",
]


class LabdError(Exception):
    """A refusal with an API status, error type and location.

    Parameters
    ----------
    message
        Human-readable explanation (safe to show: no secrets, no internals).
    loc
        Where in the request the problem is, e.g. ``["body", "options",
        "size"]``; `None` when there is no location.
    """

    status_code: ClassVar[int] = 500
    """HTTP status of the response."""

    error_type: ClassVar[str] = "internal_error"
    """Stable error code (docs/api.md)."""

    def __init__(self, message: str, *, loc: list[str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.loc = loc

    def to_dict(self) -> dict[str, Any]:
        """Return the error as one element of the ``detail`` list."""
        detail: dict[str, Any] = {"msg": self.message, "type": self.error_type}
        if self.loc is not None:
            detail = {"loc": self.loc, **detail}
        return detail


class UnknownImageError(LabdError):
    """The requested image is not among the available images."""

    status_code = 400
    error_type = "unknown_image"


class InvalidTokenError(LabdError):
    """No bearer token, or one labd does not know."""

    status_code = 401
    error_type = "invalid_token"


class PermissionDeniedError(LabdError):
    """The token may not act for this user, or the user may not spawn."""

    status_code = 403
    error_type = "permission_denied"


class InsufficientQuotaError(LabdError):
    """The requested size exceeds the user's quota."""

    status_code = 403
    error_type = "insufficient_quota"


class UnknownUserError(LabdError):
    """The user has no lab."""

    status_code = 404
    error_type = "unknown_user"


class LabExistsConflictError(LabdError):
    """Create while the user's lab is pending or running."""

    status_code = 409
    error_type = "lab_exists"


class OperationInProgressError(LabdError):
    """Create while a delete of the user's lab is in progress."""

    status_code = 409
    error_type = "operation_in_progress"


class RequestTooLargeError(LabdError):
    """The request body is over the configured limit."""

    status_code = 413
    error_type = "request_too_large"


class InvalidLabSizeError(LabdError):
    """The requested size is not configured."""

    status_code = 422
    error_type = "invalid_lab_size"


class InvalidRequestError(LabdError):
    """A request field that is well formed but not acceptable (``value_error``)."""

    status_code = 422
    error_type = "value_error"


class InvalidUsernameError(LabdError):
    """The path username is not a legal JupyterHub username."""

    status_code = 422
    error_type = "invalid_username"


class TooManyStreamsError(LabdError):
    """The user, or labd as a whole, has as many event streams open as allowed."""

    status_code = 429
    error_type = "too_many_streams"


class RequestHeaderTooLargeError(LabdError):
    """The request line and headers are over the server's limit (16 KiB)."""

    status_code = 431
    error_type = "request_header_too_large"


class DeleteFailedError(LabdError):
    """A delete could not finish; labd keeps retrying in the background."""

    status_code = 500
    error_type = "delete_failed"


class NotReadyError(LabdError):
    """The database or Kubernetes is unreachable; retry later."""

    status_code = 503
    error_type = "not_ready"


class TooManyConnectionsError(LabdError):
    """labd holds as many client connections as allowed; retry later."""

    status_code = 503
    error_type = "too_many_connections"
