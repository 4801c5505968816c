"""Model transfer benchmark: policy.models_transfer peers-first against upstream.

Three reconcilers on loopback (tests/e2e/cluster.py), one simulator instance each, the test
registry limited to a WAN-like rate; one model given to every node (`nodes: all`). For each
mode: the registry's byte counter (upstream bytes, and that over the model's size) and, per
node, the time to the node's Ollama listing the model (time to ready), and how long the last
node lags the first. Two scenarios:

- ``fresh``: a new cluster whose first commit holds the model. No node waits at the wave gate
  (nothing applied yet), so all fetch at once: the others stream each blob from its seeder as
  it arrives. Time from the start of the reconcilers.
- ``commit``: a running cluster, then a commit adding the model. It rolls out in waves (a
  ``nodes: all`` model: at most half of its holders per wave, so one per wave on three nodes),
  each waiting for the one before to be healthy. Time from the commit.

Run: .venv/bin/python bench/transfer_bench.py [--size 50MB] [--rate 20MB] [--scenario both]
Bounded: every wait has a timeout; every process is stopped by PID at the end.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx

from olladist.sim.process import SimProcess, start_registry
from tests.e2e.cluster import Cluster, start_cluster

SMALL = "  - {name: qwen2.5:0.5b, replicas: 1}\n"
TIMEOUT = 600.0


def model_size(reg: SimProcess, name: str) -> int:
    models = httpx.get(f"{reg.url}/_registry/models").json()["models"]
    return int(next(m["transfer_size"] for m in models if m["name"] == name))


def has_model(port: int, name: str) -> bool:
    try:
        r = httpx.get(f"http://127.0.0.1:{port}/api/tags", timeout=2, trust_env=False)
    except httpx.HTTPError:
        return False
    return any(m.get("name") == name for m in r.json().get("models", []))


def with_env(repo: Path, reg: SimProcess) -> None:
    path = repo / "cluster.yaml"
    env = f"    OLLADIST_SIM_REGISTRY: {reg.url}\n"
    path.write_text(path.read_text().replace("  env:\n", "  env:\n" + env, 1))


def wait_ready(cluster: Cluster, mode: str, start: float) -> dict[str, float]:
    ready: dict[str, float] = {}
    ports = {n["name"]: n["ports"][0] for n in cluster.node_specs}
    while len(ready) < len(ports):
        if time.monotonic() - start > TIMEOUT:
            raise SystemExit(f"{mode}: timed out; ready: {ready}")
        for name, port in ports.items():
            if name not in ready and has_model(port, "wan:latest"):
                ready[name] = time.monotonic() - start
        time.sleep(0.05)
    return ready


def run(mode: str, reg: SimProcess, rate: int, scenario: str) -> tuple[int, dict[str, float]]:
    base = Path(tempfile.mkdtemp(prefix="od-transfer-bench-"))
    policy = ", models_transfer: upstream" if mode == "upstream" else ""
    wan = "  - {name: wan, nodes: all}\n"
    os.environ["OLLADIST_REGISTRY"] = reg.url
    httpx.post(f"{reg.url}/_registry/faults", json={"rate": rate}).raise_for_status()
    if scenario == "fresh":
        httpx.delete(f"{reg.url}/_registry/stats")
        start = time.monotonic()
        cluster: Cluster = start_cluster(
            base,
            instances=1,
            interval=1.0,
            models=wan,
            policy=policy,
            before_first_commit=lambda repo: with_env(repo, reg),
            wait=False,
        )
    else:
        cluster = start_cluster(
            base,
            instances=1,
            interval=1.0,
            models=SMALL,
            policy=policy,
            before_first_commit=lambda repo: with_env(repo, reg),
        )
    try:
        if scenario != "fresh":
            httpx.delete(f"{reg.url}/_registry/stats")
            cluster.write_spec(SMALL + wan, policy)
            with_env(cluster.repo, reg)
            cluster.commit("wan on every node")
            start = time.monotonic()
        ready = wait_ready(cluster, mode, start)
        sent = int(httpx.get(f"{reg.url}/_registry/stats").json()["bytes_sent"])
        return sent, ready
    finally:
        httpx.delete(f"{reg.url}/_registry/faults")
        cluster.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="50MB")
    ap.add_argument("--rate", default="20MB", help="the registry's rate limit (bytes/s)")
    ap.add_argument("--scenario", choices=("fresh", "commit", "both"), default="both")
    args = ap.parse_args()
    rate = int(float(args.rate.upper().removesuffix("MB")) * 1_000_000)
    scenarios = ("fresh", "commit") if args.scenario == "both" else (args.scenario,)
    work = Path(tempfile.mkdtemp(prefix="od-transfer-reg-"))
    reg = start_registry(work, models=[f"wan={args.size}"])
    try:
        size = model_size(reg, "wan:latest")
        print(f"model wan: {size / 1e6:.1f} MB; registry limited to {rate / 1e6:.0f} MB/s; 3 nodes")
        print(
            f"{'scenario':<9} {'mode':<12} {'upstream MB':>12} {'x size':>7} {'last-first':>10}"
            "  time to ready (s)"
        )
        for scenario in scenarios:
            for mode in ("peers-first", "upstream"):
                sent, ready = run(mode, reg, rate, scenario)
                times = "  ".join(f"{n} {t:5.1f}" for n, t in sorted(ready.items()))
                # How long the last node lags the first: a LAN copy after the seeder's
                # download without streaming, next to nothing with it.
                lag = max(ready.values()) - min(ready.values())
                print(
                    f"{scenario:<9} {mode:<12} {sent / 1e6:12.1f} {sent / size:7.2f} {lag:10.1f}"
                    f"  {times}"
                )
    finally:
        reg.stop()


if __name__ == "__main__":
    main()
