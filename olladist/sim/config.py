"""The simulator's configuration, read from the environment exactly like ``ollama serve``.

Parsing is pure (a mapping in, a frozen SimConfig out) so tests need no process.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from olladist.names import DEFAULT_REGISTRY
from olladist.sim.errors import SimConfigError
from olladist.sim.faults import Faults, parse_faults

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 11434
DEFAULT_VERSION = "0.12.3"

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}


def parse_duration(text: str) -> float | None:
    """Parse an Ollama keep-alive into seconds; None means "forever".

    Ollama accepts a Go duration (``5m``, ``1h30m``, ``-1s``) or a bare number of seconds
    (``300``, ``-1``). Any negative value keeps the model loaded forever; 0 unloads at once.
    """
    value = text.strip()
    if not value:
        raise SimConfigError("empty duration")
    try:
        seconds = float(value)
    except ValueError:
        sign = -1.0 if value.startswith("-") else 1.0
        body = value.lstrip("+-")
        pos, seconds = 0, 0.0
        for match in _DURATION_PART.finditer(body):
            if match.start() != pos:
                break
            seconds += float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
            pos = match.end()
        if pos != len(body) or not body:
            raise SimConfigError(f"invalid duration {text!r} (use e.g. 5m, 30s, -1, 0)") from None
        seconds *= sign
    return None if seconds < 0 else seconds


def keep_alive_from_json(value: object) -> float | None:
    """A request's ``keep_alive`` field: a duration string or a number of seconds."""
    if isinstance(value, bool):
        raise SimConfigError("keep_alive must be a duration string or a number")
    if isinstance(value, int | float):
        return None if value < 0 else float(value)
    if isinstance(value, str):
        return parse_duration(value)
    raise SimConfigError("keep_alive must be a duration string or a number")


def parse_host(text: str) -> tuple[str, int]:
    """Parse OLLAMA_HOST: ``host:port``, ``:port``, ``host``, ``http://host:port``."""
    value = text.strip()
    for scheme in ("http://", "https://"):
        if value.startswith(scheme):
            value = value[len(scheme) :]
    value = value.rstrip("/")
    if not value:
        return DEFAULT_HOST, DEFAULT_PORT
    if value.startswith("["):  # [::1]:port
        host, _, rest = value[1:].partition("]")
        port_text = rest.removeprefix(":")
    elif value.count(":") == 1:
        host, port_text = value.split(":")
    else:
        host, port_text = value, ""
    host = host or DEFAULT_HOST
    if not port_text:
        return host, DEFAULT_PORT
    if not port_text.isdigit() or int(port_text) > 65535:
        raise SimConfigError(f"invalid port in OLLAMA_HOST={text!r}")
    return host, int(port_text)


