"""Operator alerts: a Slack incoming webhook and a generic JSON webhook.

labd tells operators when something went wrong with a user's lab (a spawn
or a delete failed), when it changed a lab behind the user's back (an
orphaned namespace removed, a lab whose pod vanished) and when a loop or a
request hit an unexpected exception.

Why it is built this way:

* `Alerts.alert` is called from lab steps, the reconciler and request
  handling.  It must never wait on the network nor fail: it only folds the
  alert into the group of its kind and, for the first alert of a window,
  puts one post on each target's bounded queue (a full queue drops the post
  and counts it).  One sender task per target does the HTTP, so a hanging
  Slack never delays the generic webhook, and neither ever delays a lab.
* Storms are grouped per kind: the first alert of a kind goes out at once;
  the ones that follow within ``alerts.window`` seconds are counted and sent
  as one summary when the window ends (who, how many, the most common
  reasons).  While a storm lasts each window is twice as long as the last,
  up to ``alerts.max_window``, so a cluster that stays broken sends a few
  summaries an hour, not one a minute.  A window that ends empty closes the
  group: the next alert of that kind goes out at once again.
* The webhook URLs are secrets (Slack's carries a token): they are read
  from files, never logged (logs name the target and its host only) and
  never put in exception texts or metric labels.  Texts from Kubernetes
  errors are scrubbed of anything that looks like a credential before they
  are posted (`scrub`, by the same rule as the logs: `labd.lab.secrecy`).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Final
from urllib.parse import urlsplit

import aiohttp
import structlog

from labd import tasks
from labd.alerts.grouping import Alert, AlertGrouper, AlertKind, Notice, scrub
from labd.alerts.payloads import Origin, Render, slack_payload, webhook_payload
from labd.config import AlertsConfig, read_webhook_url
from labd.lab.metrics import Metrics

__all__ = ["Alerts", "Target"]

_logger = structlog.get_logger()

_BACKOFF: Final = 1.0
"""Seconds before the first retry of a post; doubled for each further one."""

_LONGEST_RETRY_AFTER: Final = 60.0
"""A ``Retry-After`` longer than this is cut to it (the queue must move)."""

_STOP_GRACE: Final = 3.0
"""Seconds `Alerts.stop` gives pending posts before it drops them."""


@dataclass(frozen=True, slots=True)
class Target:
    """Where posts go.

    The URL is a secret: `repr` leaves it out and logs use `host`.
    """

    name: str
    """``slack`` or ``webhook`` (a metric label)."""

    url: str = field(repr=False)
    """The webhook URL."""

    render: Render = field(repr=False)
    """Makes the JSON body of a post."""

    @property
    def host(self) -> str:
        """The URL's host, safe to log."""
        return urlsplit(self.url).hostname or "?"


