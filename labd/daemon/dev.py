"""``labd dev``: labd on SQLite and the simulated cluster, in one command.

Everything lives in a state directory (``.labd-dev`` by default): the SQLite
database, a sample configuration, the simulated cluster's kubeconfig, the
hub token (``hub-token``) and the token file holding its hash.  Files that
exist are kept, so the database, the configuration and the token survive a
restart; the simulated cluster itself lives in memory, and the reconciler
marks the labs of the previous run as vanished at start.

The state directory holds secrets (the hub token, the simulated cluster's
token in the kubeconfig) and the database, so it is private to the user:
created 0700, its files created 0600 from the start rather than written and
then restricted, and everything ``labd dev`` creates while it runs (SQLite's
``-wal`` and ``-shm`` files too) made under a umask of 077.

The simulated cluster serves HTTPS with a CA made at each start
(``SimCluster(tls=True)``), written into the kubeconfig with the token, so
labd, kubectl and any other Kubernetes client reach it as a real cluster and
verify it. Its keys stay in memory.

The simulated cluster answers HTTP for its running lab pods on a local port
(``SimCluster(serve_labs=True)``), and labs' internal URLs point there unless
the configuration sets ``lab.internal_url_template``, so a real JupyterHub
with `labd.spawner.LabdSpawner` can use ``labd dev`` end to end (see
``docs/jupyterhub.md``).

The commands it prints work as printed from any shell: they name the
``labd`` being run and the state directory by their full paths.
"""

from __future__ import annotations

import os
import secrets
import shlex
import sys
from pathlib import Path
from typing import Final

import click
import yaml

from labd.api import TokenFileError, hash_token
from labd.config import Config, ConfigError, load_config
from labd.daemon.collector import tune_collector
from labd.daemon.factory import Labd
from labd.daemon.logs import configure_logging
from labd.daemon.serving import EXIT_CONFIG, EXIT_IN_USE, run_daemon
from labd.daemon.stack import run as run_on_stack
from labd.db.database import Database
from labd.db.migrate import upgrade
from labd.db.ownership import DatabaseInUseError, sole_server
from labd.sim import SimCluster

__all__ = [
    "dev",
    "instructions",
    "labd_command",
    "sets_internal_url_template",
    "with_sim_lab_urls",
]

SAMPLE_IMAGES: Final = [
    "ghcr.io/labd/sciplat-lab:w_2026_47",
    "ghcr.io/labd/sciplat-lab:w_2026_46",
    "ghcr.io/labd/sciplat-lab:r28_0_1",
    "ghcr.io/labd/sciplat-lab:d_2026_11_24",
]


def sample_config(state_dir: Path, port: int) -> dict[str, object]:
    """The configuration ``labd dev`` writes on first use."""
    return {
        "database_url": f"sqlite+aiosqlite:///{state_dir / 'labd.db'}",
        "bind_address": f"127.0.0.1:{port}",
        "token_file": str(state_dir / "tokens"),
        "kubernetes": {"kubeconfig": str(state_dir / "kubeconfig")},
        "namespace_prefix": "labd",
        "sizes": {
            "small": {
                "description": "for light notebooks",
                "limits": {"cpu": 1, "memory": "4Gi"},
                "requests": {"cpu": 0.25, "memory": "1Gi"},
            },
            "medium": {
                "description": "for most work",
                "limits": {"cpu": 2, "memory": "8Gi"},
                "requests": {"cpu": 0.5, "memory": "2Gi"},
            },
            "large": {
                "description": "for heavy computations",
                "limits": {"cpu": 4, "memory": "16Gi"},
                "requests": {"cpu": 1, "memory": "4Gi"},
            },
        },
        "default_size": "medium",
        "images": {
            "available": [{"reference": reference} for reference in SAMPLE_IMAGES],
            "recommended": "w_2026_47",
        },
        "timeouts": {"spawn": 120, "delete": 60},
        "reconcile_interval": 60,
    }


def with_sim_lab_urls(config: Config, labs_url: str) -> Config:
    """Point labs' internal URLs at the simulated cluster's single-user servers.

    In ``labd dev`` no lab is reachable through cluster DNS, so unless the
    operator set ``lab.internal_url_template`` (in the settings file or
    ``LABD_LAB__INTERNAL_URL_TEMPLATE``), labs' URLs are ``labs_url``
    followed by the lab's service prefix. A template the operator set is
    kept as it is.
    """
    if sets_internal_url_template(config):
        return config
    template = labs_url + "{service_prefix}"
    return config.model_copy(
        update={"lab": config.lab.model_copy(update={"internal_url_template": template})}
    )


def sets_internal_url_template(config: Config) -> bool:
    """Whether the configuration sets ``lab.internal_url_template`` itself."""
    return "internal_url_template" in config.lab.model_fields_set


def labd_command() -> str:
    """The command that runs this ``labd``, for a shell whose PATH may not know it.

    The ``labd`` script this process was started as, else the one beside
    this Python (a virtualenv's ``bin``), else ``python -m labd``; by full
    path, quoted for the shell.
    """
    started_as = Path(sys.argv[0]) if sys.argv and sys.argv[0] else None
    if started_as is not None and started_as.name == "labd" and started_as.is_file():
        return shlex.quote(str(started_as.absolute()))
    beside = Path(sys.executable).parent / "labd"
    if beside.is_file() and os.access(beside, os.X_OK):
        return shlex.quote(str(beside))
    return shlex.join([sys.executable, "-m", "labd"])


PRIVATE_FILES: Final = (
    "hub-token",
    "tokens",
    "kubeconfig",
    "labd.db",
    "labd.db-wal",
    "labd.db-shm",
)
"""Files of the state directory no other user may read."""


