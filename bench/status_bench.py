"""Status page cost: building the cluster view and drawing it, for 3 nodes and for 100.

Two figures per size, from synthetic statuses (every node reachable, two instances each, one
drift item and one transfer on every tenth node):
- server: ``clusterview.build`` + JSON encoding + the secret scrub, what the reconciler does
  per /olladist/v1/cluster once the peers have answered (asking them is bounded by the peer
  timeout and runs concurrently; the e2e cluster reports its own ``build_s``);
- browser: the page's ``draw()`` of that JSON in headless Chromium (the page measures it in
  ``data-render-ms``), desktop-sized, the JSON served by Playwright's router (no network).

Run: .venv/bin/python bench/status_bench.py [--sizes 3 100] [--rounds 20]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.render_bench import write_spec
from olladist import clusterview
from olladist.placement import place
from olladist.specload import load_spec
from olladist.status import Status
from olladist.statusd import page_asset, scrub


def statuses(spec: Any, placement: Any) -> dict[str, clusterview.Fetched]:
    out = {}
    for i, node in enumerate(spec.nodes):
        s = Status(node.name, applied_commit="c" * 40, attempted_commit="c" * 40, runs=5, ok=True)
        d = s.to_dict()
        d["health"] = [
            {
                "kind": "instance",
                "name": inst.name,
                "status": "UP",
                "sessions": 2,
                "queued": 0,
                "check": "L7OK",
            }
            for inst in node.instances
        ]
        held = list(placement.models_for(node.name))
        d["observed"] = {
            "present": held,
            "loaded": {node.instances[0].name: held[:1]},
            "error": None,
            "observed_at": 1.0,
        }
        if i % 10 == 0:
            d["drift"] = [{"kind": "pull", "target": held[0], "reason": "missing from the store"}]
            d["transfers"] = [
                {
                    "model": held[0],
                    "status": "pulling abc",
                    "completed": 10**9,
                    "total": 4 * 10**9,
                    "rate_bps": 10**8,
                    "started_at": 1.0,
                    "updated_at": 2.0,
                }
            ]
        out[node.name] = clusterview.Fetched(d, last_seen=time.time())
    return out


def server_cost(spec: Any, rounds: int) -> tuple[float, dict[str, Any], int]:
    placement = place(spec)
    st = statuses(spec, placement)
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        view = clusterview.build(
            viewer=spec.nodes[0].name,
            spec=spec,
            placement=placement,
            commit="c" * 40,
            statuses=st,
            lives={},
            now=time.time(),
        )
        text = scrub(json.dumps(view, sort_keys=True), ["s" * 64])
        times.append(time.perf_counter() - t)
    return statistics.median(times), view, len(text)


def browser_cost(view: dict[str, Any], rounds: int) -> tuple[float, float]:
    from tests.e2e.browser import chromium

    body = json.dumps(view)
    assets = {p: page_asset(p) for p in ("index.html", "page.css", "page.js")}
    draws, loads = [], []
    with chromium() as ctx:
        page = ctx.new_page()

        def serve(route: Any) -> None:
            path = route.request.url.split("//", 1)[1].split("/", 1)[1].split("?")[0]
            if path == "olladist/v1/cluster":
                route.fulfill(status=200, content_type="application/json", body=body)
                return
            name = {
                "olladist/": "index.html",
                "olladist/page.css": "page.css",
                "olladist/page.js": "page.js",
            }.get(path)
            if name is None:
                route.fulfill(status=404, body="")
            else:
                ctype = {"html": "text/html", "css": "text/css", "js": "text/javascript"}
                route.fulfill(
                    status=200, body=assets[name], content_type=ctype[name.rsplit(".", 1)[1]]
                )

        page.route("http://olladist.bench/**", serve)
        for _ in range(rounds):
            t = time.perf_counter()
            page.goto("http://olladist.bench/olladist/?refresh=3600")
            while page.locator("body").get_attribute("data-refreshes") == "0":
                time.sleep(0.002)
            loads.append(time.perf_counter() - t)
            draws.append(float(page.locator("body").get_attribute("data-render-ms") or "nan"))
    return statistics.median(draws), statistics.median(loads)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[3, 100])
    ap.add_argument("--rounds", type=int, default=20)
    args = ap.parse_args()
    print(
        f"{'nodes':>5} {'models':>6} {'JSON KiB':>8} {'build+encode ms':>15} "
        f"{'draw ms':>8} {'load+draw ms':>12}"
    )
    for n in args.sizes:
        with tempfile.TemporaryDirectory() as tmp:
            write_spec(Path(tmp), n, 2, 20 if n > 10 else 3)
            spec = load_spec(Path(tmp))
        server_s, view, size = server_cost(spec, args.rounds)
        draw_ms, load_s = browser_cost(view, max(3, args.rounds // 4))
        print(
            f"{n:>5} {len(view['models']):>6} {size / 1024:>8.0f} {server_s * 1000:>15.1f} "
            f"{draw_ms:>8.1f} {load_s * 1000:>12.0f}"
        )


if __name__ == "__main__":
    main()