def _int(env: Mapping[str, str], key: str, default: int, minimum: int = 0) -> int:
    raw = env.get(key, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SimConfigError(f"{key}={raw!r} is not an integer") from None
    if value < minimum:
        raise SimConfigError(f"{key}={raw!r} must be >= {minimum}")
    return value


def _float(env: Mapping[str, str], key: str, default: float) -> float:
    raw = env.get(key, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SimConfigError(f"{key}={raw!r} is not a number") from None
    if value <= 0:
        raise SimConfigError(f"{key}={raw!r} must be > 0")
    return value


def _bool(env: Mapping[str, str], key: str) -> bool:
    return env.get(key, "").strip().lower() in {"1", "true", "yes", "on"}


def _go_bool(env: Mapping[str, str], key: str) -> bool:
    """Ollama's envconfig.Bool: unset is false; a value strconv.ParseBool rejects is true."""
    raw = env.get(key, "").strip().strip("'\"")
    if not raw:
        return False
    return raw not in {"0", "f", "F", "FALSE", "false", "False"}


def parse_registry_map(text: str) -> dict[str, str]:
    """OLLADIST_SIM_REGISTRY: where pulls really go, by the host in the model name.

    ``http://127.0.0.1:5000`` stands in for registry.ollama.ai (the default registry);
    ``host=URL,host=URL`` maps several hosts (``registry.ollama.ai=http://127.0.0.1:5000,
    example.com:5000=http://127.0.0.1:5001``). Each URL is a scheme and a loopback host:port.
    """
    mapping: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        host, sep, url = item.partition("=")
        if not sep:
            host, url = DEFAULT_REGISTRY, item
        host, url = host.strip().lower(), url.strip().rstrip("/")
        scheme, sep, netloc = url.partition("://")
        if not sep or scheme not in ("http", "https") or not netloc or "/" in netloc:
            raise SimConfigError(
                f"OLLADIST_SIM_REGISTRY: {item!r} is not URL or host=URL "
                "(e.g. http://127.0.0.1:5000 or registry.ollama.ai=http://127.0.0.1:5000)"
            )
        if not host:
            raise SimConfigError(f"OLLADIST_SIM_REGISTRY: {item!r} names no host")
        mapping[host] = f"{scheme}://{netloc}"
    return mapping


@dataclass(frozen=True)
class SimConfig:
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    models_dir: Path = Path("~/.ollama/models")
    num_parallel: int = 1
    max_loaded_models: int = 3
    max_queue: int = 512
    keep_alive: float | None = 300.0  # seconds; None = forever
    load_speed_gbps: float = 10.0  # GB/s read from "disk" into "VRAM"
    pull_speed_gbps: float = 5.0
    token_rate: float = 200.0  # generated tokens per second per request
    prompt_rate: float = 5000.0  # prompt tokens evaluated per second
    response_tokens: int = 16  # tokens per answer unless num_predict says fewer
    vram_gb: float | None = None  # None: only OLLAMA_MAX_LOADED_MODELS limits what is loaded
    gpus: int = 1  # 0: a CPU-only host (size_vram 0); sets the OLLAMA_MAX_LOADED_MODELS default
    context_length: int = 4096  # OLLAMA_CONTEXT_LENGTH: num_ctx unless the model or request says
    no_prune: bool = False  # OLLAMA_NOPRUNE: keep the old layers after a pull
    registries: dict[str, str] = field(default_factory=dict)  # host in a name -> loopback URL
    catalogue_file: Path | None = None
    version: str = DEFAULT_VERSION
    quiet: bool = False
    faults: Faults = field(default_factory=Faults)

    def load_seconds(self, size_bytes: int) -> float:
        return size_bytes / (self.load_speed_gbps * 1e9)

    def pull_seconds(self, size_bytes: int) -> float:
        return size_bytes / (self.pull_speed_gbps * 1e9)


def config_from_env(env: Mapping[str, str] | None = None) -> SimConfig:
    """Build the configuration from ``ollama serve``'s variables and OLLADIST_SIM_* knobs."""
    env = os.environ if env is None else env
    host, port = parse_host(env.get("OLLAMA_HOST", ""))
    models = env.get("OLLAMA_MODELS", "").strip()
    models_dir = Path(models) if models else Path.home() / ".ollama" / "models"
    keep_alive_raw = env.get("OLLAMA_KEEP_ALIVE", "").strip()
    keep_alive = parse_duration(keep_alive_raw) if keep_alive_raw else 300.0
    # Ollama (server/sched.go): 0 means 3 x the number of GPUs, and 3 on a CPU-only host.
    gpus = _int(env, "OLLADIST_SIM_GPUS", 1)
    max_loaded = _int(env, "OLLAMA_MAX_LOADED_MODELS", 0) or 3 * max(gpus, 1)
    num_parallel = _int(env, "OLLAMA_NUM_PARALLEL", 0) or 1
    catalogue = env.get("OLLADIST_SIM_CATALOGUE", "").strip()
    return SimConfig(
        host=host,
        port=port,
        models_dir=models_dir,
        num_parallel=num_parallel,
        max_loaded_models=max_loaded,
        max_queue=_int(env, "OLLAMA_MAX_QUEUE", 512),
        keep_alive=keep_alive,
        load_speed_gbps=_float(env, "OLLADIST_SIM_LOAD_GBPS", 10.0),
        pull_speed_gbps=_float(env, "OLLADIST_SIM_PULL_GBPS", 5.0),
        token_rate=_float(env, "OLLADIST_SIM_TOKEN_RATE", 200.0),
        prompt_rate=_float(env, "OLLADIST_SIM_PROMPT_RATE", 5000.0),
        response_tokens=_int(env, "OLLADIST_SIM_RESPONSE_TOKENS", 16, minimum=1),
        vram_gb=_float(env, "OLLADIST_SIM_VRAM_GB", 0.0) or None,
        gpus=gpus,
        context_length=_int(env, "OLLAMA_CONTEXT_LENGTH", 4096, minimum=1),
        no_prune=_go_bool(env, "OLLAMA_NOPRUNE"),
        registries=parse_registry_map(env.get("OLLADIST_SIM_REGISTRY", "")),
        catalogue_file=Path(catalogue) if catalogue else None,
        version=env.get("OLLADIST_SIM_VERSION", "").strip() or DEFAULT_VERSION,
        quiet=_bool(env, "OLLADIST_SIM_QUIET"),
        faults=parse_faults(env.get("OLLADIST_SIM_FAULTS", "")),
    )
