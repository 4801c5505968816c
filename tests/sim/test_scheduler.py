"""The scheduler in-process, rule by rule against Ollama's (server/sched.go, see the module
docstring of olladist.sim.scheduler): loads, eviction order, slots, the pending queue and its
bound, keep-alive, reloads on other runner options, load_duration's end."""

from __future__ import annotations

import asyncio
import time

import pytest

from olladist.sim.config import config_from_env
from olladist.sim.errors import QueueFull
from olladist.sim.scheduler import UNSET, ModelRef, RunnerOptions, Scheduler
from olladist.sim.stats import SimStats

GB = 1_000_000_000


def model(name: str, size: int = GB, *, completion: bool = True, key: str = "") -> ModelRef:
    return ModelRef(
        name=name,
        digest="d-" + name,
        size=size,
        details={},
        context_length=32768,
        key=key or "w-" + name,
        completion=completion,
    )


def scheduler(**kw: int) -> Scheduler:
    # 20 GB/s: a 1 GB model loads in 50 ms.
    args = {"num_parallel": 1, "max_loaded": 2, "max_queue": 10}
    args.update(kw)
    return Scheduler(load_speed_gbps=20.0, stats=SimStats(), **args)


def names(s: Scheduler) -> list[str]:
    return sorted(r.model.name for r in s.loaded())


async def settle() -> None:
    await asyncio.sleep(0.01)


def test_cold_then_warm_and_load_time_is_size_over_speed() -> None:
    async def main() -> None:
        s = scheduler()
        began = time.monotonic()
        lease = await s.acquire(model("a", 2 * GB), keep_alive=60)
        cold_time = time.monotonic() - began
        assert lease.cold
        assert cold_time >= 0.09  # 2 GB at 20 GB/s = 0.1 s
        s.release(lease)
        warm = await s.acquire(model("a", 2 * GB), keep_alive=60)
        assert not warm.cold
        s.release(warm)
        assert s.stats.cold_loads == {"a": 1}
        await s.close()

    asyncio.run(main())


def test_max_loaded_default_is_3_per_gpu_and_3_on_a_cpu_only_host() -> None:
    assert config_from_env({}).max_loaded_models == 3
    assert config_from_env({"OLLADIST_SIM_GPUS": "2"}).max_loaded_models == 6
    assert config_from_env({"OLLADIST_SIM_GPUS": "0"}).max_loaded_models == 3
    assert config_from_env({"OLLAMA_MAX_LOADED_MODELS": "5"}).max_loaded_models == 5


def test_eviction_is_by_keep_alive_then_model_path_not_lru() -> None:
    async def main() -> None:
        s = scheduler(max_loaded=2)
        s.release(await s.acquire(model("a"), keep_alive=60))
        s.release(await s.acquire(model("b"), keep_alive=60))
        s.release(await s.acquire(model("a"), keep_alive=60))  # a is the most recent...
        s.release(await s.acquire(model("c"), keep_alive=60))
        assert names(s) == ["b", "c"]  # ...and still goes: same keep-alive, "w-a" < "w-b"
        assert s.stats.evictions == {"a": 1}
        # A shorter keep-alive goes first, whatever the name; forever goes last.
        s.release(await s.acquire(model("b"), keep_alive=None))
        s.release(await s.acquire(model("c"), keep_alive=600))
        s.release(await s.acquire(model("z"), keep_alive=60))
        assert names(s) == ["b", "z"]
        assert s.stats.evictions == {"a": 1, "c": 1}
        await s.close()

    asyncio.run(main())


def test_busy_model_is_not_evicted_the_newcomer_waits() -> None:
    async def main() -> None:
        s = scheduler(max_loaded=1)
        held = await s.acquire(model("a"), keep_alive=60)
        waiting = asyncio.create_task(s.acquire(model("b"), keep_alive=60))
        await asyncio.sleep(0.1)
        assert not waiting.done()
        assert names(s) == ["a"]
        assert s.pending == 1
        s.release(held)
        lease = await asyncio.wait_for(waiting, 2)
        assert lease.cold
        assert names(s) == ["b"]
        s.release(lease)
        await s.close()

    asyncio.run(main())


def test_when_all_are_busy_the_shortest_keep_alive_is_the_one_waited_for() -> None:
    async def main() -> None:
        s = scheduler(max_loaded=2)
        a = await s.acquire(model("a"), keep_alive=10)
        b = await s.acquire(model("b"), keep_alive=60)
        c = asyncio.create_task(s.acquire(model("c"), keep_alive=60))
        await settle()
        s.release(b)  # b goes idle first, but a was chosen: b stays
        await settle()
        assert not c.done()
        assert names(s) == ["a", "b"]
        s.release(a)  # a was marked to expire: it unloads at once, and c loads
        s.release(await asyncio.wait_for(c, 2))
        assert names(s) == ["b", "c"]
        assert s.stats.evictions == {"a": 1}
        await s.close()

    asyncio.run(main())


