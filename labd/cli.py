"""The ``labd`` command line.

Each subcommand lives beside the code it drives and is registered here, so
this module stays a readable index of what the command can do.
"""

from __future__ import annotations

import click

from labd import __version__
from labd.config_command import check_config
from labd.dev import dev
from labd.migrate import migrate
from labd.operator_commands import history, labs
from labd.serving import serve
from labd.sim.command import sim

__all__ = ["main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="labd")
def main() -> None:
    """labd runs per-user JupyterLab servers on Kubernetes for JupyterHub."""


main.add_command(check_config)
main.add_command(migrate)
main.add_command(sim)
main.add_command(serve)
main.add_command(dev)
main.add_command(labs)
main.add_command(history)
