"""Request size limits, answered in labd's error shape.

Starlette 1.x can limit bodies itself (``Starlette(max_body_size=...)``),
but when a handler answers without reading an over-long body (a 401, a 404)
it replaces that answer with a plain-text 413, which breaks the one error
body of docs/api.md.  `BodySizeLimit` refuses a declared ``Content-Length`` over
the limit before the application runs, and a streamed body that grows past
it while being read, both as JSON ``request_too_large``.

`HeaderSizeLimit` refuses a request line and headers of more than
`MAX_HEADER_SIZE` bytes with 431 ``request_header_too_large`` and closes
the connection.  The server cannot do it alone: h11 bounds only a header
block that is still incomplete (``h11_max_incomplete_event_size``), so one
that arrives whole in a single read, however large, reached labd.  A block
that is still incomplete past the limit is refused by the connection itself
(`labd.api.connections`), before any of it is parsed into a request.
"""

from __future__ import annotations

from typing import Final

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from labd.api.errors import error_response
from labd.api.models import ErrorDetail
from labd.lab.errors import RequestHeaderTooLargeError, RequestTooLargeError

__all__ = ["MAX_HEADER_SIZE", "BodySizeLimit", "HeaderSizeLimit", "header_size"]

MAX_HEADER_SIZE: Final = 16 * 1024
"""Largest request line plus headers, in bytes (16 KiB, as docs/api.md promises).

labd's clients send a bearer token and a few short headers; no legitimate
request comes near this.
"""


class BodySizeLimit:
    """Refuse request bodies over ``max_body_size`` bytes with 413.

    Parameters
    ----------
    app
        The application behind the limit.
    max_body_size
        Largest accepted body, in bytes.
    """

    def __init__(self, app: ASGIApp, *, max_body_size: int) -> None:
        self.app = app
        self.max_body_size = max_body_size

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body_size:
            error = RequestTooLargeError(self._message())
            response = error_response(413, [ErrorDetail.model_validate(error.to_dict())])
            await response(scope, receive, send)
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


def header_size(scope: Scope) -> int:
    """Return the size of the request line and headers of ``scope``, in bytes.

    The size is that of the request as parsed (``METHOD target HTTP/1.1``,
    then ``name: value`` lines and the blank line), which is what the
    parser held in memory; whitespace the parser dropped is not counted.
    """
    target = len(scope.get("raw_path") or scope["path"].encode())
    query: bytes = scope.get("query_string", b"")
    if query:
        target += 1 + len(query)
    line = len(scope["method"]) + 1 + target + len(" HTTP/1.1\r\n")
    fields = sum(len(name) + len(value) + len(": \r\n") for name, value in scope["headers"])
    return line + fields + len("\r\n")


class HeaderSizeLimit:
    """Refuse a request line and headers over ``max_header_size`` bytes with 431.

    The response closes the connection: a client that sends such a request
    is broken or hostile, and either way it should not keep the connection.

    Parameters
    ----------
    app
        The application behind the limit.
    max_header_size
        Largest accepted request line plus headers, in bytes.
    """

    def __init__(self, app: ASGIApp, *, max_header_size: int = MAX_HEADER_SIZE) -> None:
        self.app = app
        self.max_header_size = max_header_size

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or header_size(scope) <= self.max_header_size:
            await self.app(scope, receive, send)
            return
        error = RequestHeaderTooLargeError(
            f"Request line and headers are larger than {self.max_header_size} bytes"
        )
        response = error_response(
            error.status_code,
            [ErrorDetail.model_validate(error.to_dict())],
            headers={"Connection": "close"},
        )
        await response(scope, receive, send)
