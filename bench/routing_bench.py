"""Routing bench: cold loads, throughput and tail latency of each gateway strategy.

A real olladist cluster on loopback (``olladist.dev.DevCluster``: one reconciler per node,
``--runtime local``, olladist-sim as Ollama) where every instance can keep only ONE model loaded
(``OLLAMA_MAX_LOADED_MODELS=1``) and a load takes real time (``OLLADIST_SIM_LOAD_GBPS``). A
skewed (Zipf) multi-model workload of N non-streaming generates from K concurrent clients, spread
over every node's gateway, runs once per scenario on a fresh cluster:

- round-robin, least-loaded, model-affinity, loaded-first: every model on every node
  (``nodes: all``);
- LiteLLM's proxy (PyPI ``litellm[proxy]``, ``simple-shuffle``) over the same instances, every
  model on every instance, for comparison (installed once into
  ~/.cache/olladist-bench/venv-litellm, as bench/headline.py does);
- placement-aware: each model on fewer nodes (``replicas``, more for the popular one), with
  least-loaded, model-affinity and loaded-first (``--all``).

Cold loads come from the simulators' own counters (``GET /_sim/stats``). Bounded in count and
time (``--requests``, ``--deadline`` per scenario); run from the repository root:

    .venv/bin/python bench/routing_bench.py [--quick] [--requests 2000] [--clients 32]
        [--nodes 3] [--instances 2] [--load-gbps 1.3] [--seeds 1,2,3] [--all]

Every request is an OpenAI chat completion (``/v1/chat/completions``, not streamed), so LiteLLM
and the gateways see the same requests.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import random
import shutil
import signal
import statistics
import subprocess
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
from olladist.spec import Spec
from olladist.specload import load_spec
from tests.harness.ports import free_port

# Chat models of the simulator's catalogue, most popular first; sizes 0.4-4.9 GB (2.65 GB on
# average: about 2 s a load at the default 1.3 GB/s).
MODELS = [
    "llama3.2:3b",
    "gemma2:2b",
    "phi3:mini",
    "mistral:7b",
    "qwen2.5:7b",
    "llama3.1:8b",
    "llama3.2:1b",
    "qwen2.5:0.5b",
]
LITELLM = "litellm"  # the scenario's strategy: LiteLLM's proxy in front of the instances
LITELLM_KEY = "sk-olladist-routing-bench"


@dataclass(frozen=True)
class Scenario:
    name: str
    strategy: str
    replicas: tuple[int, ...] | None  # per model (MODELS order); None: every node holds all


REPLICAS = (2, 1, 1, 1, 1, 1, 1, 1)
SCENARIOS = [
    Scenario("round-robin, all models everywhere", "round-robin", None),
    Scenario("least-loaded, all models everywhere", "least-loaded", None),
    Scenario("model-affinity, all models everywhere", "model-affinity", None),
    Scenario("loaded-first, all models everywhere", "loaded-first", None),
    Scenario("LiteLLM proxy (simple-shuffle), all models everywhere", LITELLM, None),
]
# With --all: placement (each model on fewer nodes) too.
MORE = [
    Scenario("placement-aware (replicas), least-loaded", "least-loaded", REPLICAS),
    Scenario("placement-aware (replicas), model-affinity", "model-affinity", REPLICAS),
    Scenario("placement-aware (replicas), loaded-first", "loaded-first", REPLICAS),
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
    held: str = ""  # loaded-first: how the gateways handed out slots to held requests
    by_model: str = ""  # cold loads per model


def spec_text(
    sc: Scenario, nodes: list[tuple[str, str, list[int]]], args: argparse.Namespace
) -> str:
    strategy = "round-robin" if sc.strategy == LITELLM else sc.strategy
    lines = [
        "cluster: routing-bench",
        # A queue timeout long enough for the worst row's queue: every row completes its
        # requests (a 503 would be counted as failed and hide the wait).
        f"gateway: {{strategy: {strategy}, health: {{interval: 1s, fall: 2, rise: 1}}, "
        "timeouts: {queue: 8m}}",
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
    gateways: list[str],
    requests: list[str],
    clients: int,
    deadline: float,
    headers: dict[str, str] | None = None,
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
                    f"{base}/v1/chat/completions",
                    json={
                        "model": model,
                        "messages": [{"role": "user", "content": f"q{len(queue)}"}],
                        "stream": False,
                    },
                    headers=headers,
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


def loads_by_model(ports: list[int]) -> str:
    """Cold loads per model over every simulator, most first."""
    total: dict[str, int] = {}
    with httpx.Client(timeout=5, trust_env=False) as c:
        for p in ports:
            for k, v in (
                c.get(f"http://127.0.0.1:{p}/_sim/stats").json()["cold_loads_by_model"].items()
            ):
                total[k] = total.get(k, 0) + int(v)
    return ", ".join(f"{k} {v}" for k, v in sorted(total.items(), key=lambda kv: -kv[1]))


def hold_counts(spec: Spec, addrs: list[str]) -> str:
    """The gateways' `hold` counters (their live report, docs/gateway.md), summed: how many
    held requests were given a warm slot, a cold load (loaded nowhere, a deep warm queue, or
    past max_warm_wait), or timed out."""
    total: dict[str, int] = {}
    with httpx.Client(trust_env=False, timeout=10) as c:
        for addr in addrs:
            r = c.get(f"http://{addr}:{spec.gateway.stats_port}/olladist/v1/live")
            for k, v in (r.json().get("hold") or {}).items():
                if k != "waiting":
                    total[k] = total.get(k, 0) + int(v)
    return ", ".join(f"{k} {v}" for k, v in sorted(total.items()))


def litellm_proxy(ports: list[int], work: Path) -> tuple[subprocess.Popen[bytes], str]:
    """LiteLLM's proxy with every model on every instance (simple-shuffle), started in its
    own session so that it and its workers stop together."""
    # Imported here: only this scenario needs it.
    from bench.headline import litellm_exe

    exe = litellm_exe()
    if exe is None:
        raise RuntimeError("LiteLLM is not installed and could not be installed")
    cfg = work / "litellm.yaml"
    entries = "".join(
        f"  - model_name: '{m}'\n    litellm_params:\n      model: 'openai/{m}'\n"
        f"      api_base: http://127.0.0.1:{p}/v1\n      api_key: bench\n"
        for m in MODELS
        for p in ports
    )
    cfg.write_text(
        "model_list:\n" + entries + "litellm_settings:\n  telemetry: false\n"
        "  drop_params: true\n  request_timeout: 600\n"
        "router_settings:\n  routing_strategy: simple-shuffle\n  num_retries: 0\n"
    )
    port = free_port()
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env.update(
        {
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "LITELLM_LOG": "ERROR",
            "LITELLM_MASTER_KEY": LITELLM_KEY,
            "NO_DOCS": "True",
        }
    )
    log = (work / "litellm.log").open("wb")
    proc = subprocess.Popen(
        [str(exe), "--config", str(cfg), "--host", "127.0.0.1", "--port", str(port)]
        + ["--num_workers", "2"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=work,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 420  # its start took minutes on the loaded 2-core machine
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("LiteLLM exited: " + (work / "litellm.log").read_text()[-800:])
        try:
            r = httpx.get(
                url + "/v1/models",
                headers={"Authorization": f"Bearer {LITELLM_KEY}"},
                timeout=5,
                trust_env=False,
            )
            if r.status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(1)
    stop_group(proc)
    raise RuntimeError("LiteLLM did not answer: " + (work / "litellm.log").read_text()[-800:])


def stop_group(proc: subprocess.Popen[bytes]) -> None:
    """Stop the process this bench started and its session (LiteLLM's workers)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def run(sc: Scenario, args: argparse.Namespace, seed: int) -> Result:
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
    lite: subprocess.Popen[bytes] | None = None
    try:
        try:
            dev.up(timeout=300)
        except Exception:
            print(log.getvalue(), file=sys.stderr)
            raise
        gateways = [f"http://{addr}:{spec.gateway.port}" for _, addr, _ in nodes]
        gateways = gateways[: args.gateways or len(gateways)]
        headers = None
        if sc.strategy == LITELLM:
            lite, url = litellm_proxy(ports, work)
            gateways, headers = [url], {"Authorization": f"Bearer {LITELLM_KEY}"}
        sim_stats(ports, reset=True)
        lat, failed, seconds = asyncio.run(
            drive(gateways, workload(args.requests, seed), args.clients, args.deadline, headers)
        )
        cold = sim_stats(ports)
        by_model = loads_by_model(ports)
        held = (
            hold_counts(spec, [addr for _, addr, _ in nodes])
            if sc.strategy == "loaded-first"
            else ""
        )
    finally:
        if lite is not None:
            stop_group(lite)
        dev.down()
        if os.environ.get("OLLADIST_BENCH_KEEP") == "1":  # logs to read after a surprise
            print(f"  kept {work}", flush=True)
        else:
            shutil.rmtree(work, ignore_errors=True)
    q = statistics.quantiles(lat, n=20) if len(lat) > 1 else [0.0] * 19
    return Result(sc, len(lat), failed, seconds, cold, q[9], q[18], where, held, by_model)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="300 requests, one seed (a smoke run)")
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--instances", type=int, default=2, help="instances per node")
    ap.add_argument("--parallel", type=int, default=2, help="num_parallel of each instance")
    ap.add_argument("--load-gbps", type=float, default=1.3, help="model load speed (GB/s)")
    ap.add_argument("--token-rate", type=float, default=100.0)
    ap.add_argument("--tokens", type=int, default=20, help="response tokens per request")
    ap.add_argument("--deadline", type=float, default=1200.0, help="seconds per scenario")
    ap.add_argument("--seeds", default="1,2,3", help="workload seeds, one run of each row each")
    ap.add_argument("--only", help="run the scenarios whose name contains this")
    ap.add_argument("--all", action="store_true", help="also the placement-aware rows")
    ap.add_argument(
        "--gateways", type=int, default=0, help="clients use the first N nodes' gateways (0: all)"
    )
    args = ap.parse_args()
    if args.quick:
        args.requests, args.seeds, args.deadline = min(args.requests, 300), "1", 300.0
    if args.nodes < 2:
        ap.error("placement is per node: placement-aware routing needs --nodes 2 or more")
    seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
    scenarios = SCENARIOS + (MORE if args.all else [])
    chosen = [s for s in scenarios if not args.only or args.only in s.name]
    asks = workload(args.requests, seeds[0])
    mix = ", ".join(f"{m} {asks.count(m)}" for m in MODELS)
    print(
        f"{args.nodes} nodes x {args.instances} instances (num_parallel {args.parallel}, "
        f"1 model loaded each, load at {args.load_gbps} GB/s, {args.tokens} tokens at "
        f"{args.token_rate}/s), {args.requests} requests from {args.clients} clients through "
        f"{args.gateways or args.nodes} gateway(s), seeds {seeds}\n"
        f"mix (seed {seeds[0]}): {mix}\n",
        flush=True,
    )
    results: list[tuple[int, Result]] = []
    for seed in seeds:
        for sc in chosen:
            try:
                r = run(sc, args, seed)
            except RuntimeError as exc:  # LiteLLM missing or not starting: the rest still runs
                print(f"  {sc.name} (seed {seed}): not run: {exc}", flush=True)
                continue
            results.append((seed, r))
            print(
                f"  {sc.name} (seed {seed}): {r.completed} done, {r.failed} failed, "
                f"{r.cold_loads} cold loads, {r.completed / r.seconds:.2f} req/s, "
                f"p50 {r.p50:.2f}s, p95 {r.p95:.2f}s"
                + (f"; held: {r.held}" if r.held else "")
                + (f"\n    cold loads by model: {r.by_model}" if r.by_model else ""),
                flush=True,
            )
    print()
    print("| routing | seed | cold loads | req/s | p50 s | p95 s | completed | failed |")
    print("|---|---|---|---|---|---|---|---|")
    for seed, r in results:
        print(
            f"| {r.scenario.name} | {seed} | {r.cold_loads} | {r.completed / r.seconds:.2f} | "
            f"{r.p50:.2f} | {r.p95:.2f} | {r.completed}/{args.requests} | {r.failed} |"
        )
    base = [r for _, r in results if r.scenario.strategy == "round-robin" and r.completed]
    if base:
        cold0 = statistics.mean(r.cold_loads for r in base)
        rps0 = statistics.mean(r.completed / r.seconds for r in base)
        p950 = statistics.mean(r.p95 for r in base)
        print("\nagainst round-robin (means over seeds):")
        for sc in chosen:
            rows = [r for _, r in results if r.scenario == sc and r.completed]
            if not rows:
                continue
            cold = statistics.mean(r.cold_loads for r in rows)
            rps = statistics.mean(r.completed / r.seconds for r in rows)
            p95 = statistics.mean(r.p95 for r in rows)
            print(
                f"  {sc.name}: cold loads x{cold / cold0 if cold0 else 0:.2f} "
                f"({cold0 / cold if cold else float('inf'):.1f}x fewer), "
                f"req/s x{rps / rps0:.2f}, p95 x{p95 / p950 if p950 else 0:.2f}"
            )
    for _, r in results:
        if r.scenario.replicas is not None:
            print(f"placement ({r.scenario.name}): {r.placement}")
            break


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    # SIGTERM (bench/run's section budget) unwinds like Ctrl-C: every process is stopped.
    signal.signal(signal.SIGTERM, _interrupt)
    main()
