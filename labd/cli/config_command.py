"""``labd check-config``: validate a settings file before deploying it.

Operators run this on a new settings file (and in CI) so that a mistake is
reported as a list of problems with their keys, not as a daemon that fails
to start. The ``LABD_*`` environment applies, exactly as for ``labd serve``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import click

from labd.config import Config, ConfigError, load_config
from labd.lab.quantity import format_bytes

__all__ = ["check_config", "render_summary"]


@click.command("check-config")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
def check_config(file: Path) -> None:
    """Validate the labd settings FILE (plus LABD_* variables) and summarise it.

    Exits 0 and prints a summary when the configuration is valid; exits 1
    and prints one line per problem on standard error otherwise.
    """
    try:
        config = load_config(file)
    except ConfigError as exc:
        for problem in exc.problems:
            click.echo(str(problem), err=True)
        raise SystemExit(1) from None
    click.echo(render_summary(config, source=file))


def render_summary(config: Config, *, source: Path | None = None) -> str:
    """Describe a configuration for people, without secrets.

    Parameters
    ----------
    config
        A validated configuration.
    source
        The settings file it came from, if any.

    Returns
    -------
    str
        Several lines: database, listener, Kubernetes access, sizes,
        images, timeouts and logging.
    """
    kube = config.kubernetes
    if kube.in_cluster:
        access = "in-cluster service account"
    else:
        access = f"kubeconfig {kube.kubeconfig or '(default)'}"
        access += f", context {kube.context or '(current)'}"
    lines = [
        f"Configuration OK{f': {source}' if source else ''}",
        f"database:          {config.database_url_display}",
        f"bind address:      {config.bind_address}, path prefix {config.path_prefix or '(none)'}",
        f"kubernetes:        {access}; request timeout {kube.request_timeout:g} s, "
        f"{kube.max_concurrent_operations} concurrent operations",
        f"namespaces:        {config.namespace_prefix}-<user>",
        f"lab:               uid {config.lab.uid}, gid {config.lab.gid}, port {config.lab.port}, "
        f"{len(config.lab.volumes)} volume(s), resource quota "
        f"{'on' if config.lab.resource_quota else 'off'}",
        f"sizes (default {config.default_size}):",
    ]
    rows = [("name", "cpu request/limit", "memory request/limit", "description")]
    for name, size in config.sizes.items():
        rows.append(
            (
                name,
                f"{size.requests.cpu:g} / {size.limits.cpu:g}",
                f"{format_bytes(size.requests.memory)} / {format_bytes(size.limits.memory)}",
                size.description or "",
            )
        )
    lines.extend(_table(rows))
    recommended = config.images.find_static(config.images.recommended)
    registry = config.images.registry
    if registry is not None:
        lines.append(
            f"image registry:    {registry.image_base}, every {registry.refresh_interval:g} s, "
            f"recommended {config.images.recommended}"
        )
    lines.append("images (* recommended):")
    lines.extend(
        _table(
            [
                (
                    "*" if image is recommended else " ",
                    image.reference,
                    image.image_class or "",
                    image.display_name,
                )
                for image in config.images.available
            ]
        )
    )
    timeouts = config.timeouts
    lines += [
        f"timeouts:          spawn {timeouts.spawn:g} s, delete {timeouts.delete:g} s",
        f"reconcile:         every {config.reconcile_interval:g} s; retry backoff "
        f"{config.retry.initial:g} s to {config.retry.maximum:g} s",
        f"logging:           {config.log_level}, format {config.log_format}",
    ]
    return "\n".join(lines)


def _table(rows: Sequence[Sequence[str]]) -> list[str]:
    """Align the columns of `rows`, indented by two spaces."""
    if not rows:
        return ["  (none)"]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        lines.append(("  " + "  ".join(cells)).rstrip())
    return lines
