"""1,000 concurrent streams through one simulator process all complete, every line intact."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import pytest

from .conftest import SimFactory

pytestmark = pytest.mark.integration

STREAMS = 1000
TIME_LIMIT = 60.0


def test_thousand_concurrent_streams_complete(sim_factory: SimFactory) -> None:
    sim = sim_factory(
        {
            "OLLAMA_NUM_PARALLEL": str(STREAMS),
            "OLLAMA_MAX_QUEUE": str(2 * STREAMS),
            "OLLADIST_SIM_TOKEN_RATE": "10",  # each stream stays open about 1.6 s
            "OLLADIST_SIM_QUIET": "1",
        }
    )
    sim.pull("qwen2.5:0.5b")

    async def run() -> list[list[dict[str, object]]]:
        connector = aiohttp.TCPConnector(limit=0, force_close=True)
        timeout = aiohttp.ClientTimeout(total=TIME_LIMIT)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

            async def one(i: int) -> list[dict[str, object]]:
                body = {"model": "qwen2.5:0.5b", "prompt": f"stream {i}"}
                async with session.post(sim.url + "/api/generate", json=body) as r:
                    assert r.status == 200
                    return [json.loads(line) async for line in r.content if line.strip()]

            return await asyncio.gather(*(one(i) for i in range(STREAMS)))

    began = time.monotonic()
    results = asyncio.run(run())
    elapsed = time.monotonic() - began
    assert len(results) == STREAMS
    for lines in results:
        assert len(lines) == 17
        assert lines[-1]["done"] is True and lines[-1]["eval_count"] == 16
    stats = sim.stats()
    assert stats["peak_in_flight"] >= STREAMS  # they really were open at the same time
    # Every stream is an inference request; the pull before them is not one.
    assert stats["peak_inference_in_flight"] == STREAMS
    assert stats["inference_in_flight"] == 0
    assert stats["cold_loads"] == 1  # one load, shared by all
    assert elapsed < TIME_LIMIT
