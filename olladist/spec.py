"""The cluster spec: pydantic models validated once at the edge.

Everything here is frozen. Names that end up in unit files, HAProxy configs or file paths are
restricted by pattern so that nothing a spec holds can inject into them. Loading from disk and
turning errors into ``file:line: field: message`` lives in ``olladist.specload``.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    model_validator,
)

from olladist.errors import OlladistError
from olladist.layout import ENV_FILE
from olladist.names import normalize_model

NAME_PATTERN = r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
MODEL_PATTERN = (
    r"^[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*){0,2}"
    r"(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?$"
)
LABEL_PATTERN = r"^[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?$"
ENV_KEY_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"
DURATION_PATTERN = r"^[0-9]{1,9}(ms|s|m|h|d)$"
GPU_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9-]{0,63}$"
HOST_PATTERN = r"^[A-Za-z0-9]([A-Za-z0-9.:-]{0,252}[A-Za-z0-9])?$"
PATH_PATTERN = r"^/[A-Za-z0-9_./@+-]*$"
DIGEST_PATTERN = r"^sha256:[0-9a-f]{64}$"
COMMIT_PATTERN = r"^[0-9a-f]{40}$"
MEMORY_PATTERN = r"^[0-9]{1,7}(MiB|GiB)$"

# Variables olladist derives from the instance itself; setting them in `env` would silently
# fight the rendered value, so the spec refuses them with a pointer to the right field.
RESERVED_ENV = {
    "OLLAMA_HOST": "instances[].port",
    "OLLAMA_MODELS": "ollama.models_dir",
    "OLLAMA_NUM_PARALLEL": "instances[].num_parallel",
    "CUDA_VISIBLE_DEVICES": "instances[].gpus",
}

_DURATION_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def duration_ms(value: str) -> int:
    m = re.fullmatch(r"([0-9]+)(ms|s|m|h|d)", value)
    if not m:
        raise ValueError(f"not a duration: {value!r}")
    return int(m.group(1)) * _DURATION_MS[m.group(2)]


def _env_value(v: object) -> object:
    # YAML turns `4` into an int and `true` into a bool; the environment only has strings.
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return str(v)
    return v


def _no_control_chars(v: str) -> str:
    if any(ord(c) < 32 or ord(c) == 127 for c in v):
        raise ValueError("control characters (newline, tab, ...) are not allowed")
    return v


def _check_env(env: dict[str, str]) -> dict[str, str]:
    for key in env:
        if key in RESERVED_ENV:
            raise ValueError(f"{key} is set by olladist from {RESERVED_ENV[key]}; remove it")
    return env


def _ip(v: str) -> str:
    try:
        return str(ipaddress.ip_address(v))
    except ValueError:
        raise ValueError(f"not an IP address: {v!r}") from None


Name = Annotated[str, Field(pattern=NAME_PATTERN, description="lowercase letters, digits, '-'")]
ModelName = Annotated[
    str,
    Field(
        pattern=MODEL_PATTERN,
        max_length=200,
        description="an Ollama model name, [[host/]namespace/]model[:tag]; no tag means :latest",
    ),
]
LabelStr = Annotated[str, Field(pattern=LABEL_PATTERN)]
Duration = Annotated[str, Field(pattern=DURATION_PATTERN, description="e.g. 500ms, 5s, 15m, 1h")]
# Ollama parses keep_alive with Go's time.ParseDuration (no "d"); -1 keeps a model forever.
KeepAlive = Annotated[
    str, Field(pattern=r"^(-1|0|[0-9]{1,9}(ms|s|m|h))$", description="e.g. 30m, 24h, 0, -1")
]
Port = Annotated[int, Field(ge=1, le=65535)]
AbsPath = Annotated[str, Field(pattern=PATH_PATTERN, max_length=4096)]
IPAddress = Annotated[str, AfterValidator(_ip)]
EnvValue = Annotated[
    str, BeforeValidator(_env_value), AfterValidator(_no_control_chars), Field(max_length=4096)
]
EnvKey = Annotated[str, Field(pattern=ENV_KEY_PATTERN)]
Env = Annotated[dict[EnvKey, EnvValue], AfterValidator(_check_env)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Strategy(StrEnum):
    ROUND_ROBIN = "round-robin"
    LEAST_LOADED = "least-loaded"
    MODEL_AFFINITY = "model-affinity"
    LOCAL_FIRST = "local-first"
    # Where the model is loaded, with a free slot; requests wait at the gateway, in the
    # instance's own admission queue (docs/gateway.md "Loaded-first scheduling").
    LOADED_FIRST = "loaded-first"


class AdminApi(StrEnum):
    DENY = "deny"
    ALLOW = "allow"


class DriftPolicy(StrEnum):
    CORRECT = "correct"
    REPORT = "report"


class ModelsTransfer(StrEnum):
    """How a node gets a model's blobs (docs/models.md)."""

    PEERS_FIRST = "peers-first"
    UPSTREAM = "upstream"


