"""Read this node's gateway's live view (``/olladist/v1/live`` on the stats listener).

Converged means serving: ``olladist diff``, ``status`` and ``wait`` count as drift a model this
node holds that its gateway cannot serve, and a peer the gateway cannot reach (docs/gateway.md
has the report's shape). ``olladist dev`` waits until every gateway serves every listed model.
"""

from __future__ import annotations

from typing import Any

import httpx

from olladist.gateway.topology import build
from olladist.layout import Layout
from olladist.placement import Placement
from olladist.plan import Action, Kind
from olladist.spec import Spec

LIVE_PATH = "/olladist/v1/live"
LIVE_VERSION = 1
# The stats listener is on loopback and answers from memory: a slow answer means trouble.
TIMEOUT = 3.0


class LiveUnavailable(Exception):
    """The gateway's live view did not answer (not running, starting, an old olladist)."""


def live_url(spec: Spec, node: str, placement: Placement, layout: Layout) -> str:
    t = build(spec, node, placement, layout)
    return f"http://{t.stats_bind_addr}{LIVE_PATH}"


def fetch_live(url: str, client: httpx.Client | None = None) -> dict[str, Any]:
    own = client is None
    c = client or httpx.Client(timeout=TIMEOUT, trust_env=False)
    try:
        r = c.get(url)
        r.raise_for_status()
        data = r.json()
    except (httpx.HTTPError, ValueError) as exc:
        raise LiveUnavailable(f"{url}: {exc}") from exc
    finally:
        if own:
            c.close()
    if not isinstance(data, dict) or data.get("version") != LIVE_VERSION:
        raise LiveUnavailable(f"{url}: not a version {LIVE_VERSION} live report")
    return data


def serving_drift(report: dict[str, Any], held: list[str]) -> list[Action]:
    """Drift in a live report: models of ``held`` (this node's, canonical names) that the
    gateway cannot serve, and peers it cannot reach. Pure, for tests on captured reports."""
    out = []
    placed = report.get("placed") or {}
    for model in held:
        st = placed.get(model) or {}
        if st.get("state") != "ready":
            why = st.get("reason") or "not in the gateway's live view"
            out.append(
                Action(Kind.REPORT, f"serving {model}", f"the gateway cannot serve it: {why}")
            )
    for peer in report.get("peers") or []:
        if not peer.get("reachable"):
            why = peer.get("error") or f"health {peer.get('health', '?')}"
            out.append(
                Action(
                    Kind.REPORT, f"peer {peer.get('node')}", f"the gateway cannot reach it: {why}"
                )
            )
    return out


def node_serving_drift(spec: Spec, node: str, placement: Placement, layout: Layout) -> list[Action]:
    """``serving_drift`` of this node's running gateway; one drift item if it does not answer."""
    url = live_url(spec, node, placement, layout)
    held = sorted(m.key for m in spec.models if node in placement.nodes_for(m.key))
    try:
        report = fetch_live(url)
    except LiveUnavailable as exc:
        return [Action(Kind.REPORT, "gateway", f"its live view does not answer: {exc}")]
    return serving_drift(report, held)


def serves_everything(report: dict[str, Any], listed: list[str]) -> list[str]:
    """What of ``listed`` (every placed model) a gateway does not list or cannot route to every
    holder now; empty when it serves it all."""
    serving, ready = set(report.get("serving") or []), set(report.get("ready") or [])
    return [m for m in listed if m not in serving or m not in ready]
