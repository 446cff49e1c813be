"""Logging: one JSON pipeline for labd and its libraries, secrets redacted."""

from __future__ import annotations

import json
import logging

import pytest
import structlog

from labd.database import Database
from labd.logs import configure_logging
from labd.store import Actor, LabStore


def lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_json_lines_with_context_and_redaction(
    restore_logging: None, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    configure_logging(level="info", fmt="json")
    log = structlog.get_logger("labd.test").bind(username="alice", lab_id="42")
    log.info("lab running", token="s3cret", hub_password="hunter2", image="lab:1")
    logging.getLogger("uvicorn.error").warning("library %s", "line")
    logging.getLogger("sqlalchemy.engine").info("chatty, not shown")
    first, second = lines(capsys.readouterr().out)
    assert first["event"] == "lab running"
    assert (first["username"], first["lab_id"], first["level"]) == ("alice", "42", "info")
    assert first["token"] == "[redacted]"
    assert first["hub_password"] == "[redacted]"
    assert first["image"] == "lab:1"
    assert (second["event"], second["logger"], second["level"]) == (
        "library line",
        "uvicorn.error",
        "warning",
    )


def test_journald_priority_prefix(
    restore_logging: None, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JOURNAL_STREAM", "8:1234")
    configure_logging(level="debug", fmt="json")
    structlog.get_logger("labd.test").error("boom")
    structlog.get_logger("labd.test").debug("detail")
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("<3>{")
    assert json.loads(out[0][3:])["event"] == "boom"
    assert out[1].startswith("<7>{")


def test_console_rendering(restore_logging: None, capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(level="info", fmt="console")
    structlog.get_logger("labd.test").info("hello", username="bob", token="x")
    out = capsys.readouterr().out
    assert "hello" in out and "bob" in out
    assert "x\n" not in out and "[redacted]" in out


async def test_debug_logs_carry_no_sql_parameters(
    restore_logging: None,
    capsys: pytest.CaptureFixture[str],
    database: Database,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """At debug level a secret on its way through SQL is not logged."""
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    configure_logging(level="debug", fmt="json")
    await LabStore(database).create_lab(
        username="alice",
        slug="alice",
        namespace="labd-alice",
        spec={},
        actor=Actor.HUB,
        changes={"secret_env": {"JUPYTERHUB_API_TOKEN": "tok-4f9a1c"}},
    )
    assert "tok-4f9a1c" not in capsys.readouterr().out
