"""``labd sim``: run the simulated cluster as a process of its own.

For a developer poking at labd by hand, for kubectl, and for benchmarks
that must not share an event loop (or a GIL) with their client. It prints
the URL and the kubeconfig path, then serves until SIGTERM or SIGINT; the
control API (``/sim/v1``) steers it while it runs.

It serves HTTPS by default, with a CA made at start and written into the
kubeconfig, so kubectl sends it the bearer token as to any cluster;
``--no-tls`` serves plain HTTP for clients that talk raw HTTP (benchmarks).
``--serve-labs`` makes running pods answer HTTP as single-user servers, as
in ``labd dev``.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import click
from pydantic import ValidationError

from labd.sim.cluster import SimCluster
from labd.sim.faults import parse_error_fault, parse_latency_fault
from labd.sim.outcomes import Outcome

__all__ = ["sim"]


def _parse_rule(text: str) -> tuple[str, str, str]:
    """Parse ``NAMESPACE_GLOB/NAME_GLOB=OUTCOME``."""
    target, sep, outcome = text.partition("=")
    namespace, slash, name = target.partition("/")
    if not sep or not slash:
        raise click.BadParameter(f"expected NAMESPACE_GLOB/NAME_GLOB=OUTCOME, got {text!r}")
    try:
        Outcome.parse(outcome)
    except ValueError as error:
        raise click.BadParameter(str(error)) from None
    return namespace, name, outcome


@click.command("sim")
@click.option("--port", default=6443, show_default=True, help="TCP port on 127.0.0.1 (0: any).")
@click.option(
    "--kubeconfig",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("state/sim/kubeconfig"),
    show_default=True,
    help="Where to write the kubeconfig for clients.",
)
@click.option("--token", envvar="LABD_SIM_TOKEN", help="Bearer token (default: random).")
@click.option("--no-auth", is_flag=True, help="Accept requests without a token.")
@click.option(
    "--tls/--no-tls",
    default=True,
    show_default=True,
    help="HTTPS with a CA generated at start (in the kubeconfig), or plain HTTP.",
)
@click.option(
    "--serve-labs",
    is_flag=True,
    help="Running pods answer HTTP as single-user servers, on one more port (printed).",
)
@click.option("--pod-start-delay", default=1.0, show_default=True, help="Seconds to Running.")
@click.option("--pod-stop-delay", default=0.0, show_default=True, help="Seconds to stop a pod.")
@click.option(
    "--namespace-sa-delay",
    default=0.0,
    show_default=True,
    help="Seconds before a namespace gets its default ServiceAccount.",
)
@click.option("--no-kubelet", is_flag=True, help="Serve the API alone; no pod moves by itself.")
@click.option("--default-outcome", default="run", show_default=True, help="Outcome of pods.")
@click.option(
    "--rule",
    "rules",
    multiple=True,
    help="Outcome rule NAMESPACE_GLOB/NAME_GLOB=OUTCOME, e.g. 'lab-*/*=crash:OOMKilled'.",
)
@click.option(
    "--error",
    "errors",
    multiple=True,
    help="Error fault VERB:RESOURCE:RATE[:STATUS], e.g. 'create:pods:0.2:500'.",
)
@click.option("--latency", "latencies", multiple=True, help="Latency fault VERB:RESOURCE:SECONDS.")
@click.option("--drop-watch-after", type=int, help="Close watch streams after N events.")
@click.option("--drop-watch-rate", default=0.0, help="Chance per event to close a watch stream.")
@click.option("--silent-watches", is_flag=True, help="Watch streams stay open but send nothing.")
@click.option("--watch-window", default=10_000, show_default=True, help="Changes kept.")
@click.option("--bookmark-interval", default=60.0, show_default=True, help="Seconds.")
@click.option("--seed", type=int, help="Seed for fault rates.")
def sim(
    port: int,
    kubeconfig: Path,
    token: str | None,
    no_auth: bool,
    tls: bool,
    serve_labs: bool,
    pod_start_delay: float,
    pod_stop_delay: float,
    namespace_sa_delay: float,
    no_kubelet: bool,
    default_outcome: str,
    rules: tuple[str, ...],
    errors: tuple[str, ...],
    latencies: tuple[str, ...],
    drop_watch_after: int | None,
    drop_watch_rate: float,
    silent_watches: bool,
    watch_window: int,
    bookmark_interval: float,
    seed: int | None,
) -> None:
    """Run a simulated Kubernetes cluster until SIGTERM or SIGINT."""
    try:
        Outcome.parse(default_outcome)
        parsed_rules = [_parse_rule(text) for text in rules]
        error_faults = [parse_error_fault(text) for text in errors]
        latency_faults = [parse_latency_fault(text) for text in latencies]
    except (ValueError, ValidationError) as error:
        raise click.BadParameter(str(error)) from None
    cluster = SimCluster(
        port=port,
        token="" if no_auth else token,
        pod_start_delay=pod_start_delay,
        pod_stop_delay=pod_stop_delay,
        namespace_sa_delay=namespace_sa_delay,
        kubelet=not no_kubelet,
        default_outcome=default_outcome,
        watch_window=watch_window,
        bookmark_interval=bookmark_interval,
        seed=seed,
        serve_labs=serve_labs,
        tls=tls,
    )
    for namespace, name, outcome in parsed_rules:
        cluster.rules.add(outcome, namespace=namespace, name=name)
    cluster.faults.spec.errors.extend(error_faults)
    cluster.faults.spec.latency.extend(latency_faults)
    cluster.faults.drop_watches(after_events=drop_watch_after, rate=drop_watch_rate)
    cluster.faults.silence_watches(silent_watches)
    asyncio.run(_serve(cluster, kubeconfig))


async def _serve(cluster: SimCluster, kubeconfig: Path) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with cluster:
        path = cluster.write_kubeconfig(kubeconfig)
        click.echo(f"sim API server: {cluster.url}")
        if cluster.labs_served:
            click.echo(f"labs: {cluster.labs_url} (+ a running pod's JUPYTERHUB_SERVICE_PREFIX)")
        click.echo(f"kubeconfig: {path.resolve()}")
        click.echo(f"control API: {cluster.url}/sim/v1 (faults, rules, stats, objects)")
        await stop.wait()
        click.echo("stopping")