def test_a_loaded_model_is_served_while_a_load_waits_in_the_queue() -> None:
    async def main() -> None:
        s = scheduler(max_loaded=1, num_parallel=2)
        a1 = await s.acquire(model("a"), keep_alive=60)
        b = asyncio.create_task(s.acquire(model("b"), keep_alive=60))
        await settle()
        # b waits for a to go idle; a request for a (loaded, a free slot) does not wait for b.
        # (It names no keep_alive: one that did would replace the 0 that marks a for unloading,
        # and b would wait for a's keep-alive to run out, as it does in Ollama.)
        a2 = await asyncio.wait_for(s.acquire(model("a")), 1)
        assert not a2.cold
        s.release(a1)
        await settle()
        assert not b.done()  # a is still busy with a2
        s.release(a2)
        s.release(await asyncio.wait_for(b, 2))
        assert names(s) == ["b"]
        await s.close()

    asyncio.run(main())


def test_slots_are_fifo_and_slot_waits_are_not_bounded_by_max_queue() -> None:
    async def main() -> None:
        s = scheduler(num_parallel=2, max_queue=0)
        first = await s.acquire(model("a"), keep_alive=60)
        second = await s.acquire(model("a"), keep_alive=60)
        waiting = [asyncio.create_task(s.acquire(model("a"), keep_alive=60)) for _ in range(5)]
        await settle()
        assert s.queued == 5
        assert s.pending == 0  # none of them is in the scheduler's queue: no 503
        s.release(first)
        third = await asyncio.wait_for(waiting[0], 1)
        await settle()
        assert [t.done() for t in waiting[1:]] == [False] * 4  # FIFO: only the oldest
        s.release(second)
        s.release(third)
        for task in waiting[1:]:
            s.release(await asyncio.wait_for(task, 1))
        assert s.stats.queue_full == 0
        await s.close()

    asyncio.run(main())


def test_max_queue_bounds_the_pending_queue_with_a_503() -> None:
    async def main() -> None:
        s = scheduler(max_loaded=1, max_queue=1, num_parallel=2)
        held = await s.acquire(model("a"), keep_alive=60)
        b = asyncio.create_task(s.acquire(model("b"), keep_alive=60))  # the one being served
        c = asyncio.create_task(s.acquire(model("c"), keep_alive=60))  # the one queued
        await settle()
        with pytest.raises(QueueFull) as info:
            await s.acquire(model("d"), keep_alive=60)
        assert info.value.status == 503
        assert "maximum pending requests exceeded" in info.value.message
        warm = await asyncio.wait_for(s.acquire(model("a")), 1)  # the fast path
        s.release(warm)
        s.release(held)
        s.release(await asyncio.wait_for(b, 2))
        s.release(await asyncio.wait_for(c, 2))
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
        assert expires - time.time() <= 0.5
        assert s.expires_at(next(r for r in s.loaded() if r.model.name == "forever")) is None
        await asyncio.sleep(0.6)
        assert names(s) == ["forever"]
        assert s.stats.unloads == {"zero": 1, "short": 1}
        await s.close()

    asyncio.run(main())


def test_a_request_without_keep_alive_leaves_the_runners_alone() -> None:
    async def main() -> None:
        s = Scheduler(
            num_parallel=1,
            max_loaded=3,
            max_queue=10,
            load_speed_gbps=20.0,
            stats=SimStats(),
            default_keep_alive=0.2,
        )
        s.release(await s.acquire(model("a")))  # loaded with OLLAMA_KEEP_ALIVE (0.2 s)
        (a,) = s.loaded()
        assert a.keep_alive == 0.2
        s.release(await s.acquire(model("a"), keep_alive=None))  # forever from now on
        s.release(await s.acquire(model("a")))  # no keep_alive: still forever
        assert a.keep_alive is None
        await asyncio.sleep(0.3)
        assert names(s) == ["a"]
        await s.close()

    asyncio.run(main())


def test_busy_runners_keep_the_expiry_they_had_when_idle() -> None:
    async def main() -> None:
        s = scheduler()
        s.release(await s.acquire(model("a"), keep_alive=60))
        (a,) = s.loaded()
        idle_expiry = s.expires_at(a)
        lease = await s.acquire(model("a"), keep_alive=600)
        assert s.expires_at(a) == idle_expiry  # Ollama updates it only when a goes idle
        s.release(lease)
        later = s.expires_at(a)
        assert later is not None and idle_expiry is not None and later > idle_expiry + 500
        await s.close()

    asyncio.run(main())


def test_expire_waits_for_requests_in_flight() -> None:
    async def main() -> None:
        s = scheduler()
        lease = await s.acquire(model("a"), keep_alive=60)
        s.expire(model("a"))
        assert names(s) == ["a"]
        s.release(lease)
        assert names(s) == []
        await s.close()

    asyncio.run(main())


