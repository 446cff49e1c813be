"""Bounded client connections: how long, how large, how many.

uvicorn bounds a connection only while it is idle between two requests
(``timeout_keep_alive``), and only once a first response has gone out.  A
client that connects and then sends nothing, or sends a request line and
headers one byte at a time ("slowloris"), holds its connection, and the
file descriptor under it, for as long as it likes; a few hundred of them
exhausted labd's descriptors and starved the hub's status reads, and no
token is needed for that.  uvicorn's ``limit_concurrency`` does not help:
it answers 503 only once a request has been parsed, so it never sees those
connections at all.

`BoundedConnection` is mixed into uvicorn's HTTP protocol class (h11 now,
httptools when it is installed; both keep the same attributes it relies on)
and adds three bounds:

* **head deadline** -- a connection must deliver a complete request line
  and headers within ``header_timeout`` seconds of its opening, or of the
  previous answer on a kept-alive connection, or it is closed.  The
  deadline is disarmed as soon as the parser has turned the bytes into a
  request, so slow handlers and long event streams are not affected;
* **head size** -- more than `~labd.api.limits.MAX_HEADER_SIZE` bytes of a
  request line and headers that are still incomplete is answered 431 and
  closed, so a client cannot make labd buffer without bound until the
  deadline.  A complete block over the limit is refused by
  `~labd.api.limits.RequestLimits`, which sees the parsed request;
* **connection cap** -- beyond ``max_connections`` open connections a new
  one is answered 503 at once and closed, so the process never runs out of
  descriptors: the database, Kubernetes and the connections already open
  keep working, and stalled clients free their slots at their deadline.
  The cap is lowered at start to fit the process's open-file limit
  (`fit_open_file_limit`).

The idle keep-alive bound stays uvicorn's, with labd's setting: an idle
connection goes after ``keepalive_timeout``, one that trickles its next
request after ``header_timeout``.

How the mixin knows where a request starts and ends, without hooking into
either parser: both uvicorn protocols keep the request being served as
``self.cycle``, replace it when the parser completes a request head, and
mark it ``response_complete`` once the answer has gone out (and call
``on_response_complete``).  So the deadline runs from the connection and
from each answer after which no request is pending; bytes arriving while
there is no cycle, or its response is complete, are (the start of) a new
request head; and a new ``cycle`` object after the parser ran means the
head is complete.  One exception: a client may still be sending the body of
a request answered early (a 401 before the body was read).  Those bytes are
not counted as a head (the cycle's ``more_body`` is still set), but the
deadline does run, so such a connection must finish its body and its next
request head within ``header_timeout`` of the answer.
"""

from __future__ import annotations

import asyncio
import resource
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, ClassVar, Final, Protocol, cast

import structlog
from uvicorn.protocols.http.h11_impl import H11Protocol

from labd.api.limits import MAX_HEADER_SIZE
from labd.api.models import ErrorBody, ErrorDetail
from labd.config import HttpConfig
from labd.lab.errors import LabdError, RequestHeaderTooLargeError, TooManyConnectionsError

__all__ = [
    "H11_BACKSTOP",
    "RESERVED_FILES",
    "BoundedConnection",
    "ConnectionLimits",
    "bounded_protocol",
    "fit_open_file_limit",
]

_logger = structlog.get_logger()

RESERVED_FILES: Final = 256
"""Open files kept for everything but client connections: the database and
Kubernetes connection pools, the pod watch, the registry, logs and Python's
own files."""

H11_BACKSTOP: Final = 2 * MAX_HEADER_SIZE
"""``h11_max_incomplete_event_size`` for uvicorn.

h11's own bound on an incomplete header block, kept above labd's so that
`BoundedConnection` answers first (with 431 in labd's error shape rather
than h11's plain-text 400); it still catches a head whose first bytes came
in the same read as the end of the previous request, which the mixin does
not count."""


def _raw_response(error: LabdError) -> bytes:
    """Return a whole HTTP/1.1 response carrying ``error``, closing the connection.

    Written straight to the transport, for refusals made before (or instead
    of) the parser producing a request.
    """
    body = ErrorBody(detail=[ErrorDetail.model_validate(error.to_dict())]).model_dump_json(
        exclude_none=True
    )
    status = HTTPStatus(error.status_code)
    head = (
        f"HTTP/1.1 {status.value} {status.phrase}\r\n"
        "content-type: application/json\r\n"
        f"content-length: {len(body)}\r\n"
        "connection: close\r\n"
        "\r\n"
    )
    return (head + body).encode("ascii")


_HEAD_TOO_LARGE: Final = _raw_response(
    RequestHeaderTooLargeError(f"Request line and headers are larger than {MAX_HEADER_SIZE} bytes")
)
_TOO_MANY_CONNECTIONS: Final = _raw_response(
    TooManyConnectionsError("Too many open connections; retry later")
)


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """The bounds one server's connections keep."""

    header_timeout: float
    """Seconds to deliver a complete request line and headers."""

    keepalive_timeout: float
    """Seconds an idle connection is kept after a response."""

    max_connections: int
    """Connections open at once; further ones are refused."""


