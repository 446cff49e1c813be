"""``labd serve`` runs on uvloop and httptools, and falls back cleanly without them."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from labd.daemon import stack
from tests.daemon.conftest import Daemon, write_config

_HIDE = '''
import importlib.abc, sys

class _Hide(importlib.abc.MetaPathFinder):
    """As on a platform where uvloop and httptools cannot be installed."""

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ("uvloop", "httptools"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, _Hide())
'''


def test_fastest_stack_is_uvloop_and_httptools() -> None:
    chosen = stack.fastest_stack()
    assert (chosen.loop, chosen.http, chosen.fastest) == ("uvloop", "httptools", True)
    assert chosen.protocol is HttpToolsProtocol

    async def loop_module() -> str:
        return type(asyncio.get_running_loop()).__module__

    assert stack.run(loop_module(), chosen).startswith("uvloop")


def test_without_uvloop_and_httptools_asyncio_and_h11(monkeypatch: pytest.MonkeyPatch) -> None:
    # A None entry makes the import fail, as where a package is missing.
    for name in ("uvloop", "httptools"):
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.delitem(sys.modules, "uvicorn.protocols.http.httptools_impl", raising=False)
    chosen = stack.fastest_stack()
    assert (chosen.loop, chosen.http, chosen.fastest) == ("asyncio", "h11", False)
    assert chosen.protocol is H11Protocol

    async def loop_type() -> type[asyncio.AbstractEventLoop]:
        return type(asyncio.get_running_loop())

    assert stack.run(loop_type(), chosen).__module__.startswith("asyncio")


def _log_line(daemon: Daemon, event: str) -> dict[str, Any]:
    for line in daemon.log.read_text().splitlines():
        if line.startswith("{") and (fields := json.loads(line)).get("event") == event:
            return dict(fields)
    raise AssertionError(f"no {event!r} in the log:\n{daemon.tail()}")


@pytest.mark.parametrize("hidden", [False, True], ids=["fastest", "fallback"])
async def test_serve_says_its_stack_and_answers(
    hidden: bool,
    tmp_path: Path,
    database_url: str,
    sim_process: Callable[..., Path],
    daemons: list[Daemon],
) -> None:
    env = {}
    if hidden:
        site = tmp_path / "site"
        site.mkdir()
        (site / "sitecustomize.py").write_text(_HIDE)
        env["PYTHONPATH"] = f"{site}:{Path.cwd()}"
    config = write_config(
        tmp_path / "labd.yaml",
        database_url=database_url,
        kubeconfig=sim_process(),
    )
    daemon = Daemon(config, tmp_path / "labd.log", env=env)
    daemons.append(daemon)
    await daemon.start()
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{daemon.url}/healthz")
    assert response.status_code == 200
    assert await daemon.terminate() == 0, daemon.tail()

    ready = _log_line(daemon, "labd ready")
    if hidden:
        assert (ready["loop"], ready["http"]) == ("asyncio", "h11")
        warning = _log_line(daemon, "serving without uvloop and httptools: slower, install them")
        assert warning["level"] == "warning"
    else:
        assert (ready["loop"], ready["http"]) == ("uvloop", "httptools")
        assert "serving without uvloop and httptools" not in daemon.tail(100_000)
