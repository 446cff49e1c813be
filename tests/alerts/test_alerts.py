"""Alerts posted to real HTTP receivers: content, grouping, failures, secrets."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from structlog.testing import capture_logs

from labd.alerts import (
    Alert,
    AlertGrouper,
    AlertKind,
    Alerts,
    Target,
    scrub,
    slack_payload,
    webhook_payload,
)
from labd.lab.metrics import Metrics
from tests.alerts.conftest import SECRET_PATH, Receiver, refused_url

FAKE_TOKEN = "FAKE-t0ken-4f3c9a1b7e"


def both(receivers: dict[str, Receiver], **options: Any) -> tuple[Alerts, Metrics]:
    metrics = Metrics()
    targets = [
        Target("slack", receivers["slack"].url, slack_payload),
        Target("webhook", receivers["webhook"].url, webhook_payload),
    ]
    options.setdefault("instance", "labd-test")
    return Alerts(targets, metrics=metrics, **options), metrics


def count(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels)
    return value or 0.0


KINDS = [
    (AlertKind.SPAWN_FAILED, "error", "Lab spawn failed"),
    (AlertKind.DELETE_FAILED, "error", "Lab delete failed"),
    (AlertKind.ORPHAN_REMOVED, "warning", "Orphaned lab objects removed"),
    (AlertKind.LAB_VANISHED, "warning", "Lab vanished"),
    (AlertKind.UNEXPECTED_ERROR, "error", "Unexpected error"),
]


@pytest.mark.parametrize(("kind", "severity", "title"), KINDS)
async def test_each_kind_reaches_slack_and_the_webhook(
    receivers: dict[str, Receiver], kind: AlertKind, severity: str, title: str
) -> None:
    alerts, metrics = both(receivers)
    alerts.start()
    before = datetime.now(UTC)
    alerts.alert(
        kind,
        "Something happened to alice's <lab>",
        username="alice",
        lab_id="lab-1",
        detail="create Pod labd-alice/alice-nb: 403 Forbidden & more",
    )
    (slack,) = await receivers["slack"].wait_for(1)
    (hook,) = await receivers["webhook"].wait_for(1)
    await alerts.stop()

    assert slack.path == hook.path == SECRET_PATH
    assert slack.body["text"] == (f"[labd-test] {title}: Something happened to alice's <lab>")
    section, context = slack.body["blocks"]
    assert section["type"] == "section" and section["text"]["type"] == "mrkdwn"
    icon = ":rotating_light:" if severity == "error" else ":warning:"
    assert section["text"]["text"] == (
        f"{icon} *{title}*\nSomething happened to alice's &lt;lab&gt;\n"
        "```create Pod labd-alice/alice-nb: 403 Forbidden &amp; more```"
    )
    assert context["type"] == "context"
    line = context["elements"][0]["text"]
    assert line.startswith(f"labd `labd-test` · `{kind.value}` · user `alice` · lab `lab-1` · ")

    body = hook.body
    at = datetime.fromisoformat(body.pop("first_at"))
    assert before <= at <= datetime.now(UTC)
    assert body.pop("last_at") == at.isoformat()
    assert body.pop("host")
    assert body == {
        "version": 1,
        "kind": kind.value,
        "severity": severity,
        "summary": False,
        "title": title,
        "message": "Something happened to alice's <lab>",
        "username": "alice",
        "lab_id": "lab-1",
        "detail": "create Pod labd-alice/alice-nb: 403 Forbidden & more",
        "count": 1,
        "users": [],
        "other_users": 0,
        "reasons": [],
        "window_seconds": None,
        "instance": "labd-test",
    }
    for target in ("slack", "webhook"):
        assert count(metrics, "labd_alerts_sent_total", kind=kind.value, target=target) == 1


async def test_storm_becomes_one_post_and_one_summary(receivers: dict[str, Receiver]) -> None:
    alerts, metrics = both(receivers, window=0.5, max_window=1.0)
    alerts.start()
    started = time.monotonic()
    for number in range(500):
        user = f"user{number % 50:02d}"
        reason = "Lab pod failed: OOMKilled" if number % 5 else f"create Pod labd-{user}: 500"
        alerts.alert(
            AlertKind.SPAWN_FAILED,
            f"Lab spawn failed for {user}",
            username=user,
            lab_id=f"lab-{number}",
            detail=reason,
        )
    assert time.monotonic() - started < 0.5  # alert() never waits
    await receivers["webhook"].wait_for(2, within=5)
    await receivers["slack"].wait_for(2, within=5)
    await asyncio.sleep(1.2)  # the next window ends empty: nothing more is sent
    assert len(receivers["webhook"].posts) == len(receivers["slack"].posts) == 2

    first, summary = (post.body for post in receivers["webhook"].posts)
    assert (first["summary"], first["count"], first["username"]) == (False, 1, "user00")
    assert summary["summary"] is True
    assert summary["count"] == 499
    assert summary["window_seconds"] == 0.5
    assert len(summary["users"]) == 5 and summary["other_users"] == 45
    assert summary["reasons"][0] == {"reason": "Lab pod failed: OOMKilled", "count": 400}
    assert summary["reasons"][1] == {"reason": "create Pod labd-<user>: 500", "count": 99}
    assert summary["username"] is None and summary["lab_id"] is None
    assert summary["message"].startswith("499 more spawn failures in the last 0.5 s: users ")
    assert summary["message"].endswith(
        " and 45 others; most common reason (400): Lab pod failed: OOMKilled"
    )
    slack_summary = receivers["slack"].posts[1].body
    assert slack_summary["text"] == f"[labd-test] {summary['message']}"
    assert slack_summary["blocks"][0]["text"]["text"].startswith(
        ":rotating_light: *499 more spawn failures*\n499 more spawn failures in the last 0.5 s"
    )
    assert count(metrics, "labd_alerts_grouped_total", kind="spawn_failed") == 499
    assert count(metrics, "labd_alerts_sent_total", kind="spawn_failed", target="slack") == 2

    # The window closed: the next alert goes out at once, alone.
    alerts.alert(AlertKind.SPAWN_FAILED, "Lab spawn failed for zed", username="zed")
    third = (await receivers["webhook"].wait_for(3))[2].body
    assert (third["summary"], third["username"]) == (False, "zed")
    await alerts.stop()


async def test_kinds_are_grouped_apart(receivers: dict[str, Receiver]) -> None:
    alerts, _ = both(receivers, window=30)
    alerts.start()
    for _ in range(3):
        alerts.alert(AlertKind.SPAWN_FAILED, "spawn")
        alerts.alert(AlertKind.DELETE_FAILED, "delete")
    posts = await receivers["webhook"].wait_for(2)
    assert sorted(post.body["kind"] for post in posts) == ["delete_failed", "spawn_failed"]
    await alerts.stop()
    # Stopping sends the summaries of the open windows.
    kinds = [(post.body["kind"], post.body["count"]) for post in receivers["webhook"].posts[2:]]
    assert sorted(kinds) == [("delete_failed", 2), ("spawn_failed", 2)]


def test_windows_grow_while_a_storm_lasts() -> None:
    grouper = AlertGrouper(window=60, max_window=200)
    now = datetime.now(UTC)

    def alert(at: datetime) -> Alert:
        return Alert(AlertKind.SPAWN_FAILED, "failed", at, username="a")

    notice, window = grouper.add(alert(now))
    assert notice is not None and window == 60
    for seconds, expected_next in ((60, 120), (180, 200), (380, 200)):
        assert grouper.add(alert(now + timedelta(seconds=seconds - 1))) == (None, None)
        summary, window = grouper.close(AlertKind.SPAWN_FAILED)
        assert summary is not None and summary.count == 1
        assert window == expected_next
    # A window without alerts closes the group.
    assert grouper.close(AlertKind.SPAWN_FAILED) == (None, None)
    assert grouper.open_kinds == []
    notice, window = grouper.add(alert(now))
    assert notice is not None and window == 60


@pytest.mark.parametrize("failure", ["error", "hang", "refused"])
async def test_a_failing_webhook_never_slows_alert(
    receivers: dict[str, Receiver], failure: str
) -> None:
    slack = receivers["slack"]
    url = refused_url() if failure == "refused" else slack.url
    slack.mode = "hang" if failure == "hang" else "error"
    metrics = Metrics()
    alerts = Alerts(
        [
            Target("slack", url, slack_payload),
            Target("webhook", receivers["webhook"].url, webhook_payload),
        ],
        metrics=metrics,
        window=0.2,
        timeout=0.5,
        retries=1,
        backoff=0.05,
        queue_size=3,
    )
    alerts.start()
    started = time.monotonic()
    for number in range(2000):
        alerts.alert(AlertKind(list(AlertKind)[number % 5]), f"alert {number}")
    assert time.monotonic() - started < 1.0
    # The working target gets its posts while the other one fails.
    await receivers["webhook"].wait_for(5, within=3)
    stopping = time.monotonic()
    await alerts.stop(grace=1.0)
    assert time.monotonic() - stopping < 2.0
    assert not slack.posts
    failed = sum(
        count(metrics, "labd_alerts_failed_total", kind=kind.value, target="slack")
        for kind in AlertKind
    )
    dropped = sum(
        count(metrics, "labd_alerts_dropped_total", kind=kind.value, target="slack")
        for kind in AlertKind
    )
    assert failed >= 1
    assert failed + dropped == 10  # 5 first posts and 5 summaries, none delivered
    if failure != "refused":
        assert len(slack.attempts) >= 2  # retried


async def test_server_errors_are_retried_with_backoff(receivers: dict[str, Receiver]) -> None:
    hook = receivers["webhook"]
    hook.mode, hook.fail_first = "error", 2
    alerts = Alerts([Target("webhook", hook.url, webhook_payload)], retries=2, backoff=0.1)
    alerts.start()
    alerts.alert(AlertKind.DELETE_FAILED, "Lab delete failed for bob")
    await hook.wait_for(1)
    await alerts.stop()
    first, second, third = hook.attempts
    assert second - first >= 0.09 and third - second >= 0.19


async def test_retry_after_is_respected(receivers: dict[str, Receiver]) -> None:
    hook = receivers["webhook"]
    hook.mode, hook.fail_first, hook.retry_after = "throttle", 1, "1"
    alerts = Alerts([Target("webhook", hook.url, webhook_payload)], retries=1, backoff=0.01)
    alerts.start()
    alerts.alert(AlertKind.DELETE_FAILED, "Lab delete failed for bob")
    await hook.wait_for(1)
    await alerts.stop()
    first, second = hook.attempts
    assert second - first >= 0.95


async def test_client_errors_are_not_retried(receivers: dict[str, Receiver]) -> None:
    hook = receivers["webhook"]
    hook.mode = "not_found"
    metrics = Metrics()
    alerts = Alerts([Target("webhook", hook.url, webhook_payload)], metrics=metrics, backoff=0.01)
    alerts.start()
    alerts.alert(AlertKind.LAB_VANISHED, "Running lab of carol vanished")
    deadline = time.monotonic() + 5
    while not count(metrics, "labd_alerts_failed_total", kind="lab_vanished", target="webhook"):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    await alerts.stop()
    assert len(hook.attempts) == 1


async def test_no_secret_in_posts_or_logs(
    receivers: dict[str, Receiver], caplog: pytest.LogCaptureFixture
) -> None:
    slack = receivers["slack"]
    slack.mode = "error"
    alerts, _ = both(receivers, retries=1, backoff=0.01)
    secrets = [
        FAKE_TOKEN,
        "hunter2",
        "p4ssw0rd",
        "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl",
        "xoxb-1234-5678-abcdef",
        SECRET_PATH,
        slack.url,
    ]
    detail = (
        f"create Secret labd-alice/alice-nb: 500: Authorization: Bearer {FAKE_TOKEN}, "
        f'body {{"JUPYTERHUB_API_TOKEN": "{FAKE_TOKEN}", "password": "hunter2"}} '
        f"via https://admin:p4ssw0rd@k8s.example:6443/api?access_token={FAKE_TOKEN} "
        f"sa {secrets[3]} slack {secrets[4]} posting to {slack.url} and "
        "https://hooks.slack.com/services/T1/B2/abc"
    )
    with caplog.at_level(logging.DEBUG), capture_logs() as events:
        alerts.start()
        alerts.alert(AlertKind.SPAWN_FAILED, f"Lab spawn failed for {slack.url}", detail=detail)
        alerts.unexpected("the scheduler loop", RuntimeError(f"token={FAKE_TOKEN}"))
        await receivers["webhook"].wait_for(2)
        await alerts.stop()
    posted = "".join(str(post.body) for post in receivers["webhook"].posts)
    logged = caplog.text + "".join(str(event) for event in events)
    for secret in secrets:
        assert secret not in posted
        assert secret not in logged
    assert "create Secret labd-alice/alice-nb: 500: Authorization: [redacted]" in posted
    assert "RuntimeError: token=[redacted]" in posted
    assert "alert not delivered" in logged and "127.0.0.1" in logged
    assert "Target(name='slack')" == repr(Target("slack", slack.url, slack_payload))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Authorization: Bearer abc.def", "Authorization: [redacted]"),
        ("header 'authorization': 'Basic dXNlcjpw'", "header 'authorization': '[redacted]'"),
        ("sent Bearer abcdef123 along", "sent Bearer [redacted] along"),
        ("GIT_TOKEN=ghp_x1 and next", "GIT_TOKEN=[redacted] and next"),
        ('{"client_secret": "s3", "name": "x"}', '{"client_secret": "[redacted]", "name": "x"}'),
        ("postgresql://labd:pw@db:5432/labd", "postgresql://[redacted]@db:5432/labd"),
        ("see https://hooks.slack.com/services/T/B/x now", "see [redacted webhook] now"),
        ("create Secret labd-a/a-nb: 403 Forbidden", "create Secret labd-a/a-nb: 403 Forbidden"),
        ("Lab pod failed: Evicted: low on memory", "Lab pod failed: Evicted: low on memory"),
        ("bell\x07 and\nnewline", "bell and\nnewline"),
    ],
)
def test_scrub(text: str, expected: str) -> None:
    assert scrub(text) == expected


def test_scrub_caps_the_length() -> None:
    assert len(scrub("x" * 5000)) == 1000


async def test_disabled_alerts_do_nothing() -> None:
    alerts = Alerts()
    assert not alerts.enabled
    alerts.start()
    alerts.alert(AlertKind.SPAWN_FAILED, "nobody hears this")
    await alerts.stop()
    assert [t for t in asyncio.all_tasks() if t.get_name().startswith("alerts-")] == []
