"""The scheduler in-process: loads, LRU eviction, slots, queue bound, keep-alive."""

from __future__ import annotations

import asyncio
import time

import pytest

from olladist.sim.errors import QueueFull
from olladist.sim.scheduler import ModelRef, Scheduler
from olladist.sim.stats import SimStats

GB = 1_000_000_000


def model(name: str, size: int = GB) -> ModelRef:
    return ModelRef(name=name, digest="d-" + name, size=size, details={})


def scheduler(**kw: int) -> Scheduler:
    # 20 GB/s: a 1 GB model loads in 50 ms.
    args = {"num_parallel": 1, "max_loaded": 2, "max_queue": 10}
    args.update(kw)
    return Scheduler(load_speed_gbps=20.0, stats=SimStats(), **args)


def names(s: Scheduler) -> list[str]:
    return sorted(r.model.name for r in s.loaded())


def test_cold_then_warm_and_load_time_is_size_over_speed() -> None:
    async def main() -> None:
        s = scheduler()
        began = time.monotonic()
        lease = await s.acquire(model("a", 2 * GB), keep_alive=60)
        cold_time = time.monotonic() - began
        assert lease.cold
        assert 0.09 <= cold_time < 0.5  # 2 GB at 20 GB/s = 0.1 s
        s.release(lease)
        began = time.monotonic()
        warm = await s.acquire(model("a", 2 * GB), keep_alive=60)
        assert not warm.cold
        assert time.monotonic() - began < 0.01
        s.release(warm)
        assert s.stats.cold_loads == {"a": 1}
        await s.close()

    asyncio.run(main())


def test_lru_eviction_keeps_at_most_max_loaded() -> None:
    async def main() -> None:
        s = scheduler(max_loaded=2)
        for name in ("a", "b"):
            s.release(await s.acquire(model(name), keep_alive=60))
        s.release(await s.acquire(model("a"), keep_alive=60))  # a is now most recent
        s.release(await s.acquire(model("c"), keep_alive=60))
        assert names(s) == ["a", "c"]
        assert s.stats.evictions == {"b": 1}
        await s.close()

    asyncio.run(main())


def test_busy_model_is_not_evicted_the_newcomer_waits() -> None:
    async def main() -> None:
        s = scheduler(max_loaded=1)
        held = await s.acquire(model("a"), keep_alive=60)
        waiting = asyncio.create_task(s.acquire(model("b"), keep_alive=60))
        await asyncio.sleep(0.2)
        assert not waiting.done()
        assert names(s) == ["a"]
        assert s.queued == 1
        s.release(held)
        lease = await asyncio.wait_for(waiting, 2)
        assert lease.cold
        assert names(s) == ["b"]
        s.release(lease)
        await s.close()

    asyncio.run(main())


def test_parallel_slots_then_fifo_queue_then_503() -> None:
    async def main() -> None:
        s = scheduler(num_parallel=2, max_queue=2)
        first = await s.acquire(model("a"), keep_alive=60)
        second = await s.acquire(model("a"), keep_alive=60)  # two slots
        queued = [asyncio.create_task(s.acquire(model("a"), keep_alive=60)) for _ in range(2)]
        await asyncio.sleep(0.01)
        assert s.queued == 2
        with pytest.raises(QueueFull) as info:
            await s.acquire(model("a"), keep_alive=60)
        assert info.value.status == 503
        assert "maximum pending requests exceeded" in info.value.message
        s.release(first)
        third = await asyncio.wait_for(queued[0], 1)
        assert not queued[1].done()  # FIFO: only the oldest got the freed slot
        s.release(second)
        fourth = await asyncio.wait_for(queued[1], 1)
        for lease in (third, fourth):
            s.release(lease)
        assert s.stats.queue_full == 1
        await s.close()

    asyncio.run(main())


def test_keep_alive_expiry_and_zero_and_forever() -> None:
    async def main() -> None:
        s = scheduler(max_loaded=3)
        s.release(await s.acquire(model("short"), keep_alive=0.5))
        s.release(await s.acquire(model("zero"), keep_alive=0))
        s.release(await s.acquire(model("forever"), keep_alive=None))
        assert names(s) == ["forever", "short"]  # keep_alive 0 unloads when idle
        short = next(r for r in s.loaded() if r.model.name == "short")
        expires = s.expires_at(short)
        assert expires is not None
        assert 0.2 < expires - time.time() <= 0.5
        assert s.expires_at(next(r for r in s.loaded() if r.model.name == "forever")) is None
        await asyncio.sleep(0.6)
        assert names(s) == ["forever"]
        assert s.stats.unloads == {"zero": 1, "short": 1}
        await s.close()

    asyncio.run(main())


