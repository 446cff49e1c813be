"""The chaos run: hub traffic against labd while everything around it fails.

Actors, all in one event loop here, against two other processes:

- **hub clients**: one per user, creating and deleting that user's lab
  through labd's HTTP API with a hub token, as JupyterHub does.  A request
  that fails with a transport error or a 503 is retried (with a short
  backoff) until it gets a definite answer, as JupyterHub retries; what the
  last definite answer asked for is what the lab must end up as.
- **the cluster**: ``python -m labd.sim`` in a subprocess, steered through
  its ``/sim/v1`` control API: a share of creates and deletes answered 500,
  added latency, watch streams that drop or go silent, 410 Gone on watch
  starts, and outcome rules that make some users' pods crash or vanish.
- **the killer**: ``labd serve`` (a subprocess) is killed with SIGKILL at
  random moments and started again.
- **the database**: on PostgreSQL, the server is restarted once
  (``pg_ctlcluster ... restart``) in the middle of the run.

Then faults stop, the hub re-creates labs that ended failed or terminated
(their pods crashed: a user would start them again), and the run verifies:
every lab converges to what was last asked, the cluster holds no orphaned
objects, every lab's audit history is versions 1..N with no gap or
duplicate, and no request was answered with a 5xx other than 503
``not_ready`` and 500 ``delete_failed``.
"""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from labd.api import hash_token
from labd.config import Config
from labd.db.database import Database
from labd.db.store import LabStore
from tests.support.convergence import converged, history_complete, no_duplicates, no_orphans
from tests.support.processes import Daemon, SimProcess, free_port

__all__ = [
    "ALLOWED_5XX",
    "BODY",
    "HUB_TOKEN",
    "NOT_LABD",
    "ChaosReport",
    "Hub",
    "SimControl",
    "drive_user",
    "labd_settings",
    "logged_errors",
    "restart_postgres_halfway",
    "restart_postgres_server",
    "run_chaos",
    "run_faults",
    "settle",
    "start_daemon",
    "verify",
]

HUB_TOKEN = "chaos-hub-token"
IMAGE = "registry.example/sciplat/lab:w_2026_47"
BODY = {
    "options": {"image_class": ["recommended"], "size": ["small"]},
    "env": {"JUPYTERHUB_SERVICE_PREFIX": "/user/x/", "JUPYTERHUB_API_TOKEN": "t"},
}
ALLOWED_5XX = {(503, "not_ready"), (500, "delete_failed")}
"""The only server errors docs/api.md allows."""


@dataclass
class ChaosReport:
    """What the run did and what it found."""

    requests: Counter[str] = field(default_factory=Counter)
    """Final answers by ``"<verb> <status> <type>"``."""

    retries: Counter[str] = field(default_factory=Counter)
    """Retried attempts by cause (transport error, 503)."""

    unexpected: list[str] = field(default_factory=list)
    """Answers outside the contract: 5xx other than the allowed ones."""

    faults: list[str] = field(default_factory=list)
    """Fault phases applied to the cluster."""

    kills: int = 0
    """SIGKILLs of labd."""

    pg_restarts: int = 0
    """PostgreSQL server restarts."""

    failed_starts: list[int] = field(default_factory=list)
    """Exit statuses of labd starts that failed (database unreachable at
    start: labd exits and, like systemd, the run starts it again)."""

    recreated: int = 0
    """Labs the hub started again after they ended failed or terminated."""

    verified: list[str] = field(default_factory=list)
    """What was checked at the end."""

    errors_logged: Counter[str] = field(default_factory=Counter)
    """labd's error-level log lines, by event (for the record, not a check)."""

    def lines(self) -> list[str]:
        """The report as text."""
        out = ["requests by outcome:"]
        out += [f"  {key:<40}{count:>6}" for key, count in sorted(self.requests.items())]
        out.append(f"retried attempts: {dict(self.retries) or 'none'}")
        out.append(f"fault phases: {len(self.faults)}")
        out += [f"  {fault}" for fault in self.faults]
        out.append(f"labd SIGKILLs: {self.kills}, PostgreSQL restarts: {self.pg_restarts}")
        out.append(
            f"labd starts that exited at once (exit status): {self.failed_starts or 'none'}"
        )
        out.append(f"labs re-created after a crash or vanish: {self.recreated}")
        out.append(f"unexpected 5xx: {self.unexpected or 'none'}")
        out.append(f"labd error log lines: {dict(self.errors_logged) or 'none'}")
        out.append("verified:")
        out += [f"  {item}" for item in self.verified]
        return out