class _Sender:
    """One target's queue of posts and the task that sends them in order."""

    def __init__(
        self,
        target: Target,
        *,
        origin: Origin,
        metrics: Metrics,
        queue_size: int,
        timeout: float,
        retries: int,
        backoff: float,
    ) -> None:
        self.target = target
        self._origin = origin
        self._metrics = metrics
        self._queue: asyncio.Queue[Notice] = asyncio.Queue(maxsize=queue_size)
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._retries = retries
        self._backoff = backoff

    def offer(self, notice: Notice) -> None:
        """Queue a post, or drop and count it when the queue is full."""
        try:
            self._queue.put_nowait(notice)
        except asyncio.QueueFull:
            self._metrics.alerts_dropped.labels(notice.kind.value, self.target.name).inc()

    async def join(self) -> None:
        """Wait until every queued post was sent or given up."""
        await self._queue.join()

    def drop_pending(self) -> None:
        """Count everything still queued as dropped (at shutdown)."""
        while not self._queue.empty():
            notice = self._queue.get_nowait()
            self._metrics.alerts_dropped.labels(notice.kind.value, self.target.name).inc()

    async def run(self, session: aiohttp.ClientSession) -> None:
        """Send queued posts one after the other, until cancelled."""
        while True:
            notice = await self._queue.get()
            try:
                await self._deliver(session, notice)
            except asyncio.CancelledError:
                # Stopped in the middle of a post: it is dropped.
                self._metrics.alerts_dropped.labels(notice.kind.value, self.target.name).inc()
                raise
            finally:
                self._queue.task_done()

    async def _deliver(self, session: aiohttp.ClientSession, notice: Notice) -> None:
        body = self.target.render(notice, self._origin)
        why, delay = "", 0.0
        for attempt in range(self._retries + 1):
            if attempt:
                await asyncio.sleep(delay)
            done, why, retry_after = await self._post(session, body)
            if done:
                self._metrics.alerts_sent.labels(notice.kind.value, self.target.name).inc()
                return
            if retry_after is None:
                break
            delay = retry_after if retry_after >= 0 else self._backoff * 2**attempt
        self._metrics.alerts_failed.labels(notice.kind.value, self.target.name).inc()
        _logger.warning(
            "alert not delivered",
            target=self.target.name,
            host=self.target.host,
            kind=notice.kind.value,
            why=why,
        )

    async def _post(
        self, session: aiohttp.ClientSession, body: dict[str, Any]
    ) -> tuple[bool, str, float | None]:
        """Post once: (delivered, why not, when to retry: None never, -1 after a backoff)."""
        try:
            async with session.post(
                self.target.url, json=body, timeout=self._timeout, allow_redirects=False
            ) as response:
                await response.read()
                status = response.status
                retry_after = _retry_after(response.headers.get("Retry-After"))
        except TimeoutError:
            return False, "timed out", -1
        except aiohttp.ClientError as exc:
            # Never the exception's text: aiohttp puts the URL in some of them.
            return False, f"no answer ({type(exc).__name__})", -1
        if 200 <= status < 300:
            return True, "", None
        why = f"answered {status}"
        if status == 429 or status >= 500:
            return False, why, -1 if retry_after is None else retry_after
        return False, why, None