def test_other_runner_options_reload_the_model() -> None:
    async def main() -> None:
        s = scheduler()
        small = RunnerOptions(num_ctx=4096)
        s.release(await s.acquire(model("a"), 60, options=small))
        s.release(await s.acquire(model("a"), 60, options=small))
        assert s.stats.cold_loads == {"a": 1}
        big = await s.acquire(model("a"), 60, options=RunnerOptions(num_ctx=8192))
        assert big.cold
        assert big.runner.options.num_ctx == 8192
        s.release(big)
        assert s.stats.cold_loads == {"a": 2}
        assert s.stats.reloads == {"a": 1}
        # num_gpu -1 ("as many layers as fit") matches a runner loaded with any num_gpu.
        pinned = RunnerOptions(num_ctx=8192, num_gpu=20)
        s.release(await s.acquire(model("a"), 60, options=pinned))
        s.release(await s.acquire(model("a"), 60, options=RunnerOptions(num_ctx=8192)))
        assert s.stats.cold_loads == {"a": 3}
        # num_ctx is capped at the trained context, so asking for more changes nothing.
        over = await s.acquire(model("a"), 60, options=RunnerOptions(num_ctx=10**6))
        assert over.runner.options.num_ctx == 32768
        s.release(over)
        same = await s.acquire(model("a"), 60, options=RunnerOptions(num_ctx=32768))
        assert not same.cold
        s.release(same)
        await s.close()

    asyncio.run(main())


def test_embedding_models_serve_one_request_at_a_time() -> None:
    async def main() -> None:
        s = scheduler(num_parallel=4)
        first = await s.acquire(model("e", completion=False), 60)
        second = asyncio.create_task(s.acquire(model("e", completion=False), 60))
        await settle()
        assert not second.done()
        s.release(first)
        s.release(await asyncio.wait_for(second, 1))
        chat = [await s.acquire(model("c"), 60) for _ in range(4)]  # completion: 4 slots
        for lease in chat:
            s.release(lease)
        await s.close()

    asyncio.run(main())


def test_a_load_only_request_takes_no_slot_and_load_duration_excludes_slot_waits() -> None:
    async def main() -> None:
        s = scheduler()
        busy = await s.acquire(model("a"), 60)
        load_only = await asyncio.wait_for(s.acquire(model("a"), 60, slot=False), 1)
        s.release(load_only)
        waiter = asyncio.create_task(s.acquire(model("a"), 60))
        await settle()
        released_at = time.monotonic_ns()
        s.release(busy)
        lease = await asyncio.wait_for(waiter, 1)
        # The runner was ready before the slot came free: load_duration ends there.
        assert lease.granted_ns < released_at
        s.release(lease)
        await s.close()

    asyncio.run(main())


def test_two_names_for_one_weights_blob_share_a_runner() -> None:
    async def main() -> None:
        s = scheduler()
        s.release(await s.acquire(model("a", key="w-shared"), 60))
        copy = await s.acquire(model("b", key="w-shared"), 60)
        assert not copy.cold
        assert copy.runner.model.name == "a"  # /api/ps shows the name that loaded it
        s.release(copy)
        await s.close()

    asyncio.run(main())


def test_a_loading_model_is_listed() -> None:
    async def main() -> None:
        s = scheduler()
        loading = asyncio.create_task(s.acquire(model("a", 4 * GB), 60))  # 0.2 s
        await settle()
        (runner,) = s.loaded()
        assert runner.state == "loading"
        assert s.ready() == []
        s.release(await loading)
        await s.close()

    asyncio.run(main())


def test_cancelled_waiter_gives_its_place_back() -> None:
    async def main() -> None:
        s = scheduler(max_loaded=1)
        held = await s.acquire(model("a"), keep_alive=60)
        waiter = asyncio.create_task(s.acquire(model("b"), keep_alive=60))
        await settle()
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        assert s.queued == 0
        s.release(held)
        await settle()
        # a was already marked to make room for b, so it unloads as Ollama's would.
        assert names(s) == []
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


def test_last_granted_keep_alive_wins() -> None:
    async def main() -> None:
        s = scheduler(num_parallel=2)
        first = await s.acquire(model("a"), keep_alive=0)  # unload when done...
        second = await s.acquire(model("a"), keep_alive=60)  # ...unless a later request says so
        s.release(first)
        s.release(second)
        assert names(s) == ["a"]
        s.expire(model("a"))  # an unload request is the last word
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


def test_a_cpu_only_host_has_nothing_in_vram() -> None:
    async def main() -> None:
        s = Scheduler(
            num_parallel=1,
            max_loaded=3,
            max_queue=10,
            load_speed_gbps=100.0,
            stats=SimStats(),
            cpu_only=True,
        )
        s.release(await s.acquire(model("a"), UNSET))
        (a,) = s.loaded()
        assert a.size_vram == 0
        await s.close()

    asyncio.run(main())
