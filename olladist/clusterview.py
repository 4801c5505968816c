"""The cluster as one node sees it: the JSON behind the status page (``/olladist/v1/cluster``).

Pure: the spec and placement this node follows, its own status, and what each peer answered
(or why it did not) in; one JSON-ready dict out, documented by docs/schema/cluster-view.schema.json.
The page (olladist/data/page/) only draws this value.

Words, not only flags: every node carries ``state`` (a closed set, for machines) and
``state_text`` (a sentence, for people), so the page never needs colour to say what is wrong.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from olladist.names import normalize_model
from olladist.peers import NO_PEER_PORT
from olladist.placement import Placement
from olladist.spec import Spec

SCHEMA_ID = "olladist.cluster-view/v1"
# How often the page asks again; short enough that a node going down shows within seconds.
REFRESH_S = 5.0
LINKS = {
    "page": "/olladist/",
    "cluster": "/olladist/v1/cluster",
    "status": "/olladist/v1/status",
    "haproxy_stats": "/",
    "metrics": "/metrics",
}


@dataclass(frozen=True)
class Fetched:
    """One node's answer to one path (its status, its live view), or why there is none."""

    data: Any = None
    error: str | None = None
    last_seen: float | None = None
    elapsed_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None and isinstance(self.data, dict)


def _up(status: str) -> bool:
    return str(status).startswith("UP")


def _state(status: dict[str, Any] | None, fetched: Fetched, has_instances: bool) -> tuple[str, str]:
    if status is None:
        if not has_instances and fetched.error == NO_PEER_PORT:
            return "no-peer-port", "not asked: a node without instances has no peer port"
        return "unreachable", f"unreachable: {fetched.error or 'no answer'}"
    if not status.get("runs"):
        return "starting", "starting: no reconcile has finished yet"
    if status.get("attempted_error"):
        commit = str(status.get("attempted_commit") or "")[:12]
        return "refused", f"refused commit {commit}: {status['attempted_error']}"
    if status.get("errors"):
        return "error", f"error: {status['errors'][0].get('message', '')}"
    down = [h["name"] for h in _instances(status) if not _up(h.get("status", ""))]
    if down:
        return "degraded", f"instance(s) not up: {', '.join(down)}"
    if status.get("drift"):
        return "drift", f"converging: {len(status['drift'])} drift item(s)"
    return "ok", "converged and healthy"


def _instances(status: dict[str, Any]) -> list[dict[str, Any]]:
    return [h for h in status.get("health") or [] if h.get("kind") == "instance"]


def _observed(status: dict[str, Any] | None, live: Fetched) -> tuple[set[str], set[str]] | None:
    """(present in the store, loaded on some instance) on a node, or None when unknown.
    The gateway's live view wins when it answers in a shape we read; else the reconciler's
    own look at its instances (``observed`` in its status)."""
    from_live = _live_models(live.data) if live.ok else None
    if from_live is not None:
        return from_live
    obs = (status or {}).get("observed")
    if not isinstance(obs, dict) or obs.get("error"):
        return None
    loaded = {m for names in (obs.get("loaded") or {}).values() for m in names}
    return set(obs.get("present") or []), loaded


def _name(entry: Any) -> str | None:
    if isinstance(entry, str):
        return normalize_model(entry)
    if isinstance(entry, dict):
        name = entry.get("model") or entry.get("name")
        if isinstance(name, str):
            return normalize_model(name)
        return _name(entry.get("entry"))
    return None


def _live_models(live: dict[str, Any]) -> tuple[set[str], set[str]] | None:
    """Models present and loaded from ``/olladist/v1/live`` (docs/gateway.md): ``models`` is
    a list of store entries, ``loaded`` a list of {instance, entry}. None if it is not that."""
    models, loaded = live.get("models"), live.get("loaded")
    if not isinstance(models, list) or not isinstance(loaded, list):
        return None
    present = {n for n in map(_name, models) if n}
    return present, {n for n in map(_name, loaded) if n}