class _Cycle(Protocol):
    """What the mixin reads of uvicorn's request-response cycle."""

    response_complete: bool
    more_body: bool


class _UvicornHttp(Protocol):
    """What the mixin calls of uvicorn's protocol beyond `asyncio.Protocol`."""

    def on_response_complete(self) -> None: ...


class BoundedConnection(asyncio.Protocol):
    """Head deadline, head size and connection cap, mixed into a uvicorn protocol.

    Use `bounded_protocol` to combine it with a protocol class; the
    attributes below are those of uvicorn's protocols that it relies on.
    """

    limits: ClassVar[ConnectionLimits]
    """Set by `bounded_protocol` on the combined class."""

    transport: asyncio.Transport
    connections: set[Any]
    cycle: _Cycle | None
    loop: asyncio.AbstractEventLoop
    timeout_keep_alive: float

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # uvicorn reads it from its Config, which takes whole seconds only.
        self.timeout_keep_alive = self.limits.keepalive_timeout
        self._head_deadline: asyncio.TimerHandle | None = None
        self._head_bytes = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Refuse the connection over the cap; otherwise start the head deadline."""
        super().connection_made(transport)
        # uvicorn has counted this connection in by now.
        if len(self.connections) > self.limits.max_connections:
            self._refuse(_TOO_MANY_CONNECTIONS)
            return
        self._await_head()

    def data_received(self, data: bytes) -> None:
        """Feed the parser, counting the bytes of a request head."""
        before = self.cycle
        if before is None or (before.response_complete and not before.more_body):
            self._head_bytes += len(data)
        super().data_received(data)
        if self.cycle is not before:
            self._head_received()
        elif self._head_bytes > MAX_HEADER_SIZE and not self.transport.is_closing():
            self._refuse(_HEAD_TOO_LARGE)

    def on_response_complete(self) -> None:
        """Start the next head's deadline, unless a request is pending already."""
        # The uvicorn protocol this is mixed into has the method; asyncio's has not.
        cast(_UvicornHttp, super()).on_response_complete()
        if (
            self.cycle is not None
            and self.cycle.response_complete
            and not self.transport.is_closing()
        ):
            self._await_head()

    def connection_lost(self, exc: Exception | None) -> None:
        """Drop the deadline with the connection."""
        self._cancel_deadline()
        super().connection_lost(exc)

    def _await_head(self) -> None:
        if self._head_deadline is None:
            self._head_deadline = self.loop.call_later(
                self.limits.header_timeout, self._head_timed_out
            )

    def _head_received(self) -> None:
        self._cancel_deadline()
        self._head_bytes = 0

    def _cancel_deadline(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _head_timed_out(self) -> None:
        # Closed without a response: most such clients are idle pooled
        # connections or attackers, and neither reads one.
        self._head_deadline = None
        if not self.transport.is_closing():
            self.transport.close()

    def _refuse(self, response: bytes) -> None:
        self._cancel_deadline()
        self.transport.write(response)
        self.transport.close()


def fit_open_file_limit(max_connections: int) -> int:
    """Return ``max_connections``, lowered to fit the process's open-file limit.

    A cap above what the process can open is no cap: ``accept()`` fails
    with ``EMFILE`` first, asyncio stops accepting for a while, and the
    database and Kubernetes clients fail too.  `RESERVED_FILES` are left
    for those (at least half the limit goes to connections).  Lowering the
    cap is logged as a warning: the fix is a higher limit
    (``LimitNOFILE=`` in the systemd unit).
    """
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return max_connections
    room = max(soft - RESERVED_FILES, soft // 2)
    if max_connections <= room:
        return max_connections
    _logger.warning(
        "http.max_connections lowered to fit the open-file limit",
        configured=max_connections,
        lowered_to=room,
        open_file_limit=soft,
    )
    return room


def bounded_protocol(
    config: HttpConfig, *, base: type[asyncio.Protocol] = H11Protocol
) -> type[asyncio.Protocol]:
    """Return ``base`` with `BoundedConnection` mixed in, for ``uvicorn.Config(http=...)``.

    Parameters
    ----------
    config
        The ``http`` settings.
    base
        uvicorn's protocol class: `H11Protocol`, or ``HttpToolsProtocol``.

    Returns
    -------
    type[asyncio.Protocol]
        The combined class; the maximum of connections is fitted to the
        open-file limit now.
    """
    limits = ConnectionLimits(
        header_timeout=config.header_timeout,
        keepalive_timeout=config.keepalive_timeout,
        max_connections=fit_open_file_limit(config.max_connections),
    )
    # The class is built at run time because the limits are class
    # attributes (uvicorn instantiates the class itself) and the base is
    # chosen by the caller.
    return type(f"Bounded{base.__name__}", (BoundedConnection, base), {"limits": limits})
