"""Which models are loaded, and who may use them: Ollama's scheduler, simulated.

Rules (as ``ollama serve`` applies them):
- a model answers only once loaded; loading takes size / load speed;
- at most OLLAMA_MAX_LOADED_MODELS are loaded, and (if a VRAM size is given) their sizes fit
  in it; a new model evicts least recently used idle ones until it fits; a model with requests
  in flight is never evicted, so the newcomer waits; a model larger than VRAM still loads when
  it is alone, partly "on the CPU" (its size_vram is what fits);
- each loaded model serves OLLAMA_NUM_PARALLEL requests at once, the rest wait in FIFO order;
- requests waiting anywhere count against OLLAMA_MAX_QUEUE; past it the answer is a 503;
- an idle model unloads after its keep-alive: the ``keep_alive`` of the request that got a
  slot last (or OLLAMA_KEEP_ALIVE), or 0 after an unload request; 0 unloads as soon as the
  model is idle; a negative value keeps it forever.

Requests pass the scheduler in arrival order, as through Ollama's pending queue: one for a
loaded model goes on to that model's slots at once, but while the oldest request waits for a
busy model to go idle so it can be evicted, every request behind it waits too, even for loaded
models. That is how Ollama drains a model to swap it, and why alternating models thrash.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from olladist.sim.errors import QueueFull
from olladist.sim.stats import SimStats


class RunnerState(StrEnum):
    LOADING = "loading"
    LOADED = "loaded"


@dataclass(frozen=True)
class ModelRef:
    """What the scheduler needs to know about a model it may load."""

    name: str  # canonical short name
    digest: str
    size: int
    details: dict[str, Any] = field(hash=False)
    context_length: int = 4096


@dataclass(eq=False)
class Runner:
    model: ModelRef
    state: RunnerState
    active: int = 0
    waiters: deque[_Pending] = field(default_factory=deque)
    keep_alive: float | None = 300.0  # set by each request that gets a slot
    last_used: float = 0.0
    expires_at: float | None = None  # wall clock; None = never
    size_vram: int = 0
    timer: asyncio.TimerHandle | None = None

    @property
    def idle(self) -> bool:
        return self.state is RunnerState.LOADED and self.active == 0 and not self.waiters


@dataclass(frozen=True)
class Lease:
    runner: Runner
    cold: bool  # this request paid for the load


@dataclass(eq=False)
class _Pending:
    model: ModelRef
    future: asyncio.Future[tuple[Runner, bool]]
    slow: float
    keep_alive: float | None


class Scheduler:
    def __init__(
        self,
        *,
        num_parallel: int,
        max_loaded: int,
        max_queue: int,
        load_speed_gbps: float,
        stats: SimStats,
        vram_bytes: int | None = None,
    ) -> None:
        self.num_parallel = num_parallel
        self.vram_bytes = vram_bytes
        self.max_loaded = max_loaded
        self.max_queue = max_queue
        self.load_speed_gbps = load_speed_gbps
        self.stats = stats
        self._runners: dict[str, Runner] = {}
        self._pending: deque[_Pending] = deque()
        self._queued = 0
        self._tasks: set[asyncio.Task[None]] = set()

    # -- public --------------------------------------------------------------------------------

    def loaded(self) -> list[Runner]:
        return [r for r in self._runners.values() if r.state is RunnerState.LOADED]

    @property
    def queued(self) -> int:
        return self._queued

    def load_seconds(self, model: ModelRef, slow: float = 1.0) -> float:
        return model.size / (self.load_speed_gbps * 1e9) * slow

    async def acquire(self, model: ModelRef, keep_alive: float | None, slow: float = 1.0) -> Lease:
        """Wait for a slot on a loaded copy of ``model``; raise QueueFull past OLLAMA_MAX_QUEUE."""
        runner = self._runners.get(model.name)
        if runner is not None and runner.model.digest != model.digest and runner.idle:
            self._unload(runner, evicted=False)  # re-pulled or replaced: load the new one
            runner = None
        if (
            runner is not None
            and not self._pending
            and runner.state is RunnerState.LOADED
            and not runner.waiters
            and runner.active < self.num_parallel
        ):
            self._take_slot(runner, keep_alive)
            return Lease(runner, cold=False)
        if self._queued >= self.max_queue:
            self.stats.queue_full += 1
            raise QueueFull
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[Runner, bool]] = loop.create_future()
        pending = _Pending(model, future, slow, keep_alive)
        self._queued += 1
        try:
            if runner is not None and not self._pending:
                runner.waiters.append(pending)
                self._grant_slots(runner)
            else:
                self._pending.append(pending)
                self._dispatch()
            granted, cold = await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                # Granted just as the caller gave up: hand the slot back.
                self.release(Lease(future.result()[0], cold=False))
            else:
                future.cancel()
                self._dispatch()
            raise
        finally:
            self._queued -= 1
        return Lease(granted, cold=cold)

    def release(self, lease: Lease) -> None:
        runner = lease.runner
        runner.active -= 1
        runner.last_used = time.monotonic()
        self._grant_slots(runner)
        if (
            runner.active == 0
            and not runner.waiters
            and self._runners.get(runner.model.name) is (runner)
        ):
            self._went_idle(runner)
        self._dispatch()

    def expire(self, name: str) -> None:
        """Unload now if idle, else as soon as the requests in flight finish (keep_alive 0)."""
        runner = self._runners.get(name)
        if runner is None:
            return
        runner.keep_alive = 0
        if runner.idle:
            self._unload(runner, evicted=False)
            self._dispatch()

    def expires_at(self, runner: Runner) -> float | None:
        """Wall-clock expiry as /api/ps shows it (busy models: now + keep-alive)."""
        if runner.idle:
            return runner.expires_at
        return None if runner.keep_alive is None else time.time() + runner.keep_alive

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for runner in list(self._runners.values()):
            if runner.timer is not None:
                runner.timer.cancel()

    # -- internals -----------------------------------------------------------------------------

    def _take_slot(self, runner: Runner, keep_alive: float | None) -> None:
        runner.active += 1
        runner.keep_alive = keep_alive
        runner.expires_at = None
        if runner.timer is not None:
            runner.timer.cancel()
            runner.timer = None

    def _grant_slots(self, runner: Runner) -> None:
        while runner.state is RunnerState.LOADED and runner.active < self.num_parallel:
            if not runner.waiters:
                return
            waiter = runner.waiters.popleft()
            if waiter.future.done():
                continue
            self._take_slot(runner, waiter.keep_alive)
            waiter.future.set_result((runner, False))

    def _dispatch(self) -> None:
        while self._pending:
            head = self._pending[0]
            if head.future.done():
                self._pending.popleft()
                continue
            runner = self._runners.get(head.model.name)
            if runner is not None:  # another request started this load meanwhile
                self._pending.popleft()
                runner.waiters.append(head)
                self._grant_slots(runner)
                continue
            while self._crowded(head.model):
                victim = min(
                    (r for r in self._runners.values() if r.idle),
                    key=lambda r: r.last_used,
                    default=None,
                )
                if victim is None:
                    return  # every loaded model is busy: wait until one goes idle
                self._unload(victim, evicted=True)
            self._pending.popleft()
            runner = Runner(
                head.model,
                RunnerState.LOADING,
                active=1,
                keep_alive=head.keep_alive,
                size_vram=self._vram_share(head.model),
            )
            self._runners[head.model.name] = runner
            task = asyncio.get_running_loop().create_task(self._load(runner, head))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _vram_used(self) -> int:
        return sum(r.size_vram for r in self._runners.values())

    def _crowded(self, model: ModelRef) -> bool:
        """Must something be evicted before ``model`` can load?"""
        if len(self._runners) >= self.max_loaded:
            return True
        if self.vram_bytes is None or not self._runners:
            return False  # alone, even a model larger than VRAM loads (part of it on CPU)
        return self._vram_used() + model.size > self.vram_bytes

    def _vram_share(self, model: ModelRef) -> int:
        """How much of the model sits in VRAM; the rest would run on the CPU, as in Ollama."""
        if self.vram_bytes is None:
            return model.size
        return max(0, min(model.size, self.vram_bytes - self._vram_used()))

    async def _load(self, runner: Runner, requester: _Pending) -> None:
        try:
            await asyncio.sleep(self.load_seconds(runner.model, requester.slow))
        except asyncio.CancelledError:
            self._runners.pop(runner.model.name, None)
            raise
        runner.state = RunnerState.LOADED
        runner.last_used = time.monotonic()
        self.stats.cold_loads[runner.model.name] += 1
        if requester.future.done():
            runner.active -= 1  # the requester gave up during the load
        else:
            requester.future.set_result((runner, True))
        self._grant_slots(runner)
        if runner.idle:
            self._went_idle(runner)
        self._dispatch()

    def _went_idle(self, runner: Runner) -> None:
        if runner.keep_alive == 0:
            self._unload(runner, evicted=False)
            return
        if runner.keep_alive is None:
            runner.expires_at = None
            return
        runner.expires_at = time.time() + runner.keep_alive
        loop = asyncio.get_running_loop()
        runner.timer = loop.call_later(runner.keep_alive, self._expire_timer, runner)

    def _expire_timer(self, runner: Runner) -> None:
        runner.timer = None
        if runner.idle and self._runners.get(runner.model.name) is runner:
            self._unload(runner, evicted=False)
            self._dispatch()

    def _unload(self, runner: Runner, *, evicted: bool) -> None:
        if self._runners.get(runner.model.name) is runner:
            del self._runners[runner.model.name]
        if runner.timer is not None:
            runner.timer.cancel()
            runner.timer = None
        counter = self.stats.evictions if evicted else self.stats.unloads
        counter[runner.model.name] += 1
