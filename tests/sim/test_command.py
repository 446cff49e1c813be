"""``labd sim`` / ``python -m labd.sim`` as a process of its own."""

from __future__ import annotations

import asyncio
import base64
import signal
import ssl
import sys
from pathlib import Path

import httpx
import pytest
import yaml
from click.testing import CliRunner
from kubernetes_asyncio.client import ApiClient, Configuration, CoreV1Api
from kubernetes_asyncio.config import load_kube_config

from labd.cli.main import main
from labd.sim import SimCluster
from tests.support.kubeapi import manifest, pod
from tests.support.waiting import eventually


def test_labd_registers_the_sim_command() -> None:
    result = CliRunner().invoke(main, ["sim", "--help"])
    assert result.exit_code == 0
    assert "--pod-start-delay" in result.output


def test_bad_fault_syntax_is_a_usage_error() -> None:
    result = CliRunner().invoke(main, ["sim", "--error", "create:pods"])
    assert result.exit_code == 2
    assert "VERB:RESOURCE:RATE" in result.output


def test_bad_rule_is_a_usage_error() -> None:
    result = CliRunner().invoke(main, ["sim", "--rule", "lab-*/*=explode"])
    assert result.exit_code == 2
    assert "invalid outcome" in result.output


async def test_sim_process_serves_until_sigterm(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "labd.sim",
        "--port",
        "0",
        "--kubeconfig",
        str(kubeconfig),
        "--pod-start-delay",
        "0.05",
        "--rule",
        "crashy/*=crash:OOMKilled",
        "--error",
        "delete:secrets:1.0:503",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    assert process.stdout is not None
    try:
        lines: list[str] = []
        while not any(line.startswith("kubeconfig:") for line in lines):
            raw = await asyncio.wait_for(process.stdout.readline(), 20)
            assert raw, "the sim process ended before printing its kubeconfig"
            lines.append(raw.decode().strip())
        url = next(line.split(": ", 1)[1] for line in lines if line.startswith("sim API server"))
        # HTTPS by default, with the generated CA in the kubeconfig.
        assert url.startswith("https://127.0.0.1:")
        configuration = Configuration()
        await load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
        async with ApiClient(configuration) as api:
            core = CoreV1Api(api)
            await core.create_namespace(manifest({"metadata": {"name": "crashy"}}))

            async def pod_created() -> bool:
                accounts = await core.list_namespaced_service_account("crashy")
                if not accounts.items:
                    return False
                await core.create_namespaced_pod("crashy", pod("nb"))
                return True

            await eventually(pod_created)

            async def crashed() -> bool:
                current = await core.read_namespaced_pod("nb", "crashy")
                return str(current.status.phase) == "Failed"

            await eventually(crashed)
        token = configuration.api_key["BearerToken"]
        trust = ssl.create_default_context(cafile=configuration.ssl_ca_cert)
        async with httpx.AsyncClient(
            base_url=url, headers={"Authorization": token}, verify=trust
        ) as http:
            faults = (await http.get("/sim/v1/faults")).json()
        assert faults["errors"] == [
            {"verb": "delete", "resource": "secrets", "rate": 1.0, "status": 503}
        ]
    finally:
        process.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(process.wait(), 10)
    assert code == 0


async def test_kubeconfig_is_private_and_names_the_cluster(tmp_path: Path) -> None:
    async with SimCluster(kubelet=False) as sim:
        path = sim.write_kubeconfig(tmp_path / "nested" / "kubeconfig")
        url = sim.url
    assert path.stat().st_mode & 0o777 == 0o600
    document = yaml.safe_load(path.read_text())
    assert document["current-context"] == "labd-sim"
    assert document["clusters"][0]["cluster"]["server"] == url
    assert document["users"][0]["user"]["token"] == sim.token


async def _start(tmp_path: Path, *options: str) -> tuple[asyncio.subprocess.Process, list[str]]:
    """Start ``python -m labd.sim`` with ``options``; return it and the lines it printed."""
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "labd.sim", "--port", "0"),
        *("--kubeconfig", str(tmp_path / "kubeconfig"), "--pod-start-delay", "0.05"),
        *options,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    assert process.stdout is not None
    lines: list[str] = []
    while not any(line.startswith("kubeconfig:") for line in lines):
        raw = await asyncio.wait_for(process.stdout.readline(), 20)
        assert raw, "the sim process ended before printing its kubeconfig"
        lines.append(raw.decode().strip())
    return process, lines


