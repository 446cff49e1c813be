"""The ``alerts`` section of the configuration: files checked at load, secrets kept out."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from labd.alerts import Alerts
from labd.config import ConfigError, load_config

SLACK_URL = "https://hooks.slack.com/services/T0FAKE/B0FAKE/s3cr3tp4th"


def problems(environ: dict[str, str]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(None, environ=environ)
    return [str(problem) for problem in info.value.problems]


def test_alerts_are_off_by_default() -> None:
    config = load_config(None, environ={})
    assert config.alerts.slack_webhook_file is None
    assert config.alerts.webhook_url_file is None
    assert (config.alerts.window, config.alerts.max_window) == (60, 900)
    assert not Alerts.from_config(config.alerts).enabled


def test_webhook_files_are_read(tmp_path: Path) -> None:
    (tmp_path / "slack").write_text(f"  {SLACK_URL}\n")
    (tmp_path / "hook").write_text("http://alerts.example:8080/labd?key=k\n")
    config = load_config(
        None,
        environ={
            "LABD_ALERTS__SLACK_WEBHOOK_FILE": str(tmp_path / "slack"),
            "LABD_ALERTS__WEBHOOK_URL_FILE": str(tmp_path / "hook"),
            "LABD_ALERTS__WINDOW": "30",
        },
    )
    alerts = Alerts.from_config(config.alerts)
    assert alerts.enabled
    assert SLACK_URL not in repr(config)


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (None, "no such file"),
        ("", "is empty; it must hold the webhook URL"),
        (f"{SLACK_URL}\n{SLACK_URL}", "must hold exactly one URL, on one line"),
        ("hooks.slack.com/services/T0FAKE/B0FAKE/s3cr3tp4th", "does not hold an http"),
        ("ftp://hooks.slack.com/s3cr3tp4th", "does not hold an http"),
        (b"\xff\xfes3cr3tp4th", "not UTF-8 text"),
    ],
)
def test_bad_webhook_file(tmp_path: Path, content: str | bytes | None, problem: str) -> None:
    path = tmp_path / "slack"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    (line,) = problems({"LABD_ALERTS__SLACK_WEBHOOK_FILE": str(path)})
    assert line.startswith(
        f"LABD_ALERTS__SLACK_WEBHOOK_FILE (alerts.slack_webhook_file): {path}: "
    )
    assert problem in line
    assert "s3cr3tp4th" not in line


def test_webhook_file_that_is_a_directory(tmp_path: Path) -> None:
    (line,) = problems({"LABD_ALERTS__WEBHOOK_URL_FILE": str(tmp_path)})
    assert line.endswith(f"{tmp_path}: is a directory, not a file")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_webhook_file(tmp_path: Path) -> None:
    path = tmp_path / "hook"
    path.write_text(SLACK_URL)
    path.chmod(0)
    (line,) = problems({"LABD_ALERTS__WEBHOOK_URL_FILE": str(path)})
    assert line.endswith(f"{path}: cannot read: Permission denied")


def test_window_limits() -> None:
    assert problems({"LABD_ALERTS__WINDOW": "120", "LABD_ALERTS__MAX_WINDOW": "60"}) == [
        "LABD_ALERTS__MAX_WINDOW (alerts.max_window): 60 is less than alerts.window 120"
    ]
    (line,) = problems({"LABD_ALERTS__WINDOW": "0"})
    assert line.startswith("LABD_ALERTS__WINDOW (alerts.window): Input should be greater than 0")
    (line,) = problems({"LABD_ALERTS__SLACK_URL": "x"})
    assert line == "LABD_ALERTS__SLACK_URL (alerts.slack_url): unknown key (check the spelling)"
