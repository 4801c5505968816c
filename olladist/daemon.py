"""The reconciler daemon: the one-shot reconcile in a loop, with signals handled in one place.

    poll source -> load + validate + render + validate rendered -> plan -> apply or report
    -> record status and metrics -> wait (interval with jitter, SIGHUP, a source edit, drift)

- A bad commit (invalid spec, failing render, refused signature or rollback) is recorded as
  the last *attempted* commit with its error; the node keeps the last *applied* commit and
  keeps correcting drift against it; the next good commit goes through at once.
- Rendered files are watched: a hand edit is drift within a second, corrected under
  ``policy.drift: correct`` or only reported under ``report``. A new commit is always applied
  (it is the operator's intent); ``report`` only concerns divergence between commits. A drift
  that keeps coming back is corrected with a growing delay, and the status says so.
- systemd: READY=1 after the first attempt, STATUS= one line, WATCHDOG=1 while the loop is
  alive (also during long pulls); SIGHUP reconciles now; SIGTERM stops cleanly (with
  ``--runtime local`` it stops every service it started).
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import random
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

from olladist import gate, rolloutstate
from olladist.errors import OlladistError
from olladist.gateway.pulls import PullBoard
from olladist.layout import ETC_DIR, SYSTEMD_DIR
from olladist.models import forget_preloads
from olladist.nodeconfig import NodeConfig
from olladist.ollama import Progress
from olladist.peers import PeerError, Peers
from olladist.plan import Action, Kind, Plan
from olladist.reconcile import Desired, execute, full_plan, load_desired, restart_slot
from olladist.rollout import plan_rollout
from olladist.runtime import Runtime
from olladist.selfcheck import check_after_apply
from olladist.source import DirSource, SourceError
from olladist.spec import DriftPolicy, Spec, duration_ms
from olladist.specload import load_spec
from olladist.state import State
from olladist.status import Status, gateway_health, write_metrics
from olladist.statusd import StatusServer, Transfers
from olladist.units import instance_name

log = logging.getLogger("olladist.daemon")

# After an apply, how long "the gateway cannot serve it yet" may take to clear before it is
# recorded as drift: two of the live view's polls (1 s at most each) and a probe timeout.
SERVING_SETTLE = 4.0
DRIFT_STORM_WINDOW = 60.0  # seconds: corrections of the same drift within it count as a storm
DRIFT_STORM_FREE = 3  # corrections allowed in the window before backing off


class Notifier:
    """sd_notify when NOTIFY_SOCKET is set; a no-op otherwise."""

    def __init__(self) -> None:
        self._n: Any = None
        if os.environ.get("NOTIFY_SOCKET"):
            import sdnotify  # noqa: PLC0415

            self._n = sdnotify.SystemdNotifier()

    def __call__(self, message: str) -> None:
        if self._n is not None:
            self._n.notify(message)


@dataclass
class _DriftGuard:
    """Backs off when the same drift keeps returning right after it was corrected."""

    times: list[float] = field(default_factory=list)
    signature: str = ""

    def delay(self, signature: str, now: float) -> float:
        if signature != self.signature:
            self.signature, self.times = signature, []
        self.times = [t for t in self.times if now - t < DRIFT_STORM_WINDOW]
        self.times.append(now)
        extra = len(self.times) - DRIFT_STORM_FREE
        return 0.0 if extra <= 0 else min(300.0, 2.0**extra)


class Daemon:
    def __init__(
        self,
        config: NodeConfig,
        runtime: Runtime,
        *,
        once: bool = False,
        interval: float | None = None,
        on_progress: Callable[[str, Progress], None] | None = None,
    ) -> None:
        """``config``: the node's configuration (its source, name, root and local settings);
        ``runtime``: what runs its services."""
        self.source = config.open_source()
        self.local = config.local
        self.node = node = config.node
        self.layout = layout = config.layout
        self.runtime = runtime
        self.once = once
        self.interval_override = interval
        self.state = State(layout)
        self.status = Status.load(self.state, node)
        self.notify = Notifier()
        self.wake: queue.SimpleQueue[str] = queue.SimpleQueue()
        self.stopping = threading.Event()
        self.alive_at = time.monotonic()
        self.desired: Desired | None = None
        self.drift_guard = _DriftGuard()
        self._user_progress = on_progress
        self.pulls = PullBoard(layout)  # tells the gateway's live view how pulls are going
        self._threads: list[threading.Thread] = []
        # Read by the status server (olladist.statusd) from its own thread.
        self.transfers = Transfers()
        self.activity: tuple[str, float] | None = None

    # -- signals and watchers ----------------------------------------------------------------

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if signum == signal.SIGHUP:
            self.wake.put("SIGHUP")
        else:
            self.stopping.set()
            self.wake.put("stop")

    def _progress(self, model: str, p: Progress) -> None:
        self.alive_at = time.monotonic()  # a long pull is progress, not a hang
        self.transfers.update(model, p)
        self.pulls.progress(model, p)
        if self._user_progress:
            self._user_progress(model, p)

    def _waiting(self) -> None:
        # Waiting on a drain or a health check is bounded (drain.py), so it is progress: a
        # drain that waits for a long stream must not look like a hang to the watchdog.
        self.alive_at = time.monotonic()

    def _start_thread(self, target: Callable[[], None], name: str) -> None:
        t = threading.Thread(target=target, name=name, daemon=True)
        t.start()
        self._threads.append(t)

    def _watch_files(self) -> None:
        import watchfiles  # noqa: PLC0415

        dirs = [self.layout.real(ETC_DIR), self.layout.real(SYSTEMD_DIR)]
        for d in dirs:
            d.mkdir(parents=True, exist_ok=True)
        for changes in watchfiles.watch(
            *dirs,
            stop_event=self.stopping,
            debounce=100,
            step=50,
            rust_timeout=500,
            yield_on_timeout=False,
            recursive=True,
        ):
            desired = self.desired
            if desired is None:
                continue
            for _, path in changes:
                node_path = "/" + str(Path(path).relative_to(self.layout.root))
                f = desired.files.get(node_path)
                if f is None:
                    continue
                try:
                    current = Path(path).read_text(encoding="utf-8")
                except OSError:
                    current = None
                if current != f.content:
                    self.wake.put(f"drift:{node_path}")
                    break

    def _watch_source(self) -> None:
        assert isinstance(self.source, DirSource)
        for commit in self.source.watch(stop_event=self.stopping):
            self.wake.put(f"source:{commit}")

    def _heartbeat(self) -> None:
        usec = int(os.environ.get("WATCHDOG_USEC", "0") or 0)
        if not usec:
            return
        period = usec / 1e6
        while not self.stopping.wait(period / 4):
            if time.monotonic() - self.alive_at < period / 2:
                self.notify("WATCHDOG=1")

    # -- the loop ----------------------------------------------------------------------------

    def run(self) -> int:
        handlers = {
            s: signal.signal(s, self._on_signal)
            for s in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT)
        }
        server: StatusServer | None = None
        try:
            if not self.once:
                server = self._start_status_server()
                self._start_thread(self._watch_files, "watch-files")
                self._start_thread(self._heartbeat, "watchdog")
                if isinstance(self.source, DirSource):
                    self._start_thread(self._watch_source, "watch-source")
            ok = self.tick("start")
            self.notify("READY=1")
            if self.once:
                return 0 if ok else 2
            while not self.stopping.is_set():
                reason = self._wait()
                if reason is None:
                    break
                self.tick(reason)
            return 0
        finally:
            self.notify("STOPPING=1")
            self.stopping.set()
            if server is not None:
                server.close()
            for s, h in handlers.items():
                signal.signal(s, h)
            if not self.once:
                self.runtime.stop_all()

    def _start_status_server(self) -> StatusServer | None:
        # The page is worth having, not worth refusing to reconcile for.
        try:
            return StatusServer(self).start()
        except OSError as exc:
            log.error("status server not started: %s", exc)
            return None

    def _interval(self) -> float:
        if self.interval_override is not None:
            return self.interval_override
        base = 60.0
        if self.desired is not None:
            base = duration_ms(self.desired.spec.policy.interval) / 1000
        return base * random.uniform(0.9, 1.1)  # jitter: nodes do not poll in lockstep

    def _wait(self) -> str | None:
        deadline = time.monotonic() + self._interval()
        while not self.stopping.is_set():
            self.alive_at = time.monotonic()
            restarted = self.runtime.supervise()
            for unit in restarted:
                log.warning("%s was not running; started it", unit)
            if restarted:
                # A fresh instance has lost its preloaded models: reconcile now.
                forget_preloads(self.state, [i for u in restarted if (i := instance_name(u))])
                return "restarted " + ", ".join(restarted)
            left = deadline - time.monotonic()
            if left <= 0:
                return "interval"
            try:
                reason = self.wake.get(timeout=min(1.0, left))
            except queue.Empty:
                continue
            if reason == "stop":
                return None
            # Coalesce a burst of wake-ups (an editor writing several files) into one tick.
            with contextlib.suppress(queue.Empty):
                while True:
                    if self.wake.get(timeout=0.05) == "stop":
                        return None
            return reason
        return None

    def tick(self, reason: str) -> bool:
        """One reconcile; returns whether it succeeded. Never raises for olladist errors."""
        self.alive_at = time.monotonic()
        self.activity = (reason, round(time.time(), 3))  # for the status server
        started = time.monotonic()
        self.status.begin()
        self.status.last_reason = reason
        log.info("reconcile (%s)", reason)
        try:
            ok = self._reconcile(reason)
        except OlladistError as exc:
            log.error("%s", exc.message)
            self.status.error(exc.message, exc.hint)
            ok = False
        except Exception as exc:  # the loop must survive bugs; they are reported, not fatal
            log.exception("unexpected error")
            self.status.error(f"unexpected error: {exc!r}", "please report this as a bug")
            ok = False
        self.status.health = gateway_health(self.layout)
        if self.desired is not None:
            self.status.models = list(self.desired.placement.models_for(self.node))
        self.status.finish(time.monotonic() - started, ok)
        self.status.save(self.state)
        self.activity = None
        self.transfers.clear()  # the pulls of this reconcile ended, one way or another
        write_metrics(self.layout, self.status)
        self.notify(f"STATUS={self.status.line()}")
        return ok

    def _reconcile(self, reason: str) -> bool:
        applied = self.status.applied_commit
        try:
            fetched = self.source.poll(accepted=applied or None)
        except OlladistError as exc:
            # A refused signature or rollback names the tip it refused.
            tip = exc.refused_commit if isinstance(exc, SourceError) else None
            self.status.attempt(tip or self.status.attempted_commit or "", exc.message)
            self._reconcile_last_good()
            raise
        commit = fetched.commit
        failed = rolloutstate.failed_reason(self.status.rollout, commit)
        if commit != applied and applied and failed is not None:
            # This node rolled back from it: it stays on its commit until a newer one comes.
            error = OlladistError(
                f"commit {commit} failed its check after apply here; rolled back to {applied}: "
                f"{failed}",
                hint="push a newer commit that fixes it",
            )
            self.status.attempt(commit, error.message)
            self._reconcile_last_good()
            raise error
        stopped = rolloutstate.stopped_reason(self.status.rollout, commit)
        if commit != applied and stopped is not None:
            # The gate stopped this commit here: the node stays on its commit.
            error = OlladistError(
                f"the rollout of {commit} stopped before this node: {stopped}",
                hint="push a newer commit (it rolls out from the start)",
            )
            self.status.attempt(commit, error.message)
            self._reconcile_last_good()
            raise error
        if commit != applied:
            try:
                desired = load_desired(
                    fetched.checkout, self.node, self.layout, commit, local=self.local
                )
            except OlladistError as exc:
                self.status.attempt(commit, exc.message)
                log.error("commit %s refused: %s", commit[:12], exc.message)
                self._reconcile_last_good()
                raise
        elif self.desired is not None and self.desired.commit == commit:
            desired = self.desired
        else:
            desired = load_desired(
                fetched.checkout, self.node, self.layout, commit, local=self.local
            )
        self.status.attempt(commit, None)
        self._converge(desired, reason)
        return not self.status.errors

    def _reconcile_last_good(self) -> None:
        """Keep correcting drift against the last applied commit while a bad one is refused."""
        if self.desired is None and self.status.applied_commit:
            with contextlib.suppress(OlladistError):
                checkout = self.source.checkout(self.status.applied_commit)
                self.desired = load_desired(
                    checkout,
                    self.node,
                    self.layout,
                    self.status.applied_commit,
                    local=self.local,
                )
        if self.desired is not None:
            self._converge(self.desired, "last-known-good", record_applied=False)

    def _converge(self, desired: Desired, reason: str, record_applied: bool = True) -> None:
        last_good, self.desired = self.desired, desired
        policy = desired.spec.policy
        # A new commit is checked after it is applied, and rolled back from if it fails.
        rolling = record_applied and desired.commit != self.status.applied_commit
        if rolling:
            self._rollout_begin(desired)
        p = full_plan(desired, self.layout, self.state, self.runtime)
        self.status.planned(p)
        if rolling:
            try:
                go = self._gate(desired)
            except OlladistError:
                self.desired = last_good  # nothing of it applied: the node stays as it is
                raise
            if not go:
                self.desired = last_good  # a newer commit superseded the wait
                return
            p = full_plan(desired, self.layout, self.state, self.runtime)  # after the wait
            self.status.planned(p)
        if not p.drift:
            if rolling and self.status.rollout.get("state") == "applying":
                self.status.rollout = rolloutstate.settle(self.status.rollout, [], unchanged=True)
            if record_applied:
                self.status.applied(desired.commit)
            return
        new_commit = desired.commit != self.status.applied_commit
        if policy.drift is DriftPolicy.REPORT and not new_commit:
            # A new commit is the operator's intent and is applied; between commits, what
            # diverges from the applied commit is only reported under `drift: report`.
            log.warning("drift (%d items), policy is report: not correcting", len(p.actions))
            return
        if reason.startswith("drift:"):
            delay = self.drift_guard.delay(_signature(p), time.monotonic())
            if delay:
                self.status.note(
                    f"drift keeps returning ({reason[6:]}); correcting in {delay:.0f}s"
                )
                log.warning("drift keeps returning on %s; backing off %.0fs", reason[6:], delay)
                if self._sleep(delay):
                    return
                p = full_plan(desired, self.layout, self.state, self.runtime)
        if not rolling or not self.status.rollout.get("waves"):
            self._stagger(desired, p)  # no waves to gate on (a directory source)
        try:
            outcome = execute(
                p,
                desired,
                self.layout,
                self.state,
                self.runtime,
                on_progress=self._progress,
                on_wait=self._waiting,
                tls=self.local.tls,
                # The seeder of a new blob is a holder of the earliest wave: a later one waits
                # at the gate, and must not be waited for.
                waves=self._waves_of(desired.commit),
            )
        except OlladistError as exc:
            if not rolling:
                raise
            self._roll_back(desired, last_good, [f"apply failed: {exc.message}"])
        for model, why in outcome.model_errors.items():
            self.status.error(f"model {model}: {why}", None)
        for what, why in outcome.model_warnings.items():
            self.status.error(f"model {what}: {why}", None)  # shown, but not a failure
        if rolling:
            failures = [f"model {m}: {why}" for m, why in outcome.model_errors.items()]
            failures += check_after_apply(
                desired, self.layout, self.runtime, self._waiting, tls=self.local.tls
            )
            if failures:
                self._roll_back(desired, last_good, failures)
            self.status.rollout = rolloutstate.settle(self.status.rollout, [])
        self.pulls.finished(outcome.model_errors)
        if record_applied:
            self.status.applied(desired.commit)
        self.status.planned(self._settled(desired))

    def _waves_of(self, commit: str) -> list[list[str]]:
        record = self.status.rollout
        return list(record.get("waves") or []) if record.get("commit") == commit else []

    def _settled(self, desired: Desired) -> Plan:
        """The plan after an apply. The gateway's live view sees a change at its next poll (a
        second or two), so drift that is only "cannot serve yet" gets that long to clear
        before it is recorded."""
        p = full_plan(desired, self.layout, self.state, self.runtime)
        deadline = time.monotonic() + SERVING_SETTLE
        while p.actions and all(_serving_only(a) for a in p.actions):
            self.alive_at = time.monotonic()  # a bounded wait: progress for the watchdog
            if time.monotonic() > deadline or self.stopping.wait(0.5):
                break
            p = full_plan(desired, self.layout, self.state, self.runtime)
        return p

    def _rollout_begin(self, desired: Desired) -> None:
        """Record the waves of a new commit. They come from the specs as committed (no
        node-local overrides) of the commit and its first parent, so every node computes the
        same ones, whatever commit each of them runs (a directory source has no parents: its
        waves are against the applied commit)."""
        applied = self.status.applied_commit
        try:
            new = load_spec(self.source.checkout(desired.commit))
            first_parent = getattr(self.source, "first_parent", None)
            before = first_parent(desired.commit) if first_parent is not None else applied
            old: Spec | None = None
            if before:
                with contextlib.suppress(OlladistError):
                    old = load_spec(self.source.checkout(before))
            plan = plan_rollout(old, new, desired.commit)
        except OlladistError as exc:
            log.warning("no rollout waves for %s: %s", desired.commit[:12], exc.message)
            return
        self.status.rollout = rolloutstate.begin(self.status.rollout, plan, self.node, applied)
        for line in plan.notes(self.node):
            log.info("%s", line)

    def _roll_back(
        self, desired: Desired, last_good: Desired | None, failures: list[str]
    ) -> NoReturn:
        """Go back to the last applied commit's files after ``desired`` failed; raises."""
        self.status.rollout = rolloutstate.settle(self.status.rollout, failures)
        reason = self.status.rollout["reason"]
        back_to = self.status.applied_commit
        if not back_to:
            # Nothing to go back to: the node keeps the commit and reports it failed.
            self.status.applied(desired.commit)
            raise OlladistError(
                f"commit {desired.commit} failed its check after apply, and this node has no "
                f"earlier commit to go back to: {reason}",
                hint="push a commit that fixes it",
            )
        error = OlladistError(
            f"commit {desired.commit} failed its check after apply; rolled back to "
            f"{back_to}: {reason}",
            hint="push a newer commit that fixes it; this node does not try this one again",
        )
        self.status.attempt(desired.commit, error.message)
        self.desired = last_good if last_good is not None and last_good.commit == back_to else None
        self._reconcile_last_good()
        raise error

    def _gate(self, desired: Desired) -> bool:
        """Wait until this node's wave may apply ``desired`` (olladist.gate): True to go on,
        False when a newer commit supersedes the wait (or the daemon stops); raises when the
        rollout stops here. The record on disk says where the wait is, for the peers and for
        a restarted reconciler. A node with nothing applied yet serves nothing, so it has
        nothing to protect and does not wait."""
        record = self.status.rollout
        if record.get("commit") != desired.commit or not record.get("waves"):
            return True
        if not self.status.applied_commit or self.once:
            return True
        spec = desired.spec
        timeout = duration_ms(spec.policy.rollout.wave_timeout) / 1000
        exempt = {n.name for n in spec.nodes if not n.instances}
        try:
            peers = Peers.of(spec, self.node, self.layout, self.local.tls)
        except PeerError as exc:
            peers = None  # every peer unreadable: not healthy, so the gate waits
            log.error("%s", exc.message)
        poll_every = max(1.0, min(self._interval(), 10.0))
        next_poll = time.monotonic() + poll_every
        shown = ""
        while True:
            self.alive_at = time.monotonic()  # a wait at the gate is progress, not a hang
            got = peers.fetch("/olladist/v1/status") if peers is not None else {}
            self.alive_at = time.monotonic()  # each peer's answer is bounded by its timeout
            reports = {
                name: gate.Report(
                    name,
                    r.data.get("rollout") if r.ok and isinstance(r.data, dict) else None,
                    r.error,
                )
                for name, r in got.items()
            }
            since = self.status.rollout.get("gate") or {}
            verdict = gate.decide(
                desired.commit,
                self.status.rollout["waves"],
                self.node,
                reports,
                waiting=(since["wave"], since["since"]) if since.get("wave") else None,
                now=time.time(),
                timeout_s=timeout,
                exempt=exempt,
            )
            if verdict.action is gate.Action.GO:
                self.status.rollout = rolloutstate.through(self.status.rollout)
                return True
            if verdict.action is gate.Action.STOP:
                self.status.rollout = rolloutstate.stopped(self.status.rollout, verdict)
                error = OlladistError(
                    f"the rollout of {desired.commit} stopped before this node: {verdict.reason}",
                    hint="push a newer commit (it rolls out from the start)",
                )
                self.status.attempt(desired.commit, error.message)
                raise error
            self.status.rollout = rolloutstate.waiting(self.status.rollout, verdict)
            self.status.save(self.state)  # what the peers and the status page read
            if verdict.reason != shown:
                log.info("%s: %s", desired.commit[:12], verdict.reason)
                self.notify(f"STATUS=rollout of {desired.commit[:12]}: {verdict.reason}"[:400])
                shown = verdict.reason
            for unit in self.runtime.supervise():
                log.warning("%s was not running; started it", unit)
            if self.stopping.wait(1.0):
                return False
            if time.monotonic() >= next_poll:
                next_poll = time.monotonic() + poll_every
                if self._superseded(desired.commit):
                    self.wake.put("newer commit")
                    return False

    def _superseded(self, commit: str) -> bool:
        """Has the source moved past ``commit``? (Polling errors: not now, ask again later.)"""
        try:
            tip = self.source.poll(accepted=self.status.applied_commit or None).commit
        except OlladistError as exc:
            log.warning("poll while waiting at the gate: %s", exc.message)
            return False
        if tip != commit:
            log.info("commit %s supersedes the wait for %s", tip[:12], commit[:12])
        return tip != commit

    def _stagger(self, desired: Desired, p: Plan) -> None:
        # The open-loop restart stagger, for what has no waves to gate on.
        restarts = [a for a in p.actions if a.kind is Kind.RESTART and "@" in a.target]
        if not restarts or not desired.commit:
            return
        slot = restart_slot(desired.spec, desired.placement, self.node, desired.commit)
        delay = slot * duration_ms(desired.spec.policy.restart_stagger) / 1000
        if delay:
            log.info("restart slot %d: waiting %.0fs before restarting instances", slot, delay)
            self._sleep(delay)

    def _sleep(self, seconds: float) -> bool:
        """Wait ``seconds`` (a planned wait: progress for the watchdog, however long it is);
        True when the daemon is stopping."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self.alive_at = time.monotonic()
            if self.stopping.wait(min(left, 1.0)):
                return True
        return self.stopping.is_set()


def _serving_only(a: Action) -> bool:
    return a.kind is Kind.REPORT and a.target.startswith(("serving ", "peer ", "gateway"))


def _signature(p: Plan) -> str:
    return "|".join(sorted(f"{a.kind}:{a.target}" for a in p.actions))
