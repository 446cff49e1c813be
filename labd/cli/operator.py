"""``labd labs`` and ``labd history``: what operators ask of a running labd.

Both commands read the database named by the settings file (or
``LABD_DATABASE_URL``) directly and never touch Kubernetes or the daemon, so
they answer even when labd is stopped or wedged.  They only read: a schema
that labd cannot run on (`labd.db.revision.check_schema`) is refused with the
same message as ``labd serve`` gives, rather than guessed at.

A SQLite file that does not exist is reported instead of opened, because
opening it would create an empty database where the operator mistyped a
path.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Final, TypeVar

import click
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from labd.config import Config
from labd.daemon.serving import EXIT_CONFIG, EXIT_SCHEMA, load_or_exit
from labd.db.database import Database
from labd.db.revision import SchemaError, check_schema
from labd.db.store import LabStore
from labd.lab.machine import LabState
from labd.lab.records import LabRecord, TransitionRecord, utcnow

__all__ = ["EXIT_NO_HISTORY", "EXIT_UNREACHABLE", "history", "labs"]

EXIT_NO_HISTORY: Final = 1
"""Exit status of ``labd history`` for a user without any recorded transition."""

EXIT_UNREACHABLE: Final = 4
"""Exit status when the database cannot be reached or read."""

_ERROR_WIDTH: Final = 48
"""Characters of a lab's last error shown in the ``labd labs`` table."""

_SHOWN_STATES: Final = [state.value for state in LabState if state is not LabState.NEW]

_T = TypeVar("_T")

_config_option = click.option(
    "--config",
    "config_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    envvar="LABD_CONFIG",
    help="Settings file (YAML); LABD_DATABASE_URL overrides its database_url.",
)


@click.command()
@_config_option
@click.option(
    "--state",
    "states",
    multiple=True,
    type=click.Choice(_SHOWN_STATES),
    metavar="STATE",
    help=f"Only labs in STATE (repeat for several): {', '.join(_SHOWN_STATES)}.",
)
@click.option("--all", "show_all", is_flag=True, help="Include deleted labs (the whole table).")
def labs(config_file: Path | None, states: tuple[str, ...], show_all: bool) -> None:
    """List labs: user, state, API status, age, image and last error.

    By default the table shows every lab that is not deleted (the users'
    current labs, and those being deleted), ordered by user; --state
    narrows it, --all adds deleted labs.

    \b
    Exit status:
      0  the table was printed (possibly empty)
      2  bad usage or configuration
      3  the database schema is not current (run `labd migrate`)
      4  the database cannot be reached
    """
    if states and show_all:
        raise click.UsageError("--state and --all exclude each other")
    config = load_or_exit(config_file)
    wanted: list[LabState] | None
    if states:
        wanted = [LabState(state) for state in states]
    elif show_all:
        wanted = None
    else:
        wanted = [state for state in LabState if state not in (LabState.NEW, LabState.DELETED)]
    found = _query(config, lambda store: store.list_labs(wanted))
    if not found:
        click.echo("No labs.")
        return
    now = utcnow()
    rows = [
        [
            lab.username,
            lab.state.value,
            lab.status.value if lab.status else "-",
            _age(now - lab.created_at),
            _lab_image(lab),
            _truncate(lab.last_error or "", _ERROR_WIDTH),
        ]
        for lab in found
    ]
    click.echo(_table(["USER", "STATE", "STATUS", "AGE", "IMAGE", "LAST ERROR"], rows))


@click.command()
@click.argument("username")
@_config_option
@click.option(
    "--limit",
    default=50,
    show_default=True,
    type=click.IntRange(min=1),
    help="Show at most this many transitions (the newest).",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list instead of a table.")
def history(config_file: Path | None, username: str, limit: int, as_json: bool) -> None:
    """Show the audit trail of USERNAME's labs, newest first.

    One line per transition: when, which lab (first 8 characters of its id),
    from which state to which, the trigger, who caused it and why.  With
    --json, a list of objects with the full lab id and ISO 8601 UTC times.

    \b
    Exit status:
      0  the history was printed
      1  the user has no history (nothing printed; `[]` with --json)
      2  bad usage or configuration
      3  the database schema is not current (run `labd migrate`)
      4  the database cannot be reached
    """
    config = load_or_exit(config_file)
    rows = _query(config, lambda store: store.history(username, limit=limit))
    if as_json:
        click.echo(json.dumps([_transition_json(row) for row in rows], indent=2))
    elif rows:
        click.echo(
            _table(
                ["TIME", "LAB", "TRANSITION", "TRIGGER", "ACTOR", "REASON"],
                [
                    [
                        _time(row.created_at),
                        row.lab_id[:8],
                        f"{row.from_state} -> {row.to_state}",
                        row.trigger,
                        row.actor,
                        row.reason or "",
                    ]
                    for row in rows
                ],
            )
        )
    if not rows:
        click.echo(f"labd: no history for user {username!r}", err=True)
        raise SystemExit(EXIT_NO_HISTORY)


def _query(config: Config, read: Callable[[LabStore], Awaitable[_T]]) -> _T:
    """Run one read against the configured database, or exit with why not."""
    url = make_url(config.database_url)
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        path = Path(url.database)
        if not path.is_file():
            click.echo(
                f"labd: there is no database at {path}: check database_url,"
                " or run `labd migrate` to create it",
                err=True,
            )
            raise SystemExit(EXIT_SCHEMA)

    async def run() -> _T:
        database = Database(config.database_url)
        try:
            await check_schema(database)
            return await read(LabStore(database))
        finally:
            await database.dispose()

    try:
        return asyncio.run(run())
    except SchemaError as exc:
        click.echo(f"labd: {exc}", err=True)
        raise SystemExit(EXIT_SCHEMA) from exc
    except ValueError as exc:
        # An unsupported driver slipped past validation (it should not).
        click.echo(f"labd: {exc}", err=True)
        raise SystemExit(EXIT_CONFIG) from exc
    except (OSError, DBAPIError) as exc:
        where = config.database_url_display
        click.echo(f"labd: cannot read the database {where}: {_first_line(exc)}", err=True)
        raise SystemExit(EXIT_UNREACHABLE) from exc


def _transition_json(row: TransitionRecord) -> dict[str, Any]:
    return {
        "time": row.created_at.isoformat(),
        "lab_id": row.lab_id,
        "version": row.version,
        "from": row.from_state,
        "to": row.to_state,
        "trigger": row.trigger,
        "actor": row.actor,
        "reason": row.reason,
    }


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns two spaces apart; the last column is not padded."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]
    lines = []
    for row in [header, *rows]:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    return "\n".join(lines)


def _age(delta: timedelta) -> str:
    """``45s``, ``12m``, ``5h``, ``3d``: the largest whole unit."""
    seconds = max(0, int(delta.total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _time(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%SZ")


def _truncate(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _lab_image(lab: LabRecord) -> str:
    return lab.spec.options.image or "-"
