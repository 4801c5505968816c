"""Which models are loaded, and who may use them: Ollama's scheduler, simulated.

The rules, read in Ollama's source (server/sched.go, server/routes.go, llm/server.go of
v0.12.3, the version the simulator reports; unchanged in later releases except where noted):

- A request for a model that is loaded (or loading) with the same runner options goes straight
  to it (getRunner's fast path): it never waits behind other requests in the scheduler. There it
  waits for one of the runner's OLLAMA_NUM_PARALLEL slots, in FIFO order (the runner's
  semaphore); embedding-only models get one slot. Those waits are not bounded by
  OLLAMA_MAX_QUEUE.
- Any other request (the model is not loaded, or its runner options differ: num_ctx, num_batch,
  num_gpu, main_gpu, use_mmap, num_thread) joins the pending queue, which holds at most
  OLLAMA_MAX_QUEUE requests (past that: 503 at once). The queue is served one request at a
  time, in order: the head is loaded if fewer than OLLAMA_MAX_LOADED_MODELS (default 3 per GPU,
  3 on a CPU-only host) are loaded and it fits in the free VRAM (the first model always loads,
  partly on the CPU if it is too big); otherwise one runner is chosen to unload and the whole
  queue waits until it has unloaded, then looks again. A runner whose options differ from the
  head's is the one chosen (a reload).
- The runner chosen is not the least recently used one: Ollama sorts the loaded runners by
  their keep-alive duration, shortest first (forever last), then by model path (the weights
  blob), and takes the first idle one; if none is idle it takes the first and waits for it.
  The chosen runner's keep-alive becomes 0, so it unloads as soon as its requests finish.
- A runner goes idle when its last request ends; it then unloads after its keep-alive: the one
  it was loaded with (the request's ``keep_alive``, else OLLAMA_KEEP_ALIVE), replaced by every
  later request that carries a ``keep_alive`` (a request without one leaves it alone); 0
  unloads at once; a negative value never. ``expires_at`` is set when the runner goes idle and
  left as it is while it is busy.
- Loading takes size / load speed (the simulator's stand-in for reading the weights). Runners
  are keyed by their weights blob, so two names for one set of weights share one runner.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from olladist.sim.errors import QueueFull
from olladist.sim.stats import SimStats


class Unset(enum.Enum):
    """A request that names no keep_alive: the runner's own stays (Ollama's nil duration)."""

    UNSET = "unset"


UNSET = Unset.UNSET
KeepAlive = float | None | Unset  # seconds; None = forever


class RunnerState(enum.StrEnum):
    LOADING = "loading"
    LOADED = "loaded"


@dataclass(frozen=True)
class RunnerOptions:
    """The options fixed when a runner starts (Ollama's api.Runner); a request asking for
    others makes Ollama reload the model."""

    num_ctx: int = 4096
    num_batch: int = 512
    num_gpu: int = -1
    main_gpu: int = 0
    use_mmap: bool | None = None
    num_thread: int = 0

    def needs_reload_for(self, wanted: RunnerOptions) -> bool:
        # needsReload: a request with num_gpu < 0 ("as many layers as fit") matches any.
        mine, theirs = self, wanted
        if wanted.num_gpu < 0:
            mine = _replace_gpu(mine)
            theirs = _replace_gpu(theirs)
        return mine != theirs


def _replace_gpu(options: RunnerOptions) -> RunnerOptions:
    return RunnerOptions(
        options.num_ctx,
        options.num_batch,
        -1,
        options.main_gpu,
        options.use_mmap,
        options.num_thread,
    )


@dataclass(frozen=True)
class ModelRef:
    """What the scheduler needs to know about a model it may load."""

    name: str  # canonical short name
    digest: str  # of the manifest
    size: int
    details: dict[str, Any] = field(hash=False)
    context_length: int = 4096  # trained context: num_ctx is capped at it
    key: str = ""  # the weights blob digest: what Ollama keys its runners by
    completion: bool = True  # False: an embedding model, served one request at a time

    @property
    def runner_key(self) -> str:
        return self.key or self.digest


@dataclass(eq=False)
class Runner:
    model: ModelRef
    options: RunnerOptions
    state: RunnerState
    num_parallel: int
    refs: int = 0  # requests holding the runner (waiting for a slot or in one)
    active: int = 0  # requests in a slot
    slot_waiters: deque[asyncio.Future[None]] = field(default_factory=deque)
    keep_alive: float | None = 300.0
    expires_at: float | None = 0.0  # wall clock; None = never; 0.0 = not idle yet
    size_vram: int = 0
    last_used: float = 0.0
    evicting: bool = False  # chosen to make room: its unload counts as an eviction
    timer: asyncio.TimerHandle | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    load_task: asyncio.Task[None] | None = None

    @property
    def idle(self) -> bool:
        return self.state is RunnerState.LOADED and self.refs == 0


@dataclass(frozen=True)
class Lease:
    runner: Runner
    cold: bool  # this request paid for the load
    granted_ns: int  # monotonic ns when the runner was ready (Ollama's checkpointLoaded)
    slot: bool = True  # False: a load-only request, which takes no slot


@dataclass(eq=False)
class _Pending:
    model: ModelRef
    options: RunnerOptions
    keep_alive: KeepAlive
    slow: float
    future: asyncio.Future[tuple[Runner, bool]]  # the runner; True if this request loads it


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
        default_keep_alive: float | None = 300.0,
        cpu_only: bool = False,
    ) -> None:
        self.num_parallel = num_parallel
        self.vram_bytes = None if cpu_only else vram_bytes
        self.cpu_only = cpu_only
        self.max_loaded = max_loaded
        self.max_queue = max_queue
        self.load_speed_gbps = load_speed_gbps
        self.default_keep_alive = default_keep_alive
        self.stats = stats
        self._runners: dict[str, Runner] = {}
        self._pending: deque[_Pending] = deque()
        self._waiting_for_unload = False
        self._dispatching = False
        self._again = False
        self._waiting = 0

    # -- public --------------------------------------------------------------------------------

    def loaded(self) -> list[Runner]:
        """Every runner, loading ones included, as Ollama's /api/ps lists them."""
        return list(self._runners.values())

    def ready(self) -> list[Runner]:
        return [r for r in self._runners.values() if r.state is RunnerState.LOADED]

    @property
    def queued(self) -> int:
        """Requests waiting anywhere: in the pending queue, for a load, or for a slot."""
        return self._waiting

    @property
    def pending(self) -> int:
        """Requests in the pending queue (what OLLAMA_MAX_QUEUE bounds)."""
        return sum(1 for p in self._pending if not p.future.done())

    def load_seconds(self, model: ModelRef, slow: float = 1.0) -> float:
        return model.size / (self.load_speed_gbps * 1e9) * slow

    async def acquire(
        self,
        model: ModelRef,
        keep_alive: KeepAlive = UNSET,
        *,
        options: RunnerOptions | None = None,
        slow: float = 1.0,
        slot: bool = True,
    ) -> Lease:
        """Get a runner for ``model`` (and, unless ``slot`` is False, one of its slots)."""
        wanted = self._capped(model, options or RunnerOptions())
        self._waiting += 1
        try:
            runner = self._runners.get(model.runner_key)
            cold = False
            if runner is not None and not runner.options.needs_reload_for(wanted):
                self._use(runner, keep_alive)
            else:
                runner, cold = await self._enqueue(model, wanted, keep_alive, slow)
            try:
                await runner.ready.wait()
                granted = time.monotonic_ns()
                if slot:
                    await self._take_slot(runner)
            except asyncio.CancelledError:
                self._drop(runner)
                raise
        finally:
            self._waiting -= 1
        return Lease(runner, cold, granted, slot)

    def release(self, lease: Lease) -> None:
        runner = lease.runner
        if lease.slot:
            runner.active -= 1
            self._grant_slot(runner)
        self._drop(runner)

    def expire(self, model: ModelRef) -> None:
        """An unload request (keep_alive 0 and no prompt): now if idle, else when idle."""
        runner = self._runners.get(model.runner_key)
        if runner is None:
            return
        runner.keep_alive = 0
        runner.expires_at = time.time()
        self._cancel_timer(runner)
        if runner.refs == 0:
            self._unload(runner)

    def expires_at(self, runner: Runner) -> float | None:
        """Wall-clock expiry as /api/ps shows it; None = never.

        Ollama sets it when the runner goes idle and leaves it while the runner is busy; one
        that never went idle yet shows now + its keep-alive.
        """
        if runner.expires_at == 0.0:
            return None if runner.keep_alive is None else time.time() + runner.keep_alive
        return runner.expires_at

    async def close(self) -> None:
        for runner in list(self._runners.values()):
            self._cancel_timer(runner)
            if runner.load_task is not None:
                runner.load_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await runner.load_task
            runner.ready.set()

    # -- the runner a request holds ------------------------------------------------------------

    def _use(self, runner: Runner, keep_alive: KeepAlive) -> None:
        """useLoadedRunner: one more holder; its keep_alive, if it names one, is the runner's."""
        runner.refs += 1
        self._cancel_timer(runner)
        if keep_alive is not UNSET:
            runner.keep_alive = keep_alive

    def _drop(self, runner: Runner) -> None:
        runner.refs -= 1
        runner.last_used = time.monotonic()
        if runner.refs > 0 or self._runners.get(runner.model.runner_key) is not runner:
            return
        if runner.state is RunnerState.LOADING:
            return  # the load finishes first; it handles an idle runner then
        self._went_idle(runner)

    async def _take_slot(self, runner: Runner) -> None:
        if runner.active < runner.num_parallel and not runner.slot_waiters:
            runner.active += 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        runner.slot_waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                runner.active -= 1  # granted as the caller gave up: pass it on
                self._grant_slot(runner)
            else:
                with contextlib.suppress(ValueError):
                    runner.slot_waiters.remove(waiter)
            raise

    def _grant_slot(self, runner: Runner) -> None:
        while runner.active < runner.num_parallel and runner.slot_waiters:
            waiter = runner.slot_waiters.popleft()
            if waiter.done():
                continue
            runner.active += 1
            waiter.set_result(None)

    # -- the pending queue (processPending) ----------------------------------------------------

    async def _enqueue(
        self, model: ModelRef, options: RunnerOptions, keep_alive: KeepAlive, slow: float
    ) -> tuple[Runner, bool]:
        # Ollama's pending channel holds OLLAMA_MAX_QUEUE requests besides the one its loop is
        # working on; a full channel is a 503 at once.
        if self.pending > self.max_queue:
            self.stats.queue_full += 1
            raise QueueFull
        future: asyncio.Future[tuple[Runner, bool]] = asyncio.get_running_loop().create_future()
        pending = _Pending(model, options, keep_alive, slow, future)
        self._pending.append(pending)
        self._dispatch()
        try:
            return await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self._drop(future.result()[0])
            else:
                future.cancel()
                self._dispatch()
            raise

    def _dispatch(self) -> None:
        if self._dispatching:
            self._again = True
            return
        self._dispatching = True
        try:
            while True:
                self._again = False
                if not self._step() and not self._again:
                    return
        finally:
            self._dispatching = False

    def _step(self) -> bool:
        """Serve the head of the queue if possible; True if something changed."""
        while self._pending and self._pending[0].future.done():
            self._pending.popleft()
        if not self._pending or self._waiting_for_unload:
            return False
        head = self._pending[0]
        runner = self._runners.get(head.model.runner_key)
        if runner is not None:
            if not runner.options.needs_reload_for(head.options):
                self._pending.popleft()
                self._use(runner, head.keep_alive)
                head.future.set_result((runner, False))
                return True
            victim: Runner | None = runner
            if not runner.evicting:
                self.stats.reloads[runner.model.name] += 1
        elif len(self._runners) >= self.max_loaded:
            victim = self._find_victim()
        elif not self._runners or self._fits(head.model):
            self._pending.popleft()
            head.future.set_result((self._start_load(head), True))
            return True
        else:
            victim = self._find_victim()
        if victim is None:
            return False
        # Make it expire as soon as it is idle, and hold the queue until something unloads.
        victim.keep_alive = 0
        victim.evicting = True
        self._cancel_timer(victim)
        if victim.refs == 0:
            self._unload(victim)
            return True
        self._waiting_for_unload = True
        return False

    def _find_victim(self) -> Runner | None:
        """findRunnerToUnload: by keep-alive (shortest first, forever last), then model path;
        the first idle one, else the first."""

        def order(r: Runner) -> tuple[float, str]:
            duration = float("inf") if r.keep_alive is None else r.keep_alive
            return (duration, r.model.runner_key)

        runners = sorted(self._runners.values(), key=order)
        if not runners:
            return None
        return next((r for r in runners if r.refs == 0), runners[0])

    def _fits(self, model: ModelRef) -> bool:
        if self.vram_bytes is None:
            return True
        return self._vram_used() + model.size <= self.vram_bytes

    def _vram_used(self) -> int:
        return sum(r.size_vram for r in self._runners.values())

    def _vram_share(self, model: ModelRef) -> int:
        """How much of the model sits in VRAM; the rest runs on the CPU, as in Ollama."""
        if self.cpu_only:
            return 0
        if self.vram_bytes is None:
            return model.size
        return max(0, min(model.size, self.vram_bytes - self._vram_used()))

    def _capped(self, model: ModelRef, options: RunnerOptions) -> RunnerOptions:
        """num_ctx is at least 4 and at most the trained context (llm/server.go)."""
        num_ctx = max(options.num_ctx, 4)
        if model.context_length > 0:
            num_ctx = min(num_ctx, model.context_length)
        if num_ctx == options.num_ctx:
            return options
        return RunnerOptions(
            num_ctx,
            options.num_batch,
            options.num_gpu,
            options.main_gpu,
            options.use_mmap,
            options.num_thread,
        )

    # -- loading and unloading -----------------------------------------------------------------

    def _start_load(self, head: _Pending) -> Runner:
        keep_alive = self.default_keep_alive if head.keep_alive is UNSET else head.keep_alive
        runner = Runner(
            head.model,
            head.options,
            RunnerState.LOADING,
            num_parallel=self.num_parallel if head.model.completion else 1,
            refs=1,
            keep_alive=keep_alive,
            size_vram=self._vram_share(head.model),
        )
        self._runners[head.model.runner_key] = runner
        runner.load_task = asyncio.get_running_loop().create_task(self._load(runner, head.slow))
        return runner

    async def _load(self, runner: Runner, slow: float) -> None:
        await asyncio.sleep(self.load_seconds(runner.model, slow))
        runner.state = RunnerState.LOADED
        runner.last_used = time.monotonic()
        self.stats.cold_loads[runner.model.name] += 1
        runner.ready.set()
        if runner.refs == 0 and self._runners.get(runner.model.runner_key) is runner:
            self._went_idle(runner)  # everyone who wanted it gave up during the load

    def _went_idle(self, runner: Runner) -> None:
        if runner.keep_alive == 0:
            self._unload(runner)
            return
        if runner.keep_alive is None:
            runner.expires_at = None
            return
        runner.expires_at = time.time() + runner.keep_alive
        loop = asyncio.get_running_loop()
        runner.timer = loop.call_later(runner.keep_alive, self._expire_timer, runner)

    def _expire_timer(self, runner: Runner) -> None:
        runner.timer = None
        if runner.idle and self._runners.get(runner.model.runner_key) is runner:
            self._unload(runner)

    def _cancel_timer(self, runner: Runner) -> None:
        if runner.timer is not None:
            runner.timer.cancel()
            runner.timer = None

    def _unload(self, runner: Runner) -> None:
        if self._runners.get(runner.model.runner_key) is runner:
            del self._runners[runner.model.runner_key]
        self._cancel_timer(runner)
        if runner.load_task is not None and not runner.load_task.done():
            runner.load_task.cancel()
            runner.ready.set()
        counter = self.stats.evictions if runner.evicting else self.stats.unloads
        counter[runner.model.name] += 1
        # Any unload wakes the pending queue (Ollama's unloadedCh), which looks again.
        self._waiting_for_unload = False
        self._dispatch()
