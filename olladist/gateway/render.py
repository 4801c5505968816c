"""Render a node's gateway: HAProxy's config plus the maps and static JSON it loads.

Pure: the same (spec, node, placement, layout, tls) gives byte-identical files. Secrets are never
rendered; the config only names the node-local files that hold them (see docs/gateway.md).
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path

from olladist.files import File, write_atomic
from olladist.gateway.topology import (
    LARGE_CONFIG,
    PEER_SECRET_FILE,
    NodeTLS,
    Route,
    Topology,
    build,
)
from olladist.layout import GATEWAY_DIR, HAPROXY_CFG, ROOT, Layout
from olladist.placement import Placement
from olladist.render import render_template
from olladist.spec import Spec

# Ollama reports times like this; a model's real modification time is only known to the
# instance that holds it, so the cluster view shows a fixed one.
EPOCH = "1970-01-01T00:00:00Z"
# /api/ps asks each local instance in turn; a hung one must not hold the answer for long.
PS_TIMEOUT_MS = 3000


def _map_file(routes: tuple[Route, ...]) -> str:
    head = "# model -> backend; rendered by olladist, loaded by HAProxy at start and reload\n"
    return head + "".join(f"{r.model} {r.backend}\n" for r in routes)


def _served(spec: Spec, placement: Placement) -> list[tuple[str, int, str]]:
    """(canonical name, size in bytes, digest hex) of every model the cluster serves."""
    out = []
    for m in spec.models:
        if placement.nodes_for(m.key):
            size = round(m.size_gb * 1e9) if m.size_gb else 0
            digest = m.digest.removeprefix("sha256:") if m.digest else ""
            out.append((m.key, size, digest))
    return sorted(out)


def tags_json(spec: Spec, placement: Placement) -> str:
    models = [
        {
            "name": name,
            "model": name,
            "modified_at": EPOCH,
            "size": size,
            "digest": digest,
            "details": {
                "parent_model": "",
                "format": "gguf",
                "family": "",
                "families": None,
                "parameter_size": "",
                "quantization_level": "",
            },
        }
        for name, size, digest in _served(spec, placement)
    ]
    return json.dumps({"models": models}, indent=1) + "\n"


def v1_models_json(spec: Spec, placement: Placement) -> str:
    data = [
        {
            "id": name,
            "object": "model",
            "created": 0,
            # Ollama names the owner after the namespace; official models are "library".
            "owned_by": name.rsplit("/", 1)[0].rsplit("/", 1)[-1] if "/" in name else "library",
        }
        for name, _, _ in _served(spec, placement)
    ]
    return json.dumps({"object": "list", "data": data}, indent=1) + "\n"


def render_config(topology: Topology) -> str:
    return render_template("haproxy.cfg.j2", t=topology)


def render_large_config(topology: Topology) -> str:
    return render_template("large-bodies.cfg.j2", t=topology)


def gateway_files(
    spec: Spec,
    node_name: str,
    placement: Placement,
    layout: Layout = ROOT,
    tls: NodeTLS | None = None,
) -> dict[str, File]:
    """The gateway's files for ``node_name``, keyed by node path, sorted.

    ``tls`` is node-local (``node_tls_from_env``); without it peers authenticate with the shared
    secret file and the public port is plain HTTP."""
    t = build(spec, node_name, placement, layout, tls)
    files = {
        HAPROXY_CFG: File(render_config(t)),
        LARGE_CONFIG: File(render_large_config(t)),
        f"{GATEWAY_DIR}/models.map": File(_map_file(t.routes)),
        f"{GATEWAY_DIR}/local.map": File(_map_file(t.local_routes)),
        f"{GATEWAY_DIR}/peers.acl": File(
            "# addresses of the cluster's other nodes, allowed on the peer port\n"
            + "".join(f"{a}\n" for a in t.allowlist)
        ),
        f"{GATEWAY_DIR}/tags.json": File(tags_json(spec, placement)),
        f"{GATEWAY_DIR}/v1-models.json": File(v1_models_json(spec, placement)),
        f"{GATEWAY_DIR}/ps-empty.json": File('{"models":[]}\n'),
        f"{GATEWAY_DIR}/ps.lua": File(render_template("ps.lua.j2", timeout_ms=PS_TIMEOUT_MS)),
    }
    return dict(sorted(files.items()))


def node_local_files(spec: Spec, node_name: str, placement: Placement) -> tuple[str, ...]:
    """Node paths of the node-local files (secrets, never rendered) that the gateway's config
    loads: they must exist before HAProxy starts or validates, or it refuses the config."""
    t = build(spec, node_name, placement, ROOT)
    out = [PEER_SECRET_FILE] if t.needs_peer_secret else []
    if spec.gateway.api_keys_file:
        out.append(spec.gateway.api_keys_file)
    return tuple(out)


def write_peer_secret(layout: Layout) -> Path:
    """Create the peer secret file under ``layout`` if it is missing, with a random secret.

    For one-machine clusters and tests, where every node shares the root. On real clusters the
    operator puts the same file on every node (a per-node random one would lock peers out)."""
    target = layout.real(PEER_SECRET_FILE)
    if not target.exists():
        write_atomic(target, f"secret {secrets.token_hex(32)}\n".encode(), 0o640)
    return target
