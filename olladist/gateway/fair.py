"""Fairness and limits per client at the gateway (issue 17 part 3; docs/gateway.md, "Fair
across clients").

The public frontend names the client (the digest of its API key, else its address), runs the
shipped ``fair.lua`` action ``olladist_fair`` (the fair order and the client's limits), counts
limited clients in the stick table ``olladist_clients`` and answers 429 past a limit. This
module decides what of that a node's config holds; ``fair.lua`` is the same on every node and
reads its settings from the small rendered ``fair-config.lua``.
"""

from __future__ import annotations

from dataclasses import dataclass

from olladist.files import File
from olladist.gateway.lua import lua_literal, shipped_lua
from olladist.layout import GATEWAY_DIR
from olladist.spec import Spec, duration_ms

FAIR_LUA = f"{GATEWAY_DIR}/fair.lua"
FAIR_CONFIG_LUA = f"{GATEWAY_DIR}/fair-config.lua"
# Virtual time one request costs a client of weight 1 (docs/gateway.md). Only ratios matter
# (the offset is scaled by how fast the fair order moves); this is its unit.
COST_MS = 1000
# Retry-After on a 429 for concurrency: one of the client's own requests must end first.
CONCURRENT_RETRY_S = 1
# Stick-table rows: one per limited client seen in the last EXPIRE (a key or an address).
TABLE_SIZE = 100000
TABLE_EXPIRE = "10m"


@dataclass(frozen=True)
class FairPolicy:
    fair: bool  # order waiting requests fairly across clients
    keys: bool  # clients are API keys (else addresses)
    may_limit: bool  # some client can have a limit: the spec sets one, or a key line may
    max_concurrent: int | None
    requests_per_minute: int | None
    lua: str  # real paths, under the layout's root
    config_lua: str
    keys_file: str | None
    queue_ms: int  # gateway.timeouts.queue
    # The backends public requests reach instances through: their servers' counts are how
    # fast the gateway serves (fair.lua measures its cost per request from them).
    backends: tuple[str, ...]
    cost_ms: int = COST_MS
    concurrent_retry: int = CONCURRENT_RETRY_S
    table_size: int = TABLE_SIZE
    table_expire: str = TABLE_EXPIRE

    @property
    def rpm_retry(self) -> int:
        """Retry-After past the rate limit: one more request fits about 60/rpm seconds after
        the limit is hit, as the window slides (fair.lua computes the same for keys)."""
        rpm = self.requests_per_minute or 60
        return max(1, -(-60 // rpm))

    @property
    def active(self) -> bool:
        """The frontend runs the action (anything to order or count)."""
        return self.fair or self.may_limit or self.keys


def build(
    spec: Spec, lua: str, config_lua: str, keys_file: str | None, backends: tuple[str, ...]
) -> FairPolicy:
    c = spec.gateway.clients
    spec_limits = c.max_concurrent is not None or c.requests_per_minute is not None
    return FairPolicy(
        fair=c.fair,
        keys=keys_file is not None,
        may_limit=spec_limits or keys_file is not None,
        max_concurrent=c.max_concurrent,
        requests_per_minute=c.requests_per_minute,
        lua=lua,
        config_lua=config_lua,
        keys_file=keys_file,
        queue_ms=duration_ms(spec.gateway.timeouts.queue),
        backends=backends,
    )


def config_lua(p: FairPolicy, node: str) -> str:
    items = {
        "keys_file": p.keys_file,
        "fair": p.fair,
        "cost_ms": p.cost_ms,
        "queue_ms": p.queue_ms,
        "backends": p.backends,
        "max_concurrent": p.max_concurrent,
        "requests_per_minute": p.requests_per_minute,
    }
    return (
        f'-- Fairness and limits per client for node {node} (docs/gateway.md, "Fair across\n'
        '-- clients"). Rendered by olladist; HAProxy loads it just before the shipped fair.lua.\n'
        f"olladist_fair_settings = {lua_literal(items)}\n"
    )


def fair_files(p: FairPolicy, node: str) -> dict[str, File]:
    return {FAIR_LUA: File(shipped_lua("fair.lua")), FAIR_CONFIG_LUA: File(config_lua(p, node))}