def labd_settings(url: str, kubeconfig: Path, port: int, token_file: Path) -> dict[str, Any]:
    """labd's settings for the run: short timeouts, frequent reconciles."""
    return {
        "database_url": url,
        "bind_address": f"127.0.0.1:{port}",
        "token_file": str(token_file),
        "kubernetes": {"kubeconfig": str(kubeconfig), "request_timeout": 5},
        "images": {"available": [{"reference": IMAGE}], "recommended": "w_2026_47"},
        "timeouts": {"spawn": 30, "delete": 30},
        "retry": {"initial": 0.1, "maximum": 1.0},
        "reconcile_interval": 5,
        "lab": {"pod_delete_grace": 0},
        "log_format": "json",
        "log_level": "info",
    }


class Hub:
    """JupyterHub as labd sees it: per-user creates and deletes with retries."""

    def __init__(self, http: aiohttp.ClientSession, base: str, report: ChaosReport) -> None:
        self._http = http
        self._base = base
        self._report = report
        self.wanted: dict[str, bool] = {}
        self.allowed_5xx = ALLOWED_5XX
        """Server errors that are no fault (status, error type)."""
        self.in_flight = 0
        """Calls sent and not answered yet."""

    async def call(self, verb: str, username: str) -> tuple[int, str]:
        """Send until a definite answer; return its status and error type."""
        self.in_flight += 1
        try:
            return await self._call(verb, username)
        finally:
            self.in_flight -= 1

    async def _call(self, verb: str, username: str) -> tuple[int, str]:
        method, path, body = {
            "create": ("POST", f"/spawner/v1/labs/{username}/create", BODY),
            "delete": ("DELETE", f"/spawner/v1/labs/{username}", None),
            "status": ("GET", f"/spawner/v1/labs/{username}", None),
        }[verb]
        delay = 0.1
        while True:
            try:
                async with self._http.request(
                    method, self._base + path, json=body, timeout=aiohttp.ClientTimeout(total=60)
                ) as response:
                    status = response.status
                    text = await response.text()
                    data = _json_or_none(text)
                    served_by = response.headers.get("X-Labd-Replica", "")
            except (aiohttp.ClientError, TimeoutError):
                self._report.retries[f"{verb} transport error"] += 1
            else:
                kind = _error_type(data) if status >= 400 else ""
                if status >= 500 and (status, kind) not in self.allowed_5xx:
                    said = data if data is not None else text[:200]
                    by = f" from {served_by}" if served_by else ""
                    self._report.unexpected.append(f"{verb} {username}: {status} {said!r}{by}")
                # A balancer's own error page (all replicas out of service, or
                # its retries used up) is no answer from labd: ask again.
                if status != 503 and kind != NOT_LABD:
                    self._report.requests[f"{verb} {status} {kind}".rstrip()] += 1
                    return status, (data or {}).get("status", kind) if status == 200 else kind
                self._report.retries[f"{verb} {status} {kind}"] += 1
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    async def act(self, username: str) -> None:
        """Flip the user's lab: create it if last asked gone, else delete it."""
        if self.wanted.get(username):
            status, _ = await self.call("delete", username)
            if status in (204, 404, 500):
                self.wanted[username] = False
        else:
            status, kind = await self.call("create", username)
            if status == 201 or kind == "lab_exists":
                self.wanted[username] = True


NOT_LABD = "not-labd"
"""Error type of an answer without labd's error body (a balancer's error page)."""


def _json_or_none(text: str) -> Any:
    try:
        return json.loads(text) if text else None
    except ValueError:
        return None


def _error_type(data: Any) -> str:
    try:
        return str(data["detail"][0]["type"])
    except (KeyError, IndexError, TypeError):
        return NOT_LABD


class SimControl:
    """The sim's control API."""

    def __init__(self, http: aiohttp.ClientSession, sim: SimProcess) -> None:
        self._http = http
        self._url = f"{sim.url}/sim/v1"
        self._headers = {"Authorization": f"Bearer {sim.token}"}

    async def put(self, what: str, body: dict[str, Any]) -> None:
        async with self._http.put(
            f"{self._url}/{what}", json=body, headers=self._headers
        ) as response:
            assert response.status == 200, await response.text()

    async def clear(self) -> None:
        for what in ("faults", "rules"):
            async with self._http.delete(f"{self._url}/{what}", headers=self._headers) as r:
                assert r.status in (200, 204), await r.text()


