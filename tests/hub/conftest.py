"""A real JupyterHub driving ``labd dev`` through `labd.spawner.LabdSpawner`.

Three processes, as an operator would run them on one machine: ``labd dev``
(labd on SQLite and the simulated cluster, whose running lab pods answer
HTTP as single-user servers), ``jupyterhub`` configured with the spawner, a
dummy authenticator and an API token for the tests, and the hub's own
configurable-http-proxy. JupyterHub comes from the ``jupyterhub`` extra,
the proxy from npm (``npm ci --prefix tests/hub``); without either the
tests skip and say why.

Both daemons are started once per module: a hub takes seconds to start on
a loaded machine, and every test uses its own user.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from labd.daemon.dev import sample_config
from tests.support.dev import LabdDev, running_labd_dev, write_dev_config
from tests.support.hub import Hub, missing_proxy, proxy_command, running_hub
from tests.support.processes import free_port

__all__ = ["hub", "labd_dev", "proxy"]


@pytest.fixture(scope="module")
def proxy() -> list[str]:
    """configurable-http-proxy, or a skip saying how to install it."""
    command = proxy_command()
    if command is None:
        pytest.skip(missing_proxy())
    return command


@pytest.fixture(scope="module")
def labd_dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabdDev]:
    """``labd dev`` with short timeouts; pods start in half a second."""
    state_dir = tmp_path_factory.mktemp("labd-dev")
    port = free_port()
    config = sample_config(state_dir, port)
    config["timeouts"] = {"spawn": 10, "delete": 30}
    config["lab"] = {"pod_delete_grace": 0}
    write_dev_config(state_dir, config)
    log = state_dir / "labd.log"
    with running_labd_dev(state_dir, port=port, pod_start_delay=0.5, log=log) as url:
        yield LabdDev.of(url, state_dir, log=log)


@pytest.fixture(scope="module")
def hub(
    labd_dev: LabdDev, proxy: list[str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Hub]:
    """JupyterHub with LabdSpawner against ``labd dev``; the hub token comes from the env."""
    with running_hub(
        tmp_path_factory.mktemp("hub"),
        labd_url=labd_dev.url,
        labd_token=labd_dev.token,
        proxy=proxy,
    ) as running:
        yield running