async def _stop(process: asyncio.subprocess.Process) -> None:
    process.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(process.wait(), 10) == 0


def _printed(lines: list[str], label: str) -> str:
    return next(line.split(": ", 1)[1] for line in lines if line.startswith(f"{label}: "))


async def test_no_tls_serves_plain_http_for_raw_clients(tmp_path: Path) -> None:
    process, lines = await _start(tmp_path, "--no-tls", "--token", "t0ken")
    try:
        url = _printed(lines, "sim API server")
        assert url.startswith("http://127.0.0.1:")
        assert not any(line.startswith("labs:") for line in lines)  # No --serve-labs.
        cluster = yaml.safe_load((tmp_path / "kubeconfig").read_text())["clusters"][0]["cluster"]
        assert cluster == {"server": url}
        async with httpx.AsyncClient(headers={"Authorization": "Bearer t0ken"}) as http:
            assert (await http.get(f"{url}/api/v1/namespaces")).status_code == 200
    finally:
        await _stop(process)


async def test_the_kubeconfig_carries_the_ca_the_server_is_signed_by(tmp_path: Path) -> None:
    process, lines = await _start(tmp_path)
    try:
        url = _printed(lines, "sim API server")
        document = yaml.safe_load((tmp_path / "kubeconfig").read_text())
        ca = base64.b64decode(document["clusters"][0]["cluster"]["certificate-authority-data"])
        token = document["users"][0]["user"]["token"]
        headers = {"Authorization": f"Bearer {token}"}
        trust = ssl.create_default_context(cadata=ca.decode())
        async with httpx.AsyncClient(headers=headers, verify=trust) as http:
            assert (await http.get(f"{url}/api/v1/namespaces")).status_code == 200
        # Nothing else vouches for the server, and no key went into the kubeconfig.
        async with httpx.AsyncClient(headers=headers) as http:
            with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                await http.get(f"{url}/api/v1/namespaces")
        assert "PRIVATE KEY" not in (tmp_path / "kubeconfig").read_text()
        assert b"PRIVATE KEY" not in ca
    finally:
        await _stop(process)


async def test_serve_labs_makes_running_pods_answer_http(tmp_path: Path) -> None:
    process, lines = await _start(tmp_path, "--serve-labs")
    try:
        labs_url = _printed(lines, "labs").split()[0]
        assert labs_url.startswith("http://127.0.0.1:")
        configuration = Configuration()
        await load_kube_config(
            config_file=str(tmp_path / "kubeconfig"), client_configuration=configuration
        )
        body = pod("alice-nb")
        body["spec"]["containers"][0]["env"] = [
            {"name": "JUPYTERHUB_SERVICE_PREFIX", "value": "/user/alice/"}
        ]
        async with ApiClient(configuration) as api, httpx.AsyncClient() as http:
            core = CoreV1Api(api)
            await core.create_namespace(manifest({"metadata": {"name": "alice"}}))

            async def created() -> bool:
                if not (await core.list_namespaced_service_account("alice")).items:
                    return False
                await core.create_namespaced_pod("alice", body)
                return True

            await eventually(created)

            async def answers() -> bool:
                return (await http.get(f"{labs_url}/user/alice/api")).status_code == 200

            await eventually(answers)
    finally:
        await _stop(process)


def test_help_names_tls_and_serve_labs() -> None:
    result = CliRunner().invoke(main, ["sim", "--help"])
    assert "--tls / --no-tls" in result.output
    assert "--serve-labs" in result.output
