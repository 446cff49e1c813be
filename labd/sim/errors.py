"""Kubernetes API errors, as the sim raises and answers them.

Every failure of the simulated API server leaves through one exception type,
`ApiError`, which renders itself as the ``Status`` object a real
kube-apiserver sends (``kind: Status``, ``status: Failure``, a reason, a
message, details, the HTTP code). Clients such as kubernetes-asyncio parse
that body into ``ApiException``; keeping the wording close to Kubernetes'
makes error handling written against the sim carry over to a real cluster.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ApiError",
    "already_exists",
    "bad_request",
    "conflict",
    "expired",
    "forbidden",
    "invalid",
    "not_found",
    "status_reason",
]

#: The ``reason`` Kubernetes gives for each HTTP status code it uses.
_REASONS: dict[int, str] = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "Conflict",
    410: "Expired",
    415: "UnsupportedMediaType",
    422: "Invalid",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}


def status_reason(code: int) -> str:
    """Return the Kubernetes ``reason`` for an HTTP status code.

    Parameters
    ----------
    code
        The HTTP status code.

    Returns
    -------
    str
        E.g. ``"NotFound"`` for 404; ``"Unknown"`` for codes Kubernetes does
        not name.
    """
    return _REASONS.get(code, "Unknown")


class ApiError(Exception):
    """A failed Kubernetes API request.

    Parameters
    ----------
    code
        HTTP status code.
    message
        Human-readable message, worded as Kubernetes words it.
    reason
        Machine-readable reason; derived from ``code`` when omitted.
    details
        The ``details`` of the Status (``name``, ``kind``, ``causes``...).
    headers
        Extra HTTP headers for the response (e.g. ``Retry-After``).
    """

    def __init__(
        self,
        code: int,
        message: str,
        *,
        reason: str | None = None,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        """HTTP status code."""
        self.message = message
        """Human-readable message."""
        self.reason = reason or status_reason(code)
        """Machine-readable reason, e.g. ``AlreadyExists``."""
        self.details = details or {}
        """Status details."""
        self.headers = headers or {}
        """Extra response headers."""

    def status(self) -> dict[str, Any]:
        """Render the error as a Kubernetes ``Status`` object.

        Returns
        -------
        dict
            The JSON body of the error response.
        """
        body: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details:
            body["details"] = self.details
        return body


def _details(resource: str, name: str, group: str = "") -> dict[str, Any]:
    details: dict[str, Any] = {"name": name, "kind": resource}
    if group:
        details["group"] = group
    return details


def not_found(resource: str, name: str, group: str = "") -> ApiError:
    """404: ``pods "x" not found``."""
    return ApiError(404, f'{resource} "{name}" not found', details=_details(resource, name, group))


def already_exists(resource: str, name: str, group: str = "") -> ApiError:
    """409 AlreadyExists: ``pods "x" already exists``."""
    return ApiError(
        409,
        f'{resource} "{name}" already exists',
        reason="AlreadyExists",
        details=_details(resource, name, group),
    )


def conflict(resource: str, name: str, why: str, group: str = "") -> ApiError:
    """409 Conflict: an optimistic-concurrency or precondition failure."""
    return ApiError(
        409,
        f'Operation cannot be fulfilled on {resource} "{name}": {why}',
        details=_details(resource, name, group),
    )


def forbidden(resource: str, name: str, why: str, group: str = "") -> ApiError:
    """403 Forbidden: ``pods "x" is forbidden: <why>``."""
    return ApiError(
        403, f'{resource} "{name}" is forbidden: {why}', details=_details(resource, name, group)
    )


def invalid(
    kind: str, name: str, field: str, value: object, why: str, group: str = ""
) -> ApiError:
    """422 Invalid: one field failed validation."""
    shown = f'"{value}"' if isinstance(value, str) else repr(value)
    cause = f"Invalid value: {shown}: {why}"
    return ApiError(
        422,
        f'{kind} "{name}" is invalid: {field}: {cause}',
        details={
            **_details(kind, name, group),
            "causes": [{"reason": "FieldValueInvalid", "message": cause, "field": field}],
        },
    )


def bad_request(message: str) -> ApiError:
    """400 BadRequest."""
    return ApiError(400, message)


def expired(requested: int, oldest: int) -> ApiError:
    """410 Expired: a watch asked for a resourceVersion no longer kept."""
    return ApiError(410, f"too old resource version: {requested} ({oldest})")
