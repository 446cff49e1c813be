"""``labd serve``: the daemon, with an embedded uvicorn.

labd takes SIGTERM and SIGINT itself rather than letting uvicorn do it
(uvicorn would re-raise the signal after its own shutdown, before labd's
cleanup): on a signal, labd tells systemd it is stopping, stops accepting
requests, ends the event streams, lets in-flight steps finish within a
bound, closes its connections and exits 0.  Labs keep running.  SIGHUP
re-reads the token file and nothing else.

Readiness (systemd ``READY=1`` and ``/readyz``) comes once the schema is
checked and the API is bound.  labd answers from its rows while its first
reconcile runs (`labd.daemon.factory`).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable, Coroutine, Generator
from pathlib import Path
from typing import Any

import click
import structlog
import uvicorn
from sse_starlette.sse import AppStatus

from labd import tasks
from labd.api import Authenticator, TokenFileError, create_app
from labd.api.connections import H11_BACKSTOP, bounded_protocol
from labd.api.models import Ready
from labd.config import Config, ConfigError, load_config
from labd.daemon.collector import tune_collector
from labd.daemon.factory import Labd
from labd.daemon.logs import configure_logging
from labd.daemon.stack import fastest_stack
from labd.daemon.stack import run as run_on_stack
from labd.daemon.systemd import Notifier, feed_watchdog
from labd.db.ownership import DatabaseInUseError, sole_server
from labd.db.revision import SchemaError

__all__ = ["EXIT_CONFIG", "EXIT_IN_USE", "EXIT_SCHEMA", "run_daemon", "serve"]

_logger = structlog.get_logger()

EXIT_CONFIG = 2
"""Exit status for configuration problems (systemd: do not restart blindly)."""

EXIT_SCHEMA = 3
"""Exit status when labd cannot run on the database schema (older, or past a contract)."""

EXIT_IN_USE = 5
"""Exit status when another labd already serves the SQLite database."""


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling (labd handles the signals)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


async def run_daemon(
    config: Config,
    *,
    notifier: Notifier | None = None,
    on_ready: Callable[[Labd, str], None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Run labd until SIGTERM/SIGINT (or ``stop`` is set).

    Parameters
    ----------
    config
        labd's configuration.
    notifier
        systemd notification; from the environment if not given.
    on_ready
        Called with labd and its URL once it serves (``labd dev`` prints
        how to call it).
    stop
        Set to stop labd (tests); signals set it too.
    """
    notifier = notifier or Notifier()
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    authenticator = Authenticator.from_file(config.token_file)
    # SIGHUP (systemctl reload) re-reads the token file; see labd.api.auth.
    loop.add_signal_handler(signal.SIGHUP, authenticator.reload)
    labd = await Labd.create(config)
    watchdog: asyncio.Task[None] | None = None
    try:
        # The image registry's first read can take long: a SIGTERM
        # meanwhile stops labd there, before it ever says READY=1.
        if not await _unless_stopped(labd.start(), stop):
            _logger.info("labd stopping before it was ready")
            notifier.stopping()
            return
        stack = fastest_stack()
        running_on = type(loop).__module__.partition(".")[0]
        if not stack.fastest or running_on != "uvloop":
            _logger.warning(
                "serving without uvloop and httptools: slower, install them",
                loop=running_on,
                http=stack.http,
            )
        app = create_app(
            config=config,
            service=labd.service,
            authenticator=authenticator,
            readiness=labd.readiness,
            metrics=lambda: labd.metrics.render(labd.store),
            alerts=labd.alerts,
            leadership=lambda: Ready(
                leader=labd.leader.leading, leader_since=labd.leader.on_duty_since
            ),
        )
        server = _Server(
            uvicorn.Config(
                app,
                host=config.bind_host,
                port=config.bind_port,
                log_config=None,
                access_log=False,
                timeout_graceful_shutdown=5,
                http=bounded_protocol(config.http, base=stack.protocol),
                ws="none",  # labd serves no WebSocket: nothing to load for it.
                h11_max_incomplete_event_size=H11_BACKSTOP,
            )
        )
        serving = tasks.spawn(server.serve(), name="http")
        # uvicorn offers a flag, not an event, for "bound and serving".
        while not server.started and not serving.done():  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        if serving.done():
            serving.result()
            raise RuntimeError("the HTTP server did not start")
        url = _bound_url(server, config)
        notifier.ready(f"Serving on {url}")
        watchdog = tasks.spawn(
            feed_watchdog(notifier, lambda: labd.scheduler.heartbeat), name="watchdog"
        )
        _logger.info("labd ready", url=url, loop=running_on, http=stack.http)
        if on_ready is not None:
            on_ready(labd, url)
        stopped = tasks.spawn(stop.wait(), name="stop-signal")
        await asyncio.wait({serving, stopped}, return_when=asyncio.FIRST_COMPLETED)
        _logger.info("labd stopping")
        notifier.stopping()
        AppStatus.should_exit = True
        labd.service.stop_waiting()
        server.should_exit = True
        await serving
    finally:
        if watchdog is not None:
            await tasks.cancel_and_wait([watchdog])
        await labd.stop()
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.remove_signal_handler(signum)
        _logger.info("labd stopped")


async def _unless_stopped(work: Coroutine[Any, Any, None], stop: asyncio.Event) -> bool:
    """Run ``work`` to its end unless ``stop`` is set first; return whether it ended.

    ``work`` is cancelled when ``stop`` wins.  For `Labd.start` that is safe:
    the reconcile writes each change in one transaction and repeats any
    interrupted one on the next start.
    """
    working = tasks.spawn(work, name="start")
    stopped = tasks.spawn(stop.wait(), name="stop-signal")
    await asyncio.wait({working, stopped}, return_when=asyncio.FIRST_COMPLETED)
    if working.done():
        await tasks.cancel_and_wait([stopped])
        working.result()
        return True
    await tasks.cancel_and_wait([working])
    return False


def _bound_url(server: uvicorn.Server, config: Config) -> str:
    port = config.bind_port
    for listener in server.servers:
        for sock in listener.sockets:
            port = sock.getsockname()[1]
    host = config.bind_host
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{port}{config.path_prefix}"


def load_or_exit(config_file: Path | None) -> Config:
    """Load the configuration, or exit with its problems and status 2."""
    try:
        return load_config(config_file)
    except ConfigError as exc:
        click.echo(f"labd: invalid configuration:\n{exc}", err=True)
        raise SystemExit(EXIT_CONFIG) from exc


@click.command()
@click.option(
    "--config",
    "config_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    envvar="LABD_CONFIG",
    help="Settings file (YAML); LABD_* variables override it.",
)
def serve(config_file: Path | None) -> None:
    """Run the labd daemon.

    Exit status: 0 after a clean shutdown, 2 for a bad configuration, 3 when
    the database schema is not current (run `labd migrate`), 5 when another
    labd already serves the SQLite database, 1 otherwise.
    """
    config = load_or_exit(config_file)
    configure_logging(level=config.log_level, fmt=config.log_format)
    tune_collector()
    try:
        with sole_server(config.database_url):
            run_on_stack(run_daemon(config))
    except DatabaseInUseError as exc:
        click.echo(f"labd: {exc}", err=True)
        raise SystemExit(EXIT_IN_USE) from exc
    except TokenFileError as exc:
        click.echo(f"labd: {exc}", err=True)
        raise SystemExit(EXIT_CONFIG) from exc
    except SchemaError as exc:
        _logger.error("database schema is not current", error=str(exc))
        click.echo(f"labd: {exc}", err=True)
        raise SystemExit(EXIT_SCHEMA) from exc
