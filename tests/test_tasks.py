"""How labd describes an error in a warning logged without its traceback."""

from __future__ import annotations

import sqlalchemy.exc

from labd.tasks import describe_error


def test_an_error_is_its_type_and_message() -> None:
    error = ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 5432)")
    assert describe_error(error) == (
        "ConnectionRefusedError: [Errno 111] Connect call failed ('127.0.0.1', 5432)"
    )


def test_the_first_line_drops_sqlalchemys_statement_and_link() -> None:
    error = sqlalchemy.exc.OperationalError("SELECT 1", {}, OSError("connection refused"))
    assert "\n[SQL: SELECT 1]" in describe_error(error)
    assert describe_error(error, first_line=True) == (
        "OperationalError: (builtins.OSError) connection refused"
    )


def test_an_error_without_a_message_keeps_its_type() -> None:
    assert describe_error(TimeoutError(), first_line=True) == "TimeoutError"
