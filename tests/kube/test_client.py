"""The API client: configuration, error text, retries and call counting."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest
from kubernetes_asyncio.client import ApiClient, Configuration, CoreV1Api
from kubernetes_asyncio.config import ConfigException

from labd.config import Config
from labd.kube.builder import build_lab_objects
from labd.kube.client import (
    USER_AGENT,
    WATCH_CONNECTIONS,
    KubeApi,
    KubeError,
    RetryPolicy,
    collector_paused,
    create_api_client,
)
from labd.kube.storage import LabKube
from labd.sim import SimCluster, write_kubeconfig
from labd.sim.tls import generate
from tests.kube.conftest import FAST_RETRY
from tests.support.labs import lab_build
from tests.support.processes import free_port


def test_error_text_names_the_call() -> None:
    error = KubeError(
        verb="create",
        kind="Pod",
        namespace="labd-alice",
        name="alice-nb",
        status=500,
        reason="InternalError",
        message="etcd unavailable",
    )
    assert str(error) == "create Pod labd-alice/alice-nb: 500 InternalError: etcd unavailable"
    assert error.retryable
    cluster = KubeError(
        verb="delete",
        kind="Namespace",
        namespace=None,
        name="labd-alice",
        status=None,
        reason=None,
        message="connection error: refused",
    )
    assert str(cluster) == "delete Namespace labd-alice: connection error: refused"
    listing = KubeError(
        verb="list",
        kind="Pod",
        namespace=None,
        name=None,
        status=403,
        reason="Forbidden",
        message="no",
    )
    assert str(listing) == "list Pod (all namespaces): 403 Forbidden: no"
    assert not listing.retryable


def test_retry_delays_are_jittered_and_capped() -> None:
    policy = RetryPolicy(attempts=5, initial=0.5, maximum=1.5)
    for retry, ceiling in [(1, 0.5), (2, 1.0), (3, 1.5), (4, 1.5)]:
        delays = [policy.delay(retry) for _ in range(200)]
        assert all(0 <= delay <= ceiling for delay in delays)
        assert max(delays) > ceiling / 2, "delays are spread over the whole range"
    assert policy.delay(1, retry_after=1.0) >= 1.0
    assert policy.delay(1, retry_after=60.0) <= 1.5
    with pytest.raises(ValueError, match="attempts"):
        RetryPolicy(attempts=0)
    with pytest.raises(ValueError, match="initial"):
        RetryPolicy(initial=2.0, maximum=1.0)


async def test_client_has_its_own_configuration(config: Config, sim: SimCluster) -> None:
    default_host = Configuration.get_default_copy().host
    client = await create_api_client(config.kubernetes)
    try:
        assert client.configuration.host == sim.url
        assert client.configuration is not Configuration.get_default_copy()
        assert client.configuration.connection_pool_maxsize >= (
            config.kubernetes.max_concurrent_operations + WATCH_CONNECTIONS
        )
        assert client.user_agent == USER_AGENT
        namespaces = await CoreV1Api(client).list_namespace()
        assert "default" in {ns.metadata.name for ns in namespaces.items}
    finally:
        await client.close()
    assert Configuration.get_default_copy().host == default_host


async def test_client_uses_the_named_context(config: Config) -> None:
    named = config.kubernetes.model_copy(update={"context": "labd-sim"})
    client = await create_api_client(named)
    await client.close()
    missing = config.kubernetes.model_copy(update={"context": "nowhere"})
    with pytest.raises(ConfigException, match="nowhere"):
        await create_api_client(missing)


def kube_with_hook(
    api_client: ApiClient, config: Config, hook: list[tuple[str, str, bool]]
) -> LabKube:
    return LabKube(
        api_client,
        config,
        retry=FAST_RETRY,
        on_call=lambda verb, kind, error: hook.append((verb, kind, error)),
    )


@pytest.mark.parametrize("status", [500, 503, 429])
async def test_transient_error_is_retried_then_succeeds(
    api_client: ApiClient, config: Config, sim: SimCluster, status: int
) -> None:
    calls: list[tuple[str, str, bool]] = []

    def heal(verb: str, kind: str, error: bool) -> None:
        calls.append((verb, kind, error))
        if error:
            sim.faults.clear()

    kube = LabKube(api_client, config, retry=FAST_RETRY, on_call=heal)
    sim.faults.add_error("create", "namespaces", status=status)
    await kube.create_lab_objects(build_lab_objects(lab_build("alice"), config))
    assert sim.stats.errors == {f"create namespaces {status}": 1}
    assert sim.stats.requests["create namespaces"] == 2
    assert calls[:2] == [("create", "Namespace", True), ("create", "Namespace", False)]


async def test_transient_error_fails_after_the_retries(
    api_client: ApiClient, config: Config, sim: SimCluster
) -> None:
    calls: list[tuple[str, str, bool]] = []
    kube = kube_with_hook(api_client, config, calls)
    objects = build_lab_objects(lab_build("alice"), config)
    sim.faults.add_error("create", "pods", status=500)
    with pytest.raises(KubeError) as caught:
        await kube.create_lab_objects(objects)
    error = caught.value
    assert (error.verb, error.kind, error.namespace, error.name) == (
        "create",
        "Pod",
        "labd-alice",
        "alice-nb",
    )
    assert (error.status, error.reason) == (500, "InternalError")
    assert str(error).startswith("create Pod labd-alice/alice-nb: 500 InternalError: sim fault")
    assert sim.stats.requests["create pods"] == FAST_RETRY.attempts
    assert calls[-FAST_RETRY.attempts :] == [("create", "Pod", True)] * FAST_RETRY.attempts


async def test_permanent_error_is_not_retried(
    api_client: ApiClient, config: Config, sim: SimCluster
) -> None:
    kube = kube_with_hook(api_client, config, [])
    sim.faults.add_error("list", "pods", status=403)
    with pytest.raises(KubeError) as caught:
        await kube.list_lab_pods()
    assert caught.value.status == 403
    assert sim.stats.requests["list pods"] == 1


async def test_connection_error_is_retried_then_raised(config: Config) -> None:
    calls: list[tuple[str, str, bool]] = []
    async with ApiClient(Configuration(host=f"http://127.0.0.1:{free_port()}")) as client:
        kube = kube_with_hook(client, config, calls)
        with pytest.raises(KubeError) as caught:
            await kube.namespace_gone("labd-alice")
    assert caught.value.status is None
    assert str(caught.value).startswith("get Namespace labd-alice: connection error: ")
    assert calls == [("get", "Namespace", True)] * FAST_RETRY.attempts


async def test_slow_answer_times_out(api_client: ApiClient, sim: SimCluster) -> None:
    api = KubeApi(api_client, request_timeout=0.2, retry=RetryPolicy(attempts=2, initial=0.01))
    sim.faults.add_latency("get", "namespaces", seconds=0.6)
    with pytest.raises(KubeError) as caught:
        await api.call(
            "get", "Namespace", CoreV1Api(api_client).read_namespace, "default", name="default"
        )
    assert str(caught.value) == "get Namespace default: no answer within 0.2 s"
    assert sim.stats.requests["get namespaces"] == 2


async def test_accepted_status_is_an_answer(api_client: ApiClient, sim: SimCluster) -> None:
    calls: list[tuple[str, str, bool]] = []
    api = KubeApi(
        api_client,
        request_timeout=5.0,
        on_call=lambda verb, kind, error: calls.append((verb, kind, error)),
    )
    reply = await api.call(
        "get",
        "Namespace",
        CoreV1Api(api_client).read_namespace,
        "nowhere",
        name="nowhere",
        accept=(404,),
    )
    assert (reply.status, reply.ok, reply.body["reason"]) == (404, False, "NotFound")
    assert calls == [("get", "Namespace", False)]


def test_config_defaults_fit_the_retry_budget() -> None:
    # Three tries within about two seconds by default.
    policy = RetryPolicy()
    worst = sum(min(policy.maximum, policy.initial * 2**n) for n in range(policy.attempts - 1))
    assert policy.attempts == 3
    assert worst <= 2.0


def test_collector_paused_restores_the_collector() -> None:
    assert gc.isenabled()
    with collector_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    with pytest.raises(ValueError, match="parse failed"), collector_paused():
        raise ValueError("parse failed")
    assert gc.isenabled()


def test_collector_paused_leaves_a_paused_collector_paused() -> None:
    gc.disable()
    try:
        with collector_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    finally:
        gc.enable()


@pytest.mark.sim(tls=True)
async def test_client_verifies_the_clusters_ca(
    config: Config, sim: SimCluster, tmp_path: Path
) -> None:
    client = await create_api_client(config.kubernetes)
    try:
        assert client.configuration.host == sim.url
        assert client.configuration.host.startswith("https://")
        assert client.configuration.verify_ssl
        kube = KubeApi(client, request_timeout=5, retry=RetryPolicy(attempts=1))
        core = CoreV1Api(client)
        reply = await kube.call("list", "Namespace", core.list_namespace)
        assert "default" in {item["metadata"]["name"] for item in reply.body["items"]}
    finally:
        await client.close()
    # The same cluster named with another CA's certificate is refused.
    stranger = tmp_path / "stranger"
    write_kubeconfig(stranger, sim.url, sim.token, ca_pem=generate().ca_pem)
    client = await create_api_client(config.kubernetes.model_copy(update={"kubeconfig": stranger}))
    try:
        kube = KubeApi(client, request_timeout=5, retry=RetryPolicy(attempts=1))
        with pytest.raises(KubeError, match="certificate verify failed"):
            await kube.call("list", "Namespace", CoreV1Api(client).list_namespace)
    finally:
        await client.close()


PROXY_VARIABLES = [
    f"{scheme}_{what}"
    for scheme in ("http", "https", "HTTP", "HTTPS")
    for what in ("proxy", "PROXY")
] + ["NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"]


async def test_the_environment_is_read_once_when_the_client_is_made(
    config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    # aiohttp would look up the proxy variables and ~/.netrc for every
    # request, on a worker thread. labd reads the proxy once: a proxy set
    # later (here one where nothing listens) changes nothing.
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    client = await create_api_client(config.kubernetes)
    try:
        assert client.rest_client.pool_manager.trust_env is False
        assert not client.rest_client.proxy
        for name in ("HTTP_PROXY", "HTTPS_PROXY"):
            monkeypatch.setenv(name, f"http://127.0.0.1:{free_port()}")
        namespaces = await CoreV1Api(client).list_namespace()
        assert namespaces.items is not None
    finally:
        await client.close()


async def test_a_proxy_in_the_environment_is_taken_at_start(
    config: Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name in ("HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.setenv(name, "http://proxy-user:proxy-pass@127.0.0.1:3128")
    client = await create_api_client(config.kubernetes)
    try:
        assert client.rest_client.proxy == "http://127.0.0.1:3128"
        assert client.rest_client.proxy_headers["Proxy-Authorization"].startswith("Basic ")
    finally:
        await client.close()
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    client = await create_api_client(config.kubernetes)
    try:
        assert not client.rest_client.proxy
    finally:
        await client.close()
