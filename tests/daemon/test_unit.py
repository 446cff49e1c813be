"""``systemd/labd.service``: valid for systemd, and consistent with labd.

systemd is not running in the test environment, so the unit is checked
offline: ``systemd-analyze verify`` against a root holding the system's
units and a stand-in ``/opt/labd/bin/labd``, and ``systemd-analyze security
--offline``.  Those tests skip, saying why, where ``systemd-analyze`` is not
installed.  The rest reads the unit itself: the settings labd will load under
it, and its time bounds against labd's.
"""

from __future__ import annotations

import asyncio
import platform
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from labd.api.connections import RESERVED_FILES
from labd.config import HttpConfig, load_config
from labd.daemon.serving import EXIT_CONFIG, EXIT_IN_USE, EXIT_SCHEMA
from tests.daemon.conftest import SHUTDOWN_BOUND, Daemon, NotifySocket, write_config

SYSTEMD = Path(__file__).parent.parent.parent / "systemd"
UNIT = SYSTEMD / "labd.service"
SYSTEM_UNITS = Path("/usr/lib/systemd/system")

SPECIFIERS = {"%d": "/run/credentials/labd.service", "%E": "/etc", "%S": "/var/lib", "%%": "%"}
"""What systemd expands the unit's specifiers to for a system service."""


def _directives(section: str) -> list[tuple[str, str]]:
    """``(key, value)`` of one section, in order (keys may repeat)."""
    pairs, current = [], ""
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if line.startswith("["):
            current = line.strip("[]")
        elif current == section and line and not line.startswith("#"):
            key, _, value = line.partition("=")
            pairs.append((key, value))
    return pairs


def _one(key: str) -> str:
    values = [value for k, value in _directives("Service") if k == key]
    assert len(values) == 1, (key, values)
    return values[0]


def _seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+)s", value)
    assert match, value
    return float(match[1])


def _expand(value: str) -> str:
    return re.sub(r"%.", lambda m: SPECIFIERS[m[0]], value)


