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
  are posted (`scrub`, by the same rule as the logs: `labd.secrecy`).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from enum import StrEnum
from typing import Any, Final
from urllib.parse import urlsplit

import aiohttp
import structlog

from labd import tasks
from labd.config import AlertsConfig, read_webhook_url
from labd.metrics import Metrics
from labd.secrecy import redact_text

__all__ = [
    "Alert",
    "AlertGrouper",
    "AlertKind",
    "Alerts",
    "Notice",
    "Origin",
    "Target",
    "scrub",
    "slack_payload",
    "webhook_payload",
]

_logger = structlog.get_logger()

_BACKOFF: Final = 1.0
"""Seconds before the first retry of a post; doubled for each further one."""

_LONGEST_RETRY_AFTER: Final = 60.0
"""A ``Retry-After`` longer than this is cut to it (the queue must move)."""

_STOP_GRACE: Final = 3.0
"""Seconds `Alerts.stop` gives pending posts before it drops them."""

_MAX_TEXT: Final = 1000
"""Longest message or detail posted, in characters."""

_NAMED_USERS: Final = 5
"""Users named in a summary; the rest are counted."""

_TRACKED: Final = 1000
"""Distinct users and reasons remembered per window (memory stays bounded)."""


class AlertKind(StrEnum):
    """What an alert is about (a small fixed set: it is a metric label)."""

    SPAWN_FAILED = "spawn_failed"
    DELETE_FAILED = "delete_failed"
    ORPHAN_REMOVED = "orphan_removed"
    LAB_VANISHED = "lab_vanished"
    UNEXPECTED_ERROR = "unexpected_error"


_TITLES: Final[Mapping[AlertKind, tuple[str, str]]] = {
    AlertKind.SPAWN_FAILED: ("Lab spawn failed", "spawn failures"),
    AlertKind.DELETE_FAILED: ("Lab delete failed", "delete failures"),
    AlertKind.ORPHAN_REMOVED: ("Orphaned lab objects removed", "orphaned namespaces removed"),
    AlertKind.LAB_VANISHED: ("Lab vanished", "vanished labs"),
    AlertKind.UNEXPECTED_ERROR: ("Unexpected error", "unexpected errors"),
}
"""Title of a single alert and plural noun of a summary, per kind."""

_SEVERITY: Final[Mapping[AlertKind, str]] = {
    AlertKind.SPAWN_FAILED: "error",
    AlertKind.DELETE_FAILED: "error",
    AlertKind.ORPHAN_REMOVED: "warning",
    AlertKind.LAB_VANISHED: "warning",
    AlertKind.UNEXPECTED_ERROR: "error",
}


# ---------------------------------------------------------------------------
# Scrubbing

_WEBHOOK = re.compile(r"https?://hooks\.slack\.com/\S*", re.I)
"""A Slack incoming-webhook URL (its path is the credential)."""

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def scrub(text: str, *, secrets: tuple[str, ...] = ()) -> str:
    """Remove what looks like a credential from a text bound for an alert.

    Parameters
    ----------
    text
        A message, typically carrying a Kubernetes error.
    secrets
        Exact values to remove as well (labd's own webhook URLs).

    Returns
    -------
    str
        The text with credentials replaced by ``[redacted]``, control
        characters removed and at most 1000 characters long.
    """
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[redacted webhook]")
    text = redact_text(_WEBHOOK.sub("[redacted webhook]", text))
    text = _CONTROL.sub("", text)
    if len(text) > _MAX_TEXT:
        text = text[: _MAX_TEXT - 1] + "…"
    return text


# ---------------------------------------------------------------------------
# Grouping


