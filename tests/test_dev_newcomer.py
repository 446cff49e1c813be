"""What a newcomer meets: ``labd dev``, then the commands the README and ``labd dev`` give.

One ``labd dev`` runs in a directory laid out like a fresh clone after
``make dev`` (``.labd-dev`` as its state directory, ``.venv`` the project's
virtualenv), and alice's lab is created through the API as the README's
tour does. Then, from that directory and from shells whose PATH lacks
``.venv/bin``:

- every ``kubectl`` and ``.venv/bin/labd`` line of the README's shell
  examples runs exactly as written;
- the ``kubectl`` and ``labd history`` commands ``labd dev`` printed run
  exactly as printed;
- Debian's kubectl sees the lab over HTTPS, verified with the generated CA:
  ``get pods -A``, ``describe`` of the pod and the namespace, ``-o json``.

The kubectl tests skip when kubectl is not installed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from labd.config import Config
from labd.daemon.dev import labd_command, sample_config, with_sim_lab_urls
from tests.support.dev import LabdDev, running_labd_dev, tail, write_dev_config
from tests.support.processes import free_port

README = Path(__file__).resolve().parent.parent / "README.md"
KUBECTL = shutil.which("kubectl")
needs_kubectl = pytest.mark.skipif(KUBECTL is None, reason="kubectl is not installed")
BARE_PATH = "/usr/local/bin:/usr/bin:/bin"
"""A PATH as a fresh shell has it: no virtualenv on it."""

CREATE = {
    "options": {"image_class": "recommended", "size": "medium"},
    "env": {"JUPYTERHUB_SERVICE_PREFIX": "/user/alice/"},
}


def readme_commands(*programs: str) -> list[str]:
    """The lines of the README's ``sh`` examples that run one of ``programs``."""
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", README.read_text(), re.S):
        for line in block.splitlines():
            command = line.split("  #", 1)[0].strip()
            if command.split(" ", 1)[0] in programs:
                commands.append(command)
    return commands


