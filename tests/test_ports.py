"""Test servers get ports that no client connection can take before they bind."""

from __future__ import annotations

import random
import socket
from pathlib import Path

import pytest

from tests.support import processes
from tests.support.processes import ephemeral_ports, free_port


def test_ports_are_outside_the_ephemeral_range_and_never_repeat() -> None:
    ports = [free_port() for _ in range(200)]

    assert not [port for port in ports if port in ephemeral_ports()]
    assert len(set(ports)) == len(ports)
    for port in ports:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


def test_a_port_someone_holds_is_passed_over(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        taken = held.getsockname()[1]
        spare = free_port()
        processes._handed_out.discard(spare)
        monkeypatch.setattr(random, "sample", lambda population, k: [taken, spare])

        assert free_port() == spare


def test_the_range_is_the_kernels() -> None:
    low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()

    assert ephemeral_ports() == range(int(low), int(high) + 1)
