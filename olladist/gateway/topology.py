"""What one node's HAProxy routes where: a pure function of (spec, node, placement).

The template (``templates/haproxy.cfg.j2``) only prints this value; every decision about
backends, servers, strategies and file paths is made here, where it is typed and unit-tested.

Backends on a node:

- ``instances``: this node's Ollama instances, health-checked (the one place their checks run).
  It serves what is not routed by model: ``/``, ``/api/version``, ``/api/ps``, and the admin API
  when ``admin_api: allow`` (the node's model store is shared by all its instances).
- ``peers``: the peer frontends of the other nodes, health-checked; it only carries traffic on a
  node without instances.
- ``route.*``: one per distinct (strategy, nodes holding the model). Models held by the same nodes
  with the same strategy share one, so an instance is not split into many tiny ``maxconn``
  budgets. Servers are this node's instances (if it holds the model) and the peers that hold it;
  each ``track``s its server in ``instances`` or ``peers``, so one check per target feeds every
  backend, and a drain or maintenance set there spreads to all of them.
- ``local.<strategy>``: this node's instances alone, for the peer frontend, which never routes
  onward (no loops).
- ``admit.<instance>`` (loaded-first): one per instance of this node, one server with
  ``maxconn num_parallel``. Every loaded-first request that runs on the instance passes here,
  from the public and the peer frontend alike, so its slots are counted once whichever gateway
  a request entered, and the excess waits in this server's queue, in priority order.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from dataclasses import dataclass
from enum import StrEnum

from olladist.errors import RenderError
from olladist.gateway import INSTANCES_BACKEND, PEERS_BACKEND
from olladist.gateway import fair as fairness
from olladist.layout import (
    ADMIN_SOCKET,
    GATEWAY_DIR,
    GATEWAY_RUN_DIR,
    INSTANCE_HOST,
    LARGE_BODIES_CFG,
    MIN_SECRET_LEN,
    PEER_SECRET_FILE,
    SERVER_STATE_FILE,
    STATUS_SOCKET,
    Layout,
)
from olladist.nodelocal import NodeTLS
from olladist.placement import Placement
from olladist.spec import Node, Spec, Strategy, Timeouts, memory_bytes

# Two HAProxy processes share the node's gateway (docs/gateway.md "Large bodies and memory").
# The public one routes small requests with small buffers: a 16 MiB buffer cost every request
# 1.5 page faults and a heap grow/shrink, and 12 points of throughput (measured there).
BUFSIZE = 16 * 1024
MAXREWRITE = 1024
# A request whose `model` is not in what the public process buffered (at least this much body
# and no model found, or a body cut by the buffer) goes to the large-body process, which reads
# the whole body into one big buffer, finds `model` and hands the request back with the model
# in a header. Fewer bytes than fit in the small buffer, so a cut chunked body is caught too.
SMALL_BODY = 4096
LARGE_BUFSIZE = 16 * 1024 * 1024
LARGE_MAXREWRITE = 8192
MAX_BODY = LARGE_BUFSIZE - LARGE_MAXREWRITE - 64 * 1024  # what a body may use, with headers
# The memory ceiling (gateway.limits.memory) is split between the two processes from these
# per-connection costs, worst cases measured with bench/gateway_bench.py (docs/gateway.md):
# both processes at rest; a public connection with a request and a response buffer in use
# plus its state; a large body held whole plus the buffers that stream it on (measured
# 18.5 MiB a connection with 28 bodies of 16 MB at once).
BASE_MEMORY = 64 << 20
PUBLIC_CONN_MEMORY = 2 * BUFSIZE + 16 * 1024
LARGE_CONN_MEMORY = LARGE_BUFSIZE * 5 // 4 + (1 << 20)
LARGE_SHARE = 0.5  # of the memory above the base, for large bodies
# Sent with every 503 for lack of room: clients with a retry loop come back after this.
RETRY_AFTER_S = 5
# The header that carries the model from the large-body process, and to peers, as base64 of
# the raw value (any bytes survive; nothing can be injected into the header block).
MODEL_HEADER = "X-Olladist-Model"
LARGE_CONFIG = LARGE_BODIES_CFG
LARGE_SOCKET = f"{GATEWAY_RUN_DIR}/large.sock"
# No longer than admin.sock: HAProxy limits the length of socket paths.
RETURN_SOCKET = f"{GATEWAY_RUN_DIR}/back.sock"
# How long the gateway waits for a request body before routing on what it has.
BODY_WAIT = "60s"
# consistent hashing with bounded loads: a server takes at most 125% of the average.
HASH_BALANCE_FACTOR = 125
ROUTE_NAME_MAX = 80
# HAProxy 2.6 refuses longer unix socket paths (sun_path minus its own suffix room).
SOCKET_PATH_MAX = 97
# The live view's poller reaches peers through this listener of its own HAProxy, so the peer
# server lines (secret header, client certificate) apply; Lua's HTTP client has no client cert.
FEED_SOCKET = f"{GATEWAY_RUN_DIR}/feed.sock"

# File paths end up unquoted inside sample expressions (`map(PATH)`), where a comma, a
# parenthesis, a quote or a space would change the meaning; we refuse them instead of escaping.
_SAFE_PATH = re.compile(r"^/[A-Za-z0-9_./@+-]*$")


class PeerAuth(StrEnum):
    SECRET = "secret"  # noqa: S105 - a mode name; the secret is in a node-local file
    TLS = "tls"  # mutual TLS with node-local certificates


def hostport(host: str, port: int | None = None) -> str:
    """An address as HAProxy reads it: IPv6 literals in brackets, so the port is unambiguous."""
    h = f"[{host}]" if ":" in host else host
    return h if port is None else f"{h}:{port}"


@dataclass(frozen=True)
class Server:
    name: str
    host: str
    port: int
    maxconn: int | None = None
    backup: bool = False
    peer: bool = False  # a peer gateway (needs peer auth), not a local instance
    track: str | None = None  # "backend/server" whose health this server follows

    @property
    def addr(self) -> str:
        return hostport(self.host, self.port)


@dataclass(frozen=True)
class Backend:
    name: str
    strategy: Strategy
    servers: tuple[Server, ...]
    checked: bool = False  # runs health checks itself (the others track it)

    @property
    def balance(self) -> str:
        match self.strategy:
            case Strategy.ROUND_ROBIN:
                return "roundrobin"
            case Strategy.MODEL_AFFINITY:
                return "hash var(txn.model)"
            case Strategy.LEAST_LOADED | Strategy.LOCAL_FIRST | Strategy.LOADED_FIRST:
                # loaded-first: only when live.lua picked nothing (no live view yet).
                return "leastconn"

    @property
    def has_peers(self) -> bool:
        return any(s.peer for s in self.servers)

    @property
    def has_local(self) -> bool:
        return any(not s.peer for s in self.servers)

    @property
    def has_backups(self) -> bool:
        return any(s.backup for s in self.servers)


@dataclass(frozen=True)
class Route:
    model: str  # canonical key, as `olladist.names.normalize_model` gives it
    backend: str


@dataclass(frozen=True)
class Paths:
    """Real paths (under the layout's root) that the config refers to."""

    models_map: str
    local_map: str
    peers_acl: str
    live_lua: str  # shipped, the same on every node
    live_config_lua: str  # this node's settings for it, loaded first
    ready_map: str  # models every holder can serve now (public port); written live by Lua
    local_ready_map: str  # the same for this node's instances (peer port)
    warm_map: str  # loaded-first: model -> admission backend of a local instance it is loaded on
    pulls_map: str  # pulls in progress (model -> 43% or failed), written live by the reconciler
    feed_socket: str  # loopback-only listener through which the Lua poller reaches peers
    peer_secret_map: str
    admin_socket: str
    server_state: str
    status_socket: str  # the reconciler's status server (olladist.statusd)
    large_config: str
    large_socket: str
    return_socket: str


@dataclass(frozen=True)
class Limits:
    """What gateway.limits.memory allows each process (docs/gateway.md "Memory")."""

    memory: int  # bytes, the ceiling
    maxconn: int  # public process: connections at once (clients and peers)
    large_maxconn: int  # large-body process: requests at once
    threads: int = 1  # the public process's nbthread (gateway.limits.threads)

    @classmethod
    def for_memory(cls, memory: int, threads: int = 1) -> Limits:
        room = memory - BASE_MEMORY
        large = max(1, int(room * LARGE_SHARE) // LARGE_CONN_MEMORY)
        public = max(100, (room - large * LARGE_CONN_MEMORY) // PUBLIC_CONN_MEMORY)
        return cls(memory, public, large, threads)

    @property
    def fd_limit(self) -> int:
        """Descriptors for ``maxconn`` proxied connections: HAProxy keeps 28 for itself (its
        listeners, checks, sockets) and halves the rest (measured: 20,000 gives 9,986)."""
        return 2 * self.maxconn + 28

    @property
    def ceiling(self) -> int:
        """The worst case these limits allow, at most ``memory``."""
        return (
            BASE_MEMORY + self.maxconn * PUBLIC_CONN_MEMORY + self.large_maxconn * LARGE_CONN_MEMORY
        )


@dataclass(frozen=True)
class Topology:
    cluster: str
    node: str
    listen: str
    port: int
    peer_port: int
    stats_bind: str
    stats_port: int
    timeouts: Timeouts
    health_interval: str
    health_fall: int
    health_rise: int
    admin_allowed: bool
    api_keys_file: str | None
    peer_auth: PeerAuth
    tls: NodeTLS
    peer_source: str | None  # source address for connections to peers, so allowlists match
    allowlist: tuple[str, ...]  # addresses the peer frontend accepts
    instances: Backend
    peers: Backend
    locals: tuple[Backend, ...]
    routes_backends: tuple[Backend, ...]
    routes: tuple[Route, ...]
    local_routes: tuple[Route, ...]
    admits: tuple[Backend, ...]  # loaded-first: one admission backend per local instance
    paths: Paths
    limits: Limits
    fair: fairness.FairPolicy  # fairness and limits per client (issue 17 part 3)
    bufsize: int = BUFSIZE
    maxrewrite: int = MAXREWRITE
    small_body: int = SMALL_BODY
    large_bufsize: int = LARGE_BUFSIZE
    large_maxrewrite: int = LARGE_MAXREWRITE
    max_body: int = MAX_BODY
    retry_after: int = RETRY_AFTER_S
    model_header: str = MODEL_HEADER
    body_wait: str = BODY_WAIT
    hash_balance_factor: int = HASH_BALANCE_FACTOR
    min_secret_len: int = MIN_SECRET_LEN

    @property
    def default_backend(self) -> str | None:
        if self.instances.servers:
            return self.instances.name
        if self.peers.servers:
            return self.peers.name
        return None

    @property
    def public_bind(self) -> str:
        return hostport(self.listen, self.port)

    @property
    def peer_bind(self) -> str:
        return hostport(self.listen, self.peer_port)

    @property
    def stats_bind_addr(self) -> str:
        return hostport(self.stats_bind, self.stats_port)

    @property
    def peer_source_addr(self) -> str | None:
        return hostport(self.peer_source) if self.peer_source else None

    @property
    def needs_peer_secret(self) -> bool:
        return self.peer_auth == PeerAuth.SECRET and bool(self.peers.servers)

    @property
    def feed_peers(self) -> tuple[Server, ...]:
        """Peers whose live report this node's poller fetches (its own peer frontend, listed
        in ``peers`` for model-affinity, is not one)."""
        own = _peer_server_name(self.node)
        return tuple(s for s in self.peers.servers if s.name != own)

    @property
    def schedules(self) -> bool:
        """Some model of this gateway is routed loaded-first (its Lua pick runs)."""
        return any(
            b.strategy == Strategy.LOADED_FIRST for b in (*self.routes_backends, *self.locals)
        )

    @property
    def has_peer_frontend(self) -> bool:
        """A node with instances and at least one peer serves the peer port."""
        return bool(self.instances.servers) and bool(self.peers.servers)


def socket_path(path: str) -> str:
    safe_path(path)
    if len(path) > SOCKET_PATH_MAX:
        raise RenderError(
            f"socket path {path!r} is {len(path)} characters; HAProxy allows {SOCKET_PATH_MAX}",
            hint="use a shorter --root",
        )
    return path


def safe_path(path: str) -> str:
    if not _SAFE_PATH.match(path):
        raise RenderError(
            f"path {path!r} has characters the gateway config cannot carry safely",
            hint="use a --root (and node-local file paths) made of letters, digits and _./@+-",
        )
    return path


def _peer_server_name(node: str) -> str:
    # '.' is not allowed in node or instance names, so peer servers never collide with instances.
    return f"peer.{node}"


def admit_backend(instance: str) -> str:
    """The admission backend of a local instance (loaded-first)."""
    return f"admit.{instance}"


def _route_name(strategy: Strategy, holders: tuple[str, ...]) -> str:
    name = f"route.{strategy}.{'.'.join(holders)}"
    if len(name) <= ROUTE_NAME_MAX:
        return name
    digest = hashlib.sha256("\0".join(holders).encode()).hexdigest()[:12]
    return f"route.{strategy}.{len(holders)}-nodes.{digest}"


def _capacity(node: Node) -> int:
    return sum(i.num_parallel for i in node.instances)


def local_address(node: Node) -> str:
    """Where this machine reaches the node's listeners, and where its stats listener binds:
    nodes of a one-machine cluster each have their own 127.0.0.N, so their ports do not clash."""
    return node.listen if node.loopback else "127.0.0.1"


def listeners(spec: Spec, node: Node) -> list[tuple[str, int, str]]:
    """Every (address, port, what) the node's gateway and instances listen on."""
    gw = spec.gateway
    out = [
        (node.listen, gw.port, "gateway"),
        (node.listen, gw.peer_port, "peer frontend"),
        (local_address(node), gw.stats_port, "stats"),
    ]
    return out + [(INSTANCE_HOST, i.port, f"instance {i.name}") for i in node.instances]


def _unspecified(addr: str) -> bool:
    return ipaddress.ip_address(addr).is_unspecified


def build(
    spec: Spec,
    node_name: str,
    placement: Placement,
    layout: Layout,
    tls: NodeTLS | None = None,
) -> Topology:
    tls = tls or NodeTLS()
    node = spec.node(node_name)
    gw = spec.gateway
    gateway_dir = layout.path(GATEWAY_DIR)
    paths = Paths(
        models_map=safe_path(f"{gateway_dir}/models.map"),
        local_map=safe_path(f"{gateway_dir}/local.map"),
        peers_acl=safe_path(f"{gateway_dir}/peers.acl"),
        live_lua=safe_path(f"{gateway_dir}/live.lua"),
        live_config_lua=safe_path(f"{gateway_dir}/live-config.lua"),
        ready_map=safe_path(f"{gateway_dir}/ready.map"),
        local_ready_map=safe_path(f"{gateway_dir}/local-ready.map"),
        warm_map=safe_path(f"{gateway_dir}/warm.map"),
        pulls_map=safe_path(f"{gateway_dir}/pulls.map"),
        feed_socket=socket_path(layout.path(FEED_SOCKET)),
        peer_secret_map=safe_path(layout.path(PEER_SECRET_FILE)),
        admin_socket=socket_path(layout.path(ADMIN_SOCKET)),
        server_state=safe_path(layout.path(SERVER_STATE_FILE)),
        status_socket=socket_path(layout.path(STATUS_SOCKET)),
        large_config=safe_path(layout.path(LARGE_CONFIG)),
        large_socket=socket_path(layout.path(LARGE_SOCKET)),
        return_socket=socket_path(layout.path(RETURN_SOCKET)),
    )
    # TLS paths come from the node's environment and are real paths; the API keys file is a
    # node path from the spec, so it moves under the root like every file olladist owns.
    for p in (tls.peer_cert, tls.peer_ca, tls.public_cert):
        if p is not None:
            safe_path(p)
    api_keys = safe_path(layout.path(gw.api_keys_file)) if gw.api_keys_file else None
    least = Strategy.LEAST_LOADED

    instances = Backend(
        INSTANCES_BACKEND,
        least,
        tuple(
            # No maxconn here: this backend answers /api/version and /api/ps, which must
            # not queue behind generations.
            Server(i.name, INSTANCE_HOST, i.port)
            for i in node.instances
        ),
        checked=True,
    )
    others = [n for n in spec.nodes if n.name != node.name and n.instances]
    by_name = {n.name: n for n in spec.nodes}

    groups: dict[tuple[Strategy, tuple[str, ...]], list[str]] = {}
    local_groups: dict[Strategy, list[str]] = {}
    for model in spec.models:
        holders = tuple(sorted(placement.nodes_for(model.key)))
        if not holders:
            continue
        strategy = spec.strategy_for(model)
        groups.setdefault((strategy, holders), []).append(model.key)
        if node.name in holders:
            local_groups.setdefault(strategy, []).append(model.key)

    # model-affinity must pick the same instance whichever gateway a request enters. Each
    # gateway hashes over the same list (one peer frontend per holder, sorted, this node's own
    # included), so they agree on the node; that node's peer frontend hashes over its own
    # instances, so it agrees on the instance. Local requests take one extra loopback hop.
    via_self = any(
        s == Strategy.MODEL_AFFINITY and len(h) > 1 and node.name in h for s, h in groups
    )
    peer_targets = others + ([node] if via_self else [])
    peers = Backend(
        PEERS_BACKEND,
        Strategy.ROUND_ROBIN,
        tuple(
            Server(_peer_server_name(n.name), n.address, gw.peer_port, peer=True)
            for n in sorted(peer_targets, key=lambda n: n.name)
        ),
        checked=True,
    )

    capped = (least, Strategy.LOADED_FIRST)

    def local_servers(strategy: Strategy) -> list[Server]:
        return [
            Server(
                i.name,
                INSTANCE_HOST,
                i.port,
                maxconn=i.num_parallel if strategy in capped else None,
                track=f"{instances.name}/{i.name}",
            )
            for i in node.instances
        ]

    route_backends: list[Backend] = []
    routes: list[Route] = []
    for (strategy, holders), models in sorted(groups.items()):
        name = _route_name(strategy, holders)
        consistent = strategy == Strategy.MODEL_AFFINITY and len(holders) > 1
        servers = local_servers(strategy) if node.name in holders and not consistent else []
        has_local = bool(servers)
        for holder in holders:
            if holder == node.name and not consistent:
                continue
            peer = by_name[holder]
            servers.append(
                Server(
                    _peer_server_name(holder),
                    peer.address,
                    gw.peer_port,
                    maxconn=_capacity(peer) if strategy == least else None,
                    backup=strategy == Strategy.LOCAL_FIRST and has_local,
                    peer=True,
                    track=f"{peers.name}/{_peer_server_name(holder)}",
                )
            )
        route_backends.append(Backend(name, strategy, tuple(servers)))
        routes += [Route(m, name) for m in models]

    locals_: list[Backend] = []
    local_routes: list[Route] = []
    for strategy, models in sorted(local_groups.items()):
        name = f"local.{strategy}"
        locals_.append(Backend(name, strategy, tuple(local_servers(strategy))))
        local_routes += [Route(m, name) for m in models]

    # loaded-first: all of an instance's traffic, this gateway's and its peers', is admitted in
    # one place, so its num_parallel slots are never overcommitted by two gateways.
    admits = (
        tuple(
            Backend(admit_backend(i.name), Strategy.LOADED_FIRST, (s,))
            for i, s in zip(node.instances, local_servers(Strategy.LOADED_FIRST), strict=True)
        )
        if Strategy.LOADED_FIRST in local_groups
        else ()
    )

    listen = node.listen
    allow: set[str] = set()
    for n in peer_targets:
        allow.add(n.address)
        if not _unspecified(n.listen):
            allow.add(n.listen)
    return Topology(
        cluster=spec.cluster,
        node=node.name,
        listen=listen,
        port=gw.port,
        peer_port=gw.peer_port,
        stats_bind=local_address(node),
        stats_port=gw.stats_port,
        timeouts=gw.timeouts,
        health_interval=gw.health.interval,
        health_fall=gw.health.fall,
        health_rise=gw.health.rise,
        admin_allowed=gw.admin_api == "allow",
        api_keys_file=api_keys,
        peer_auth=PeerAuth.TLS if tls.peer_cert else PeerAuth.SECRET,
        tls=tls,
        peer_source=None if _unspecified(listen) else listen,
        allowlist=tuple(sorted(allow)),
        instances=instances,
        peers=peers,
        locals=tuple(locals_),
        routes_backends=tuple(route_backends),
        routes=tuple(sorted(routes, key=lambda r: r.model)),
        local_routes=tuple(sorted(local_routes, key=lambda r: r.model)),
        admits=admits,
        paths=paths,
        limits=Limits.for_memory(memory_bytes(gw.limits.memory), gw.limits.threads),
        fair=fairness.build(
            spec,
            safe_path(layout.path(fairness.FAIR_LUA)),
            safe_path(layout.path(fairness.FAIR_CONFIG_LUA)),
            api_keys,
            tuple(b.name for b in (*route_backends, *admits)),
        ),
    )
