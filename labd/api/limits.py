"""The request body size limit, answered in labd's error shape.

Starlette 1.x can limit bodies itself (``Starlette(max_body_size=...)``),
but when a handler answers without reading an over-long body (a 401, a 404)
it replaces that answer with a plain-text 413, which breaks the one error
body of API.md.  This middleware refuses a declared ``Content-Length`` over
the limit before the application runs, and a streamed body that grows past
it while being read, both as JSON ``request_too_large``.

Header and request-line sizes are the server's business: uvicorn refuses
more than ``h11_max_incomplete_event_size`` bytes of them (16 KiB by
default) before labd sees the request.
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from labd.api.errors import error_response
from labd.api.models import ErrorDetail
from labd.errors import RequestTooLargeError

__all__ = ["BodySizeLimit"]


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
