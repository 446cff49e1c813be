"""Alerts to operators: failed spawns and deletes, vanished labs, errors.

- `labd.alerts.grouping`: alerts, and how a storm of one kind is grouped.
- `labd.alerts.payloads`: the generic webhook's and Slack's JSON bodies.
- `labd.alerts.delivery`: `Alerts`, which the rest of labd calls, and the
  sender task of each target.
"""

from labd.alerts.delivery import Alerts, Target
from labd.alerts.grouping import Alert, AlertGrouper, AlertKind, Notice, scrub
from labd.alerts.payloads import Origin, slack_payload, webhook_payload

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
