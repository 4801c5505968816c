"""Gateway bench: latency HAProxy adds, and memory per connection with the large-body buffer.

Runs one real HAProxy gateway (rendered by olladist) in front of one fake Ollama instance on
loopback, bounded in count and time:

    .venv/bin/python bench/gateway_bench.py [--requests 400] [--streams 200] [--bodies 20]

Reports median/p95 of a small request sent straight to the instance and through the gateway,
then the gateway's RSS (every process: master, worker, large-body process) idle, with N
concurrent open streams (small bodies), and with M
concurrent 5 MiB bodies whose `model` comes last (the OpenAI SDK's order).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp

# Run as `python bench/NAME.py` from a fresh clone: the repository root is not on sys.path.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from olladist.gateway.topology import BUFSIZE, LARGE_BUFSIZE
from tests.gateway.harness import all_up, cluster, loopback_hosts, make_spec, wait_until


def rss_kib(session: int) -> int:
    """VmRSS of every process in the gateway's session (the harness starts it in its own)."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[3]) != session:
                continue
            for line in (stat.parent / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except (OSError, ValueError):
            continue
    return total


async def latencies(url: str, n: int, model: str = "m") -> list[float]:
    out = []
    body = {"model": model, "prompt": "hi"}
    async with aiohttp.ClientSession() as s:
        for _ in range(n):
            t0 = time.perf_counter()
            async with s.post(url, json=body) as r:
                await r.read()
            out.append((time.perf_counter() - t0) * 1000)
    return out


async def hold_streams(url: str, n: int, size: int, sample: Callable[[], int]) -> tuple[int, int]:
    pad = "x" * size
    body = json.dumps(
        {"messages": [{"content": pad}], "model": "m", "stream": True, "lines": 6, "delay": 0.5}
    )
    statuses: list[int] = []

    async def one(s: aiohttp.ClientSession) -> None:
        async with s.post(url, data=body, headers={"Content-Type": "application/json"}) as r:
            async for _ in r.content:
                pass
            statuses.append(r.status)

    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn) as s:
        tasks = [asyncio.create_task(one(s)) for _ in range(n)]
        await asyncio.sleep(1.5)  # all bodies sent, every stream open
        during = sample()
        await asyncio.gather(*tasks)
    return during, sum(1 for x in statuses if x == 200)


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--streams", type=int, default=200)
    ap.add_argument("--bodies", type=int, default=20)
    ap.add_argument(
        "--rounds", type=int, default=5, help="interleaved rounds of direct / each strategy"
    )
    args = ap.parse_args()
    # Two models on one instance: `m` least-loaded (no Lua on a warm request), `lf`
    # loaded-first (live.lua's pick on every request), measured in interleaved rounds so the
    # noise of a shared machine falls on all three alike.
    models = [
        {"name": "m", "nodes": ["n0"], "strategy": "least-loaded"},
        {"name": "lf", "nodes": ["n0"], "strategy": "loaded-first"},
    ]
    spec = make_spec(loopback_hosts(1), {0: [256]}, models)
    inst = spec.nodes[0].instances[0]
    with tempfile.TemporaryDirectory(prefix="gwb") as d, cluster(Path(d), spec) as c:
        g = c.gw("n0")
        wait_until(lambda: all_up(g))
        worker = g.proc.pid  # the session of the gateway's processes
        # The instance reports `lf` loaded: the pick's common case (warm, a free slot).
        import httpx

        httpx.post(
            f"http://127.0.0.1:{inst.port}/fake/ps", json=["lf:latest"], trust_env=False
        ).raise_for_status()
        time.sleep(1.5)  # one poll of the live view
        n = max(1, args.requests // args.rounds)
        direct: list[float] = []
        via: list[float] = []
        via_lf: list[float] = []
        for _ in range(args.rounds):
            direct += asyncio.run(latencies(f"http://127.0.0.1:{inst.port}/api/generate", n))
            via += asyncio.run(latencies(g.url + "/api/generate", n))
            via_lf += asyncio.run(latencies(g.url + "/api/generate", n, "lf"))
        print(f"small request, {len(direct)} sequential per row, {args.rounds} rounds (ms):")
        print(f"  direct   median {statistics.median(direct):.3f}  p95 {pct(direct, 0.95):.3f}")
        print(f"  gateway  median {statistics.median(via):.3f}  p95 {pct(via, 0.95):.3f}")
        added = statistics.median(via) - statistics.median(direct)
        print(f"  added    median {added:.3f}")
        lf_med = statistics.median(via_lf)
        print(f"  loaded-first gateway  median {lf_med:.3f}  p95 {pct(via_lf, 0.95):.3f}")
        added_lf = lf_med - statistics.median(direct)
        print(
            f"  loaded-first added    median {added_lf:.3f} "
            f"(x{lf_med / statistics.median(via):.3f} of least-loaded's total)"
        )
        idle = rss_kib(worker)
        print(
            f"gateway RSS idle: {idle} KiB (tune.bufsize {BUFSIZE}, large bodies {LARGE_BUFSIZE})"
        )
        url = g.url + "/v1/chat/completions"
        during, ok = asyncio.run(hold_streams(url, args.streams, 100, lambda: rss_kib(worker)))
        print(
            f"  {args.streams} open streams, small bodies: {during} KiB "
            f"(+{(during - idle) / args.streams:.1f} KiB per connection), {ok} ok"
        )
        base = rss_kib(worker)
        during, ok = asyncio.run(
            hold_streams(url, args.bodies, 5 * 1024 * 1024, lambda: rss_kib(worker))
        )
        print(
            f"  {args.bodies} open streams, 5 MiB bodies, model last: {during} KiB "
            f"(+{(during - base) / args.bodies / 1024:.1f} MiB per connection), {ok} ok"
        )
        print(f"  after: {rss_kib(worker)} KiB (HAProxy keeps freed buffers in its pools)")


if __name__ == "__main__":
    main()
