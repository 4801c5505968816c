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
# The last commit the node accepted, kept out of STATE_DIR so deleting that does not let an
# older signed commit back in (olladist.source.chain).
ACCEPTED_FILE = "/etc/olladist/accepted-commit"
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
# Node-local: the shared secret peers send, as a one-line HAProxy map ("secret VALUE"). The same
# file on every node; never rendered, never in git. Mode 0640, group of the gateway's user.
PEER_SECRET_FILE = f"{SECRETS_DIR}/peer.map"
# The gateway refuses a shorter secret (an empty or truncated file must not let peers in).
MIN_SECRET_LEN = 32
# Where HAProxy finds server states (drain, maintenance) again after a reload.
SERVER_STATE_FILE = f"{STATE_DIR}/gateway/servers.state"


# Instances bind loopback only (render sets OLLAMA_HOST); only the gateway listens outside.
INSTANCE_HOST = "127.0.0.1"
# The reconciler's read-only status server (olladist.statusd), in its RuntimeDirectory.
STATUS_SOCKET = "/run/olladist/reconcile/status.sock"


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
