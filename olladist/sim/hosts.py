"""Ollama's Host-header check: a server bound to loopback refuses foreign Host names.

``ollama serve`` on 127.0.0.1 answers 403 to a request whose Host header names something other
than an IP that is loopback, private or unspecified, ``localhost``, the machine's hostname, or a
name under .localhost, .local or .internal (a DNS-rebinding guard). A proxy that forwards the
client's Host unchanged meets this; the simulator applies the same rule so such a proxy fails in
tests, not in production.
"""

from __future__ import annotations

import ipaddress
import socket

_LOCAL_SUFFIXES = (".localhost", ".local", ".internal")


def _strip_port(host: str) -> str:
    if host.startswith("["):
        return host[1:].partition("]")[0]
    if host.count(":") == 1:
        return host.partition(":")[0]
    return host


def host_allowed(host_header: str, hostname: str | None = None) -> bool:
    """Whether a loopback-bound Ollama would serve a request with this Host header."""
    host = _strip_port(host_header.strip()).lower()
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return ip.is_loopback or ip.is_private or ip.is_unspecified
    if host in ("", "localhost"):
        return True
    if host == (hostname if hostname is not None else socket.gethostname()).lower():
        return True
    return host.endswith(_LOCAL_SUFFIXES)
