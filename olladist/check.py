"""``olladist check``: an end-to-end smoke test of a running cluster, through a gateway.

One PASS/FAIL line per check; exit 0 only if every check passed:
- the gateway answers (``/api/version``);
- ``/api/tags`` lists every model the spec places, and each listed model is held where the
  gateway routes it (``/api/show`` answers);
- every placed model answers a tiny request (generate, or embed for embedding models);
- an unplaced model gets Ollama's 404;
- every server of the gateway (local instances, peers) is up, from HAProxy's stats;
- every node root given has converged (its status: no drift, no errors).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from olladist.gateway.runtime import parse_stat
from olladist.layout import Layout
from olladist.names import normalize_model
from olladist.spec import Spec
from olladist.state import State

TIMEOUT = httpx.Timeout(120.0, connect=5.0)


@dataclass(frozen=True)
class Result:
    ok: bool
    name: str
    detail: str

    def line(self) -> str:
        return f"{'PASS' if self.ok else 'FAIL'} {self.name}: {self.detail}"


def check_gateway(client: httpx.Client, base: str) -> Result:
    try:
        r = client.get(f"{base}/api/version")
        r.raise_for_status()
        return Result(True, "gateway", f"{base} answers, version {r.json().get('version')}")
    except (httpx.HTTPError, ValueError) as exc:
        return Result(False, "gateway", f"{base}: {exc}")


def check_tags(client: httpx.Client, base: str, spec: Spec) -> Result:
    want = {m.key for m in spec.models}
    try:
        r = client.get(f"{base}/api/tags")
        r.raise_for_status()
        have = {normalize_model(m.get("model") or m["name"]) for m in r.json()["models"]}
    except (httpx.HTTPError, ValueError, KeyError) as exc:
        return Result(False, "tags", f"/api/tags: {exc}")
    missing = sorted(want - have)
    if missing:
        return Result(False, "tags", f"/api/tags lacks {', '.join(missing)}")
    # A gateway's list can come from the spec rather than from the instances (the rendered
    # cluster view does), so a listed model is asked for where the gateway routes it: an
    # instance that lacks it answers 404.
    unserved = []
    for model in sorted(have):
        try:
            shown = client.post(f"{base}/api/show", json={"model": model})
        except httpx.HTTPError as exc:
            unserved.append(f"{model} ({exc})")
            continue
        if shown.status_code != 200:
            unserved.append(f"{model} (/api/show: {shown.status_code})")
    if unserved:
        return Result(False, "tags", f"/api/tags lists models not held: {', '.join(unserved)}")
    return Result(True, "tags", f"/api/tags lists all {len(want)} models of the spec, each held")


def _is_embedding(client: httpx.Client, base: str, model: str) -> bool:
    try:
        r = client.post(f"{base}/api/show", json={"model": model})
        if r.status_code == 200:
            caps = r.json().get("capabilities") or []
            return "embedding" in caps and "completion" not in caps
    except (httpx.HTTPError, ValueError):
        pass
    return "embed" in model or "minilm" in model


def check_model(client: httpx.Client, base: str, model: str) -> Result:
    name = f"model {model}"
    try:
        if _is_embedding(client, base, model):
            r = client.post(f"{base}/api/embed", json={"model": model, "input": "ping"})
            r.raise_for_status()
            dims = len(r.json()["embeddings"][0])
            return Result(True, name, f"embed answered ({dims} dimensions)")
        r = client.post(
            f"{base}/api/generate",
            json={"model": model, "prompt": "ping", "stream": False, "options": {"num_predict": 2}},
        )
        r.raise_for_status()
        body = r.json()
        if not body.get("done"):
            return Result(False, name, f"generate did not finish: {body}")
        return Result(
            True, name, f"generate answered in {body.get('total_duration', 0) / 1e9:.2f}s"
        )
    except (httpx.HTTPError, ValueError, KeyError, IndexError) as exc:
        detail = exc.response.text[:200] if isinstance(exc, httpx.HTTPStatusError) else str(exc)
        return Result(False, name, detail)


def check_unknown_model(client: httpx.Client, base: str) -> Result:
    model = "olladist-check-no-such-model:latest"
    try:
        r = client.post(f"{base}/api/generate", json={"model": model, "prompt": "x"})
    except httpx.HTTPError as exc:
        return Result(False, "unknown model", str(exc))
    if r.status_code == 404 and "error" in r.text:
        return Result(True, "unknown model", "an unplaced model gets 404 with an error body")
    return Result(False, "unknown model", f"got {r.status_code}: {r.text[:200]}")


def check_servers(client: httpx.Client, stats_url: str) -> Result:
    try:
        r = client.get(f"{stats_url.rstrip('/')}/stats;csv")
        r.raise_for_status()
    except httpx.HTTPError as exc:
        return Result(False, "servers", f"stats at {stats_url}: {exc}")
    # The stats page's CSV is the runtime socket's `show stat`: one parser for both.
    rows = [s for s in parse_stat(r.text) if s.check_status]
    down = sorted(
        {f"{s.backend}/{s.server} {s.status}" for s in rows if not s.status.startswith("UP")}
    )
    if down:
        return Result(False, "servers", "not up: " + ", ".join(down))
    return Result(True, "servers", f"all {len(rows)} checked servers are up")


def check_converged(root: Path, settle: float = 15.0) -> Result:
    """The node under ``root`` has converged, by its reconciler's status. Drift that a
    reconcile is correcting right now (an instance just restarted) is given ``settle``
    seconds to clear; drift that stays is a failure."""
    deadline = time.monotonic() + settle
    while True:
        result = _converged_now(root)
        if result.ok or time.monotonic() > deadline:
            return result
        time.sleep(0.5)


def _converged_now(root: Path) -> Result:
    status = State(Layout(root)).status()
    name = f"node root {root}"
    if status is None:
        return Result(False, name, "no status: the reconciler has not run")
    if status.get("attempted_error"):
        return Result(False, name, f"commit refused: {status['attempted_error']}")
    drift = status.get("drift") or []
    errors = status.get("errors") or []
    if drift or errors:
        what = errors[0]["message"] if errors else f"{drift[0]['kind']} {drift[0]['target']}"
        return Result(False, name, f"{len(drift)} drift item(s), {len(errors)} error(s): {what}")
    return Result(True, name, f"{status['node']} converged at {status['applied_commit'][:12]}")


def run_checks(
    spec: Spec,
    gateway: str,
    stats_url: str | None,
    roots: list[Path],
    emit: Callable[[Result], Any],
) -> bool:
    ok = True
    with httpx.Client(timeout=TIMEOUT, trust_env=False) as client:
        results = [check_gateway(client, gateway)]
        emit(results[0])
        if results[0].ok:
            checks: list[Callable[[], Result]] = [lambda: check_tags(client, gateway, spec)]
            for m in spec.models:
                checks.append(functools.partial(check_model, client, gateway, m.name))
            checks.append(lambda: check_unknown_model(client, gateway))
            if stats_url:
                checks.append(lambda: check_servers(client, stats_url))
            for c in checks:
                r = c()
                emit(r)
                ok = ok and r.ok
        else:
            ok = False
    for root in roots:
        r = check_converged(root)
        emit(r)
        ok = ok and r.ok
    return ok
