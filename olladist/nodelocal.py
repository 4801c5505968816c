"""Node-local settings: facts of one machine that never come from git, as values.

Parsed (purely) from the settings ``olladist.nodeconfig`` reads once from
/etc/olladist/olladist.env and OLLADIST_* in the environment:
- OLLADIST_OLLAMA_BINARY overrides ``ollama.binary`` (where ollama lives on this machine);
- OLLADIST_PEER_CERT + OLLADIST_PEER_CA switch peers to mutual TLS, OLLADIST_GATEWAY_CERT
  serves the public port over TLS (see docs/gateway.md).

Render takes these values; it never reads the environment itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from olladist.errors import RenderError
from olladist.layout import ENV_FILE

ENV_PEER_CERT = "OLLADIST_PEER_CERT"
ENV_PEER_CA = "OLLADIST_PEER_CA"
ENV_PUBLIC_CERT = "OLLADIST_GATEWAY_CERT"
ENV_BINARY = "OLLADIST_OLLAMA_BINARY"


@dataclass(frozen=True)
class NodeTLS:
    """Node-local TLS material (paths on the node, never in git), from olladist.env.

    ``peer_cert``/``peer_ca`` switch the peer port to mutual TLS: ``peer_cert`` is a PEM holding
    this node's certificate and key, ``peer_ca`` the CA that signed every node's certificate.
    ``public_cert`` (PEM with key) turns on TLS on the public port."""

    peer_cert: str | None = None
    peer_ca: str | None = None
    public_cert: str | None = None


def node_tls_from_env(env: Mapping[str, str]) -> NodeTLS:
    def get(key: str) -> str | None:
        return env.get(key) or None

    tls = NodeTLS(get(ENV_PEER_CERT), get(ENV_PEER_CA), get(ENV_PUBLIC_CERT))
    if (tls.peer_cert is None) != (tls.peer_ca is None):
        raise RenderError(
            f"mutual TLS for peers needs both {ENV_PEER_CERT} and {ENV_PEER_CA}",
            hint=f"set both in {ENV_FILE}, or neither to use the shared secret",
        )
    return tls


@dataclass(frozen=True)
class NodeLocal:
    binary: str | None = None
    tls: NodeTLS | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> NodeLocal:
        return cls(binary=env.get(ENV_BINARY) or None, tls=node_tls_from_env(env))
