"""Where things live on a node, and under ``--root``.

Rendered files are keyed by their node path (``/etc/olladist/haproxy.cfg``) but their contents
point at real paths: with ``--root DIR`` every path olladist owns is under DIR, so a test or a
dev cluster runs HAProxy and the instances from DIR without touching ``/``. Paths of programs
on the machine (the ollama binary, haproxy) are not moved.

To validate a render before applying it, render it again with a staging root: contents differ
only by that prefix, and names in the spec are restricted, so validity carries over.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

ETC_DIR = "/etc/olladist"
ENV_FILE = "/etc/olladist/olladist.env"
HAPROXY_CFG = "/etc/olladist/haproxy.cfg"
# The gateway's large-body process (docs/gateway.md), started by the public one.
LARGE_BODIES_CFG = "/etc/olladist/gateway/large-bodies.cfg"
GATEWAY_DIR = "/etc/olladist/gateway"
SECRETS_DIR = "/etc/olladist/secrets"
SYSTEMD_DIR = "/etc/systemd/system"
STATE_DIR = "/var/lib/olladist"
RUN_DIR = "/run/olladist"
GATEWAY_RUN_DIR = "/run/olladist/gateway"
ADMIN_SOCKET = "/run/olladist/gateway/admin.sock"
MASTER_SOCKET = "/run/olladist/gateway/master.sock"


@dataclass(frozen=True)
class Layout:
    root: Path = Path("/")

    def path(self, node_path: str) -> str:
        """The real path, as a string for a rendered file, of an absolute node path."""
        return str(self.real(node_path))

    def real(self, node_path: str) -> Path:
        if not node_path.startswith("/"):
            raise ValueError(f"not an absolute path: {node_path!r}")
        return self.root / node_path.lstrip("/")


ROOT = Layout()