@dataclass(frozen=True, slots=True)
class Notice:
    """One post: a single alert, or the summary of a window."""

    kind: AlertKind
    """What it is about."""

    message: str
    """The text people read (scrubbed)."""

    count: int
    """Alerts it stands for: 1 for a single alert."""

    first_at: datetime
    """When the first of them happened (UTC)."""

    last_at: datetime
    """When the last of them happened (UTC)."""

    username: str | None = None
    """The user of a single alert."""

    lab_id: str | None = None
    """The lab of a single alert."""

    detail: str | None = None
    """The reason of a single alert (scrubbed)."""

    users: tuple[str, ...] = ()
    """Users of a summary, most affected first (at most five)."""

    other_users: int = 0
    """Further users of a summary, not named."""

    reasons: tuple[tuple[str, int], ...] = ()
    """The most common reasons of a summary, with their counts."""

    window: float | None = None
    """Seconds a summary covers; `None` for a single alert."""

    @property
    def severity(self) -> str:
        """``error`` or ``warning``."""
        return _SEVERITY[self.kind]

    @property
    def title(self) -> str:
        """A short heading: the kind in words, and the count of a summary."""
        title, plural = _TITLES[self.kind]
        if self.window is None:
            return title
        return f"{self.count} more {plural}"


@dataclass(frozen=True, slots=True)
class Alert:
    """One thing operators are told about, before grouping."""

    kind: AlertKind
    """What it is about."""

    message: str
    """One sentence for people (scrubbed)."""

    at: datetime
    """When it happened (UTC)."""

    username: str | None = None
    """The user concerned, if any."""

    lab_id: str | None = None
    """The lab concerned, if any."""

    detail: str | None = None
    """The reason, such as an error text (scrubbed)."""


@dataclass(slots=True)
class _Group:
    """The alerts of one kind that arrived since its window opened."""

    window: float
    count: int = 0
    first_at: datetime | None = None
    last_at: datetime | None = None
    users: Counter[str] = field(default_factory=Counter)
    unnamed: int = 0
    reasons: Counter[str] = field(default_factory=Counter)

    def add(self, alert: Alert) -> None:
        self.count += 1
        self.first_at = self.first_at or alert.at
        self.last_at = alert.at
        if alert.username is not None:
            if alert.username in self.users or len(self.users) < _TRACKED:
                self.users[alert.username] += 1
            else:
                self.unnamed += 1
        reason = _reason_key(alert)
        if reason in self.reasons or len(self.reasons) < _TRACKED:
            self.reasons[reason] += 1

    def summary(self, kind: AlertKind) -> Notice:
        assert self.first_at is not None and self.last_at is not None
        named = tuple(name for name, _ in self.users.most_common(_NAMED_USERS))
        others = len(self.users) - len(named) + self.unnamed
        reasons = tuple(self.reasons.most_common(3))
        notice = Notice(
            kind=kind,
            message="",
            count=self.count,
            first_at=self.first_at,
            last_at=self.last_at,
            users=named,
            other_users=others,
            reasons=reasons,
            window=self.window,
        )
        return replace(notice, message=_summary_text(notice))


def _reason_key(alert: Alert) -> str:
    """The reason of an alert, with its user and lab taken out so that alike ones add up."""
    reason = alert.detail or alert.message
    if alert.lab_id:
        reason = reason.replace(alert.lab_id, "<lab>")
    if alert.username:
        reason = reason.replace(alert.username, "<user>")
    return reason[:200]


def _summary_text(notice: Notice) -> str:
    _, plural = _TITLES[notice.kind]
    text = f"{notice.count} more {plural} in the last {notice.window:g} s"
    if notice.users:
        names = ", ".join(notice.users)
        more = f" and {notice.other_users} others" if notice.other_users else ""
        label = "user" if len(notice.users) == 1 and not notice.other_users else "users"
        text += f": {label} {names}{more}"
    if notice.reasons:
        reason, count = notice.reasons[0]
        text += f"; most common reason ({count}): {reason}"
    return text


