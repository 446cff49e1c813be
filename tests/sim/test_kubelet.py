"""The kubelet stand-in: binding, status, events and every outcome."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest
from kubernetes_asyncio.client import CoreV1Api
from kubernetes_asyncio.client.exceptions import ApiException

from labd.sim import Kubelet, SimCluster
from labd.tasks import cancel_and_wait, spawn
from tests.support.kubeapi import manifest, pod, raw, status_of
from tests.support.waiting import eventually


async def _phase(core: CoreV1Api, namespace: str, name: str) -> str:
    return str((await core.read_namespaced_pod(name, namespace)).status.phase)


async def _wait_phase(core: CoreV1Api, namespace: str, name: str, phase: str) -> Any:
    async def reached() -> bool:
        return await _phase(core, namespace, name) == phase

    await eventually(reached)
    return await core.read_namespaced_pod(name, namespace)


async def _events(core: CoreV1Api, namespace: str, name: str) -> list[Any]:
    listing = await core.list_namespaced_event(
        namespace, field_selector=f"involvedObject.name={name}"
    )
    return sorted(listing.items, key=lambda e: int(e.metadata.resource_version))


async def _gone(core: CoreV1Api, namespace: str, name: str) -> bool:
    try:
        await core.read_namespaced_pod(name, namespace)
    except ApiException as error:
        return bool(error.status == 404)
    return False


async def test_pod_runs_with_realistic_status_and_events(core: CoreV1Api, namespace: str) -> None:
    created = await core.create_namespaced_pod(namespace, pod("nb"))
    assert created.status.phase == "Pending"
    running = await _wait_phase(core, namespace, "nb", "Running")
    status = running.status
    assert running.spec.node_name == "sim-node"
    assert status.pod_ip.startswith("10.244.")
    assert status.host_ip == "10.0.0.10"
    assert status.start_time is not None
    conditions = {c.type: c.status for c in status.conditions}
    assert (conditions["Ready"], conditions["PodScheduled"]) == ("True", "True")
    (container,) = status.container_statuses
    assert container.name == "notebook"
    assert container.ready
    assert container.state.running.started_at is not None
    events = await _events(core, namespace, "nb")
    assert [e.reason for e in events] == ["Scheduled", "Pulling", "Pulled", "Created", "Started"]
    assert events[0].message == f"Successfully assigned {namespace}/nb to sim-node"
    assert events[0].source.component == "default-scheduler"
    assert events[1].message == 'Pulling image "jupyter/lab:4.1"'
    assert events[4].message == "Started container notebook"
    involved = events[4].involved_object
    assert (involved.kind, involved.name, involved.uid) == ("Pod", "nb", created.metadata.uid)
    assert involved.field_path == "spec.containers{notebook}"
    node = await core.read_node("sim-node")
    assert node.status.conditions[0].type == "Ready"


@pytest.mark.sim(pod_start_delay=0.4)
async def test_start_delay_is_honoured(core: CoreV1Api, namespace: str) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    await core.create_namespaced_pod(namespace, pod("nb"))

    async def creating() -> bool:
        statuses = (await core.read_namespaced_pod("nb", namespace)).status.container_statuses
        waiting = statuses[0].state.waiting if statuses else None
        return waiting is not None and waiting.reason == "ContainerCreating"

    await eventually(creating)
    assert await _phase(core, namespace, "nb") == "Pending"
    await _wait_phase(core, namespace, "nb", "Running")
    assert loop.time() - started >= 0.35


@pytest.mark.sim(pod_start_delay=0)
async def test_zero_delay(core: CoreV1Api, namespace: str) -> None:
    await core.create_namespaced_pod(namespace, pod("nb"))
    await _wait_phase(core, namespace, "nb", "Running")


async def test_image_pull_back_off(core: CoreV1Api, namespace: str) -> None:
    await core.create_namespaced_pod(namespace, pod("nb", outcome="pending:ImagePullBackOff"))

    async def backing_off() -> bool:
        current = await core.read_namespaced_pod("nb", namespace)
        statuses = current.status.container_statuses or []
        return bool(statuses) and statuses[0].state.waiting.reason == "ImagePullBackOff"

    await eventually(backing_off)
    assert await _phase(core, namespace, "nb") == "Pending"
    events = await _events(core, namespace, "nb")
    reasons = [(e.reason, e.type) for e in events]
    assert ("Failed", "Warning") in reasons
    assert ("BackOff", "Normal") in reasons
    messages = [e.message for e in events]
    assert 'Back-off pulling image "jupyter/lab:4.1"' in messages
    assert "Error: ImagePullBackOff" in messages


def _pulls(events: list[Any]) -> list[tuple[str, str]]:
    """The image events of a pod: (reason, message) of its Pulling and Pulled events."""
    return [(e.reason, e.message) for e in events if e.reason in ("Pulling", "Pulled")]


async def test_an_image_on_the_node_is_not_pulled_again(core: CoreV1Api, namespace: str) -> None:
    await core.create_namespaced_pod(namespace, pod("first"))
    first = await _wait_phase(core, namespace, "first", "Running")
    (pulling, pulled) = _pulls(await _events(core, namespace, "first"))
    assert pulling == ("Pulling", 'Pulling image "jupyter/lab:4.1"')
    assert pulled[0] == "Pulled"
    assert pulled[1].startswith('Successfully pulled image "jupyter/lab:4.1" in ')

    created = await core.create_namespaced_pod(namespace, pod("second"))
    assert created.spec.containers[0].image_pull_policy == "IfNotPresent"
    second = await _wait_phase(core, namespace, "second", "Running")
    events = await _events(core, namespace, "second")
    assert [e.reason for e in events] == ["Scheduled", "Pulled", "Created", "Started"]
    assert (events[1].type, events[1].message) == (
        "Normal",
        'Container image "jupyter/lab:4.1" already present on machine',
    )
    assert events[1].involved_object.field_path == "spec.containers{notebook}"
    # Both run the one image the node holds.
    image_id = first.status.container_statuses[0].image_id
    assert image_id.startswith("docker.io/jupyter/lab@sha256:")
    assert second.status.container_statuses[0].image_id == image_id


@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="docs/real-node.md: the sim writes a current kubelet's 'in Xs (Ys including "
    "waiting)'; the real node's v1.20 kubelet writes 'in Xs' alone. Kept: labd passes the "
    "message to the hub word for word and never parses it",
)
async def test_pulled_reads_as_the_real_nodes_v1_20_kubelet_writes_it(
    core: CoreV1Api, namespace: str
) -> None:
    await core.create_namespaced_pod(namespace, pod("first"))
    await _wait_phase(core, namespace, "first", "Running")
    (_, pulled) = _pulls(await _events(core, namespace, "first"))
    # As seen on the real node: 'Successfully pulled image "..." in 12.421141337s'.
    assert re.fullmatch(r'Successfully pulled image "[^"]+" in [0-9.]+m?s', pulled[1]), pulled


@pytest.mark.parametrize(
    ("image", "pull_policy"),
    [("jupyter/lab:4.1", "Always"), ("jupyter/lab:latest", None), ("jupyter/lab", None)],
)
async def test_always_pulls_every_time(
    core: CoreV1Api, namespace: str, image: str, pull_policy: str | None
) -> None:
    # Without a policy, Kubernetes makes it Always for `latest`, written or implied.
    for name in ("first", "second"):
        created = await core.create_namespaced_pod(
            namespace, pod(name, image=image, pull_policy=pull_policy)
        )
        assert created.spec.containers[0].image_pull_policy == "Always"
        await _wait_phase(core, namespace, name, "Running")
        (pulling, pulled) = _pulls(await _events(core, namespace, name))
        assert pulling == ("Pulling", f'Pulling image "{image}"')
        assert pulled[1].startswith(f'Successfully pulled image "{image}" in ')


async def test_never_without_the_image_waits_with_err_image_never_pull(
    core: CoreV1Api, namespace: str
) -> None:
    await core.create_namespaced_pod(namespace, pod("nb", pull_policy="Never"))
    message = 'Container image "jupyter/lab:4.1" is not present with pull policy of Never'

    async def waiting() -> bool:
        current = await core.read_namespaced_pod("nb", namespace)
        statuses = current.status.container_statuses or []
        return bool(statuses) and statuses[0].state.waiting.reason == "ErrImageNeverPull"

    await eventually(waiting)
    current = await core.read_namespaced_pod("nb", namespace)
    assert current.status.phase == "Pending"
    assert current.status.container_statuses[0].state.waiting.message == message
    events = await _events(core, namespace, "nb")
    assert [(e.reason, e.type, e.message) for e in events[1:]] == [
        ("ErrImageNeverPull", "Warning", message),
        ("Failed", "Warning", "Error: ErrImageNeverPull"),
    ]


async def test_never_runs_an_image_the_node_holds(core: CoreV1Api, namespace: str) -> None:
    await core.create_namespaced_pod(namespace, pod("first"))
    await _wait_phase(core, namespace, "first", "Running")
    await core.create_namespaced_pod(namespace, pod("second", pull_policy="Never"))
    await _wait_phase(core, namespace, "second", "Running")
    assert _pulls(await _events(core, namespace, "second")) == [
        ("Pulled", 'Container image "jupyter/lab:4.1" already present on machine')
    ]


async def test_a_failing_pull_is_a_pull_even_of_an_image_the_node_holds(
    core: CoreV1Api, namespace: str
) -> None:
    # The outcome stands for a registry without the image: that pod pulls and
    # fails; the node keeps what it holds.
    await core.create_namespaced_pod(namespace, pod("first"))
    await _wait_phase(core, namespace, "first", "Running")
    await core.create_namespaced_pod(namespace, pod("failing", outcome="pending:ErrImagePull"))

    async def failed() -> bool:
        reasons = [e.reason for e in await _events(core, namespace, "failing")]
        return "Failed" in reasons

    await eventually(failed)
    assert [e.reason for e in await _events(core, namespace, "failing")][:2] == [
        "Scheduled",
        "Pulling",
    ]
    await core.create_namespaced_pod(namespace, pod("third"))
    await _wait_phase(core, namespace, "third", "Running")
    assert [reason for reason, _ in _pulls(await _events(core, namespace, "third"))] == ["Pulled"]


async def test_an_image_by_digest_is_the_image_of_that_digest(
    core: CoreV1Api, namespace: str
) -> None:
    digest = "sha256:" + "ab" * 32
    image = f"jupyter/lab@{digest}"
    created = await core.create_namespaced_pod(namespace, pod("first", image=image))
    assert created.spec.containers[0].image_pull_policy == "IfNotPresent"
    first = await _wait_phase(core, namespace, "first", "Running")
    assert first.status.container_statuses[0].image_id == f"docker.io/jupyter/lab@{digest}"
    # The same image under its full name is on the node already.
    await core.create_namespaced_pod(namespace, pod("second", image=f"docker.io/{image}"))
    await _wait_phase(core, namespace, "second", "Running")
    assert _pulls(await _events(core, namespace, "second")) == [
        ("Pulled", f'Container image "docker.io/{image}" already present on machine')
    ]


async def test_a_forgotten_image_is_pulled_again(
    sim: SimCluster, core: CoreV1Api, namespace: str
) -> None:
    await core.create_namespaced_pod(namespace, pod("first"))
    await _wait_phase(core, namespace, "first", "Running")
    assert list(sim.images) == ["docker.io/jupyter/lab:4.1"]
    sim.images.forget("jupyter/lab:4.1")  # as `crictl rmi` on a real node
    assert "jupyter/lab:4.1" not in sim.images
    await core.create_namespaced_pod(namespace, pod("second"))
    await _wait_phase(core, namespace, "second", "Running")
    assert [reason for reason, _ in _pulls(await _events(core, namespace, "second"))] == [
        "Pulling",
        "Pulled",
    ]
    assert "docker.io/jupyter/lab:4.1" in sim.images


async def test_unschedulable(core: CoreV1Api, namespace: str) -> None:
    await core.create_namespaced_pod(namespace, pod("nb", outcome="pending:Unschedulable"))

    async def reported() -> bool:
        return [e.reason for e in await _events(core, namespace, "nb")] == ["FailedScheduling"]

    await eventually(reported)
    current = await core.read_namespaced_pod("nb", namespace)
    assert not current.spec.node_name
    assert current.status.conditions[0].reason == "Unschedulable"


async def test_pending_with_another_reason(core: CoreV1Api, namespace: str) -> None:
    await core.create_namespaced_pod(namespace, pod("nb", outcome="pending:CreateContainerError"))

    async def waiting() -> bool:
        current = await core.read_namespaced_pod("nb", namespace)
        statuses = current.status.container_statuses or []
        return bool(statuses) and statuses[0].state.waiting.reason == "CreateContainerError"

    await eventually(waiting)
    assert "CreateContainerError" in [e.reason for e in await _events(core, namespace, "nb")]


async def test_exit_succeeds_after_running(core: CoreV1Api, namespace: str) -> None:
    await core.create_namespaced_pod(namespace, pod("nb", outcome="exit:0.2"))
    await _wait_phase(core, namespace, "nb", "Running")
    done = await _wait_phase(core, namespace, "nb", "Succeeded")
    terminated = done.status.container_statuses[0].state.terminated
    assert (terminated.exit_code, terminated.reason) == (0, "Completed")


@pytest.mark.parametrize(("reason", "code"), [("OOMKilled", 137), ("Error", 1)])
async def test_crash(core: CoreV1Api, namespace: str, reason: str, code: int) -> None:
    await core.create_namespaced_pod(namespace, pod("nb", outcome=f"crash:{reason}"))
    failed = await _wait_phase(core, namespace, "nb", "Failed")
    terminated = failed.status.container_statuses[0].state.terminated
    assert (terminated.exit_code, terminated.reason) == (code, reason)


async def test_vanish(core: CoreV1Api, namespace: str) -> None:
    await core.create_namespaced_pod(namespace, pod("nb", outcome="vanish:0.2"))
    await _wait_phase(core, namespace, "nb", "Running")

    async def vanished() -> bool:
        return await _gone(core, namespace, "nb")

    await eventually(vanished)


async def test_rules_beat_the_default_and_the_annotation_beats_rules(
    sim: SimCluster, core: CoreV1Api, namespace: str
) -> None:
    sim.rules.add("crash:OOMKilled", namespace="lab-*", name="*-nb")
    await core.create_namespaced_pod(namespace, pod("a-nb"))
    await core.create_namespaced_pod(namespace, pod("b-nb", outcome="run"))
    await core.create_namespaced_pod(namespace, pod("other"))
    await _wait_phase(core, namespace, "a-nb", "Failed")
    await _wait_phase(core, namespace, "b-nb", "Running")
    await _wait_phase(core, namespace, "other", "Running")


async def test_an_invalid_annotation_falls_back_to_the_rules(
    core: CoreV1Api, namespace: str
) -> None:
    await core.create_namespaced_pod(namespace, pod("nb", outcome="explode"))
    await _wait_phase(core, namespace, "nb", "Running")


@pytest.mark.sim(default_outcome="exit:0")
async def test_default_outcome(core: CoreV1Api, namespace: str) -> None:
    await core.create_namespaced_pod(namespace, pod("nb"))
    await _wait_phase(core, namespace, "nb", "Succeeded")


@pytest.mark.sim(pod_stop_delay=0.3)
async def test_graceful_deletion_is_finished_by_the_kubelet(
    core: CoreV1Api, namespace: str
) -> None:
    await core.create_namespaced_pod(namespace, pod("nb"))
    await _wait_phase(core, namespace, "nb", "Running")
    code, marked = await raw(core.delete_namespaced_pod("nb", namespace, _preload_content=False))
    assert code == 200
    assert marked["metadata"]["deletionTimestamp"]
    assert marked["metadata"]["deletionGracePeriodSeconds"] == 30
    still = await core.read_namespaced_pod("nb", namespace)
    assert still.metadata.deletion_timestamp is not None

    async def gone() -> bool:
        return await _gone(core, namespace, "nb")

    await eventually(gone)
    assert "Killing" in [e.reason for e in await _events(core, namespace, "nb")]


@pytest.mark.sim(pod_stop_delay=5)
async def test_grace_period_caps_the_stop(core: CoreV1Api, namespace: str) -> None:
    await core.create_namespaced_pod(namespace, pod("nb"))
    await _wait_phase(core, namespace, "nb", "Running")
    loop = asyncio.get_running_loop()
    started = loop.time()
    await core.delete_namespaced_pod("nb", namespace, grace_period_seconds=1)
    marked = await core.read_namespaced_pod("nb", namespace)
    assert marked.metadata.deletion_grace_period_seconds == 1

    async def gone() -> bool:
        return await _gone(core, namespace, "nb")

    await eventually(gone, within=3)
    assert loop.time() - started >= 0.9


async def test_zero_grace_deletes_at_once(core: CoreV1Api, namespace: str) -> None:
    await core.create_namespaced_pod(namespace, pod("nb"))
    await _wait_phase(core, namespace, "nb", "Running")
    await core.delete_namespaced_pod("nb", namespace, grace_period_seconds=0)
    assert await _gone(core, namespace, "nb")


@pytest.mark.sim(kubelet=False)
async def test_without_kubelet_pods_stay_pending_and_unbound_pods_delete_at_once(
    core: CoreV1Api, namespace: str
) -> None:
    await core.create_namespaced_pod(namespace, pod("nb"))
    assert await _phase(core, namespace, "nb") == "Pending"
    assert (await core.read_namespaced_pod("nb", namespace)).spec.node_name is None
    await core.delete_namespaced_pod("nb", namespace)
    assert await _gone(core, namespace, "nb")


@pytest.mark.sim(kubelet=False)
async def test_binding_subresource(core: CoreV1Api, namespace: str) -> None:
    await core.create_namespaced_pod(namespace, pod("nb"))
    binding = manifest({"metadata": {"name": "nb"}, "target": {"kind": "Node", "name": "node-a"}})
    code, body = await raw(
        core.create_namespaced_pod_binding("nb", namespace, binding, _preload_content=False)
    )
    assert code == 201
    assert body["status"] == "Success"
    bound = await core.read_namespaced_pod("nb", namespace)
    assert bound.spec.node_name == "node-a"
    assert bound.status.conditions[0].type == "PodScheduled"
    with pytest.raises(ApiException) as caught:
        await core.create_namespaced_pod_binding("nb", namespace, binding)
    assert caught.value.status == 409
    assert "already assigned" in status_of(caught.value)["message"]


@pytest.mark.sim(kubelet=False, watch_window=5)
async def test_kubelet_recovers_from_dropped_and_expired_watches(
    sim: SimCluster, core: CoreV1Api, namespace: str
) -> None:
    # Under an ordinary User-Agent the kubelet gets the faults clients get.
    kubelet = Kubelet(sim.configuration(), start_delay=0.01, user_agent="test-kubelet")
    sim.faults.drop_watches(after_events=1)
    sim.faults.expire_next_watches(2)
    running = spawn(kubelet.run(), name="test-kubelet")
    try:
        for index in range(4):
            await core.create_namespaced_pod(namespace, pod(f"nb-{index}"))
        for index in range(4):
            await _wait_phase(core, namespace, f"nb-{index}", "Running")
        assert sim.stats.requests["list pods"] >= 2  # re-listed after 410
        assert sim.stats.requests["watch pods"] >= 3
    finally:
        await cancel_and_wait([running])
