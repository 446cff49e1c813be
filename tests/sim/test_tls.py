"""The simulated API server over HTTPS, with a CA it makes at start (``tls=True``)."""

from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from kubernetes_asyncio.client import CoreV1Api
from kubernetes_asyncio.watch import Watch

from labd.sim import SimCluster
from labd.sim.tls import generate
from tests.support.kubeapi import pod
from tests.support.waiting import eventually


def test_the_serving_certificate_is_for_the_loopback_and_signed_by_the_ca() -> None:
    made = generate()
    ca = x509.load_pem_x509_certificate(made.ca_pem)
    cert = x509.load_pem_x509_certificate(made.cert_pem)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert names.get_values_for_type(x509.DNSName) == ["localhost"]
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.SERVER_AUTH]
    cert.verify_directly_issued_by(ca)
    # Each start makes a CA of its own.
    assert generate().ca_pem != made.ca_pem


def test_the_key_stays_out_of_repr_and_the_ca_key_is_not_kept() -> None:
    made = generate()
    assert b"PRIVATE KEY" in made.key_pem
    assert "PRIVATE KEY" not in repr(made)
    assert "PRIVATE KEY" not in str(made)
    assert b"PRIVATE KEY" not in made.ca_pem + made.cert_pem
    assert set(vars(made)) == {"ca_pem", "cert_pem", "key_pem"}


def test_without_memfd_the_key_passes_through_a_private_file_removed_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delattr(os, "memfd_create")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    modes: list[int] = []
    original = os.open

    def recording_open(
        path: str | os.PathLike[str], flags: int, mode: int = 0o777, **options: Any
    ) -> int:
        if flags & os.O_CREAT:
            modes.append(mode)
        return original(path, flags, mode, **options)

    monkeypatch.setattr(os, "open", recording_open)
    generate().server_context()
    assert modes == [0o600]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.sim(tls=True)
async def test_clients_must_trust_the_ca(sim: SimCluster, control: httpx.AsyncClient) -> None:
    assert sim.url.startswith("https://127.0.0.1:")
    assert (await control.get("/api/v1/namespaces")).status_code == 200
    # https://localhost too: the certificate names both.
    localhost = sim.url.replace("127.0.0.1", "localhost")
    trust = sim.ssl_context()
    assert trust is not None
    async with httpx.AsyncClient(verify=trust) as client:
        assert (await client.get(f"{localhost}/version")).status_code == 200
    async with httpx.AsyncClient() as client:
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            await client.get(f"{sim.url}/version")
    async with httpx.AsyncClient(verify=generate().client_context()) as client:
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            await client.get(f"{sim.url}/version")


@pytest.mark.sim(tls=True)
async def test_the_kubelet_and_watches_work_over_tls(
    sim: SimCluster, core: CoreV1Api, namespace: str
) -> None:
    # A watch opened before the pod exists sees it go from Pending to Running
    # as it happens: the stream is not held back until the response ends.
    phases: list[str] = []
    watch = Watch()

    async def follow() -> None:
        async for event in watch.stream(core.list_namespaced_pod, namespace, timeout_seconds=10):
            phases.append(str(event["object"].status.phase))
            if phases[-1] == "Running":
                watch.stop()

    task = asyncio.create_task(follow())
    try:
        await eventually(lambda: sim.stats.requests["watch pods"] >= 1)
        await core.create_namespaced_pod(namespace, pod("nb"))
        await asyncio.wait_for(task, 10)
    finally:
        task.cancel()
    assert phases[0] == "Pending"
    assert phases[-1] == "Running"


async def test_the_ca_file_for_kubernetes_asyncio_goes_with_the_cluster() -> None:
    async with SimCluster(tls=True, kubelet=False) as sim:
        ca_file = Path(str(sim.configuration().ssl_ca_cert))
        assert await asyncio.to_thread(ca_file.read_bytes) == sim.ca_pem
    assert not await asyncio.to_thread(ca_file.parent.exists)


async def test_plain_http_has_no_ca() -> None:
    async with SimCluster(kubelet=False) as sim:
        assert sim.url.startswith("http://127.0.0.1:")
        assert sim.ca_pem is None
        assert sim.ssl_context() is None
        assert sim.configuration().ssl_ca_cert is None
