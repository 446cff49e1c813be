"""``labd dev``: its state directory is private, from the first byte written.

The state directory holds the hub token, the token file, the simulated
cluster's kubeconfig (with its token) and the SQLite database.  Each file
must be created unreadable to others, not written and restricted afterwards,
and the database with its ``-wal`` and ``-shm`` files too, whatever the
user's umask.
"""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from labd.daemon.dev import PRIVATE_FILES, dev, prepare
from tests.support.processes import free_port


@contextlib.contextmanager
def _umask(mask: int) -> Iterator[None]:
    previous = os.umask(mask)
    try:
        yield
    finally:
        os.umask(previous)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_prepare_creates_the_secrets_private(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No chmod: a file made private only afterwards was readable until then.
    chmodded: list[object] = []
    monkeypatch.setattr(os, "chmod", lambda path, *_, **__: chmodded.append(path))
    state_dir = tmp_path / "state"
    with _umask(0):
        config_path = prepare(state_dir, 8080)
    assert _mode(state_dir) == 0o700
    for name in ("hub-token", "tokens", "labd.yaml"):
        assert _mode(state_dir / name) == 0o600, name
    assert chmodded == []
    assert config_path == state_dir / "labd.yaml"
    # Existing files are kept as they are.
    token = (state_dir / "hub-token").read_text()
    config_path.write_text("log_level: debug\n")
    prepare(state_dir, 9090)
    assert (state_dir / "hub-token").read_text() == token
    assert config_path.read_text() == "log_level: debug\n"


def test_prepare_restricts_the_files_of_an_older_state_dir(tmp_path: Path) -> None:
    for name in PRIVATE_FILES:
        (tmp_path / name).write_text("left by an older labd dev\n")
        (tmp_path / name).chmod(0o644)
    prepare(tmp_path, 8080)
    assert {name: _mode(tmp_path / name) for name in PRIVATE_FILES} == dict.fromkeys(
        PRIVATE_FILES, 0o600
    )


def test_the_running_dev_state_is_private_whatever_the_umask(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    port = free_port()
    log = tmp_path / "dev.log"
    env = {key: value for key, value in os.environ.items() if not key.startswith("LABD_")}
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "labd", "dev", "--port", str(port), "--state-dir", state_dir],
            stdout=output,
            stderr=subprocess.STDOUT,
            env=env,
            umask=0,
        )
    try:
        deadline = time.monotonic() + 60
        while not _ready(f"http://127.0.0.1:{port}/readyz"):
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        modes = {path.name: _mode(path) for path in state_dir.iterdir()}
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(30)
    assert {"labd.db", "labd.db-wal", "labd.db-shm", "kubeconfig", "hub-token"} <= set(modes)
    assert _mode(state_dir) == 0o700
    assert {name: mode & 0o077 for name, mode in modes.items()} == dict.fromkeys(modes, 0)


def _ready(url: str) -> bool:
    try:
        return httpx.get(url, timeout=5).status_code == 200
    except httpx.TransportError:
        return False


def test_an_invalid_configuration_exits_2_without_a_traceback(tmp_path: Path) -> None:
    (tmp_path / "labd.yaml").write_text("timeouts: {spawn: 1e309}\n")
    result = CliRunner().invoke(dev, ["--state-dir", str(tmp_path), "--port", "0"], env={})
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)
    assert result.stderr == (
        "labd: invalid configuration:\ntimeouts.spawn: Input should be a finite number\n"
    )


def test_a_malformed_token_file_exits_2_without_a_traceback(tmp_path: Path) -> None:
    prepare(tmp_path, 0)
    (tmp_path / "tokens").write_text("not-a-hash hub\n")
    # A process of its own: labd dev configures logging for the whole process.
    env = {key: value for key, value in os.environ.items() if not key.startswith("LABD_")}
    done = subprocess.run(
        [sys.executable, "-m", "labd", "dev", "--state-dir", str(tmp_path), "--port", "0"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.endswith(
        f"labd: {tmp_path / 'tokens'}, line 1: the first field is not a SHA-256 hex digest "
        "(64 hex digits)\n"
    )