def _analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    return path


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = _analyze()
    if not (SYSTEM_UNITS / "sysinit.target").exists():
        pytest.skip(f"no system units in {SYSTEM_UNITS} to verify against")
    # verify checks that Exec*= binaries exist: give it a root with them.
    shutil.copytree(SYSTEM_UNITS, tmp_path / SYSTEM_UNITS.relative_to("/"), symlinks=True)
    for binary in ("opt/labd/bin/labd", "bin/kill"):
        stand_in = tmp_path / binary
        stand_in.parent.mkdir(parents=True)
        stand_in.write_text("#!/bin/sh\n")
        stand_in.chmod(0o755)
    units = tmp_path / "etc/systemd/system"
    units.mkdir(parents=True)
    shutil.copy(UNIT, units)

    result = subprocess.run(
        [analyze, "verify", f"--root={tmp_path}", "labd.service"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    # Unknown keys are only warned about: any output is a failure.
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_systemd_analyze_security() -> None:
    analyze = _analyze()
    result = subprocess.run(
        [analyze, "security", "--offline=true", "--no-pager", str(UNIT)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if "--offline" in result.stderr:
        pytest.skip(f"this systemd-analyze cannot score a unit offline: {result.stderr}")

    match = re.search(r"Overall exposure level for labd\.service: (\d+\.\d+) (\w+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match[1]) <= 2.0, result.stdout  # systemd calls up to 2.0 "OK".


def test_unit_settings_point_labd_at_its_credentials_and_state() -> None:
    environ = dict(
        _expand(value).split("=", 1)
        for key, value in _directives("Service")
        if key == "Environment"
    )
    config_file = Path(environ["LABD_CONFIG"])
    assert config_file == Path("/etc/labd/labd.yaml")
    assert _one("ConfigurationDirectory") == "labd"
    credentials = {
        value.split(":")[0] for key, value in _directives("Service") if key == "LoadCredential"
    }
    assert credentials == {"tokens", "kubeconfig"}

    # The example settings, installed as the unit expects, under its environment.
    config = load_config(SYSTEMD / "labd.example.yaml", environ=environ)

    assert config.token_file == Path("/run/credentials/labd.service/tokens")
    assert config.kubernetes.kubeconfig == Path("/run/credentials/labd.service/kubeconfig")
    assert config.database_url == "sqlite+aiosqlite:////var/lib/labd/labd.db"
    assert _one("StateDirectory") == "labd"
    assert _expand(_one("WorkingDirectory")) == "/var/lib/labd"


def test_unit_lifecycle_matches_labd() -> None:
    assert _one("Type") == "notify"
    assert _one("ExecStartPre").endswith("/labd migrate")
    assert _one("ExecStart").endswith("/labd serve")
    assert _one("ExecReload") == "/bin/kill -HUP $MAINPID"  # Re-reads the token file.
    assert _one("KillMode") == "mixed"
    assert _seconds(_one("TimeoutStopSec")) > SHUTDOWN_BOUND
    # labd pings only while its loop went round within half the interval,
    # and the loop idles up to a second: the interval must leave room.
    assert _seconds(_one("WatchdogSec")) >= 10
    # Restarting fixes neither a bad configuration, nor a schema behind, nor
    # another labd on the SQLite file.
    assert _one("RestartPreventExitStatus").split() == [
        str(status) for status in (EXIT_CONFIG, EXIT_SCHEMA, EXIT_IN_USE)
    ]


def test_unit_gives_labd_room_for_its_connections() -> None:
    # labd cannot raise its open-file limit itself: the filter denies setrlimit.
    filters = [value for key, value in _directives("Service") if key == "SystemCallFilter"]
    assert any(value.startswith("~") and "@resources" in value.split() for value in filters)
    # The default connection cap fits under the unit's limit as it is.
    assert int(_one("LimitNOFILE")) - RESERVED_FILES >= HttpConfig().max_connections


MDWE_LAUNCHER = """
import ctypes, os, sys

# systemd 252's MemoryDenyWriteExecute=yes, as a seccomp filter (x86-64):
# EPERM for mmap() asking for write and execute at once, for mprotect() and
# pkey_mprotect() asking for execute, and for shmat() with SHM_EXEC.
LD, JEQ, JSET, AND, RET = 0x20, 0x15, 0x45, 0x54, 0x06
PROT = 32  # offsetof(struct seccomp_data, args[2])
ALLOW, EPERM = 0x7FFF0000, 0x00050000 | 1
program = [
    (LD, 0, 0, 0),  # the system call number
    (JEQ, 4, 0, 9),  # mmap
    (JEQ, 6, 0, 10),  # mprotect
    (JEQ, 5, 0, 329),  # pkey_mprotect
    (JEQ, 6, 0, 30),  # shmat
    (RET, 0, 0, ALLOW),
    (LD, 0, 0, PROT),  # mmap: PROT_WRITE and PROT_EXEC together?
    (AND, 0, 0, 0x6),
    (JEQ, 4, 5, 0x6),
    (LD, 0, 0, PROT),  # mprotect: PROT_EXEC?
    (JSET, 2, 3, 0x4),
    (LD, 0, 0, PROT),  # shmat: SHM_EXEC?
    (JSET, 0, 1, 0o100000),
    (RET, 0, 0, EPERM),
    (RET, 0, 0, ALLOW),
]

class Filter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte),
                ("k", ctypes.c_uint)]

class Program(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(Filter))]

filters = (Filter * len(program))(*program)
prog = Program(len(program), filters)
libc = ctypes.CDLL(None, use_errno=True)
PR_SET_NO_NEW_PRIVS, PR_SET_SECCOMP, SECCOMP_MODE_FILTER = 38, 22, 2
if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) or libc.prctl(
    PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0
):
    sys.exit(f"seccomp: {os.strerror(ctypes.get_errno())}")
os.execv(sys.executable, [sys.executable, *sys.argv[1:]])
"""
"""Runs Python under the seccomp filter that ``MemoryDenyWriteExecute=yes``
installs (systemd 252; kept across ``execve``), with ``NoNewPrivileges``."""

PROBE = """
import mmap
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
except PermissionError:
    print("denied")
else:
    print("allowed")
"""


@pytest.mark.skipif(
    sys.platform != "linux" or platform.machine() != "x86_64",
    reason="the seccomp filter is written for Linux on x86-64",
)
async def test_labd_serves_with_memory_deny_write_execute(
    tmp_path: Path,
    migrated_sqlite_template: Path,
    sim_process: Callable[..., Path],
    notify_socket: NotifySocket,
    daemons: list[Daemon],
) -> None:
    launcher = [sys.executable, "-c", MDWE_LAUNCHER]
    probe = await asyncio.create_subprocess_exec(
        *launcher, "-c", PROBE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out, err = await asyncio.wait_for(probe.communicate(), 60)
    if probe.returncode != 0 and b"seccomp:" in err:
        pytest.skip(f"cannot install a seccomp filter here: {err.decode().strip()}")
    assert out.decode().strip() == "denied", (out, err)  # The launcher really restricts.

    database = tmp_path / "labd.db"
    shutil.copyfile(migrated_sqlite_template, database)
    config = write_config(
        tmp_path / "labd.yaml",
        database_url=f"sqlite+aiosqlite:///{database}",
        kubeconfig=sim_process(),
    )
    daemon = Daemon(
        config,
        tmp_path / "labd.log",
        env={"NOTIFY_SOCKET": notify_socket.address},
        launcher=launcher,
    )
    daemons.append(daemon)
    async with notify_socket:
        await daemon.spawn()
        await notify_socket.wait_for("READY", within=60)
        async with httpx.AsyncClient() as client:
            assert await daemon.readyz(client) == 200
            assert (await client.get(f"{daemon.url}/metrics")).status_code == 200
        assert await daemon.terminate() == 0, daemon.tail()