def _write_new(path: Path, text: str) -> None:
    """Write a file, mode 0600, unless it exists.

    The mode is given to ``open(2)`` itself: writing first and restricting
    afterwards would leave a moment in which a token is readable by others.
    ``O_EXCL`` keeps an existing file and refuses to follow a symlink.
    """
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    with os.fdopen(descriptor, "w", encoding="utf-8") as file:
        file.write(text)


def prepare(state_dir: Path, port: int) -> Path:
    """Create the state directory's files that are missing; return the config path."""
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    # A state directory of an older labd dev may hold a world-readable
    # database; the directory itself is left as found (it may be shared).
    for name in PRIVATE_FILES:
        path = state_dir / name
        if path.is_file() and path.stat().st_mode & 0o077:
            path.chmod(0o600)
    config_path = state_dir / "labd.yaml"
    _write_new(
        config_path,
        "# Written by `labd dev`; edit freely, it is kept.\n"
        + yaml.safe_dump(sample_config(state_dir, port), sort_keys=False),
    )
    token_path = state_dir / "hub-token"
    _write_new(token_path, secrets.token_urlsafe(32) + "\n")
    token = token_path.read_text().strip()
    _write_new(
        state_dir / "tokens",
        f"# SHA-256 of the hub token in hub-token\n{hash_token(token)} hub\n",
    )
    return config_path


def instructions(state_dir: Path, url: str, labs_url: str, template: str | None) -> str:
    """What ``labd dev`` prints once it is ready: commands to run as printed.

    ``template`` is the ``lab.internal_url_template`` the operator set, if any.
    """
    token = f'"Authorization: Bearer $(cat {shlex.quote(str(state_dir / "hub-token"))})"'
    body = (
        '{"options": {"image_class": "recommended", "size": "medium"},'
        ' "env": {"JUPYTERHUB_SERVICE_PREFIX": "/user/alice/"}}'
    )
    settings = shlex.quote(str(state_dir / "labd.yaml"))
    kubeconfig = shlex.quote(str(state_dir / "kubeconfig"))
    if template is not None:
        labs = (
            "Labs' URLs follow the configured lab.internal_url_template:\n"
            f"  {template}\n"
            f"Running labs answer as single-user servers at {labs_url}/user/<name>/."
        )
    else:
        labs = (
            f"Running labs answer as single-user servers at {labs_url}/user/<name>/, so a\n"
            "real JupyterHub can use this labd: see docs/jupyterhub.md."
        )
    return f"""
labd dev is serving on {url} (simulated cluster, SQLite in {state_dir})

Spawn a lab for alice:
  curl -i -H {token} -H 'Content-Type: application/json' \\
    -d '{body}' {url}/spawner/v1/labs/alice/create

Follow its progress (server-sent events):
  curl -N -H {token} {url}/spawner/v1/labs/alice/events

Its state:
  curl -H {token} {url}/spawner/v1/labs/alice

Its pod in the simulated cluster (HTTPS; its CA and token are in the kubeconfig):
  kubectl --kubeconfig {kubeconfig} get pods -A

Its audit history:
  {labd_command()} history alice --config {settings}

Delete it:
  curl -X DELETE -H {token} {url}/spawner/v1/labs/alice

{labs}
Stop with Ctrl-C.
"""


@click.command()
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8080,
    show_default=True,
    help="Port labd listens on (127.0.0.1); 0 picks a free one.",
)
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path(".labd-dev"),
    show_default=True,
    help="Where the database, configuration and hub token live.",
)
@click.option(
    "--pod-start-delay",
    type=float,
    default=2.0,
    show_default=True,
    help="Seconds a simulated pod takes to start.",
)
def dev(port: int, state_dir: Path, pod_start_delay: float) -> None:
    """Run labd on SQLite and a simulated Kubernetes cluster, for trying it out.

    Writes a sample configuration and a hub token into the state directory
    on first use, then prints ready-to-run curl commands.
    """
    state_dir = state_dir.resolve()
    # Private from here on: SQLite creates the database with mode 0644 less
    # the umask, and its -wal and -shm files with the database's mode.
    umask = os.umask(0o077)
    try:
        config_path = prepare(state_dir, port)
        environ = {**os.environ, "LABD_BIND_ADDRESS": f"127.0.0.1:{port}"}
        try:
            config = load_config(config_path, environ=environ)
        except ConfigError as exc:
            click.echo(f"labd: invalid configuration:\n{exc}", err=True)
            raise SystemExit(EXIT_CONFIG) from None
        configure_logging(level=config.log_level, fmt="console")
        tune_collector()
        try:
            with sole_server(config.database_url):
                run_on_stack(_run(config, state_dir, pod_start_delay))
        except DatabaseInUseError as exc:
            click.echo(f"labd: {exc}", err=True)
            raise SystemExit(EXIT_IN_USE) from None
        except TokenFileError as exc:  # The token file is the user's to edit.
            click.echo(f"labd: {exc}", err=True)
            raise SystemExit(EXIT_CONFIG) from None
    finally:
        os.umask(umask)


async def _run(config: Config, state_dir: Path, pod_start_delay: float) -> None:
    database = Database(config.database_url)
    try:
        await upgrade(database)
    finally:
        await database.dispose()
    cluster = SimCluster(pod_start_delay=pod_start_delay, serve_labs=True, tls=True)
    async with cluster:
        cluster.write_kubeconfig(state_dir / "kubeconfig")
        template = config.lab.internal_url_template if sets_internal_url_template(config) else None
        config = with_sim_lab_urls(config, cluster.labs_url)

        def ready(_labd: Labd, url: str) -> None:
            click.echo(instructions(state_dir, url, cluster.labs_url, template))

        await run_daemon(config, on_ready=ready)
