"""The pod, namespace and Event watches against the simulated cluster, faults included."""

from __future__ import annotations

import json
import traceback
from typing import Any

import pytest
from kubernetes_asyncio.client import (
    ApiClient,
    CoreV1Api,
    V1Container,
    V1ObjectMeta,
    V1Pod,
    V1PodSpec,
)
from kubernetes_asyncio.client.exceptions import ApiException

from labd.config import Config
from labd.kube import watching
from labd.kube.builder import build_lab_objects
from labd.kube.client import RetryPolicy
from labd.kube.storage import LabKube
from labd.kube.watching import (
    NamespaceWatcher,
    PodEventWatcher,
    PodUpdate,
    PodWatcher,
    _Watch,
)
from labd.sim import SimCluster
from tests.support.labs import lab_build
from tests.support.streams import collecting, wait_for
from tests.support.waiting import eventually

FAST_BACKOFF = RetryPolicy(attempts=1, initial=0.01, maximum=0.05)


def pod_watcher(api_client: ApiClient, config: Config, **options: Any) -> PodWatcher:
    return PodWatcher(api_client, config, backoff=FAST_BACKOFF, **options)


def event_watcher(api_client: ApiClient, config: Config) -> PodEventWatcher:
    return PodEventWatcher(api_client, config, backoff=FAST_BACKOFF)


def is_pod(user: str, phase: str, *, deleted: bool = False) -> Any:
    lab = lab_build(user)

    def check(update: PodUpdate) -> bool:
        return (update.namespace, update.phase, update.deleted) == (
            lab.namespace,
            phase,
            deleted,
        )

    return check


async def create_lab(kube: LabKube, config: Config, user: str) -> None:
    await kube.create_lab_objects(build_lab_objects(lab_build(user), config))


def pod_phase(sim: SimCluster, user: str) -> str | None:
    pods = sim.objects("pods", lab_build(user).namespace)
    return pods[0].get("status", {}).get("phase") if pods else None


async def test_pod_watch_follows_a_lab_from_start_to_exit_and_deletion(
    api_client: ApiClient, config: Config, kube: LabKube, sim: SimCluster
) -> None:
    sim.rules.add("exit:0.2", namespace="labd-alice")
    watcher = pod_watcher(api_client, config)
    async with collecting(watcher.updates()) as updates:
        await eventually(lambda: sim.stats.requests["watch pods"] >= 1)
        await create_lab(kube, config, "alice")
        seen = await wait_for(updates, is_pod("alice", "Succeeded"))
        phases = [u.phase for u in seen]
        assert phases[0] == "Pending"
        assert phases.index("Running") < phases.index("Succeeded")
        last = seen[-1]
        lab = lab_build("alice")
        assert (last.name, last.lab_id, last.slug) == ("alice-nb", lab.lab_id, "alice")
        assert last.reason == "Completed"
        await kube.delete_pod("labd-alice", "alice-nb", grace_seconds=0)
        await wait_for(updates, lambda u: u.deleted)
    assert watcher.resource_version is not None


async def test_pod_watch_reports_why_a_pod_failed(
    api_client: ApiClient, config: Config, kube: LabKube, sim: SimCluster
) -> None:
    sim.rules.add("crash:OOMKilled:0.1", namespace="labd-alice")
    sim.rules.add("pending:ImagePullBackOff", namespace="labd-bob")
    async with collecting(pod_watcher(api_client, config).updates()) as updates:
        await create_lab(kube, config, "alice")
        await create_lab(kube, config, "bob")
        seen = await wait_for(updates, is_pod("alice", "Failed"))
        if not any(u.reason == "ImagePullBackOff" for u in seen):
            seen += await wait_for(updates, lambda u: u.reason == "ImagePullBackOff")
    failed = next(u for u in seen if is_pod("alice", "Failed")(u))
    assert failed.reason == "OOMKilled"
    assert failed.message
    backoff = next(u for u in seen if u.reason == "ImagePullBackOff")
    assert (backoff.namespace, backoff.phase) == ("labd-bob", "Pending")


