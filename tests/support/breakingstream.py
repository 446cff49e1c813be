"""A stand-in for labd on loopback whose event streams break on cue.

`BreakingLabd` serves one user's ``/spawner/v1`` routes over raw HTTP/1.1
on 127.0.0.1, written byte by byte so a test decides exactly how each
event stream ends: a connection reset, a chunked body cut short, an event
cut in half, silence, a clean end before the operation's last event, or an
answer other than 200. It honours ``Last-Event-ID`` as labd does (only the
events with a larger id) and records the header of every stream request,
so a test can check what a client resumed from.

Only what `labd.spawner.LabdSpawner` asks for is served: the event stream,
``POST .../create`` (201) and ``GET .../labs/<user>`` (the lab running at
``internal_url``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Literal

__all__ = ["Break", "BreakingLabd", "StreamEvent", "breaking_labd"]

How = Literal["reset", "cut-chunk", "half-event", "silence", "end", "503", "401"]
"""How a stream breaks:

- ``reset``: the connection is reset (RST) right after the events;
- ``cut-chunk``: a chunk is announced and only half of it sent, then the
  connection closes (an incomplete chunked body);
- ``half-event``: half of the next event is sent, then the body ends
  cleanly (the client must not dispatch the half);
- ``silence``: nothing more is sent until the client gives up;
- ``end``: the body ends cleanly, before the operation's last event;
- ``503``: the request is answered 503 ``not_ready``, no events;
- ``401``: the request is answered 401 ``invalid_token``, no events.
"""


@dataclass(frozen=True)
class StreamEvent:
    """One event of the operation, as labd would send it."""

    id: int
    type: str
    message: str
    progress: int | None = None

    def wire(self) -> bytes:
        data: dict[str, object] = {"message": self.message}
        if self.progress is not None:
            data["progress"] = self.progress
        return f"id: {self.id}\nevent: {self.type}\ndata: {json.dumps(data)}\n\n".encode()


@dataclass(frozen=True)
class Break:
    """One stream request's fate: send ``after`` events (past Last-Event-ID), then break."""

    after: int
    how: How


@dataclass
class BreakingLabd:
    """The stand-in's script and what it saw."""

    events: list[StreamEvent]
    """The operation's events, the last one terminal."""
    breaks: list[Break]
    """How the 1st, 2nd... stream requests end; later ones send everything."""
    url: str = ""
    """Base URL, set once listening."""
    last_event_ids: list[str | None] = field(default_factory=list)
    """Each stream request's ``Last-Event-ID`` header (None when absent), in order."""
    _open: dict[asyncio.StreamWriter, asyncio.Task[None]] = field(default_factory=dict)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._open[writer] = task
        try:
            while await self._answer(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            # The connection's task ends here: the test's shutdown cancels
            # every task, and Python 3.11's asyncio logs a connection task
            # that ends cancelled as an error.
            pass
        finally:
            del self._open[writer]
            writer.transport.abort()

    async def stop(self) -> None:
        """Drop every connection and wait for their tasks."""
        tasks = list(self._open.values())
        for writer in list(self._open):
            writer.transport.abort()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Answer one request; whether the connection stays open for another."""
        head = await reader.readuntil(b"\r\n\r\n")
        request_line, *header_lines = head.decode("latin-1").split("\r\n")
        method, path, _ = request_line.split(" ", 2)
        headers = {
            name.strip().lower(): value.strip()
            for name, _, value in (line.partition(":") for line in header_lines if line)
        }
        if length := int(headers.get("content-length", "0")):
            await reader.readexactly(length)
        if method == "GET" and path.endswith("/events"):
            await self._stream(reader, writer, headers.get("last-event-id"))
            return False
        if method == "POST" and path.endswith("/create"):
            await _respond(writer, 201, b"", location=path.removesuffix("/create"))
        elif method == "GET":
            lab = {"status": "running", "internal_url": f"{self.url}/user/lab/"}
            await _respond(writer, 200, json.dumps(lab).encode())
        else:
            await _respond(writer, 405, b"")
        return True

    async def _stream(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        last_event_id: str | None,
    ) -> None:
        number = len(self.last_event_ids)
        self.last_event_ids.append(last_event_id)
        fate = self.breaks[number] if number < len(self.breaks) else None
        if fate is not None and fate.how in ("503", "401"):
            status = int(fate.how)
            kind = "not_ready" if status == 503 else "invalid_token"
            body = {"detail": [{"msg": f"stand-in says {status}", "type": kind}]}
            await _respond(writer, status, json.dumps(body).encode(), close=True)
            return
        after = int(last_event_id) if last_event_id is not None else 0
        remaining = [event for event in self.events if event.id > after]
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
            b"transfer-encoding: chunked\r\nconnection: close\r\n\r\n"
        )
        sent = remaining if fate is None else remaining[: fate.after]
        for event in sent:
            writer.write(_chunk(b": keep-alive\n\n" + event.wire()))
            await writer.drain()
        following = remaining[len(sent)] if len(remaining) > len(sent) else None
        if fate is None or fate.how == "end":
            writer.write(b"0\r\n\r\n")
        elif fate.how == "reset":
            # Give the client time to read the events: a reset may drop
            # what it has not read yet.
            await asyncio.sleep(0.2)
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
            return
        elif fate.how == "cut-chunk":
            assert following is not None, "a cut chunk needs an event to cut"
            wire = following.wire()
            writer.write(f"{len(wire):x}\r\n".encode() + wire[: len(wire) // 2])
        elif fate.how == "half-event":
            assert following is not None, "a half event needs an event to halve"
            wire = following.wire()
            writer.write(_chunk(wire[: len(wire) // 2]) + b"0\r\n\r\n")
        elif fate.how == "silence":
            await writer.drain()
            await reader.read()  # Until the client hangs up.
        await writer.drain()


def _chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


async def _respond(
    writer: asyncio.StreamWriter,
    status: int,
    body: bytes,
    *,
    location: str | None = None,
    close: bool = False,
) -> None:
    head = [f"HTTP/1.1 {status} Stand-in", f"content-length: {len(body)}"]
    if body:
        head.append("content-type: application/json")
    if location is not None:
        head.append(f"location: {location}")
    if close:
        head.append("connection: close")
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
    await writer.drain()


@contextlib.asynccontextmanager
async def breaking_labd(
    events: list[StreamEvent], breaks: list[Break]
) -> AsyncIterator[BreakingLabd]:
    """Serve the stand-in on a free loopback port until the block ends."""
    labd = BreakingLabd(events=events, breaks=breaks)
    server = await asyncio.start_server(labd._serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    labd.url = f"http://127.0.0.1:{port}"
    try:
        yield labd
    finally:
        server.close()
        await labd.stop()
        await server.wait_closed()