class Timeouts(_Model):
    connect: Duration = Field(default="5s", description="to open a connection to a server")
    queue: Duration = Field(
        default="60s", description="a request waits this long for a free slot, then 503"
    )
    server: Duration = Field(
        default="15m", description="time to first byte and between bytes; covers cold loads"
    )
    client: Duration = Field(default="15m", description="a silent client is cut off after this")


class Health(_Model):
    interval: Duration = Field(default="2s", description="between GET /api/version checks")
    fall: int = Field(default=2, ge=1, le=10, description="failed checks before a server is down")
    rise: int = Field(default=2, ge=1, le=10, description="passed checks before it is up again")


def memory_bytes(value: str) -> int:
    """``512MiB`` or ``1GiB`` (MEMORY_PATTERN) in bytes."""
    unit = 1 << 30 if value.endswith("GiB") else 1 << 20
    return int(value[:-3]) * unit


def _memory_floor(value: str) -> str:
    if memory_bytes(value) < 256 << 20:
        raise ValueError("at least 256MiB: the gateway needs room for its two processes")
    return value


class Limits(_Model):
    memory: Annotated[str, Field(pattern=MEMORY_PATTERN), AfterValidator(_memory_floor)] = Field(
        default="1GiB",
        description="memory ceiling of the gateway's HAProxy processes; connections and large "
        "bodies beyond it get 503 with Retry-After (docs/gateway.md)",
    )
    threads: int = Field(
        default=1,
        ge=1,
        le=64,
        description="threads of the gateway's HAProxy (nbthread). One serves thousands of "
        "requests a second at less CPU each (the live view's Lua runs under one lock for all "
        "threads); more for TLS handshakes at a high rate (docs/gateway.md)",
    )


class Clients(_Model):
    """Fairness and limits per client: an API key (with ``api_keys_file``) or else a client
    address. A key's own line in the keys file overrides the limits (docs/security.md)."""

    fair: bool = Field(
        default=True,
        description="waiting requests are served fairly across clients (virtual-clock order, "
        "weighted by each key's weight): a client that floods cannot starve a light one",
    )
    max_concurrent: int | None = Field(
        default=None,
        ge=1,
        le=100000,
        description="requests a client may have at the gateway at once (running or waiting); "
        "more answer 429 with Retry-After. null: no limit",
    )
    requests_per_minute: int | None = Field(
        default=None,
        ge=1,
        le=1000000,
        description="requests a client may start a minute (sliding window); more answer 429 "
        "with Retry-After. null: no limit",
    )


# HAProxy tracks a queued request's priority (arrival time + offset) in a window of this many
# milliseconds; offset plus time queued must stay inside it (configuration.txt,
# set-priority-offset), or the request passes for the most urgent one.
PRIORITY_WINDOW_MS = 524_287


class Scheduling(_Model):
    max_warm_wait: Duration = Field(
        default="10s",
        description="loaded-first: a request that needs a cold load yields to requests for "
        "a model already loaded on its instance for at most this long, then goes first",
    )


