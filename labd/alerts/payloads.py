"""The JSON bodies labd posts: the generic webhook's and Slack's."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from labd.alerts.grouping import Notice

__all__ = ["Origin", "Render", "slack_payload", "webhook_payload"]


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
