"""Who listens on a TCP port, from /proc (no extra tools): for errors that say what to stop."""

from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path

LISTEN = "0A"


def _decode(hex_addr: str) -> tuple[str, int]:
    host, port = hex_addr.split(":")
    raw = bytes.fromhex(host)
    if len(raw) == 4:
        addr = socket.inet_ntop(socket.AF_INET, raw[::-1])
    else:
        # /proc prints IPv6 as four little-endian 32-bit words.
        words = [raw[i : i + 4][::-1] for i in range(0, 16, 4)]
        addr = socket.inet_ntop(socket.AF_INET6, b"".join(words))
    return addr, int(port, 16)


def _listening_inodes(addr: str, port: int) -> set[str]:
    want = ipaddress.ip_address(addr)
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or fields[3] != LISTEN:
                continue
            local, lport = _decode(fields[1])
            if lport != port:
                continue
            ip = ipaddress.ip_address(local)
            mapped = getattr(ip, "ipv4_mapped", None)
            if ip == want or ip.is_unspecified or mapped == want:
                inodes.add(fields[9])
    return inodes


def who_listens(addr: str, port: int) -> str | None:
    """``None`` if nothing listens on addr:port (or on the wildcard), else who does."""
    inodes = _listening_inodes(addr, port)
    if not inodes:
        return None
    targets = {f"socket:[{i}]" for i in inodes}
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") in targets:
                    comm = Path(f"/proc/{pid}/comm").read_text().strip()
                    return f"pid {pid} ({comm})"
            except OSError:
                continue
    return "another process (not visible to this user)"
