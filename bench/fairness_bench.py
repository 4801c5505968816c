"""Fairness bench: does a flooding API key starve a light one? (issue 17 part 3)

One olladist gateway (real HAProxy, rendered by olladist) in front of olladist-sim instances
with ``num_parallel`` 1, so what the instances cannot run waits in HAProxy's queue, which the
fair order sorts. First the cluster's capacity C (requests a second, closed loop), then, each
for ``--seconds``, open-loop (Poisson) clients:

- idle: the light key alone at 2C/11 requests a second (before and after the loaded runs; the
  lower p95 is the reference);
- two keys: the light key at 2C/11 and a flooding key at 20C/11 (10x, 2x C together): the
  light key's p95 latency against idle (target: at most 1.5x);
- four equal-weight keys at 0.3, 0.4, 0.5 and 0.8 C (2x C together): Jain's index of their
  throughputs (target: at least 0.9; 1.0 is an equal share each).

Each loaded scenario runs with ``gateway.clients.fair`` on and off (HAProxy's first come,
first served). Bounded: every request has a deadline, the queue a timeout; from the root:

    .venv/bin/python bench/fairness_bench.py [--quick] [--seconds 20] [--instances 2]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import random
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

# Run as `python bench/NAME.py` from a fresh clone: the repository root is not on sys.path.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from olladist.sim.process import SimProcess, start_sim
from olladist.spec import Spec
from tests.gateway.harness import (
    Gateway,
    all_ready,
    cluster_ports,
    loopback_hosts,
    start_gateway,
    stop_pid,
    wait_until,
)

MODEL = "qwen2.5:0.5b"
KEYS_FILE = "/etc/olladist/api-keys"
KEYS = ["light", "flood", "k1", "k2", "k3", "k4"]
QUEUE_TIMEOUT_S = 10


def sim_env(tokens: int, rate: float) -> dict[str, str]:
    return {
        "OLLADIST_SIM_LOAD_GBPS": "100",
        "OLLADIST_SIM_TOKEN_RATE": str(rate),
        "OLLADIST_SIM_PROMPT_RATE": "100000",
        "OLLADIST_SIM_RESPONSE_TOKENS": str(tokens),
        "OLLADIST_SIM_QUIET": "1",
        "OLLAMA_NUM_PARALLEL": "1",
    }


@contextlib.contextmanager
def gateway(base: Path, sims: list[SimProcess], fair: bool) -> Iterator[Gateway]:
    host = loopback_hosts(1)[0]
    ports = cluster_ports([host], 3)
    spec = Spec.model_validate(
        {
            "cluster": "bench",
            "gateway": {
                "port": ports[0],
                "peer_port": ports[1],
                "stats_port": ports[2],
                "api_keys_file": KEYS_FILE,
                "clients": {"fair": fair},
                "timeouts": {"queue": f"{QUEUE_TIMEOUT_S}s", "server": "60s", "client": "60s"},
                "health": {"interval": "500ms"},
            },
            "nodes": [
                {
                    "name": "n0",
                    "address": host,
                    "listen": host,
                    "instances": [
                        {"name": f"i{n}", "port": s.port, "num_parallel": 1}
                        for n, s in enumerate(sims)
                    ],
                }
            ],
            "models": [{"name": MODEL, "nodes": ["n0"]}],
        }
    )
    keys = "".join(hashlib.sha256(f"sk-{k}".encode()).hexdigest() + "\n" for k in KEYS)
    gw = start_gateway(
        spec, "n0", base / ("fair" if fair else "fifo"), local_files={KEYS_FILE: keys}
    )
    try:
        wait_until(lambda: all_ready(gw, [MODEL]), timeout=30)
        yield gw
    finally:
        stop_pid(gw.proc)


@dataclass
class Done:
    key: str
    sent: float
    latency: float
    status: int


async def one(c: httpx.AsyncClient, url: str, key: str, t0: float, out: list[Done]) -> None:
    sent = time.monotonic()
    try:
        r = await c.post(
            url,
            json={"model": MODEL, "prompt": "hi", "stream": False},
            headers={"Authorization": f"Bearer sk-{key}"},
        )
        status = r.status_code
    except httpx.HTTPError:
        status = 0
    out.append(Done(key, sent - t0, time.monotonic() - sent, status))


async def open_loop(url: str, rates: dict[str, float], seconds: float, seed: int) -> list[Done]:
    """Poisson arrivals per key at ``rates`` (requests a second) for ``seconds``."""
    out: list[Done] = []
    rng = random.Random(seed)
    limits = httpx.Limits(max_connections=4000, max_keepalive_connections=4000)
    timeout = httpx.Timeout(QUEUE_TIMEOUT_S + 30)
    async with httpx.AsyncClient(limits=limits, timeout=timeout, trust_env=False) as c:
        t0 = time.monotonic()
        tasks: list[asyncio.Task[None]] = []

        async def arrivals(key: str, rate: float) -> None:
            t = 0.0
            while True:
                t += rng.expovariate(rate)
                if t >= seconds:
                    return
                await asyncio.sleep(max(0.0, t0 + t - time.monotonic()))
                tasks.append(asyncio.create_task(one(c, url, key, t0, out)))

        await asyncio.gather(*(arrivals(k, r) for k, r in rates.items()))
        await asyncio.gather(*tasks)
    return out


async def capacity(url: str, seconds: float) -> float:
    """Requests a second the cluster completes with a standing queue (closed loop)."""
    done = 0
    async with httpx.AsyncClient(timeout=60, trust_env=False) as c:
        end = time.monotonic() + seconds

        async def worker() -> None:
            nonlocal done
            while time.monotonic() < end:
                r = await c.post(
                    url,
                    json={"model": MODEL, "prompt": "hi", "stream": False},
                    headers={"Authorization": "Bearer sk-k1"},
                )
                done += r.status_code == 200

        t0 = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(16)))
        return done / (time.monotonic() - t0)


def p95(xs: list[float]) -> float:
    if not xs:
        return float("nan")
    return sorted(xs)[max(0, round(0.95 * len(xs)) - 1)]


def jain(xs: list[float]) -> float:
    return sum(xs) ** 2 / (len(xs) * sum(x * x for x in xs)) if any(xs) else 0.0


def served(done: list[Done], key: str, start: float, end: float) -> float:
    """Requests of ``key`` answered 200 in [start, end), a second."""
    ok = [d for d in done if d.key == key and start <= d.sent + d.latency < end and d.status == 200]
    return len(ok) / (end - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="short runs (CI): 8 s a scenario")
    ap.add_argument("--seconds", type=float, default=20.0, help="per scenario")
    ap.add_argument("--instances", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=10, help="tokens per answer")
    ap.add_argument("--token-rate", type=float, default=100.0, help="tokens a second")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    seconds = 8.0 if args.quick else args.seconds
    base = Path(tempfile.mkdtemp(prefix="olladist-fair-"))
    sims: list[SimProcess] = []
    results: dict[str, Any] = {}
    try:
        for n in range(args.instances):
            sims.append(start_sim(base / f"sim{n}", sim_env(args.tokens, args.token_rate)))
            with httpx.Client(base_url=sims[-1].url, timeout=60, trust_env=False) as c:
                c.post("/api/pull", json={"model": MODEL, "stream": False}).raise_for_status()
        for fair in (True, False):
            mode = "fair" if fair else "fifo"
            with gateway(base, sims, fair) as gw:
                url = gw.url + "/api/generate"
                cap = asyncio.run(capacity(url, min(5.0, seconds / 2)))
                results.setdefault("capacity", cap)
                cap = results["capacity"]
                light = 2 * cap / 11
                if fair:
                    idle = asyncio.run(open_loop(url, {"light": light}, seconds, args.seed))
                    results["idle"] = p95([d.latency for d in idle if d.status == 200])
                two = asyncio.run(
                    open_loop(url, {"light": light, "flood": 10 * light}, seconds, args.seed)
                )
                lt = [d.latency for d in two if d.key == "light" and d.status == 200]
                results[f"{mode} light p95"] = p95(lt)
                results[f"{mode} light ok"] = (
                    len(lt),
                    sum(1 for d in two if d.key == "light"),
                )
                rates = dict(zip(["k1", "k2", "k3", "k4"], [0.3, 0.4, 0.5, 0.8], strict=True))
                four = asyncio.run(
                    open_loop(url, {k: r * cap for k, r in rates.items()}, seconds, args.seed)
                )
                # Throughput once the queue has formed, until the arrivals stop.
                start, end = seconds / 3, seconds
                shares = [served(four, k, start, end) for k in rates]
                results[f"{mode} shares"] = shares
                results[f"{mode} jain"] = jain(shares)
                if fair:
                    # Idle again: one load spike of the machine (others share it) must not
                    # make the reference; the lower of the two p95s is.
                    idle = asyncio.run(open_loop(url, {"light": light}, seconds, args.seed + 1))
                    again = p95([d.latency for d in idle if d.status == 200])
                    results["idle"] = min(results["idle"], again)
    finally:
        for s in sims:
            s.stop()
    report(results, args, seconds)


def report(r: dict[str, Any], args: argparse.Namespace, seconds: float) -> None:
    cap = r["capacity"]
    print(
        f"cluster: {args.instances} olladist-sim instances x num_parallel 1, "
        f"{args.tokens} tokens at {args.token_rate:g}/s; capacity {cap:.1f} req/s; "
        f"{seconds:g} s a scenario; queue timeout {QUEUE_TIMEOUT_S} s\n"
    )
    print("| order | light key p95 s (idle) | light p95 s, 10x flood at 2x capacity | ratio "
          "| light answered | Jain, 4 equal keys at 2x capacity | their req/s |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for mode in ("fair", "fifo"):
        ok, sent = r[f"{mode} light ok"]
        ratio = r[f"{mode} light p95"] / r["idle"]
        shares = " / ".join(f"{s:.1f}" for s in r[f"{mode} shares"])
        print(
            f"| {'fair (olladist_fair)' if mode == 'fair' else 'first come, first served'} "
            f"| {r['idle']:.3f} | {r[f'{mode} light p95']:.3f} | {ratio:.2f}x | {ok}/{sent} "
            f"| {r[f'{mode} jain']:.3f} | {shares} |"
        )
    print("\ntargets: light key p95 at most 1.5x idle; Jain's index at least 0.9")


if __name__ == "__main__":
    main()
