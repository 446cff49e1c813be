"""Request size limits, answered in labd's error shape.

`RequestLimits` is one middleware with two bounds, checked in one pass over
the request's headers before the application runs:

* **head size** -- a request line and headers of more than
  `MAX_HEADER_SIZE` bytes are refused with 431 ``request_header_too_large``
  and the connection is closed.  The server cannot do it alone: h11 bounds
  only a header block that is still incomplete
  (``h11_max_incomplete_event_size``), so one that arrives whole in a single
  read, however large, reached labd.  A block that is still incomplete past
  the limit is refused by the connection itself (`labd.api.connections`),
  before any of it is parsed into a request;
* **body size** -- a declared ``Content-Length`` over ``max_body_size`` is
  refused with 413 ``request_too_large`` before the application runs, and a
  streamed body that grows past it while being read gets the same error.
  Starlette 1.x can limit bodies itself (``Starlette(max_body_size=...)``),
  but when a handler answers without reading an over-long body (a 401, a
  404) it replaces that answer with a plain-text 413, which breaks the one
  error body of docs/api.md.

A request with neither ``Content-Length`` nor ``Transfer-Encoding`` has no
body (RFC 9112, section 6.3), so nothing is left to count and its reads are
not wrapped: the status reads the hub polls pay for one loop over their few
headers and nothing more.
"""

from __future__ import annotations

from typing import Final

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from labd.api.errors import error_response
from labd.api.models import ErrorDetail
from labd.lab.errors import LabdError, RequestHeaderTooLargeError, RequestTooLargeError

__all__ = ["MAX_HEADER_SIZE", "RequestLimits"]

MAX_HEADER_SIZE: Final = 16 * 1024
"""Largest request line plus headers, in bytes (16 KiB, as docs/api.md promises).

labd's clients send a bearer token and a few short headers; no legitimate
request comes near this.
"""


class RequestLimits:
    """Refuse an oversized request head (431) or body (413).

    The size of a head is that of the request as parsed (``METHOD target
    HTTP/1.1``, then ``name: value`` lines and the blank line), which is
    what the parser held in memory; whitespace the parser dropped is not
    counted.  A 431 closes the connection: a client that sends such a head
    is broken or hostile, and either way it should not keep the connection.

    Parameters
    ----------
    app
        The application behind the limits.
    max_body_size
        Largest accepted body, in bytes.
    max_header_size
        Largest accepted request line plus headers, in bytes.
    """

    def __init__(
        self, app: ASGIApp, *, max_body_size: int, max_header_size: int = MAX_HEADER_SIZE
    ) -> None:
        self.app = app
        self.max_body_size = max_body_size
        self.max_header_size = max_header_size

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        size = _request_line_size(scope) + len("\r\n")
        declared: bytes | None = None
        streamed = False
        for name, value in scope["headers"]:
            size += len(name) + len(value) + len(": \r\n")
            if name == b"content-length":
                declared = value if declared is None else declared
            elif name == b"transfer-encoding":
                streamed = True
        if size > self.max_header_size:
            error: LabdError = RequestHeaderTooLargeError(
                f"Request line and headers are larger than {self.max_header_size} bytes"
            )
            await _refuse(error, scope, receive, send, headers={"Connection": "close"})
            return
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_size:
            await _refuse(RequestTooLargeError(self._message()), scope, receive, send)
            return
        if not streamed and (declared is None or declared == b"0"):
            await self.app(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_size:
                    # Raised inside the handler's body read: the exception
                    # handlers turn it into the 413 error body.
                    raise RequestTooLargeError(self._message())
            return message

        await self.app(scope, limited_receive, send)

    def _message(self) -> str:
        return f"Request body is larger than {self.max_body_size} bytes"


async def _refuse(
    error: LabdError,
    scope: Scope,
    receive: Receive,
    send: Send,
    *,
    headers: dict[str, str] | None = None,
) -> None:
    detail = [ErrorDetail.model_validate(error.to_dict())]
    await error_response(error.status_code, detail, headers=headers)(scope, receive, send)


def _request_line_size(scope: Scope) -> int:
    """The size of the request line (``METHOD target HTTP/1.1`` and its line end)."""
    target = len(scope.get("raw_path") or scope["path"].encode())
    query: bytes = scope.get("query_string", b"")
    if query:
        target += 1 + len(query)
    return len(scope["method"]) + 1 + target + len(" HTTP/1.1\r\n")