class AlertGrouper:
    """Turns a stream of alerts into posts: one at once, then summaries.

    Pure bookkeeping, no clock and no I/O: the caller says when a window
    ends (`Alerts` uses event-loop timers), which keeps this testable.

    Parameters
    ----------
    window
        Length of a kind's first window, in seconds.
    max_window
        Longest window: each window that ends with alerts in it is followed
        by one twice as long, up to this.
    """

    def __init__(self, *, window: float, max_window: float) -> None:
        self._window = window
        self._max_window = max(window, max_window)
        self._groups: dict[AlertKind, _Group] = {}

    @property
    def open_kinds(self) -> list[AlertKind]:
        """Kinds whose window is open."""
        return list(self._groups)

    def add(self, alert: Alert) -> tuple[Notice | None, float | None]:
        """Take an alert in.

        Returns
        -------
        tuple
            The post to send now (the first alert of a window) and the
            length of the window it opened, or ``(None, None)`` when the
            alert was folded into an open window.
        """
        group = self._groups.get(alert.kind)
        if group is not None:
            group.add(alert)
            return None, None
        self._groups[alert.kind] = _Group(window=self._window)
        notice = Notice(
            kind=alert.kind,
            message=alert.message,
            count=1,
            first_at=alert.at,
            last_at=alert.at,
            username=alert.username,
            lab_id=alert.lab_id,
            detail=alert.detail,
        )
        return notice, self._window

    def close(self, kind: AlertKind) -> tuple[Notice | None, float | None]:
        """End the window of ``kind``.

        Returns
        -------
        tuple
            The summary of the window (or `None` if no alert came during
            it) and the length of the next window (`None`: the group is
            closed, the next alert goes out at once).
        """
        group = self._groups.pop(kind, None)
        if group is None or group.count == 0:
            return None, None
        window = min(group.window * 2, self._max_window)
        self._groups[kind] = _Group(window=window)
        return group.summary(kind), window


# ---------------------------------------------------------------------------
# Formats


@dataclass(frozen=True, slots=True)
class Origin:
    """Which labd sent an alert."""

    instance: str
    """The configured instance name (default: the host name)."""

    host: str
    """The host name."""


def webhook_payload(notice: Notice, origin: Origin) -> dict[str, Any]:
    """The JSON document posted to the generic webhook (see docs/alerts.md).

    Parameters
    ----------
    notice
        The post.
    origin
        Which labd sends it.

    Returns
    -------
    dict
        A JSON-serialisable document, version 1.
    """
    return {
        "version": 1,
        "kind": notice.kind.value,
        "severity": notice.severity,
        "summary": notice.window is not None,
        "title": notice.title,
        "message": notice.message,
        "username": notice.username,
        "lab_id": notice.lab_id,
        "detail": notice.detail,
        "count": notice.count,
        "users": list(notice.users),
        "other_users": notice.other_users,
        "reasons": [{"reason": reason, "count": count} for reason, count in notice.reasons],
        "window_seconds": notice.window,
        "first_at": notice.first_at.isoformat(),
        "last_at": notice.last_at.isoformat(),
        "instance": origin.instance,
        "host": origin.host,
    }


_SLACK_ICON: Final = {"error": ":rotating_light:", "warning": ":warning:"}
_SLACK_SECTION_LIMIT: Final = 3000


def slack_payload(notice: Notice, origin: Origin) -> dict[str, Any]:
    """The message posted to a Slack incoming webhook.

    ``text`` is the plain fallback (notifications, clients without blocks);
    ``blocks`` hold a section with the message and a context line.  Texts
    from labs are escaped, so a ``<`` in an error cannot become a link or a
    mention.

    Parameters
    ----------
    notice
        The post.
    origin
        Which labd sends it.

    Returns
    -------
    dict
        Slack's ``{"text": ..., "blocks": [...]}``.
    """
    lines = [f"{_SLACK_ICON[notice.severity]} *{_escape(notice.title)}*", _escape(notice.message)]
    if notice.detail:
        lines.append(f"```{_escape(notice.detail)}```")
    context = [f"labd `{_escape(origin.instance)}`", f"`{notice.kind.value}`"]
    if notice.username:
        context.append(f"user `{_escape(notice.username)}`")
    if notice.lab_id:
        context.append(f"lab `{notice.lab_id}`")
    context.append(notice.last_at.strftime("%Y-%m-%d %H:%M:%S UTC"))
    section = "\n".join(lines)
    if len(section) > _SLACK_SECTION_LIMIT:
        section = section[: _SLACK_SECTION_LIMIT - 1] + "…"
    # A summary's message starts with its title already.
    fallback = notice.message if notice.window is not None else f"{notice.title}: {notice.message}"
    return {
        "text": f"[{origin.instance}] {fallback}",
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": section}},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": " · ".join(context)}]},
        ],
    }


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


# ---------------------------------------------------------------------------
# Sending


Render = Callable[[Notice, Origin], dict[str, Any]]


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
            detail=f"{type(error).__name__}: {error}",
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