def _retry_after(value: str | None) -> float | None:
    """Seconds a ``Retry-After`` header asks for (capped), or `None` if absent or unreadable."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds()
        except (TypeError, ValueError):
            return None
    return min(max(seconds, 0.0), _LONGEST_RETRY_AFTER)


# ---------------------------------------------------------------------------
# The facade


class Alerts:
    """Groups alerts and hands them to the configured targets.

    ``Alerts()`` with no targets is disabled: `alert` returns at once and
    nothing runs.  Build the configured one with `from_config`; `start` it
    in the running event loop and `stop` it at the end.

    Parameters
    ----------
    targets
        Where posts go; none disables alerts.
    metrics
        Where sent, failed, dropped and grouped alerts are counted.
    window
        Length of the first grouping window of a kind, in seconds.
    max_window
        Longest grouping window, in seconds.
    timeout
        Timeout of one post, in seconds.
    retries
        Retries of a post that got a 5xx, a 429 or no answer.
    queue_size
        Posts waiting per target before further ones are dropped.
    instance
        Name of this labd in alerts; the host name if `None`.
    backoff
        Seconds before the first retry (doubled for each further one).
    """

    def __init__(
        self,
        targets: list[Target] | None = None,
        *,
        metrics: Metrics | None = None,
        window: float = 60.0,
        max_window: float = 900.0,
        timeout: float = 5.0,
        retries: int = 2,
        queue_size: int = 100,
        instance: str | None = None,
        backoff: float = _BACKOFF,
    ) -> None:
        host = socket.gethostname()
        self._origin = Origin(instance=instance or host, host=host)
        self._metrics = metrics or Metrics()
        self._grouper = AlertGrouper(window=window, max_window=max_window)
        self._secrets = tuple(target.url for target in targets or [])
        self._senders = [
            _Sender(
                target,
                origin=self._origin,
                metrics=self._metrics,
                queue_size=queue_size,
                timeout=timeout,
                retries=retries,
                backoff=backoff,
            )
            for target in targets or []
        ]
        self._timers: dict[AlertKind, asyncio.TimerHandle] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._session: aiohttp.ClientSession | None = None
        self._tasks: list[asyncio.Task[Any]] = []

    @classmethod
    def from_config(cls, config: AlertsConfig, *, metrics: Metrics | None = None) -> Alerts:
        """Build the alerts ``config`` describes (disabled if it names no target).

        Raises
        ------
        ValueError
            If a webhook file can no longer be read (the message names the
            file, never its content).
        """
        targets = []
        if config.slack_webhook_file is not None:
            url = read_webhook_url(config.slack_webhook_file)
            targets.append(Target("slack", url, slack_payload))
        if config.webhook_url_file is not None:
            url = read_webhook_url(config.webhook_url_file)
            targets.append(Target("webhook", url, webhook_payload))
        return cls(
            targets,
            metrics=metrics,
            window=config.window,
            max_window=config.max_window,
            timeout=config.timeout,
            retries=config.retries,
            queue_size=config.queue_size,
            instance=config.instance,
        )

    @property
    def enabled(self) -> bool:
        """Whether any target is configured."""
        return bool(self._senders)

    def start(self) -> None:
        """Start one sender task per target (in the running event loop)."""
        if not self.enabled or self._loop is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._session = aiohttp.ClientSession()
        self._tasks = [
            tasks.spawn(sender.run(self._session), name=f"alerts-{sender.target.name}")
            for sender in self._senders
        ]
        _logger.info(
            "alerts enabled", targets=[f"{s.target.name} ({s.target.host})" for s in self._senders]
        )

    async def stop(self, *, grace: float = _STOP_GRACE) -> None:
        """Send the summaries of open windows and what is queued, then stop.

        Posts still pending after ``grace`` seconds are dropped (and
        counted).
        """
        if self._loop is None:
            return
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        for kind in self._grouper.open_kinds:
            notice, _ = self._grouper.close(kind)
            if notice is not None:
                self._post(notice)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(s.join() for s in self._senders)), grace)
        await tasks.cancel_and_wait(self._tasks)
        for sender in self._senders:
            sender.drop_pending()
        if self._session is not None:
            await self._session.close()
        self._loop = None

    def alert(
        self,
        kind: AlertKind,
        message: str,
        *,
        username: str | None = None,
        lab_id: str | None = None,
        detail: str | None = None,
    ) -> None:
        """Report something to operators; returns at once and never raises.

        Parameters
        ----------
        kind
            What it is about.
        message
            One sentence for people, such as "Lab spawn failed for alice".
        username
            The user concerned, if any.
        lab_id
            The lab concerned, if any.
        detail
            The reason, typically an error text (it is scrubbed).
        """
        if self._loop is None:
            return
        alert = Alert(
            kind=kind,
            message=scrub(message, secrets=self._secrets),
            at=_now(),
            username=username,
            lab_id=lab_id,
            detail=None if detail is None else scrub(detail, secrets=self._secrets),
        )
        notice, window = self._grouper.add(alert)
        if notice is None:
            self._metrics.alerts_grouped.labels(kind.value).inc()
            return
        self._post(notice)
        self._schedule_close(kind, window)

    def unexpected(self, where: str, error: BaseException) -> None:
        """Report an unexpected exception (its type and scrubbed text, no traceback).

        Parameters
        ----------
        where
            What failed, such as "scheduler pass" or "GET /spawner/v1/labs".
        error
            The exception.
        """
        self.alert(
            AlertKind.UNEXPECTED_ERROR,
            f"Unexpected error in {where}",
            detail=tasks.describe_error(error),
        )

    def _post(self, notice: Notice) -> None:
        for sender in self._senders:
            sender.offer(notice)

    def _schedule_close(self, kind: AlertKind, window: float | None) -> None:
        if window is None or self._loop is None:
            return
        self._timers[kind] = self._loop.call_later(window, self._close_window, kind)

    def _close_window(self, kind: AlertKind) -> None:
        self._timers.pop(kind, None)
        notice, window = self._grouper.close(kind)
        if notice is not None:
            self._post(notice)
        self._schedule_close(kind, window)


def _now() -> datetime:
    return datetime.now(UTC)
