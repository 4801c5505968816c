"""Free TCP ports for the servers tests start, taken outside the kernel's ephemeral range.

``bind(port 0)`` hands out a port from ``net.ipv4.ip_local_port_range``, the range every
outgoing connection takes its source port from. Between a test picking such a port and its
server binding it, an outgoing connection of any process (a health check, a load test's
client) can take it, and the server then exits with EADDRINUSE: a rare failure that looks like
a broken instance. Ports below the range are never given out that way, so they stay free
unless something binds them on purpose. Each port is handed out once per process.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_LOWEST = 10_000
_given: set[int] = set()
_rng = random.Random()  # its own generator: tests that seed `random` do not repeat ports


def _ephemeral_start() -> int:
    try:
        return int(_RANGE_FILE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _bindable(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on at ``host``, below the ephemeral range where possible."""
    top = _ephemeral_start()
    if top - _LOWEST >= 1000:
        for _ in range(500):
            port = _rng.randrange(_LOWEST, top)
            if port not in _given and _bindable(host, port):
                _given.add(port)
                return port
    # A machine whose ephemeral range starts low: fall back to the kernel's choice.
    with socket.socket() as s:
        s.bind((host, 0))
        chosen = int(s.getsockname()[1])
    _given.add(chosen)
    return chosen


def free_on_all(hosts: list[str], n: int) -> list[int]:
    """``n`` distinct ports free on every one of ``hosts`` (a cluster's nodes share ports)."""
    out: list[int] = []
    while len(out) < n:
        p = free_port(hosts[0])
        if p not in out and all(_bindable(h, p) for h in hosts[1:]):
            out.append(p)
    return out
