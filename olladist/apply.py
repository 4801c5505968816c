"""Apply a plan: the same actions ``diff`` printed, executed in a safe order.

1. record the plan's runtime actions as pending (a crash after step 3 must not lose a restart)
2. stop removed instances (before their files go)
3. write files atomically and remove stale ones, keeping the manifest a superset of what is on
   disk at every moment, so nothing olladist wrote is ever orphaned
4. enable / disable units
5. daemon-reload, start, restart, reload, clearing each from pending once done
"""

from __future__ import annotations

import contextlib
import logging
import os

from olladist.errors import ApplyError, OlladistError
from olladist.files import write_atomic
from olladist.layout import SYSTEMD_DIR, Layout
from olladist.plan import Action, Kind, Plan
from olladist.runtime import Runtime
from olladist.state import State

log = logging.getLogger("olladist.apply")


def _remove(layout: Layout, path: str) -> None:
    real = layout.real(path)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(real)
    # Drop-in directories olladist created are removed once empty.
    parent = real.parent
    if parent.name.endswith(".service.d") and str(parent).startswith(str(layout.real(SYSTEMD_DIR))):
        with contextlib.suppress(OSError):
            parent.rmdir()


def _run(runtime: Runtime, action: Action) -> None:
    match action.kind:
        case Kind.DAEMON_RELOAD:
            runtime.daemon_reload()
        case Kind.START:
            runtime.start(action.target)
        case Kind.RESTART:
            runtime.restart(action.target)
        case Kind.RELOAD:
            runtime.reload(action.target)
        case Kind.STOP:
            runtime.stop(action.target)
        case _:
            raise AssertionError(f"not a runtime action: {action}")


def apply(plan: Plan, layout: Layout, state: State, runtime: Runtime) -> list[Action]:
    """Execute ``plan``; returns the actions done. Raises ApplyError naming the failed action."""
    done: list[Action] = []
    runtime_actions = list(plan.runtime_actions())
    pending = list(runtime_actions) if runtime.executes else []
    if runtime.executes:
        state.set_pending(pending)

    def step(action: Action) -> None:
        try:
            if action.kind is Kind.WRITE:
                assert action.content is not None and action.mode is not None
                write_atomic(layout.real(action.target), action.content.encode(), action.mode)
            elif action.kind is Kind.REMOVE:
                _remove(layout, action.target)
            elif action.kind is Kind.ENABLE:
                runtime.enable(action.target)
            elif action.kind is Kind.DISABLE:
                runtime.disable(action.target)
            elif runtime.executes:
                _run(runtime, action)
                pending.remove(action)
                state.set_pending(pending)
        except OlladistError as exc:
            raise ApplyError(f"{action.kind} {action.target}: {exc.message}", exc.hint) from exc
        except OSError as exc:
            raise ApplyError(f"{action.kind} {action.target}: {exc}") from exc
        log.info("%s %s (%s)", action.kind, action.target, action.reason)
        done.append(action)

    for a in plan.actions:
        if a.kind is Kind.STOP:
            step(a)
    writes = [a for a in plan.actions if a.kind is Kind.WRITE]
    removes = [a for a in plan.actions if a.kind is Kind.REMOVE]
    managed = set(state.managed())
    state.set_managed(managed | {a.target for a in writes})
    for a in writes:
        step(a)
    for a in removes:
        step(a)
    state.set_managed((managed | {a.target for a in writes}) - {a.target for a in removes})
    for a in plan.actions:
        if a.kind in (Kind.DISABLE, Kind.ENABLE):
            step(a)
    for a in plan.actions:
        if a.kind.is_runtime and a.kind is not Kind.STOP:
            step(a)
    return done