def fault_phase(
    rng: random.Random, users: list[str], *, default: str = "run"
) -> tuple[str, dict[str, Any], Any]:
    """A random fault specification and outcome rules for the next few seconds.

    ``default`` is the outcome of the pods of users who neither crash nor vanish.
    """
    errors = [
        {"verb": "create", "resource": "*", "rate": 0.05, "status": 500},
        {"verb": "delete", "resource": "*", "rate": 0.05, "status": 500},
    ]
    latency = [{"verb": "*", "resource": "*", "seconds": rng.choice([0.0, 0.02, 0.1])}]
    watch: dict[str, Any] = {}
    kind = rng.choice(["errors", "drop", "silent", "gone", "errors"])
    if kind == "drop":
        watch = {"drop_rate": 0.05}
    elif kind == "silent":
        watch = {"silent": True}
    elif kind == "gone":
        watch = {"force_gone": 2, "drop_after_events": 20}
    crash, vanish = rng.sample(users, 2)
    rules = {
        "default": default,
        "rules": [
            {"namespace": f"*{crash}*", "name": "*", "outcome": "crash:OOMKilled:0.5"},
            {"namespace": f"*{vanish}*", "name": "*", "outcome": "vanish:0.5"},
        ],
    }
    faults = {"errors": errors, "latency": latency, "watch": watch}
    text = f"5% 500 on creates/deletes, latency {latency[0]['seconds']} s, watch {watch or 'ok'}"
    return f"{text}; {crash} crashes, {vanish} vanishes", faults, rules


def _postgres_version() -> str:
    """The local PostgreSQL cluster's version (``ls /etc/postgresql``)."""
    return sorted(p.name for p in Path("/etc/postgresql").iterdir())[-1]