@dataclass(frozen=True)
class Clone:
    """A directory laid out as a fresh clone after ``make dev``, with labd dev running."""

    root: Path
    dev: LabdDev
    printed: str
    """What ``labd dev`` printed (its log)."""

    @property
    def state_dir(self) -> Path:
        return self.root / ".labd-dev"

    def shell(self, command: str, *, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        """Run a command line as a fresh shell would: bash, a bare PATH, no LABD_*."""
        env = {key: value for key, value in os.environ.items() if not key.startswith("LABD_")}
        env.update(PATH=BARE_PATH, HOME=str(self.root / "home"))
        return subprocess.run(
            ["bash", "-c", command],
            cwd=cwd or self.root,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def printed_command(self, heading: str) -> str:
        """The command ``labd dev`` printed on the line after ``heading``."""
        lines = self.printed.splitlines()
        for index, line in enumerate(lines):
            if line.startswith(heading):
                return lines[index + 1].strip()
        raise AssertionError(f"labd dev printed no {heading!r}:\n{self.printed}")


def _wait_running(dev: LabdDev, username: str) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while True:
        body: dict[str, Any] = dev.lab(username).json()
        if body.get("status") == "running":
            return body
        assert time.monotonic() < deadline, f"{username}'s lab: {body}\n{tail(dev.log)}"
        time.sleep(0.1)


def _printed(log: Path) -> str:
    deadline = time.monotonic() + 30
    while "Stop with Ctrl-C." not in (text := log.read_text(errors="replace")):
        assert time.monotonic() < deadline, f"labd dev printed no instructions:\n{tail(log)}"
        time.sleep(0.1)
    return text


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Clone]:
    root = tmp_path_factory.mktemp("clone")
    (root / "home").mkdir()
    (root / ".venv").symlink_to(sys.prefix, target_is_directory=True)
    state_dir = root / ".labd-dev"
    state_dir.mkdir(mode=0o700)
    port = free_port()
    log = root / "labd-dev.log"
    with running_labd_dev(state_dir, port=port, pod_start_delay=0.2, log=log) as url:
        dev = LabdDev.of(url, state_dir, log=log)
        response = httpx.post(
            f"{url}/spawner/v1/labs/alice/create", json=CREATE, headers=dev.headers
        )
        assert response.status_code == 201, response.text
        _wait_running(dev, "alice")
        yield Clone(root=root, dev=dev, printed=_printed(log))


def test_the_dev_cluster_is_https_with_the_generated_ca(clone: Clone) -> None:
    document = yaml.safe_load((clone.state_dir / "kubeconfig").read_text())
    cluster = document["clusters"][0]["cluster"]
    assert cluster["server"].startswith("https://127.0.0.1:")
    assert cluster["certificate-authority-data"]
    assert "insecure-skip-tls-verify" not in cluster
    assert document["users"][0]["user"]["token"]
    assert clone.dev.sim_url == cluster["server"]
    assert clone.dev.namespace_exists("labd-alice")
    # No key material in the state directory, and nothing of it in the log.
    for path in clone.state_dir.iterdir():
        if path.is_file():
            assert b"PRIVATE KEY" not in path.read_bytes(), path.name
    assert "PRIVATE KEY" not in clone.printed
    # No template configured: labs' URLs are the sim's single-user servers.
    assert "so a\nreal JupyterHub can use this labd" in clone.printed
    assert "lab.internal_url_template" not in clone.printed
    assert _wait_running(clone.dev, "alice")["internal_url"].startswith("http://127.0.0.1:")


def test_the_readme_has_the_commands_a_newcomer_runs() -> None:
    kubectl = readme_commands("kubectl")
    assert "kubectl --kubeconfig .labd-dev/kubeconfig get pods -A" in kubectl
    assert readme_commands(".venv/bin/labd")


@needs_kubectl
@pytest.mark.parametrize("command", readme_commands("kubectl"))
def test_readme_kubectl_runs_as_written(clone: Clone, command: str) -> None:
    done = clone.shell(command)
    assert done.returncode == 0, done.stderr
    assert "alice-nb" in done.stdout
    if " get pods" in command:
        assert re.search(
            r"^labd-alice\s+alice-nb\s+1/1\s+Running\s+0\s+\S+$", done.stdout, re.M
        ), done.stdout


@pytest.mark.parametrize("command", readme_commands(".venv/bin/labd"))
def test_readme_labd_runs_as_written(clone: Clone, command: str) -> None:
    if not (clone.root / ".venv/bin/labd").exists():
        pytest.skip("this Python has no labd script beside it")
    done = clone.shell(command)
    assert done.returncode == 0, done.stderr
    assert "running" in done.stdout


def test_printed_history_command_runs_from_a_bare_shell(clone: Clone) -> None:
    command = clone.printed_command("Its audit history:")
    assert command.endswith(f"history alice --config {clone.state_dir / 'labd.yaml'}")
    assert shutil.which("labd", path=BARE_PATH) is None, "a labd on the bare PATH proves nothing"
    elsewhere = clone.root / "home"
    done = clone.shell(command, cwd=elsewhere)
    assert done.returncode == 0, f"{command}\n{done.stderr}"
    assert "running" in done.stdout
    assert Path(command.split(" history ", 1)[0]).is_absolute()


def test_labd_is_named_by_the_path_it_was_started_as(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = tmp_path / "bin dir" / "labd"
    script.parent.mkdir()
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["bin dir/labd", "dev"])
    assert labd_command() == f"'{script}'"
    # python -m labd: the labd beside this Python, else python -m labd itself.
    monkeypatch.setattr(sys, "argv", [str(tmp_path / "labd" / "__main__.py"), "dev"])
    monkeypatch.setattr(sys, "executable", str(script.parent / "python"))
    assert labd_command() == f"'{script}'"
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    assert labd_command() == f"{tmp_path / 'python'} -m labd"


@needs_kubectl
def test_printed_kubectl_command_runs_from_anywhere(clone: Clone) -> None:
    command = clone.printed_command("Its pod in the simulated cluster")
    assert command == f"kubectl --kubeconfig {clone.state_dir / 'kubeconfig'} get pods -A"
    done = clone.shell(command, cwd=clone.root / "home")
    assert done.returncode == 0, done.stderr
    assert "alice-nb" in done.stdout


def _kubectl(clone: Clone, *args: str) -> str:
    assert KUBECTL is not None
    done = clone.shell(
        " ".join([KUBECTL, "--kubeconfig", str(clone.state_dir / "kubeconfig"), *args])
    )
    assert done.returncode == 0, f"kubectl {' '.join(args)}: {done.stderr}"
    return done.stdout


@needs_kubectl
def test_kubectl_describes_the_labs_pod_and_namespace(clone: Clone) -> None:
    pod = _kubectl(clone, "describe", "pod", "-n", "labd-alice", "alice-nb")
    assert re.search(r"^Namespace:\s+labd-alice$", pod, re.M), pod
    assert re.search(r"^Status:\s+Running$", pod, re.M), pod
    assert "labd.io/user=alice" in pod
    assert re.search(r"Normal\s+Started\s+.*kubelet\s+Started container notebook", pod), pod
    namespace = _kubectl(clone, "describe", "namespace", "labd-alice")
    assert re.search(r"^Name:\s+labd-alice$", namespace, re.M), namespace
    assert re.search(r"^Status:\s+Active$", namespace, re.M), namespace
    assert "app.kubernetes.io/managed-by=labd" in namespace


@needs_kubectl
def test_kubectl_json_of_the_labs_objects(clone: Clone) -> None:
    pod = json.loads(_kubectl(clone, "get", "pod", "-n", "labd-alice", "alice-nb", "-o", "json"))
    assert pod["kind"] == "Pod"
    assert pod["metadata"]["labels"]["labd.io/user"] == "alice"
    assert [c["name"] for c in pod["spec"]["containers"]] == ["notebook"]
    assert pod["status"]["phase"] == "Running"
    listing = json.loads(
        _kubectl(
            clone,
            *("get", "pods,services,configmaps,networkpolicies"),
            *("-n", "labd-alice", "-l", "labd.io/user=alice", "-o", "json"),
        )
    )
    kinds = {item["kind"] for item in listing["items"]}
    assert {"Pod", "Service", "ConfigMap", "NetworkPolicy"} <= kinds
    assert {item["metadata"]["namespace"] for item in listing["items"]} == {"labd-alice"}
    namespaces = json.loads(_kubectl(clone, "get", "namespace", "labd-alice", "-o", "json"))
    assert namespaces["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "labd"


# An operator's lab.internal_url_template is honoured --------------------------


def test_the_sim_lab_url_replaces_only_a_template_nobody_set() -> None:
    default = with_sim_lab_urls(Config(), "http://127.0.0.1:9")
    assert default.lab.internal_url_template == "http://127.0.0.1:9{service_prefix}"
    configured = Config.model_validate(
        {"lab": {"internal_url_template": "http://{pod_ip}:{port}{service_prefix}"}}
    )
    kept = with_sim_lab_urls(configured, "http://127.0.0.1:9")
    assert kept.lab.internal_url_template == "http://{pod_ip}:{port}{service_prefix}"
    # Other lab settings leave the template to labd dev.
    other = Config.model_validate({"lab": {"pod_delete_grace": 0}})
    assert with_sim_lab_urls(other, "http://127.0.0.1:9").lab.internal_url_template == (
        "http://127.0.0.1:9{service_prefix}"
    )


def test_labd_dev_keeps_the_operators_lab_url_template(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    state_dir.mkdir(mode=0o700)
    port = free_port()
    config = sample_config(state_dir, port)
    config["lab"] = {"internal_url_template": "http://{pod_ip}:{port}{service_prefix}"}
    write_dev_config(state_dir, config)
    log = tmp_path / "dev.log"
    with running_labd_dev(state_dir, port=port, pod_start_delay=0.2, log=log) as url:
        dev = LabdDev.of(url, state_dir, log=log)
        response = httpx.post(
            f"{url}/spawner/v1/labs/alice/create", json=CREATE, headers=dev.headers
        )
        assert response.status_code == 201, response.text
        lab = _wait_running(dev, "alice")
        printed = _printed(log)
    assert re.fullmatch(r"http://10\.244\.\d+\.\d+:8888/user/alice/", lab["internal_url"]), lab
    assert "follow the configured lab.internal_url_template" in printed
    assert "http://{pod_ip}:{port}{service_prefix}" in printed


@needs_kubectl
def test_kubectl_watches_a_lab_come_up(clone: Clone) -> None:
    # A watch streams over TLS: kubectl prints each change as it happens.
    assert KUBECTL is not None
    env = {key: value for key, value in os.environ.items() if not key.startswith("LABD_")}
    env.update(PATH=BARE_PATH, HOME=str(clone.root / "home"))
    command = [KUBECTL, "--kubeconfig", str(clone.state_dir / "kubeconfig")]
    command += ["get", "pods", "-n", "labd-bob", "--watch", "--output-watch-events"]
    seen: list[list[str]] = []
    watches_before = _watches_of_pods(clone)
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env
    ) as watcher:
        assert watcher.stdout is not None
        try:
            deadline = time.monotonic() + 30
            while _watches_of_pods(clone) == watches_before:  # kubectl's watch is open.
                assert watcher.poll() is None, "kubectl ended"
                assert time.monotonic() < deadline, "kubectl opened no watch"
                time.sleep(0.05)
            body = {**CREATE, "env": {"JUPYTERHUB_SERVICE_PREFIX": "/user/bob/"}}
            response = httpx.post(
                f"{clone.dev.url}/spawner/v1/labs/bob/create",
                json=body,
                headers=clone.dev.headers,
            )
            assert response.status_code == 201, response.text
            deadline = time.monotonic() + 30
            while not any(row[1:4] == ["bob-nb", "1/1", "Running"] for row in seen):
                assert time.monotonic() < deadline, seen
                line = watcher.stdout.readline()
                assert line, f"kubectl's watch ended after {seen}"
                seen.append(line.split())
        finally:
            watcher.terminate()
    header, *rows = seen
    assert header == ["EVENT", "NAME", "READY", "STATUS", "RESTARTS", "AGE"], seen
    assert rows[0][:2] == ["ADDED", "bob-nb"], seen
    assert rows[-1][0] == "MODIFIED", seen
    assert rows[0][3] != "Running", seen


def _watches_of_pods(clone: Clone) -> int:
    """Watches of pods the simulated cluster has served to clients (labd and kubectl)."""
    with clone.dev.sim.client() as client:
        requests: dict[str, int] = client.get("/sim/v1/stats").json()["requests"]
    return requests.get("watch pods", 0)
