"""The systemd notify protocol: readiness, watchdog, stopping.

sd_notify is one datagram to the socket named by ``$NOTIFY_SOCKET`` (a path,
or an abstract socket when it starts with ``@``).  A dozen lines of our own
are clearer than a dependency that swallows errors (TRAPS.md).

The watchdog is fed from the scheduler's heartbeat, not from a timer of its
own: a ping goes out only while the scheduler loop keeps going round, so a
wedged loop stops the pings and systemd restarts labd, while a busy loop
(which still goes round) keeps them coming.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Callable, Mapping

import structlog

__all__ = ["Notifier", "feed_watchdog"]

_logger = structlog.get_logger()


class Notifier:
    """Sends state changes to systemd, if labd runs under it.

    Parameters
    ----------
    environ
        Where ``NOTIFY_SOCKET`` and ``WATCHDOG_USEC`` are read from.
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        path = env.get("NOTIFY_SOCKET", "")
        self._address = "\0" + path[1:] if path.startswith("@") else path
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        self.watchdog_interval: float | None = (
            int(usec) / 1_000_000 if usec.isdigit() and pid in ("", str(os.getpid())) else None
        )
        """Seconds within which systemd expects a ping, or `None`."""

    @property
    def enabled(self) -> bool:
        """Whether labd was started by systemd with a notify socket."""
        return bool(self._address)

    def notify(self, message: str) -> None:
        """Send ``message`` (e.g. ``READY=1``); failures are logged, not raised."""
        if not self._address:
            return
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.connect(self._address)
                sock.sendall(message.encode())
        except OSError as exc:
            _logger.warning("systemd notification failed", message=message, error=str(exc))

    def ready(self, status: str) -> None:
        """Tell systemd that labd is ready."""
        self.notify(f"READY=1\nSTATUS={status}")

    def stopping(self) -> None:
        """Tell systemd that labd is shutting down."""
        self.notify("STOPPING=1\nSTATUS=Shutting down")


async def feed_watchdog(notifier: Notifier, heartbeat: Callable[[], float]) -> None:
    """Ping the watchdog every half interval while the heartbeat is fresh.

    Parameters
    ----------
    notifier
        Where the pings go.
    heartbeat
        Returns the `time.monotonic` time the scheduler loop last went
        round.
    """
    interval = notifier.watchdog_interval
    if interval is None:
        return
    while True:
        await asyncio.sleep(interval / 2)
        age = time.monotonic() - heartbeat()
        if age < interval / 2:
            notifier.notify("WATCHDOG=1")
        else:
            _logger.error("scheduler loop is stuck; not feeding the watchdog", seconds=age)
