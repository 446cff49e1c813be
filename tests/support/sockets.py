"""The TCP connections a process holds, read from Linux's ``/proc``.

Used to check that a client closed its connections (not just that an
object says it is closed): a socket whose file descriptor is still open is
counted whatever its state, ``CLOSE_WAIT`` included. The hub test imports
this inside JupyterHub's process, at its exit.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["connections_to", "has_proc"]


def has_proc() -> bool:
    """Whether this system has the ``/proc`` files `connections_to` reads."""
    return Path("/proc/self/net/tcp").exists()


def connections_to(port: int) -> int:
    """How many TCP sockets this process holds open to a remote ``port``."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # Closed since it was listed.
            continue
        if target.startswith("socket:["):
            inodes.add(target.removeprefix("socket:[").removesuffix("]"))
    count = 0
    for table in (Path("/proc/self/net/tcp"), Path("/proc/self/net/tcp6")):
        if not table.exists():
            continue
        for row in table.read_text().splitlines()[1:]:
            fields = row.split()
            remote, inode = fields[2], fields[9]
            if inode in inodes and int(remote.rpartition(":")[2], 16) == port:
                count += 1
    return count
