"""Logging: one JSON pipeline for labd and its libraries, secrets redacted."""

from __future__ import annotations

import json
import logging
from typing import Any, Literal

import pytest
import structlog

from labd.daemon import logs
from labd.daemon.logs import configure_logging
from labd.db.database import Database
from labd.db.store import LabStore
from labd.lab.records import Actor
from labd.lab.spec import LabSpec


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


def test_calls_below_the_level_stop_before_the_processors(
    restore_logging: None, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every step logs at debug: at the default level those calls must cost
    # next to nothing, not a timestamp and a redaction walk each.
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    redacted: list[str] = []
    redact = logs._redact

    def counting(logger: Any, method: str, event: Any) -> Any:
        redacted.append(method)
        return redact(logger, method, event)

    monkeypatch.setattr(logs, "_redact", counting)
    configure_logging(level="info", fmt="json")
    log = structlog.get_logger("labd.test")
    log.debug("step", lab_id="42")
    assert redacted == []
    log.info("lab running", lab_id="42")
    assert redacted and set(redacted) == {"info"}
    assert [line["event"] for line in lines(capsys.readouterr().out)] == ["lab running"]


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
        spec=LabSpec(),
        actor=Actor.HUB,
        changes={"secret_env": {"JUPYTERHUB_API_TOKEN": "tok-4f9a1c"}},
    )
    assert "tok-4f9a1c" not in capsys.readouterr().out


def test_secret_fields_are_redacted_at_any_depth(
    restore_logging: None, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    configure_logging(level="info", fmt="json")
    env = {"JUPYTERHUB_API_TOKEN": "tok-3e1a", "LANG": "C.UTF-8"}
    structlog.get_logger("labd.test").info(
        "creating lab",
        api_key="key-77b2",
        env=env,
        attempts=[{"DB_PASS": "pass-90c4", "reason": "retry with token=tok-51d0"}],
    )
    out = capsys.readouterr().out
    for value in ("key-77b2", "tok-3e1a", "pass-90c4", "tok-51d0"):
        assert value not in out
    (line,) = lines(out)
    assert line["api_key"] == "[redacted]"
    assert line["env"] == {"JUPYTERHUB_API_TOKEN": "[redacted]", "LANG": "C.UTF-8"}
    assert line["attempts"] == [{"DB_PASS": "[redacted]", "reason": "retry with token=[redacted]"}]
    assert env["JUPYTERHUB_API_TOKEN"] == "tok-3e1a", "the caller's dict is left alone"


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_library_messages_are_redacted(
    fmt: Literal["json", "console"],
    restore_logging: None,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    configure_logging(level="info", fmt=fmt)
    logging.getLogger("aiohttp").warning("Authorization: Bearer abc-8f31")
    logging.getLogger("aiohttp.client").warning("retrying %s with %s", "/hub/api", "token=t-2c9d")
    structlog.get_logger("labd.test").warning("sent %s", "Bearer b-0a7e")
    out = capsys.readouterr().out
    for value in ("abc-8f31", "t-2c9d", "b-0a7e"):
        assert value not in out
    assert "Authorization: [redacted]" in out
    assert "retrying /hub/api with token=[redacted]" in out


LOCAL_TOKEN = "tok-local-6d2b"
"""A token that only a local variable and the exception's message hold."""


def _spawn_with(token: str) -> None:
    headers = {"X-Auth": f"Bearer {token}"}
    raise RuntimeError(f"spawn failed ({len(headers)} headers) with token={token}")


@pytest.mark.parametrize("fmt", ["json", "console"])
@pytest.mark.parametrize("source", ["structlog", "logging"])
def test_tracebacks_show_no_locals_and_no_secrets(
    fmt: Literal["json", "console"],
    source: str,
    restore_logging: None,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    configure_logging(level="info", fmt=fmt)
    try:
        _spawn_with(LOCAL_TOKEN)
    except RuntimeError:
        if source == "structlog":
            structlog.get_logger("labd.test").exception("request failed")
        else:
            logging.getLogger("uvicorn.error").exception("Exception in ASGI application")
    out = capsys.readouterr().out
    assert LOCAL_TOKEN not in out
    assert "Traceback (most recent call last)" in out
    assert "RuntimeError: spawn failed (1 headers) with token=[redacted]" in out
    assert "X-Auth" not in out, "no local variables"
