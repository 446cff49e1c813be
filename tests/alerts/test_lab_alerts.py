"""Alerts from a real labd on the simulated cluster, to real HTTP receivers.

labd is built through `Labd` as ``labd serve`` builds it, with its alerts
configured by files holding the receivers' URLs, and failures are caused in
the cluster (injected API errors, pods that vanish, stray namespaces).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from structlog.testing import capture_logs

from labd.alerts import Alerts, Target, webhook_payload
from labd.api.errors import ErrorBoundary
from labd.daemon.factory import Labd
from labd.kube.builder import LAB_ID_LABEL, MANAGED_BY, MANAGED_BY_LABEL, USER_LABEL
from labd.lab.machine import LabState
from labd.lab.records import Actor, EventType
from labd.sim import SimCluster
from labd.sim.kinds import resource_named
from tests.alerts.conftest import SECRET_PATH, Post, Receiver, refused_url
from tests.support.core import LabdFactory, spec, stream, wait_state

FAKE_TOKEN = "FAKE-t0ken-9d8e7f6a5b"


def alerts_config(tmp_path: Path, slack_url: str, webhook_url: str, **options: Any) -> Any:
    slack_file = tmp_path / "slack-webhook"
    slack_file.write_text(slack_url + "\n")
    webhook_file = tmp_path / "webhook-url"
    webhook_file.write_text(webhook_url + "\n")
    return {
        "slack_webhook_file": str(slack_file),
        "webhook_url_file": str(webhook_file),
        "instance": "labd-test",
        "retries": 1,
        **options,
    }


async def labd_with_alerts(
    labd_factory: LabdFactory,
    tmp_path: Path,
    receivers: dict[str, Receiver],
    *,
    slack_url: str | None = None,
    **overrides: Any,
) -> Labd:
    config = alerts_config(
        tmp_path, slack_url or receivers["slack"].url, receivers["webhook"].url, timeout=1
    )
    labd: Labd = await labd_factory(alerts=config, **overrides)
    return labd


async def post_of(receiver: Receiver, kind: str, *, within: float = 10) -> Post:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        for post in receiver.posts:
            body = post.body
            if body.get("kind") == kind or f"`{kind}`" in str(body.get("blocks")):
                return post
        await asyncio.sleep(0.02)
    raise AssertionError(f"no {kind} alert arrived")


@pytest.mark.parametrize("failure", ["error", "hang", "refused"])
async def test_spawn_failure_alerts_while_slack_fails(
    labd_factory: LabdFactory,
    sim: SimCluster,
    receivers: dict[str, Receiver],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    failure: str,
) -> None:
    slack = receivers["slack"]
    slack.mode = "hang" if failure == "hang" else "error"
    url = refused_url() if failure == "refused" else slack.url
    with caplog.at_level(logging.DEBUG), capture_logs() as logs:
        labd = await labd_with_alerts(labd_factory, tmp_path, receivers, slack_url=url)
        sim.faults.add_error("create", "pods", rate=1.0, status=403)
        started = time.monotonic()
        lab = await labd.service.create("frank", spec(), actor=Actor.HUB)
        events = await asyncio.wait_for(stream(labd, "frank"), 10)
        failed_after = time.monotonic() - started
        assert [e.type for e in events[-2:]] == [EventType.ERROR, EventType.FAILED]
        assert (await labd.store.get_lab(lab.id)).state is LabState.FAILED
        assert failed_after < 3.0

        body = (await post_of(receivers["webhook"], "spawn_failed")).body
        assert body["username"] == "frank" and body["lab_id"] == lab.id
        assert body["message"] == "Lab spawn failed for frank"
        assert "create Pod labd-frank/frank-nb: 403" in body["detail"]
        assert (body["severity"], body["count"], body["instance"]) == ("error", 1, "labd-test")

        # The lab is cleaned up as usual while Slack keeps failing.
        sim.faults.clear()
        await asyncio.wait_for(labd.service.delete("frank", actor=Actor.HUB), 15)
        assert (await labd.store.get_lab(lab.id)).state is LabState.DELETED
        assert not sim.objects("pods", "labd-frank")
        await labd.stop()
    assert not slack.posts
    logged = caplog.text + "".join(str(event) for event in logs)
    assert SECRET_PATH not in logged
    assert "alerts enabled" in logged


async def test_no_token_of_a_pod_message_reaches_an_alert(
    labd_factory: LabdFactory, sim: SimCluster, receivers: dict[str, Receiver], tmp_path: Path
) -> None:
    labd = await labd_with_alerts(labd_factory, tmp_path, receivers)
    sim.rules.add("pending:ContainerCreating", namespace="labd-gus")
    lab = await labd.service.create("gus", spec(), actor=Actor.HUB)
    await wait_state(labd, "gus", LabState.STARTING)
    message = f"node said Authorization: Bearer {FAKE_TOKEN} and token={FAKE_TOKEN}"
    sim.registry.patch(
        resource_named("pods"),
        "labd-gus",
        "gus-nb",
        {"status": {"phase": "Failed", "reason": "Evicted", "message": message}},
        "application/merge-patch+json",
        subresource="status",
    )
    await wait_state(labd, "gus", LabState.FAILED)
    webhook = await post_of(receivers["webhook"], "spawn_failed")
    slack = await post_of(receivers["slack"], "spawn_failed")
    assert webhook.body["lab_id"] == lab.id
    assert webhook.body["detail"] == (
        "Lab pod failed: Evicted: node said Authorization: [redacted]"
    )
    assert FAKE_TOKEN not in str(webhook.body) and FAKE_TOKEN not in str(slack.body)


async def test_delete_failure_alerts(
    labd_factory: LabdFactory, sim: SimCluster, receivers: dict[str, Receiver], tmp_path: Path
) -> None:
    labd = await labd_with_alerts(
        labd_factory, tmp_path, receivers, timeouts={"spawn": 20, "delete": 1}
    )
    await labd.service.create("hal", spec(), actor=Actor.HUB)
    lab = await wait_state(labd, "hal", LabState.RUNNING)
    sim.faults.add_error("delete", "namespaces", rate=1.0, status=500)
    deleting = asyncio.ensure_future(labd.service.delete("hal", actor=Actor.HUB))
    body = (await post_of(receivers["webhook"], "delete_failed")).body
    assert (body["username"], body["lab_id"]) == ("hal", lab.id)
    assert body["detail"] == "Lab delete timed out after 1 s"
    slack = (await post_of(receivers["slack"], "delete_failed")).body
    assert "Lab delete failed for hal" in slack["text"]
    sim.faults.clear()
    await asyncio.gather(deleting, return_exceptions=True)


async def test_vanished_lab_alerts(
    labd_factory: LabdFactory, sim: SimCluster, receivers: dict[str, Receiver], tmp_path: Path
) -> None:
    labd = await labd_with_alerts(labd_factory, tmp_path, receivers)
    sim.rules.add("vanish:0.3", namespace="labd-ivy")
    await labd.service.create("ivy", spec(), actor=Actor.HUB)
    lab = await wait_state(labd, "ivy", LabState.RUNNING)
    body = (await post_of(receivers["webhook"], "lab_vanished")).body
    assert (body["username"], body["lab_id"], body["severity"]) == ("ivy", lab.id, "warning")
    assert body["message"] == "Running lab of ivy vanished"
    assert body["detail"] == "Lab pod vanished"


async def test_removed_orphan_alerts(
    labd_factory: LabdFactory, sim: SimCluster, receivers: dict[str, Receiver], tmp_path: Path
) -> None:
    labd = await labd_with_alerts(labd_factory, tmp_path, receivers)
    stray = str(uuid.uuid4())
    sim.registry.create(
        resource_named("namespaces"),
        "",
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {
                "name": "labd-stray",
                "labels": {MANAGED_BY_LABEL: MANAGED_BY, LAB_ID_LABEL: stray, USER_LABEL: "stray"},
            },
        },
    )
    report = await labd.reconciler.reconcile()
    assert report.orphans == ["labd-stray"]
    body = (await post_of(receivers["webhook"], "orphan_removed")).body
    assert body["message"] == "Deleted orphaned lab namespace labd-stray"
    assert body["detail"] == "Deleted because it has no labd annotations"
    assert (body["lab_id"], body["username"]) == (stray, None)


async def test_unexpected_request_error_alerts(receivers: dict[str, Receiver]) -> None:
    async def broken(request: Request) -> Response:
        raise RuntimeError(f"the database said password={FAKE_TOKEN}")

    alerts = Alerts([Target("webhook", receivers["webhook"].url, webhook_payload)])
    alerts.start()
    app = Starlette(
        routes=[Route("/spawner/v1/labs", broken)],
        middleware=[Middleware(ErrorBoundary, alerts=alerts)],
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://labd") as client:
        response = await client.get("/spawner/v1/labs")
    assert response.status_code == 500
    (post,) = await receivers["webhook"].wait_for(1)
    await alerts.stop()
    assert post.body["kind"] == "unexpected_error"
    assert post.body["message"] == "Unexpected error in GET /spawner/v1/labs"
    assert post.body["detail"] == "RuntimeError: the database said password=[redacted]"
