"""Routing bench: cold loads, throughput and tail latency of each gateway strategy.

A real olladist cluster on loopback (``olladist.dev.DevCluster``: one reconciler per node,
``--runtime local``, olladist-sim as Ollama) where every instance can keep only ONE model loaded
(``OLLAMA_MAX_LOADED_MODELS=1``) and a load takes real time (``OLLADIST_SIM_LOAD_GBPS``). A
skewed (Zipf) multi-model workload of N non-streaming generates from K concurrent clients, spread
over every node's gateway, runs once per scenario on a fresh cluster:

- round-robin, least-loaded, model-affinity: every model on every node (``nodes: all``);
- placement-aware: each model on fewer nodes (``replicas``, more for the popular one), with the
  default least-loaded and with model-affinity.

Cold loads come from the simulators' own counters (``GET /_sim/stats``). Bounded in count and
time (``--requests``, ``--deadline`` per scenario); run from the repository root:

    .venv/bin/python bench/routing_bench.py [--requests 400] [--clients 24] [--nodes 3]
        [--instances 2] [--load-gbps 2] [--seed 1]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import random
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

# Run as `python bench/NAME.py` from a fresh clone: the repository root is not on sys.path.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from olladist.dev import DevCluster
from olladist.placement import place
from olladist.specload import load_spec

# Chat models of the simulator's catalogue, most popular first; sizes 1.3-4.9 GB.
MODELS = ["llama3.2:3b", "gemma2:2b", "phi3:mini", "mistral:7b", "qwen2.5:7b", "llama3.1:8b"]


@dataclass(frozen=True)
class Scenario:
    name: str
    strategy: str
    replicas: tuple[int, ...] | None  # per model (MODELS order); None: every node holds all


SCENARIOS = [
    Scenario("round-robin, all models everywhere", "round-robin", None),
    Scenario("least-loaded, all models everywhere", "least-loaded", None),
    Scenario("model-affinity, all models everywhere", "model-affinity", None),
    Scenario("placement-aware (replicas), least-loaded", "least-loaded", (2, 1, 1, 1, 1, 1)),
    Scenario("placement-aware (replicas), model-affinity", "model-affinity", (2, 1, 1, 1, 1, 1)),
]


@dataclass(frozen=True)
class Result:
    scenario: Scenario
    completed: int
    failed: int
    seconds: float
    cold_loads: int
    p50: float
    p95: float
    placement: str


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spec_text(
    sc: Scenario, nodes: list[tuple[str, str, list[int]]], args: argparse.Namespace
) -> str:
    lines = [
        "cluster: routing-bench",
        f"gateway: {{strategy: {sc.strategy}, health: {{interval: 1s, fall: 2, rise: 1}}}}",
        "ollama:",
        "  env:",
        "    OLLADIST_SIM_QUIET: '1'",
        "    OLLADIST_SIM_PULL_GBPS: '100'",
        f"    OLLADIST_SIM_LOAD_GBPS: '{args.load_gbps}'",
        f"    OLLADIST_SIM_TOKEN_RATE: '{args.token_rate}'",
        f"    OLLADIST_SIM_RESPONSE_TOKENS: '{args.tokens}'",
        "    OLLAMA_MAX_LOADED_MODELS: '1'",
        "    OLLAMA_KEEP_ALIVE: 30m",
        "policy: {interval: 60s}",
        "nodes:",
    ]
    for name, addr, ports in nodes:
        lines += [
            f"  - name: {name}",
            f"    address: {addr}",
            f"    listen: {addr}",
            "    instances:",
        ]
        lines += [
            f"      - {{name: i{k}, port: {p}, num_parallel: {args.parallel}}}"
            for k, p in enumerate(ports)
        ]
    lines.append("models:")
    for k, m in enumerate(MODELS):
        where = "nodes: all" if sc.replicas is None else f"replicas: {sc.replicas[k]}"
        lines.append(f"  - {{name: '{m}', {where}}}")
    return "\n".join(lines) + "\n"


def workload(n: int, seed: int) -> list[str]:
    """Zipf(1) popularity over MODELS: the first is asked about 2.4x as often as the second."""
    rng = random.Random(seed)
    weights = [1 / (k + 1) for k in range(len(MODELS))]
    return rng.choices(MODELS, weights=weights, k=n)


async def drive(
    gateways: list[str], requests: list[str], clients: int, deadline: float
) -> tuple[list[float], int, float]:
    queue = list(reversed(requests))
    latencies: list[float] = []
    failed = [0]
    stop_at = time.monotonic() + deadline

    async def client(k: int, http: httpx.AsyncClient) -> None:
        base = gateways[k % len(gateways)]
        while queue and time.monotonic() < stop_at:
            model = queue.pop()
            t0 = time.monotonic()
            try:
                r = await http.post(
                    f"{base}/api/generate",
                    json={"model": model, "prompt": f"q{len(queue)}", "stream": False},
                )
                if r.status_code == 200:
                    latencies.append(time.monotonic() - t0)
                else:
                    failed[0] += 1
            except httpx.HTTPError:
                failed[0] += 1

    limits = httpx.Limits(max_connections=clients * 2)
    async with httpx.AsyncClient(timeout=300, limits=limits, trust_env=False) as http:
        start = time.monotonic()
        await asyncio.gather(*(client(k, http) for k in range(clients)))
        return latencies, failed[0], time.monotonic() - start


def sim_stats(ports: list[int], reset: bool = False) -> int:
    total = 0
    with httpx.Client(timeout=5, trust_env=False) as c:
        for p in ports:
            if reset:
                c.delete(f"http://127.0.0.1:{p}/_sim/stats").raise_for_status()
            else:
                total += int(c.get(f"http://127.0.0.1:{p}/_sim/stats").json()["cold_loads"])
    return total


def run(sc: Scenario, args: argparse.Namespace) -> Result:
    a, b = random.randint(100, 250), random.randint(1, 250)
    nodes = [
        (f"n{k + 1}", f"127.{a}.{b}.{k + 2}", [free_port() for _ in range(args.instances)])
        for k in range(args.nodes)
    ]
    # Short: HAProxy limits unix socket paths (under each node root) to 97 characters.
    work = Path(tempfile.mkdtemp(prefix="odrb-"))
    spec_dir = work / "spec"
    spec_dir.mkdir()
    (spec_dir / "cluster.yaml").write_text(spec_text(sc, nodes, args))
    spec = load_spec(spec_dir)
    placement = place(spec)
    where = ", ".join(f"{a.model.split(':')[0]}:{'+'.join(a.nodes)}" for a in placement.assignments)
    log = io.StringIO()
    dev = DevCluster(spec_dir, work / "state", interval=2.0, out=log, source=str(spec_dir))
    ports = [p for _, _, ps in nodes for p in ps]
    try:
        try:
            dev.up(timeout=180)
        except Exception:
            print(log.getvalue(), file=sys.stderr)
            raise
        sim_stats(ports, reset=True)
        gateways = [f"http://{addr}:{spec.gateway.port}" for _, addr, _ in nodes]
        gateways = gateways[: args.gateways or len(gateways)]
        lat, failed, seconds = asyncio.run(
            drive(gateways, workload(args.requests, args.seed), args.clients, args.deadline)
        )
        cold = sim_stats(ports)
    finally:
        dev.down()
        shutil.rmtree(work, ignore_errors=True)
    q = statistics.quantiles(lat, n=20) if len(lat) > 1 else [0.0] * 19
    return Result(sc, len(lat), failed, seconds, cold, q[9], q[18], where)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--clients", type=int, default=24)
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--instances", type=int, default=2, help="instances per node")
    ap.add_argument("--parallel", type=int, default=2, help="num_parallel of each instance")
    ap.add_argument("--load-gbps", type=float, default=2.0, help="model load speed (GB/s)")
    ap.add_argument("--token-rate", type=float, default=100.0)
    ap.add_argument("--tokens", type=int, default=20, help="response tokens per request")
    ap.add_argument("--deadline", type=float, default=90.0, help="seconds per scenario")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--only", help="run the scenarios whose name contains this")
    ap.add_argument(
        "--gateways", type=int, default=0, help="clients use the first N nodes' gateways (0: all)"
    )
    args = ap.parse_args()
    if args.nodes < 2:
        ap.error("placement is per node: placement-aware routing needs --nodes 2 or more")
    chosen = [s for s in SCENARIOS if not args.only or args.only in s.name]
    asks = workload(args.requests, args.seed)
    mix = ", ".join(f"{m} {asks.count(m)}" for m in MODELS)
    print(
        f"{args.nodes} nodes x {args.instances} instances (num_parallel {args.parallel}, "
        f"1 model loaded each, load at {args.load_gbps} GB/s, {args.tokens} tokens at "
        f"{args.token_rate}/s), {args.requests} requests from {args.clients} clients through "
        f"{args.gateways or args.nodes} gateway(s)\n"
        f"mix: {mix}\n",
        flush=True,
    )
    results = []
    for sc in chosen:
        r = run(sc, args)
        results.append(r)
        print(
            f"  {sc.name}: {r.completed} done, {r.failed} failed, {r.cold_loads} cold loads, "
            f"{r.completed / r.seconds:.2f} req/s, p95 {r.p95:.2f}s",
            flush=True,
        )
    print()
    print("| routing | cold loads | req/s | p50 s | p95 s | completed | failed |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r.scenario.name} | {r.cold_loads} | {r.completed / r.seconds:.2f} | "
            f"{r.p50:.2f} | {r.p95:.2f} | {r.completed}/{args.requests} | {r.failed} |"
        )
    print()
    for r in results:
        if r.scenario.replicas is not None:
            print(f"placement ({r.scenario.name}): {r.placement}")
            break


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    # SIGTERM (bench/run's section budget) unwinds like Ctrl-C: every process is stopped.
    signal.signal(signal.SIGTERM, _interrupt)
    main()
