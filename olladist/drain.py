"""Restart instances without failing requests: drain in HAProxy, wait, restart, wait healthy,
set ready. Used the same way by every runtime (local and systemd).

    set server instances/INST state drain   (route backends track it, so it spreads)
    wait until no session is open on INST in any backend (bounded)
    restart the unit; wait until it answers /api/version
    set server instances/INST state ready

If the gateway is not running (first start, or it is the gateway being replaced), there is
nothing to drain and the restart goes ahead.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from olladist.errors import OlladistError, ToolError
from olladist.gateway import INSTANCES_BACKEND
from olladist.gateway.runtime import AdminState, HAProxyRuntime
from olladist.layout import ADMIN_SOCKET, INSTANCE_HOST, SERVER_STATE_FILE, Layout
from olladist.ollama import wait_healthy
from olladist.runtime import Runtime
from olladist.spec import Node
from olladist.units import GATEWAY_UNIT, instance_name

log = logging.getLogger("olladist.drain")


def active_sessions(haproxy: HAProxyRuntime, inst: str) -> int:
    """Requests running or queued on this node's instance ``inst``, summed over every backend
    that uses it (each route backend counts its own). Peer servers are named ``peer.NODE`` and
    instance names hold no dot, so no peer is counted."""
    return sum(s.current_sessions + s.queued for s in haproxy.stats() if s.server == inst)


READY_MAPS = ("/ready.map", "/local-ready.map")


def clear_ready_maps(haproxy: HAProxyRuntime) -> None:
    """Empty the live view's ready maps (models every holder can serve now). Until live.lua's
    next poll they would still name a model whose only instance was just drained, and its
    requests would meet a backend with no usable server (503) instead of waiting for it;
    emptied, every request goes through live.lua's wait, which sees the drain at once, and the
    next recompute puts back what is ready."""
    for line in haproxy.command("show map").splitlines():
        parts = line.split()
        # "<id> (<file>) pattern loaded from file '<file>' ..." : the file is the second word.
        if len(parts) >= 2 and parts[1].strip("()").endswith(READY_MAPS):
            out = haproxy.command(f"clear map {parts[1].strip('()')}").strip()
            if out:
                log.warning("could not clear %s: %s", parts[1], out)


def drain_instance(
    haproxy: HAProxyRuntime,
    inst: str,
    timeout: float,
    on_wait: Callable[[], None] = lambda: None,
    step: float = 0.1,
) -> bool:
    """Drain ``inst`` everywhere (set on ``instances``, tracked by every other backend) and wait
    until nothing runs on it. Returns False if requests still ran after ``timeout`` (a long
    generation); the instance stays drained either way, ``set_ready`` puts it back."""
    haproxy.set_state(INSTANCES_BACKEND, inst, AdminState.DRAIN)
    clear_ready_maps(haproxy)
    deadline = time.monotonic() + timeout
    while active_sessions(haproxy, inst) > 0:
        if time.monotonic() >= deadline:
            return False
        on_wait()
        time.sleep(step)
    return True


def set_ready(haproxy: HAProxyRuntime, inst: str) -> None:
    haproxy.set_state(INSTANCES_BACKEND, inst, AdminState.READY)


class DrainingRuntime:
    """Wraps a runtime: restarts and stops of instances go through a drain."""

    def __init__(
        self,
        inner: Runtime,
        layout: Layout,
        node: Node,
        *,
        drain_timeout: float = 120.0,
        health_timeout: float = 120.0,
        on_wait: Callable[[], None] | None = None,
    ) -> None:
        """``on_wait`` is called at every poll of the bounded waits below: the daemon counts
        them as progress, so its watchdog does not take a long drain for a hang."""
        self.inner = inner
        self.on_wait = on_wait or (lambda: None)
        self.name = inner.name
        self.executes = inner.executes
        self.node = node
        self.haproxy = HAProxyRuntime(layout.real(ADMIN_SOCKET), timeout=3.0)
        self.state_file = layout.real(SERVER_STATE_FILE)
        self.drain_timeout = drain_timeout
        self.health_timeout = health_timeout

    def _gateway_up(self) -> bool:
        try:
            self.haproxy.command("show info", attempts=1)
        except ToolError:
            return False
        return True

    def drain(self, inst: str) -> bool:
        """Drain ``inst``; returns whether the gateway knew it (False: nothing to undo)."""
        if not self._gateway_up():
            return False
        try:
            idle = drain_instance(self.haproxy, inst, self.drain_timeout, self.on_wait)
        except ToolError as exc:
            log.warning("cannot drain %s (%s); restarting without it", inst, exc.message)
            return False
        if idle:
            log.info("drained %s", inst)
        else:
            log.warning(
                "%s still has request(s) after %.0fs; restarting anyway", inst, self.drain_timeout
            )
        return True

    def _ready(self, inst: str) -> None:
        try:
            set_ready(self.haproxy, inst)
        except ToolError as exc:
            log.warning("cannot set %s ready: %s", inst, exc.message)

    def _wait_healthy(self, inst: str, unit: str) -> None:
        port = next((i.port for i in self.node.instances if i.name == inst), None)
        if port is None:
            return
        if wait_healthy(
            [port], self.health_timeout, self.on_wait, lambda: not self.inner.is_active(unit)
        ):
            if not self.inner.is_active(unit):
                raise OlladistError(
                    f"instance {inst} exited after its restart (not running)",
                    hint="see its log; it stays drained in the gateway until it answers",
                )
            raise OlladistError(
                f"instance {inst} did not answer on {INSTANCE_HOST}:{port} within "
                f"{self.health_timeout:.0f}s after its restart",
                hint="see its log; it stays drained in the gateway until it answers",
            )

    def _wait_gateway_up(self, inst: str) -> None:
        deadline = time.monotonic() + self.health_timeout
        while True:
            try:
                rows = [
                    s
                    for s in self.haproxy.stats()
                    if s.backend == INSTANCES_BACKEND and s.server == inst
                ]
            except ToolError:
                return
            if not rows or rows[0].status.startswith("UP"):
                return
            if time.monotonic() > deadline:
                log.warning("the gateway still sees %s as %s", inst, rows[0].status)
                return
            self.on_wait()
            time.sleep(0.1)

    def restart(self, unit: str) -> None:
        inst = instance_name(unit)
        if inst is None:
            self.inner.restart(unit)
            return
        drained = self.drain(inst)
        self.inner.restart(unit)
        self._wait_healthy(inst, unit)
        if drained:
            self._ready(inst)
            # Only once the gateway's own health check sees it up may the next instance go:
            # otherwise a model held by two instances has none for a moment.
            self._wait_gateway_up(inst)

    def stop(self, unit: str) -> None:
        inst = instance_name(unit)
        if inst is not None:
            self.drain(inst)
        self.inner.stop(unit)

    def start(self, unit: str) -> None:
        self.inner.start(unit)

    def reload(self, unit: str) -> None:
        if unit != GATEWAY_UNIT or not self._gateway_up():
            self.inner.reload(unit)
            return
        # A reload starts a new worker from the config; without the saved states a drained
        # instance would come back into rotation.
        try:
            self.haproxy.save_server_state(self.state_file)
        except ToolError as exc:
            log.warning("could not save server states before the reload: %s", exc.message)
        try:
            before = self.haproxy.worker_pid()
        except ToolError:
            before = None
        self.inner.reload(unit)
        if before is not None and self.executes:
            self._wait_new_worker(before)

    def _wait_new_worker(self, before: int) -> None:
        """Wait (bounded) until the reloaded gateway's new worker answers: the reload is a
        signal, and until the new worker takes over, new connections still reach the old
        one, on the old config. What follows a reload (the check after apply, a drain) must
        see the new config: a check that met the old worker's API-key rule after the keys
        were turned off failed, and rolled a good commit back."""
        deadline = time.monotonic() + self.health_timeout
        while time.monotonic() < deadline:
            self.on_wait()
            try:
                now = self.haproxy.worker_pid()
            except ToolError:
                now = None  # the socket moves between workers for a moment
            if now is not None and now != before:
                return
            time.sleep(0.05)
        log.warning(
            "the gateway's new worker did not answer within %.0fs of the reload; going on",
            self.health_timeout,
        )

    def enable(self, unit: str) -> None:
        self.inner.enable(unit)

    def disable(self, unit: str) -> None:
        self.inner.disable(unit)

    def daemon_reload(self) -> None:
        self.inner.daemon_reload()

    def is_active(self, unit: str) -> bool:
        return self.inner.is_active(unit)

    def why_inactive(self, unit: str) -> str:
        return self.inner.why_inactive(unit)

    def supervise(self) -> list[str]:
        return self.inner.supervise()

    def stop_all(self) -> None:
        self.inner.stop_all()
