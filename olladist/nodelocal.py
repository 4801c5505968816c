"""Node-local settings: facts of one machine that never come from git.

Read from /etc/olladist/olladist.env (and OLLADIST_* in the environment):
- OLLADIST_OLLAMA_BINARY overrides ``ollama.binary`` (where ollama lives on this machine);
- OLLADIST_PEER_CERT + OLLADIST_PEER_CA switch peers to mutual TLS, OLLADIST_GATEWAY_CERT
  serves the public port over TLS (see docs/gateway.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from olladist.gateway.topology import NodeTLS, node_tls_from_env


@dataclass(frozen=True)
class NodeLocal:
    binary: str | None = None
    tls: NodeTLS | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> NodeLocal:
        return cls(
            binary=env.get("OLLADIST_OLLAMA_BINARY") or None,
            tls=node_tls_from_env(dict(env)),
        )