async def test_pod_watch_lists_existing_pods_first(
    api_client: ApiClient, config: Config, kube: LabKube, sim: SimCluster
) -> None:
    await create_lab(kube, config, "alice")
    await eventually(lambda: pod_phase(sim, "alice") == "Running")
    await api_client_pod_elsewhere(api_client)
    async with collecting(pod_watcher(api_client, config).updates()) as updates:
        first = await updates.get()
    assert is_pod("alice", "Running")(first)
    assert updates.empty(), "pods labd does not manage are not reported"


async def api_client_pod_elsewhere(api_client: ApiClient) -> None:
    core = CoreV1Api(api_client)
    await core.create_namespaced_pod(
        "default",
        V1Pod(
            metadata=V1ObjectMeta(name="stranger"),
            spec=V1PodSpec(containers=[V1Container(name="c", image="busybox:1")]),
        ),
    )


async def test_pod_watch_resumes_after_dropped_connections_on_the_watchers_client(
    api_client: ApiClient,
    config: Config,
    kube: LabKube,
    sim: SimCluster,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The library's watch makes a client (and an SSL context) per connection;
    # labd's use the watcher's.  (The sim's kubelet, in this process,
    # watches through the library's.)
    made = 0
    original = ApiClient.__init__

    def counted(self: ApiClient, *args: Any, **kwargs: Any) -> None:
        nonlocal made
        made += any(f.filename == watching.__file__ for f in traceback.extract_stack())
        original(self, *args, **kwargs)

    monkeypatch.setattr(ApiClient, "__init__", counted)
    sim.rules.add("exit:0.3", namespace="labd-alice")
    async with collecting(pod_watcher(api_client, config).updates()) as updates:
        await eventually(lambda: sim.stats.requests["watch pods"] >= 1)
        sim.faults.drop_watches(after_events=1)
        await create_lab(kube, config, "alice")
        await wait_for(updates, is_pod("alice", "Succeeded"))
    assert sim.stats.requests["watch pods"] >= 3
    # Resumed from the last version each time: no re-LIST was needed.
    assert sim.stats.requests["list pods"] == 1
    assert made == 0
    # Each connection's end left the watcher's client open.
    assert (await CoreV1Api(api_client).read_namespace("labd-alice")).metadata.name


async def test_pod_watch_relists_after_410_and_reports_pods_gone_meanwhile(
    api_client: ApiClient, config: Config, kube: LabKube, sim: SimCluster
) -> None:
    await create_lab(kube, config, "alice")
    await create_lab(kube, config, "bob")
    await eventually(lambda: pod_phase(sim, "bob") == "Running")
    async with collecting(pod_watcher(api_client, config).updates()) as updates:
        await wait_for(updates, is_pod("bob", "Running"))
        # Keep the watcher from watching (its stream ends within a second,
        # reconnections fail), delete bob's pod meanwhile, then let the next
        # watch find its version expired.
        sim.faults.add_error("watch", "pods", status=500)
        watches = sim.stats.errors["watch pods 500"]
        await eventually(lambda: sim.stats.errors["watch pods 500"] > watches)
        await kube.delete_pod("labd-bob", "bob-nb", grace_seconds=0)
        await eventually(lambda: pod_phase(sim, "bob") is None)
        sim.faults.expire_next_watches(1)
        sim.faults.spec.errors.clear()
        seen = await wait_for(updates, is_pod("bob", "Running", deleted=True))
        assert sim.stats.requests["list pods"] == 2
        # The re-LIST is a resync: alice is reported again.
        rest = await wait_for(updates, is_pod("alice", "Running"))
        assert all(not u.deleted for u in rest)
        assert [u for u in seen if u.namespace == "labd-bob"] == seen[-1:]


async def test_namespace_watch_reports_deleted_lab_namespaces(
    api_client: ApiClient, config: Config, kube: LabKube, sim: SimCluster
) -> None:
    await create_lab(kube, config, "alice")
    await create_lab(kube, config, "bob")
    watcher = NamespaceWatcher(api_client, config, backoff=FAST_BACKOFF)
    async with collecting(watcher.gone()) as gone:
        await eventually(lambda: sim.stats.requests["watch namespaces"] >= 1)
        await kube.delete_pod("labd-bob", "bob-nb", grace_seconds=0)
        assert not await kube.delete_namespace("labd-bob")
        assert await wait_for(gone, lambda name: True, within=10) == ["labd-bob"]
        assert await kube.namespace_gone("labd-bob")
        assert await kube.delete_namespace("labd-bob")  # Gone already: 404.
    assert gone.empty()
    assert sim.stats.requests["list namespaces"] == 1


async def test_namespace_watch_started_from_a_list_relists_after_410(
    api_client: ApiClient, config: Config, kube: LabKube, sim: SimCluster
) -> None:
    await create_lab(kube, config, "alice")
    await create_lab(kube, config, "bob")
    names = await kube.list_lab_namespaces()
    assert kube.namespace_list_version
    watcher = NamespaceWatcher(api_client, config, backoff=FAST_BACKOFF)
    watcher.start_from(kube.namespace_list_version, [n.name for n in names])
    lists = sim.stats.requests["list namespaces"]
    async with collecting(watcher.gone()) as gone:
        await eventually(lambda: sim.stats.requests["watch namespaces"] >= 1)
        assert sim.stats.requests["list namespaces"] == lists  # It followed on.
        # bob's namespace goes while the watch cannot watch; the next watch
        # finds its version expired, and the re-LIST tells what went.
        sim.faults.add_error("watch", "namespaces", status=500)
        watches = sim.stats.errors["watch namespaces 500"]
        await eventually(lambda: sim.stats.errors["watch namespaces 500"] > watches)
        await kube.delete_pod("labd-bob", "bob-nb", grace_seconds=0)
        await kube.delete_namespace("labd-bob")
        await eventually(lambda: kube.namespace_gone("labd-bob"))
        sim.faults.expire_next_watches(1)
        sim.faults.spec.errors.clear()
        assert await wait_for(gone, lambda name: True, within=10) == ["labd-bob"]
        assert sim.stats.requests["list namespaces"] == lists + 1


@pytest.mark.sim(watch_timeout=60.0)
async def test_silent_watch_is_restarted(
    api_client: ApiClient, config: Config, kube: LabKube, sim: SimCluster
) -> None:
    config = config.model_copy(
        update={"kubernetes": config.kubernetes.model_copy(update={"watch_timeout": 0.5})}
    )
    # The server would keep each watch open for 30 s: only the client's
    # read timeout can notice the silence.
    watcher = pod_watcher(api_client, config, server_timeout=30)
    async with collecting(watcher.updates()) as updates:
        await eventually(lambda: sim.stats.requests["watch pods"] >= 1)
        sim.faults.silence_watches()
        await eventually(lambda: sim.stats.requests["watch pods"] >= 3, within=3.0)
        sim.faults.silence_watches(False)
        await create_lab(kube, config, "alice")
        await wait_for(updates, is_pod("alice", "Running"), within=3.0)
    # Restarted from the last version seen: no re-LIST was needed.
    assert sim.stats.requests["list pods"] == 1


async def test_pod_watch_survives_api_errors(
    api_client: ApiClient, config: Config, kube: LabKube, sim: SimCluster
) -> None:
    sim.faults.add_error("list", "pods", status=503)
    sim.faults.add_error("watch", "pods", status=500)
    async with collecting(pod_watcher(api_client, config).updates()) as updates:
        await eventually(lambda: sim.stats.errors["list pods 503"] >= 4)
        sim.faults.clear()
        await create_lab(kube, config, "alice")
        await wait_for(updates, is_pod("alice", "Running"))


async def test_event_watch_reports_a_new_pod_from_now_on(
    api_client: ApiClient, config: Config, kube: LabKube, sim: SimCluster
) -> None:
    await create_lab(kube, config, "bob")
    await eventually(
        lambda: any(e["reason"] == "Started" for e in sim.objects("events", "labd-bob"))
    )
    await api_client_pod_elsewhere(api_client)
    async with collecting(event_watcher(api_client, config).events()) as events:
        await eventually(lambda: sim.stats.requests["watch events"] >= 1)
        await create_lab(kube, config, "alice")
        seen = await wait_for(events, lambda e: e.reason == "Started")
    assert {(e.namespace, e.pod_name, e.type) for e in seen} == {
        ("labd-alice", "alice-nb", "Normal")
    }
    # bob's pod pulled the image (pull policy IfNotPresent): alice's finds it on the node.
    assert [e.reason for e in seen] == ["Scheduled", "Pulled", "Created", "Started"]
    assert "alice-nb" in seen[0].message
    image = lab_build("alice").spec.options.image
    assert seen[1].message == f'Container image "{image}" already present on machine'


async def test_event_watch_reports_warnings_and_survives_410(
    api_client: ApiClient, config: Config, kube: LabKube, sim: SimCluster
) -> None:
    sim.rules.add("pending:ErrImagePull", namespace="labd-alice")
    async with collecting(event_watcher(api_client, config).events()) as events:
        await eventually(lambda: sim.stats.requests["watch events"] >= 1)
        sim.faults.expire_next_watches(1)
        sim.faults.drop_watches(after_events=0)
        await eventually(lambda: sim.stats.requests["watch events"] >= 2)
        sim.faults.clear()
        await create_lab(kube, config, "alice")
        seen = await wait_for(events, lambda e: e.type == "Warning")
    assert seen[-1].reason in ("Failed", "BackOff")
    assert sim.stats.requests["list events"] >= 2


def open_watches(sim: SimCluster, plural: str) -> int:
    """Watches of ``plural`` the sim serves that select by label (labd's, not the kubelet's)."""
    return sum(
        1
        for watcher in sim.registry.watchers()
        if watcher.resource.plural == plural and not watcher.labels.empty
    )


async def test_cancelling_the_consumer_closes_the_watch(
    api_client: ApiClient, config: Config, sim: SimCluster
) -> None:
    watcher = pod_watcher(api_client, config)
    async with collecting(watcher.updates()):
        await eventually(lambda: open_watches(sim, "pods") == 1)
    # The client hung up: the server's stream ends at its next write.
    await eventually(lambda: open_watches(sim, "pods") == 0)
    connector = api_client.rest_client.pool_manager.connector
    assert connector is not None
    await eventually(lambda: not connector._acquired)


@pytest.mark.sim(tls=True)
async def test_watches_stream_over_tls(
    api_client: ApiClient, config: Config, kube: LabKube, sim: SimCluster
) -> None:
    # labd reaches the cluster over HTTPS, verifying the CA of its kubeconfig,
    # and its watches stream changes as they happen, not when a response ends.
    assert sim.url.startswith("https://")
    assert api_client.configuration.verify_ssl
    async with (
        collecting(pod_watcher(api_client, config).updates()) as updates,
        collecting(event_watcher(api_client, config).events()) as events,
    ):
        await eventually(lambda: sim.stats.requests["watch pods"] >= 1)
        await eventually(lambda: sim.stats.requests["watch events"] >= 1)
        await create_lab(kube, config, "alice")
        await wait_for(updates, is_pod("alice", "Running"))
        seen = await wait_for(events, lambda e: e.reason == "Started")
    assert seen[0].reason == "Scheduled"


async def test_a_watch_event_is_parsed_once_and_errors_stay_the_librarys(
    api_client: ApiClient,
) -> None:
    stream = _Watch(api_client)
    line = json.dumps(
        {"type": "MODIFIED", "object": {"kind": "Pod", "metadata": {"resourceVersion": "42"}}}
    )
    event = stream.unmarshal_event(line, "object")
    # The library would have built `object` anew from JSON of `raw_object`.
    assert event["object"] is event["raw_object"]
    assert event["type"] == "MODIFIED"
    version: object = stream.resource_version  # Typed as always None by the library.
    assert version == "42"
    gone = {"kind": "Status", "code": 410, "reason": "Expired", "message": "too old"}
    with pytest.raises(ApiException) as caught:
        stream.unmarshal_event(json.dumps({"type": "ERROR", "object": gone}), "object")
    assert caught.value.status == 410
    page = "<html>bad gateway</html>"
    assert stream.unmarshal_event(page, "object") == page
    await stream.close()
    assert not api_client.rest_client.pool_manager.closed