def test_expire_waits_for_requests_in_flight() -> None:
    async def main() -> None:
        s = scheduler()
        lease = await s.acquire(model("a"), keep_alive=60)
        s.expire("a")
        assert names(s) == ["a"]
        s.release(lease)
        assert names(s) == []
        await s.close()

    asyncio.run(main())


def test_cancelled_waiter_gives_its_place_back() -> None:
    async def main() -> None:
        s = scheduler(max_loaded=1)
        held = await s.acquire(model("a"), keep_alive=60)
        waiter = asyncio.create_task(s.acquire(model("b"), keep_alive=60))
        await asyncio.sleep(0.01)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert s.queued == 0
        s.release(held)
        assert names(s) == ["a"]  # nobody is waiting for b any more: a stays
        await s.close()

    asyncio.run(main())


def test_requests_during_a_load_share_it() -> None:
    async def main() -> None:
        s = scheduler(num_parallel=4)
        leases = await asyncio.gather(*(s.acquire(model("a"), keep_alive=60) for _ in range(4)))
        assert [lease.cold for lease in leases].count(True) == 1
        assert s.stats.cold_loads == {"a": 1}
        for lease in leases:
            s.release(lease)
        await s.close()

    asyncio.run(main())


def test_fifo_like_ollama_a_pending_swap_holds_later_requests() -> None:
    async def main() -> None:
        s = scheduler(max_loaded=1, num_parallel=2)
        a1 = await s.acquire(model("a"), keep_alive=60)
        b = asyncio.create_task(s.acquire(model("b"), keep_alive=60))
        await asyncio.sleep(0.01)
        # a has a free slot, but b arrived first and waits to swap a out: a2 queues behind b.
        a2 = asyncio.create_task(s.acquire(model("a"), keep_alive=60))
        await asyncio.sleep(0.01)
        assert not a2.done()
        s.release(a1)
        b_lease = await asyncio.wait_for(b, 1)
        assert names(s) == ["b"]
        assert not a2.done()  # now a must wait for b to finish: the thrash Ollama shows
        s.release(b_lease)
        a2_lease = await asyncio.wait_for(a2, 1)
        assert a2_lease.cold
        s.release(a2_lease)
        assert s.stats.cold_loads == {"a": 2, "b": 1}
        await s.close()

    asyncio.run(main())


def test_last_granted_keep_alive_wins() -> None:
    async def main() -> None:
        s = scheduler(num_parallel=2)
        first = await s.acquire(model("a"), keep_alive=0)  # unload when done...
        second = await s.acquire(model("a"), keep_alive=60)  # ...unless a later request says so
        s.release(first)
        s.release(second)
        assert names(s) == ["a"]
        s.expire("a")  # an unload request is the last word
        assert names(s) == []
        await s.close()

    asyncio.run(main())


def test_vram_limit_evicts_to_fit_and_offloads_a_model_too_big() -> None:
    async def main() -> None:
        s = Scheduler(
            num_parallel=1,
            max_loaded=10,
            max_queue=10,
            load_speed_gbps=100.0,
            stats=SimStats(),
            vram_bytes=10 * GB,
        )
        for name in ("a", "b"):  # 4 GB each: both fit
            s.release(await s.acquire(model(name, 4 * GB), keep_alive=60))
        assert names(s) == ["a", "b"]
        s.release(await s.acquire(model("c", 4 * GB), keep_alive=60))  # 12 > 10: a goes
        assert names(s) == ["b", "c"]
        s.release(await s.acquire(model("big", 16 * GB), keep_alive=60))  # evicts everything
        assert names(s) == ["big"]
        (big,) = s.loaded()
        assert big.size_vram == 10 * GB  # the rest runs "on the CPU"
        assert s.stats.evictions == {"a": 1, "b": 1, "c": 1}
        await s.close()

    asyncio.run(main())