async def restart_postgres_server(report: ChaosReport) -> None:
    """Restart the local PostgreSQL server and wait until it accepts connections."""
    version = _postgres_version()
    await asyncio.to_thread(
        subprocess.run,
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", "restart"],
        check=True,
        capture_output=True,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready = await asyncio.to_thread(
            subprocess.run, ["pg_isready", "-h", "127.0.0.1", "-q"], check=False
        )
        if ready.returncode == 0:
            report.pg_restarts += 1
            return
        await asyncio.sleep(0.2)
    raise RuntimeError("PostgreSQL did not come back within 60 s")


async def run_chaos(
    *,
    database_url: str,
    workdir: Path,
    seconds: float,
    users: int = 16,
    seed: int = 20261125,
    restart_postgres: bool = False,
    say: Any = print,
) -> ChaosReport:
    """Run the chaos for ``seconds``, settle, verify; return the report.

    Raises
    ------
    AssertionError
        If a check fails (the report so far is in the message's context).
    """
    rng = random.Random(seed)
    report = ChaosReport()
    sim = SimProcess(workdir / "kubeconfig", args=["--pod-start-delay", "0.2", "--seed", "7"])
    token_file = workdir / "tokens"
    token_file.write_text(f"{hash_token(HUB_TOKEN)} hub\n")
    settings = labd_settings(database_url, sim.kubeconfig, free_port(), token_file)
    config_file = workdir / "labd.yaml"
    config_file.write_text(yaml.safe_dump(settings))
    config = Config.model_validate(settings)
    base = f"http://{config.bind_address}"
    daemon = Daemon(config_file, f"{base}/readyz", workdir / "labd.log", ready_timeout=60)
    names = [f"chaos{i}" for i in range(users)]
    sim.start()
    try:
        await start_daemon(daemon, report)
        headers = {"Authorization": f"Bearer {HUB_TOKEN}"}
        async with (
            aiohttp.ClientSession(headers=headers) as http,
            aiohttp.ClientSession() as control_http,
        ):
            hub = Hub(http, base, report)
            control = SimControl(control_http, sim)
            stop_at = time.monotonic() + seconds
            tasks = [asyncio.create_task(drive_user(hub, name, rng, stop_at)) for name in names]
            tasks.append(asyncio.create_task(run_faults(control, rng, names, stop_at, report)))
            tasks.append(asyncio.create_task(_killer(daemon, rng, stop_at, report)))
            if restart_postgres:
                tasks.append(asyncio.create_task(restart_postgres_halfway(seconds, report)))
            await asyncio.gather(*tasks)
            await control.clear()
            say(f"chaos over after {seconds:.0f} s; settling")
            await settle(hub, names, report)
        await verify(config, hub.wanted, report)
    finally:
        if daemon.process is not None and daemon.process.returncode is None:
            status = await daemon.terminate()
            report.verified.append(f"labd exited {status} on SIGTERM")
        sim.stop()
    report.errors_logged = logged_errors(workdir / "labd.log")
    assert not report.unexpected, report.unexpected
    return report


def logged_errors(log: Path) -> Counter[str]:
    """Count labd's error-level log lines by event."""
    found: Counter[str] = Counter()
    for line in log.read_text().splitlines():
        with_json = line.startswith("{")
        record = json.loads(line) if with_json else {}
        if record.get("level") in ("error", "critical"):
            found[str(record.get("event"))] += 1
    return found


async def drive_user(hub: Hub, username: str, rng: random.Random, stop_at: float) -> None:
    """Flip one user's lab, 0 to 1.5 s apart, until ``stop_at``."""
    while time.monotonic() < stop_at:
        await hub.act(username)
        await asyncio.sleep(rng.uniform(0.0, 1.5))


async def run_faults(
    control: SimControl,
    rng: random.Random,
    users: list[str],
    stop_at: float,
    report: ChaosReport,
    *,
    default: str = "run",
) -> None:
    """Apply a new fault phase every 3 to 8 s until ``stop_at``; then clear the faults."""
    while time.monotonic() < stop_at:
        text, faults, rules = fault_phase(rng, users, default=default)
        await control.put("faults", faults)
        await control.put("rules", rules)
        report.faults.append(text)
        await asyncio.sleep(min(rng.uniform(3, 8), max(0.0, stop_at - time.monotonic())))
    await control.clear()


async def _killer(daemon: Daemon, rng: random.Random, stop_at: float, report: ChaosReport) -> None:
    while (left := stop_at - time.monotonic()) > 4:
        await asyncio.sleep(rng.uniform(2, min(12, left - 2)))
        await daemon.kill()
        report.kills += 1
        await asyncio.sleep(rng.uniform(0, 1.0))
        await start_daemon(daemon, report)


async def start_daemon(daemon: Daemon, report: ChaosReport) -> None:
    """Start labd; if it exits at once (its database is down), start it again."""
    for _ in range(30):
        try:
            await daemon.start()
        except AssertionError:
            if daemon.process is None or daemon.process.returncode is None:
                raise  # Running but never ready: that is a failure.
            report.failed_starts.append(daemon.process.returncode)
            await asyncio.sleep(1.0)
        else:
            return
    raise AssertionError("labd did not start 30 times in a row:\n" + daemon.log_tail())


async def restart_postgres_halfway(seconds: float, report: ChaosReport) -> None:
    """Restart the PostgreSQL server half-way through a run of ``seconds``."""
    await asyncio.sleep(seconds / 2)
    await restart_postgres_server(report)


async def settle(hub: Hub, names: list[str], report: ChaosReport) -> None:
    """Start again the labs that ended failed or terminated, as a user would."""
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        again = []
        for username in names:
            if not hub.wanted.get(username):
                continue
            status, state = await hub.call("status", username)
            if status == 404 or state in ("failed", "terminated"):
                again.append(username)
        if not again:
            return
        for username in again:
            # A failed lab is cleaned up as part of the new create; a 409
            # means its cleanup is still running: ask again next round.
            status, _ = await hub.call("create", username)
            if status == 201:
                report.recreated += 1
        await asyncio.sleep(1.0)


async def verify(config: Config, wanted: dict[str, bool], report: ChaosReport) -> None:
    database = Database(config.database_url)
    store = LabStore(database)
    try:
        await converged(store, wanted, within=120)
        running = sum(wanted.values())
        report.verified.append(
            f"{len(wanted)} labs converged to what was last asked"
            f" ({running} running, {len(wanted) - running} gone)"
        )
        await no_orphans(store, config)
        report.verified.append("no orphaned namespaces or pods in the cluster")
        objects = await no_duplicates(store, config)
        report.verified.append(
            f"no duplicate objects: {objects} objects, each of its namespace's running lab,"
            " one namespace and one pod per lab"
        )
        rows = await history_complete(store)
        labs = len(await store.list_labs())
        report.verified.append(
            f"{labs} labs' histories complete: {rows} audit rows, versions 1..N, no gap"
            " or duplicate, each row chained to the next"
        )
    finally:
        await database.dispose()
    report.verified.append("no 5xx other than 503 not_ready and 500 delete_failed")
