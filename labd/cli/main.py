"""The ``labd`` command line.

Each subcommand lives beside the code it drives and is registered here, so
this module stays a readable index of what the command can do.  They are
imported when used (click's lazy-loading pattern): ``labd serve`` never
loads Alembic, the simulated cluster or the operator commands, which keeps a
restart short.
"""

from __future__ import annotations

import importlib
from typing import Any

import click

from labd import __version__

__all__ = ["main"]

_COMMANDS = {
    "check-config": "labd.cli.config_command:check_config",
    "migrate": "labd.cli.migrate:migrate",
    "sim": "labd.sim.command:sim",
    "serve": "labd.daemon.serving:serve",
    "dev": "labd.daemon.dev:dev",
    "labs": "labd.cli.operator:labs",
    "history": "labd.cli.operator:history",
}
"""Subcommand name -> ``module:attribute`` of its click command."""


class _LazyGroup(click.Group):
    """A group that imports a subcommand's module only when it is used."""

    def __init__(self, *args: Any, lazy: dict[str, str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._lazy = lazy

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *self._lazy])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = self._lazy.get(cmd_name)
        if target is None:
            return super().get_command(ctx, cmd_name)
        module, attribute = target.split(":")
        command = getattr(importlib.import_module(module), attribute)
        if not isinstance(command, click.Command):
            raise TypeError(f"{target} is not a click command")
        return command


@click.group(
    cls=_LazyGroup,
    lazy=_COMMANDS,
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.version_option(__version__, prog_name="labd")
def main() -> None:
    """labd runs per-user JupyterLab servers on Kubernetes for JupyterHub."""
