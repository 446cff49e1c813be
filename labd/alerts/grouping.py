"""Alerts and their grouping: a storm of one kind becomes a few summaries."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from typing import Final

from labd.lab.secrecy import redact_text

__all__ = ["Alert", "AlertGrouper", "AlertKind", "Notice", "scrub"]

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