def build(
    *,
    viewer: str,
    spec: Spec | None,
    placement: Placement | None,
    commit: str,
    statuses: Mapping[str, Fetched],
    lives: Mapping[str, Fetched],
    now: float,
    refresh_s: float = REFRESH_S,
) -> dict[str, Any]:
    """The cluster view. ``statuses``/``lives`` are keyed by node name (this node included)."""
    names = [n.name for n in spec.nodes] if spec else [viewer]
    spec_nodes = {n.name: n for n in spec.nodes} if spec else {}
    nodes: list[dict[str, Any]] = []
    observed: dict[str, tuple[set[str], set[str]] | None] = {}
    serving_nodes: set[str] = set()
    errors: list[dict[str, Any]] = []
    drift: list[dict[str, Any]] = []
    transfers: list[dict[str, Any]] = []
    for name in names:
        fetched = statuses.get(name, Fetched(error="not asked"))
        live = lives.get(name, Fetched(error="not asked"))
        status = fetched.data if fetched.ok else None
        sn = spec_nodes.get(name)
        state, text = _state(status, fetched, bool(sn and sn.instances))
        instances = [
            {
                "name": h.get("name"),
                "status": h.get("status"),
                "up": _up(h.get("status", "")),
                "sessions": h.get("sessions", 0),
                "queued": h.get("queued", 0),
                "check": h.get("check") or "",
            }
            for h in (_instances(status) if status else [])
        ]
        observed[name] = _observed(status, live) if status else None
        if any(i["up"] for i in instances):
            serving_nodes.add(name)
        node_drift = list(status.get("drift") or []) if status else []
        node_errors = list(status.get("errors") or []) if status else []
        if status and status.get("attempted_error"):
            node_errors.insert(
                0,
                {
                    "message": f"commit {str(status.get('attempted_commit'))[:12]} refused: "
                    f"{status['attempted_error']}",
                    "hint": None,
                },
            )
        node_transfers = list(status.get("transfers") or []) if status else []
        drift += [{"node": name, **d} for d in node_drift]
        errors += [{"node": name, **e} for e in node_errors]
        transfers += [{"node": name, **t} for t in node_transfers]
        nodes.append(
            {
                "name": name,
                "address": sn.address if sn else None,
                "viewer": name == viewer,
                "reachable": status is not None,
                "state": state,
                "state_text": text,
                "last_seen": fetched.last_seen,
                "fetch_error": fetched.error,
                "fetch_s": round(fetched.elapsed_s, 3),
                "applied_commit": (status or {}).get("applied_commit") or None,
                "attempted_commit": (status or {}).get("attempted_commit") or None,
                "attempted_error": (status or {}).get("attempted_error"),
                "last_run_at": (status or {}).get("last_run_at"),
                "runs": (status or {}).get("runs", 0),
                "busy": ((status or {}).get("daemon") or {}).get("busy"),
                "instances": instances,
                "drift": node_drift,
                "errors": node_errors,
                "notes": list((status or {}).get("notes") or []),
                "transfers": node_transfers,
                "rollout": (status or {}).get("rollout"),
                "live": live.data if live.ok else None,
                "live_error": None if live.ok else live.error,
            }
        )

    models = []
    keys = [m.key for m in spec.models] if spec else []
    extra = sorted(
        {m for o in observed.values() if o for m in o[0] | o[1]} - set(keys),
    )
    for key in keys + extra:
        holders = set(placement.nodes_for(key)) if placement else set()
        cells = {}
        for name in names:
            o = observed[name]
            present = None if o is None else key in o[0]
            loaded = None if o is None else key in o[1]
            placed = name in holders
            cells[name] = {
                "placed": placed,
                "present": present,
                "loaded": loaded,
                # Gateways route it here (placed), the store holds it and an instance is up.
                "serving": None
                if o is None
                else bool(placed and present and name in serving_nodes),
            }
        models.append({"name": key, "in_spec": key in keys, "nodes": cells})

    reachable = sum(1 for n in nodes if n["reachable"])
    return {
        "schema": SCHEMA_ID,
        "cluster": spec.cluster if spec else None,
        "viewer": viewer,
        "commit": commit or None,
        "generated_at": round(now, 3),
        "refresh_s": refresh_s,
        "links": dict(LINKS),
        "summary": {
            "nodes": len(nodes),
            "reachable": reachable,
            "unreachable": len(nodes) - reachable,
            "drift_items": len(drift),
            "errors": len(errors),
            "transfers": len(transfers),
        },
        "nodes": nodes,
        "models": models,
        "drift": drift,
        "errors": errors,
        "transfers": transfers,
    }
