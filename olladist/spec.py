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
)

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
ModelName = Annotated[str, Field(pattern=MODEL_PATTERN, max_length=200)]
LabelStr = Annotated[str, Field(pattern=LABEL_PATTERN)]
Duration = Annotated[str, Field(pattern=DURATION_PATTERN, description="e.g. 500ms, 5s, 15m, 1h")]
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


class AdminApi(StrEnum):
    DENY = "deny"
    ALLOW = "allow"


class DriftPolicy(StrEnum):
    CORRECT = "correct"
    REPORT = "report"


class Timeouts(_Model):
    connect: Duration = "5s"
    queue: Duration = "60s"
    server: Duration = Field(
        default="15m", description="time to first byte and between bytes; covers cold loads"
    )
    client: Duration = "15m"


class Health(_Model):
    interval: Duration = "2s"
    fall: int = Field(default=2, ge=1, le=10)
    rise: int = Field(default=2, ge=1, le=10)


class Gateway(_Model):
    port: Port = 11434
    peer_port: Port = 11400
    stats_port: Port = 8404
    strategy: Strategy = Strategy.LEAST_LOADED
    admin_api: AdminApi = AdminApi.DENY
    api_keys_file: AbsPath | None = Field(
        default=None, description="node-local file of API keys, one a line; never in git"
    )
    timeouts: Timeouts = Timeouts()
    health: Health = Health()


class Ollama(_Model):
    binary: AbsPath = "/usr/local/bin/ollama"
    models_dir: AbsPath = "/var/lib/olladist/models"
    env: Env = Field(default_factory=dict)


class Policy(_Model):
    drift: DriftPolicy = DriftPolicy.CORRECT
    prune_models: bool = False
    interval: Duration = "60s"
    restart_stagger: Duration = Field(
        default="10s",
        description="delay between restart slots; nodes sharing a model restart in turn",
    )


class Capacity(_Model):
    vram_gb: float | None = Field(default=None, gt=0, description="largest model it can load")
    disk_gb: float | None = Field(default=None, gt=0, description="room for its model store")


class Instance(_Model):
    name: Name
    port: Port
    gpus: list[Annotated[str, Field(pattern=GPU_PATTERN)]] = Field(default_factory=list)
    num_parallel: int = Field(default=1, ge=1, le=256)
    env: Env = Field(default_factory=dict)


class Node(_Model):
    name: Name
    address: Annotated[str, Field(pattern=HOST_PATTERN)] = Field(
        description="where peers reach this node's gateway (IP or DNS name)"
    )
    listen: IPAddress = Field(default="0.0.0.0", description="where its gateway binds")
    labels: dict[LabelStr, LabelStr] = Field(default_factory=dict)
    capacity: Capacity = Capacity()
    instances: list[Instance] = Field(default_factory=list)

    @property
    def loopback(self) -> bool:
        """A node of a one-machine cluster: its gateway binds a 127.0.0.0/8 address."""
        return ipaddress.ip_address(self.listen).is_loopback


class Model(_Model):
    name: ModelName
    replicas: int | None = Field(default=None, ge=1, le=1000)
    nodes: Literal["all"] | list[Name] | None = None
    selector: dict[LabelStr, LabelStr] | None = None
    size_gb: float | None = Field(default=None, gt=0)
    digest: Annotated[str, Field(pattern=DIGEST_PATTERN)] | None = None
    preload: bool = False
    strategy: Strategy | None = None

    @functools.cached_property
    def key(self) -> str:
        """The canonical name used for placement, routing and comparison."""
        return normalize_model(self.name)


class Spec(_Model):
    cluster: Name
    gateway: Gateway = Gateway()
    ollama: Ollama = Ollama()
    policy: Policy = Policy()
    nodes: list[Node] = Field(min_length=1)
    models: list[Model] = Field(default_factory=list)

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        known = ", ".join(n.name for n in self.nodes)
        raise KeyError(f"no node {name!r} in the spec (nodes: {known})")

    def strategy_for(self, model: Model) -> Strategy:
        return model.strategy or self.gateway.strategy
