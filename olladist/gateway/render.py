"""Render a node's gateway: HAProxy's config, the maps it loads and live.lua (the live view).

Pure: the same (spec, node, placement, layout, tls) gives byte-identical files. Secrets are never
rendered; the config only names the node-local files that hold them (see docs/gateway.md).
"""

from __future__ import annotations

import json

from olladist.files import File
from olladist.gateway.fair import FAIR_LUA, fair_files
from olladist.gateway.lua import lua_literal, shipped_lua
from olladist.gateway.topology import LARGE_CONFIG, Route, Topology, admit_backend, build
from olladist.layout import GATEWAY_DIR, HAPROXY_CFG, PEER_SECRET_FILE, ROOT, Layout
from olladist.nodelocal import NodeTLS
from olladist.placement import Placement
from olladist.spec import PRIORITY_WINDOW_MS, Instance, Model, Spec, Strategy, duration_ms
from olladist.templating import render_template

# The shipped Lua (same bytes on every node) and the node's own settings for it.
LIVE_LUA = f"{GATEWAY_DIR}/live.lua"
LIVE_CONFIG_LUA = f"{GATEWAY_DIR}/live-config.lua"
# Rendered paths whose content is shipped with the package, not rendered: goldens leave them out.
SHIPPED_PATHS = frozenset({LIVE_LUA, FAIR_LUA})

_READY_HEAD = "# model -> 1 when every holder can serve it now; filled at run time by live.lua\n"

# Ollama reports times like this. Only a peer without a live report (an older olladist during
# an upgrade) is listed from the spec; every other entry is the holder's own.
EPOCH = "1970-01-01T00:00:00Z"
# The poller asks each instance and peer this often at most, whatever the health interval.
POLL_MAX_MS = 1000
# ... and this often while requests wait for a holder, so they are released sooner.
FAST_POLL_MS = 100
# How often a waiting request looks at the view again (it changes only after a poll).
WAIT_STEP_MS = 25
# One /api/tags or live report must answer within this; a hung target delays only its own task.
PROBE_TIMEOUT_MIN_MS = 2000
# Retry-After on the readiness 503: soon when a holder is coming, later when none is.
RETRY_AFTER_S = 2
RETRY_AFTER_DOWN_S = 10


# Ollama's defaults when the instance's environment does not set them (envconfig, sched.go):
# three loaded models per GPU (or on a CPU-only host), a 4096-token context.
MAX_LOADED_PER_GPU = 3
DEFAULT_NUM_CTX = 4096


def _env_int(env: dict[str, str], key: str, default: int) -> int:
    try:
        value = int(env.get(key, ""))
    except ValueError:
        return default
    return value if value > 0 else default


def _instance_config(spec: Spec, inst: Instance, vram_gb: float | None) -> dict[str, object]:
    """What loaded-first needs to know of an instance: Ollama's own limits on what it loads."""
    env = {**spec.ollama.env, **inst.env}
    return {
        "name": inst.name,
        "port": inst.port,
        "admit": admit_backend(inst.name),
        "num_parallel": inst.num_parallel,
        "max_loaded": _env_int(
            env, "OLLAMA_MAX_LOADED_MODELS", MAX_LOADED_PER_GPU * max(len(inst.gpus), 1)
        ),
        "num_ctx": _env_int(env, "OLLAMA_CONTEXT_LENGTH", DEFAULT_NUM_CTX),
        # capacity.vram_gb: the largest model it can load, so what fits beside another.
        "vram": round(vram_gb * 1e9) if vram_gb else None,
    }


def _map_file(routes: tuple[Route, ...]) -> str:
    head = "# model -> backend; rendered by olladist, loaded by HAProxy at start and reload\n"
    return head + "".join(f"{r.model} {r.backend}\n" for r in routes)


