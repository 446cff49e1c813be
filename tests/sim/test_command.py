"""``labd sim`` / ``python -m labd.sim`` as a process of its own."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import httpx
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
        assert url.startswith("http://127.0.0.1:")
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
        async with httpx.AsyncClient(base_url=url, headers={"Authorization": token}) as http:
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
