"""Benchmark olladist-sim: throughput of short requests and the concurrent-stream ceiling.

    python bench/sim_bench.py [--quick] [--levels 1000,2000,5000] [--seconds 5]

Starts one simulator process on 127.0.0.1 (a port the kernel picks, a temporary model store),
then measures:
- throughput: req/s of short non-streaming /api/generate calls (1 token each) from a fixed
  number of concurrent clients, for a bounded time;
- concurrency: N streaming /api/generate calls opened at once (OLLAMA_NUM_PARALLEL=N, each
  stream 16 tokens at 10 tokens/s, so about 1.6 s long); whether all complete, the wall time,
  the peak number in flight at the simulator, and the simulator's peak RSS (VmHWM).
Every phase has a timeout; the simulator is stopped by PID at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import resource
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

# Run as `python bench/NAME.py` from a fresh clone: the repository root is not on sys.path.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from olladist.sim.process import SimProcess, start_sim

MODEL = "qwen2.5:0.5b"
PHASE_TIMEOUT = 120.0


@dataclass
class Row:
    test: str
    requests: int
    ok: int
    seconds: float
    rate: float
    peak_in_flight: int
    peak_rss_mb: float


def peak_rss_mb(pid: int) -> float:
    text = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"VmHWM:\s+(\d+) kB", text)
    return int(match.group(1)) / 1024 if match else 0.0


async def stats(session: aiohttp.ClientSession, url: str, reset: bool = False) -> dict[str, int]:
    async with session.request("DELETE" if reset else "GET", url + "/_sim/stats") as r:
        data: dict[str, int] = await r.json()
        return data


async def throughput(url: str, pid: int, clients: int, seconds: float) -> Row:
    body = {"model": MODEL, "prompt": "hi", "stream": False, "options": {"num_predict": 1}}
    done = errors = 0
    stop_at = time.monotonic() + seconds
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        await stats(session, url, reset=True)

        async def worker() -> None:
            nonlocal done, errors
            while time.monotonic() < stop_at:
                async with session.post(url + "/api/generate", json=body) as r:
                    await r.read()
                    if r.status == 200:
                        done += 1
                    else:
                        errors += 1

        began = time.monotonic()
        await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(clients))), PHASE_TIMEOUT)
        elapsed = time.monotonic() - began
        peak = (await stats(session, url))["peak_in_flight"]
    return Row(
        f"throughput, {clients} clients",
        done + errors,
        done,
        elapsed,
        done / elapsed,
        peak,
        peak_rss_mb(pid),
    )


async def streams(url: str, pid: int, count: int) -> Row:
    body = {"model": MODEL, "prompt": "stream please"}
    ok = 0
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    timeout = aiohttp.ClientTimeout(total=PHASE_TIMEOUT)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await stats(session, url, reset=True)

        async def one() -> bool:
            lines = 0
            async with session.post(url + "/api/generate", json=body) as r:
                async for raw in r.content:
                    if raw.strip():
                        lines += 1
                        last = raw
            return r.status == 200 and lines == 17 and json.loads(last).get("done") is True

        began = time.monotonic()
        results = await asyncio.gather(*(one() for _ in range(count)), return_exceptions=True)
        elapsed = time.monotonic() - began
        ok = sum(1 for r in results if r is True)
        peak = (await stats(session, url))["peak_in_flight"]
    return Row(
        f"{count} concurrent streams",
        count,
        ok,
        elapsed,
        ok / elapsed,
        peak,
        peak_rss_mb(pid),
    )


def print_table(rows: list[Row]) -> None:
    print(f"{'test':<30}{'requests':>9}{'ok':>7}{'seconds':>9}{'req/s':>9}{'peak':>7}{'RSS MB':>8}")
    for r in rows:
        print(
            f"{r.test:<30}{r.requests:>9}{r.ok:>7}{r.seconds:>9.2f}{r.rate:>9.0f}"
            f"{r.peak_in_flight:>7}{r.peak_rss_mb:>8.1f}"
        )


async def prepared(workdir: Path, env: dict[str, str]) -> SimProcess:
    """A simulator with MODEL pulled and loaded, so no phase pays for a cold load."""
    sim = start_sim(workdir, {"OLLADIST_SIM_QUIET": "1", "OLLADIST_SIM_PULL_GBPS": "100", **env})
    try:
        async with aiohttp.ClientSession() as session:
            pull = {"model": MODEL, "stream": False}
            async with session.post(sim.url + "/api/pull", json=pull) as r:
                assert r.status == 200, await r.text()
            async with session.post(sim.url + "/api/generate", json={"model": MODEL}) as r:
                assert r.status == 200, await r.text()
    except BaseException:
        sim.stop()
        raise
    return sim


async def run(levels: list[int], seconds: float, clients: int) -> list[Row]:
    rows: list[Row] = []
    top = max([*levels, clients])
    common = {
        "OLLAMA_NUM_PARALLEL": str(top),
        "OLLAMA_MAX_QUEUE": str(2 * top),
        "OLLADIST_SIM_PROMPT_RATE": "1000000",
    }
    with tempfile.TemporaryDirectory(prefix="sim-bench-") as tmp:
        # Throughput: tokens cost no time, so the figure is the server's own overhead.
        with await prepared(
            Path(tmp) / "fast", {**common, "OLLADIST_SIM_TOKEN_RATE": "1000000000"}
        ) as sim:
            rows.append(await throughput(sim.url, sim.pid, clients, seconds))
        # Concurrency: streams of 16 tokens at 10 tokens/s stay open about 1.6 s each.
        with await prepared(
            Path(tmp) / "streams", {**common, "OLLADIST_SIM_TOKEN_RATE": "10"}
        ) as sim:
            for level in levels:
                rows.append(await streams(sim.url, sim.pid, level))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levels", default="1000,2000,5000", help="concurrent stream counts")
    parser.add_argument("--seconds", type=float, default=5.0, help="throughput phase length")
    parser.add_argument("--clients", type=int, default=64, help="throughput concurrency")
    parser.add_argument("--quick", action="store_true", help="levels 200,500 and 2 s")
    args = parser.parse_args()
    levels = [int(x) for x in args.levels.split(",") if x]
    if args.quick:
        levels, args.seconds = [200, 500], 2.0
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2 * max(levels) + 100:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4 * max(levels) + 100), hard))
    rows = asyncio.run(run(levels, args.seconds, args.clients))
    print_table(rows)


if __name__ == "__main__":
    main()