def _fallback_entry(model: Model) -> str:
    """The /api/tags entry shown for a model whose only ready holders send no live report."""
    size = round(model.size_gb * 1e9) if model.size_gb else 0
    digest = model.digest.removeprefix("sha256:") if model.digest else ""
    entry = {
        "name": model.key,
        "model": model.key,
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
    return json.dumps(entry, separators=(",", ":"))


def live_config(t: Topology, spec: Spec, placement: Placement) -> dict[str, object]:
    """What live.lua needs to know about this node, its peers and where each model goes."""
    interval = duration_ms(t.health_interval)
    poll = min(interval, POLL_MAX_MS)
    probe = max(poll, PROBE_TIMEOUT_MIN_MS)
    backends = {b.name: b for b in (*t.routes_backends, *t.locals)}
    by_key = {m.key: m for m in spec.models}
    own_peer = f"peer.{t.node}"
    node = spec.node(t.node)

    def lf(model: str) -> bool:
        return spec.strategy_for(by_key[model]) == Strategy.LOADED_FIRST

    def size(model: str) -> int | None:
        gb = by_key[model].size_gb
        return round(gb * 1e9) if gb else None

    def servers(backend: str) -> list[dict[str, object]]:
        out: list[dict[str, object]] = []
        for s in backends[backend].servers:
            if s.peer and s.name != own_peer:
                item: dict[str, object] = {"name": s.name, "node": s.name.removeprefix("peer.")}
            elif s.peer:
                # model-affinity through this node's own peer frontend: ready when a local
                # instance is.
                item = {"name": s.name, "node": t.node}
            else:
                item = {"name": s.name, "instance": s.name}
            if s.backup:
                item["backup"] = True
            out.append(item)
        return out

    return {
        "cluster": t.cluster,
        "node": t.node,
        "poll_ms": poll,
        "fast_ms": min(poll, FAST_POLL_MS),
        "wait_step_ms": WAIT_STEP_MS,
        "probe_timeout_ms": probe,
        # A poll result counts for three rounds (one slow answer does not flap the view).
        "stale_ms": 3 * poll + probe,
        "queue_ms": duration_ms(t.timeouts.queue),
        "retry_after_s": RETRY_AFTER_S,
        "retry_after_down_s": RETRY_AFTER_DOWN_S,
        "ready_map": t.paths.ready_map,
        "pulls_map": t.paths.pulls_map,
        "local_ready_map": t.paths.local_ready_map if t.has_peer_frontend else None,
        "warm_map": t.paths.warm_map if t.admits else None,
        "feed_socket": t.paths.feed_socket,
        "instances": [_instance_config(spec, i, node.capacity.vram_gb) for i in node.instances],
        # loaded-first: a cold request's priority offset, and the bounds HAProxy's queue keeps
        # track of (offset plus time queued inside its window).
        "max_warm_wait_ms": spec.gateway.warm_wait_ms,
        "prio_limit": PRIORITY_WINDOW_MS - duration_ms(t.timeouts.queue),
        "peers": [{"server": s.name, "node": s.name.removeprefix("peer.")} for s in t.feed_peers],
        "held": [r.model for r in t.local_routes],
        "models": {
            r.model: {
                "lf": lf(r.model),
                "size": size(r.model),
                "servers": servers(r.backend),
                "holders": sorted(placement.nodes_for(r.model), key=lambda n: (n != t.node, n)),
                "fallback": _fallback_entry(by_key[r.model]),
            }
            for r in t.routes
        },
        "local_models": {
            r.model: {
                "lf": lf(r.model),
                "size": size(r.model),
                "servers": servers(r.backend),
                "holders": [t.node],
            }
            for r in t.local_routes
        },
    }


def live_config_lua(t: Topology, spec: Spec, placement: Placement) -> str:
    """The node's part of the live view: one Lua table, loaded before the shipped live.lua."""
    config = lua_literal(live_config(t, spec, placement))
    return render_template("live-config.lua.j2", node=t.node, config=config)


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
        LIVE_LUA: File(shipped_lua("live.lua")),
        LIVE_CONFIG_LUA: File(live_config_lua(t, spec, placement)),
        **fair_files(t.fair, t.node),
        # Empty on disk: live.lua fills them in HAProxy's memory (a reload starts them empty,
        # and requests take the slow path until the first poll, a few milliseconds).
        f"{GATEWAY_DIR}/ready.map": File(_READY_HEAD),
        f"{GATEWAY_DIR}/local-ready.map": File(_READY_HEAD),
        f"{GATEWAY_DIR}/warm.map": File(
            "# model -> admission backend of an instance it is loaded on; filled at run time\n"
            "# by HAProxy (a 200 from that instance) and live.lua (every poll of /api/ps)\n"
        ),
        f"{GATEWAY_DIR}/pulls.map": File(
            "# model -> 43% or failed; filled at run time by the reconciler (gateway/pulls.py)\n"
        ),
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