class Gateway(_Model):
    port: Port = Field(default=11434, description="public port: the Ollama and OpenAI API")
    peer_port: Port = Field(default=11400, description="gateway-to-gateway port, between nodes")
    stats_port: Port = Field(
        default=8404, description="HAProxy stats and /metrics, on 127.0.0.1 (loopback only)"
    )
    strategy: Strategy = Field(
        default=Strategy.LOADED_FIRST, description="how a model's requests spread on its servers"
    )
    admin_api: AdminApi = Field(
        default=AdminApi.DENY,
        description="deny: pull, push, create, copy, delete through the gateway answer 403",
    )
    api_keys_file: AbsPath | None = Field(
        default=None,
        description="node-local file of the API keys' SHA-256 hex digests, one a line, each "
        "with optional weight, class and limits (docs/security.md); never in git",
    )
    clients: Clients = Field(
        default=Clients(), description="fairness and limits per API key (else per address)"
    )
    timeouts: Timeouts = Field(default=Timeouts(), description="gateway timeouts")
    health: Health = Field(default=Health(), description="health checks of instances and peers")
    limits: Limits = Field(default=Limits(), description="the gateway's resource ceilings")
    scheduling: Scheduling = Field(
        default=Scheduling(), description="loaded-first: how cold and warm requests share a slot"
    )

    @property
    def warm_wait_ms(self) -> int:
        """max_warm_wait as used: the default is cut to half of a shorter timeouts.queue, so
        that a spec written before loaded-first, with a short queue timeout, still loads."""
        warm, queue = duration_ms(self.scheduling.max_warm_wait), duration_ms(self.timeouts.queue)
        if "max_warm_wait" in self.scheduling.model_fields_set:
            return warm
        return min(warm, queue // 2)

    @model_validator(mode="after")
    def _warm_wait_fits(self) -> Gateway:
        warm, queue = duration_ms(self.scheduling.max_warm_wait), duration_ms(self.timeouts.queue)
        if "max_warm_wait" not in self.scheduling.model_fields_set:
            return self  # the default gives way to a short queue timeout (warm_wait_ms)
        if warm >= queue:
            raise ValueError(
                f"scheduling.max_warm_wait ({self.scheduling.max_warm_wait}) must be shorter "
                f"than timeouts.queue ({self.timeouts.queue}): a cold request would never get "
                "its turn before its queue timeout"
            )
        if warm + queue > PRIORITY_WINDOW_MS:
            raise ValueError(
                "scheduling.max_warm_wait plus timeouts.queue must stay under "
                f"{PRIORITY_WINDOW_MS} ms (HAProxy's queue priority window)"
            )
        return self


class Ollama(_Model):
    binary: AbsPath = Field(
        default="/usr/local/bin/ollama",
        description="the ollama program; OLLADIST_OLLAMA_BINARY overrides it on a node",
    )
    models_dir: AbsPath = Field(
        default="/var/lib/olladist/models",
        description="the model store (OLLAMA_MODELS), shared by a node's instances",
    )
    env: Env = Field(
        default_factory=dict, description="environment of every instance (OLLAMA_KEEP_ALIVE, ...)"
    )


class Rollout(_Model):
    wave_timeout: Duration = Field(
        default="10m",
        description="a wave whose nodes have not reported healthy after this stops the rollout",
    )
    check_timeout: Duration = Field(
        default="2m",
        description="after applying a commit, each model the node holds must answer a tiny "
        "generate or embed through its gateway within this (a cold load included), and the "
        "gateway see its instances up, or the node rolls back",
    )


class Policy(_Model):
    drift: DriftPolicy = Field(
        default=DriftPolicy.CORRECT,
        description="correct or only report divergence from the applied commit; "
        "a new commit is always applied",
    )
    prune_models: bool = Field(
        default=False, description="delete models a node holds but is not given"
    )
    models_transfer: ModelsTransfer = Field(
        default=ModelsTransfer.PEERS_FIRST,
        description="peers-first: blobs come from peers over the peer port, verified, and "
        "from upstream once per cluster; upstream: every node pulls through its Ollama",
    )
    interval: Duration = Field(default="60s", description="how often a node polls the source")
    restart_stagger: Duration = Field(
        default="10s",
        description="delay between restart slots; nodes sharing a model restart in turn",
    )
    min_commit: Annotated[str, Field(pattern=COMMIT_PATTERN)] | None = Field(
        default=None,
        description="floor: a full commit sha every commit the nodes apply must descend from; "
        "bounds the signature walk of a node that has no accepted commit",
    )
    rollout: Rollout = Field(
        default=Rollout(), description="rollout waves, the check after apply, rollback"
    )


class Capacity(_Model):
    vram_gb: float | None = Field(default=None, gt=0, description="largest model it can load")
    disk_gb: float | None = Field(default=None, gt=0, description="room for its model store")


class Instance(_Model):
    name: Name = Field(description="unit olladist-ollama@NAME; unique in the node")
    port: Port = Field(description="its port on 127.0.0.1")
    gpus: list[Annotated[str, Field(pattern=GPU_PATTERN)]] = Field(
        default_factory=list,
        description="GPU indexes or UUIDs (CUDA_VISIBLE_DEVICES); empty: no restriction",
    )
    num_parallel: int = Field(
        default=1,
        ge=1,
        le=256,
        description="OLLAMA_NUM_PARALLEL; loaded-first and least-loaded: its maxconn",
    )
    env: Env = Field(default_factory=dict, description="added to ollama.env for this instance")


class Node(_Model):
    name: Name = Field(description="unique; OLLADIST_NODE (default: hostname) selects it")
    address: Annotated[str, Field(pattern=HOST_PATTERN)] = Field(
        description="where peers reach this node's gateway (IP or DNS name)"
    )
    listen: IPAddress = Field(default="0.0.0.0", description="where its gateway binds")
    labels: dict[LabelStr, LabelStr] = Field(
        default_factory=dict, description="matched by models[].selector"
    )
    capacity: Capacity = Field(default=Capacity(), description="limits placement respects")
    instances: list[Instance] = Field(
        default_factory=list, description="one ollama serve each; none: a gateway-only node"
    )

    @property
    def loopback(self) -> bool:
        """A node of a one-machine cluster: its gateway binds a 127.0.0.0/8 address."""
        return ipaddress.ip_address(self.listen).is_loopback


class Model(_Model):
    name: ModelName
    replicas: int | None = Field(
        default=None, ge=1, le=1000, description="how many nodes hold it (default 1)"
    )
    nodes: Literal["all"] | list[Name] | None = Field(
        default=None, description="exact placement: `all`, or a list of node names"
    )
    selector: dict[LabelStr, LabelStr] | None = Field(
        default=None, description="only nodes whose labels include all of these"
    )
    size_gb: float | None = Field(
        default=None, gt=0, description="checked against capacity.vram_gb and disk_gb"
    )
    digest: Annotated[str, Field(pattern=DIGEST_PATTERN)] | None = Field(
        default=None, description="pin: the manifest digest a pull must give"
    )
    preload: bool = Field(
        default=False, description="load it on one instance of each of its nodes after a pull"
    )
    keep_alive: KeepAlive | None = Field(
        default=None,
        description="how long a preload keeps it loaded when idle: a duration, 0 or -1 "
        "(forever); default: the instance's OLLAMA_KEEP_ALIVE",
    )
    strategy: Strategy | None = Field(
        default=None, description="overrides gateway.strategy for this model"
    )

    @functools.cached_property
    def key(self) -> str:
        """The canonical name used for placement, routing and comparison."""
        return normalize_model(self.name)


class Spec(_Model):
    cluster: Name = Field(description="the cluster's name")
    gateway: Gateway = Field(default=Gateway(), description="the HAProxy gateway of every node")
    ollama: Ollama = Field(default=Ollama(), description="how instances run")
    policy: Policy = Field(default=Policy(), description="how reconcilers behave")
    nodes: list[Node] = Field(min_length=1, description="the machines")
    models: list[Model] = Field(default_factory=list, description="what the cluster serves")

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        known = ", ".join(n.name for n in self.nodes)
        raise KeyError(f"no node {name!r} in the spec (nodes: {known})")

    def this_node(self, name: str) -> Node:
        """The node a command acts as, or the error an operator sees when it is not there."""
        names = [n.name for n in self.nodes]
        if name not in names:
            raise OlladistError(
                f"node {name!r} is not in the spec (nodes: {', '.join(names)})",
                hint=f"pass --node NAME or set OLLADIST_NODE in {ENV_FILE}",
            )
        return self.node(name)

    def strategy_for(self, model: Model) -> Strategy:
        return model.strategy or self.gateway.strategy
